# ml-metrics-bridge: sidecar that turns ML-training JSON metric files into OTLP metrics.
#
# Two stages: the builder installs the package into a virtualenv; the final stage copies
# only that virtualenv onto a clean python:3.11-slim, so no pip cache, source tree or build
# tool ends up in the runtime image. All dependencies ship manylinux wheels (grpcio,
# orjson), so the builder needs no compiler either.

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Metadata first, then the package: a change to translator/ reuses nothing below, but a
# change to docs or deploy files (excluded by .dockerignore) reuses everything.
COPY pyproject.toml README.md constraints.txt ./
COPY translator/ translator/
# The project from its own source tree, its dependencies at the exact versions in
# constraints.txt (the ones the tests ran against; `make constraints` regenerates it), so a
# rebuild installs the same libraries. pyproject.toml keeps the ranges for other installs.
RUN pip install --no-cache-dir --constraint constraints.txt . \
    && ml-metrics-bridge --help > /dev/null


FROM python:3.11-slim

LABEL org.opencontainers.image.title="ml-metrics-bridge" \
      org.opencontainers.image.description="Sidecar exporting ML-training JSON metric files as OpenTelemetry metrics over OTLP" \
      org.opencontainers.image.licenses="Apache-2.0"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only at run time (compose
# read_only, Kubernetes readOnlyRootFilesystem); the .pyc files were compiled at install.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MAPPING_PATH=/etc/ml-metrics-bridge/mappings/ml-training.yaml \
    HEALTH_PORT=8081

# A fixed numeric uid/gid so Kubernetes runAsNonRoot can check it without /etc/passwd.
# /shared/metrics is created owned by that user so that a fresh named volume mounted there
# (docker-compose `shared-metrics`) inherits the ownership and the trainer can write to it.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin bridge \
    && mkdir -p /shared/metrics \
    && chown 10001:10001 /shared/metrics

COPY --from=builder /opt/venv /opt/venv
COPY mappings/ /etc/ml-metrics-bridge/mappings/

USER 10001:10001

EXPOSE 8081

# No HEALTHCHECK here: the same image also runs `simulate` (the mock trainer), which serves
# no health endpoint. docker-compose.yml and the Kubernetes probes check the bridge.
ENTRYPOINT ["ml-metrics-bridge"]
CMD ["run"]
