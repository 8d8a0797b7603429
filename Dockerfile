# The medcloud image: one image for the operator (`medcloud operator`), the
# control API (`medcloud api`), the device gateway (`medcloud gateway`) and the
# key service (`medcloud keyservice`), the consortium exchange (`medcloud exchange`)
# and the catalog apps of MedCloud's own code (`medcloud app <name>`); the Helm
# chart and the operator pick the command.
#
#   docker build -t registry.example.org/medcloud/medcloud:0.1.0 .
#
# Two stages: the first builds a wheel (and needs pip's build isolation to
# fetch setuptools); the second installs only the wheel and its dependencies,
# so no source tree, build tools or caches end up in the image.
FROM python:3.11-slim AS build
WORKDIR /src
# Only what the distribution is built from (pyproject.toml's packages and its
# readme), so unrelated changes (tests, docs, charts) do not bust the cache.
COPY pyproject.toml README.md ./
COPY medcloud ./medcloud
COPY operator ./operator
COPY api ./api
COPY gateway ./gateway
COPY keyservice ./keyservice
COPY exchange ./exchange
COPY analytics ./analytics
COPY cli ./cli
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# PYTHONDONTWRITEBYTECODE: the chart mounts the root filesystem read-only.
# PYTHONUNBUFFERED: log lines leave the process as they are written.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
# A numeric, unprivileged user: Kubernetes can verify runAsNonRoot only when
# the image's user is a number, and Pod Security "restricted" requires it.
RUN groupadd --system --gid 10001 medcloud \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin medcloud
USER 10001:10001
# The operator's metrics and probe ports, and the API's port.
EXPOSE 9090 8080
ENTRYPOINT ["medcloud"]
CMD ["operator"]
