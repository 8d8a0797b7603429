"""The Helm chart ships exactly the CRDs the models generate, and the peering CRDs the operator needs.

Helm installs whatever sits in ``charts/medcloud/crds/``; if those files lag
behind ``crds/``, a chart install would serve an older schema than
``medcloud crds install`` does. Re-sync them with::

    medcloud crds generate --dir charts/medcloud/crds
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
CRDS = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "medcloud" / "crds"
PEERING_FILE = "kopf.dev_peerings.yaml"
SYNC = "medcloud crds generate --dir charts/medcloud/crds"


def test_chart_crds_are_the_generated_crds_byte_for_byte() -> None:
    generated = sorted(path.name for path in CRDS.glob("*.yaml"))
    assert generated, "crds/ holds no CRDs"
    for name in generated:
        shipped = CHART_CRDS / name
        assert shipped.is_file(), f"charts/medcloud/crds/{name} is missing; run `{SYNC}`"
        assert shipped.read_bytes() == (CRDS / name).read_bytes(), (
            f"charts/medcloud/crds/{name} differs from crds/{name}; run `{SYNC}`"
        )


def test_chart_ships_no_crd_that_crds_and_deploy_do_not_define() -> None:
    shipped = {path.name for path in CHART_CRDS.iterdir()}
    expected = {path.name for path in CRDS.glob("*.yaml")} | {PEERING_FILE}
    assert shipped == expected, f"unexpected or missing files in charts/medcloud/crds: {shipped ^ expected}"


def _crds(path: Path) -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "CustomResourceDefinition"}


def test_chart_peering_crds_are_those_of_deploy() -> None:
    """deploy/kopf-peering-crds.yaml is the operator engineers' source; the chart's copy must not drift from it."""
    in_deploy = _crds(ROOT / "deploy" / "kopf-peering-crds.yaml")
    assert set(in_deploy) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert _crds(CHART_CRDS / PEERING_FILE) == in_deploy
