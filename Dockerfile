# The serving runtime: one replica of an API per container (`python -m cortex_flows.serving`).
# The Kubernetes backend runs it twice per pod: as the init container with `--prepare-only` (fetch the
# package from S3, verify its sha256, install its dependencies into the shared cache volume) and as the
# server (`--config /etc/cortex/replica.json --host 0.0.0.0 --port 8080`).
# Pods run it as uid 10001 with a read-only root filesystem: writable paths are the /tmp and cache
# volumes the manifests mount (see cortex_flows/backends/kubernetes/manifests.py).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

RUN groupadd --system --gid 10001 cortex \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin cortex

WORKDIR /opt/cortex-flows
COPY pyproject.toml README.md ./
COPY cortex_flows ./cortex_flows
RUN pip install . && rm -rf /opt/cortex-flows

WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "cortex_flows.serving"]
