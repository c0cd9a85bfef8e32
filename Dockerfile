# syntax=docker/dockerfile:1
# The gateway image: dependencies installed from the hash-pinned lock (requirements.lock), no compilers
# in the final stage, non-root, read-only-root-filesystem friendly (bytecode compiled at build time).
#   docker build -t llm-gateway .
#   docker run -p 8080:8080 -e OPENAI_API_KEY=sk-... llm-gateway
#   docker run -v "$PWD/my-config.yaml:/etc/gateway/config.yaml:ro" ... llm-gateway   # your own config
# The config is /etc/gateway/config.yaml ($GATEWAY_CONFIG), or `serve --config PATH`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# --require-hashes: every file must match the lock; --only-binary: wheels only, so nothing is compiled.
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r /tmp/requirements.lock
WORKDIR /app
COPY gateway ./gateway
COPY policies ./policies
# Compile now: at run time the root filesystem is read-only and PYTHONDONTWRITEBYTECODE is set.
RUN python -m compileall -q /app

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="llm-gateway" \
      org.opencontainers.image.description="OpenAI-compatible LLM gateway sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY config.yaml /etc/gateway/config.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/gateway/config.yaml
WORKDIR /app
USER 10001:10001
# 8080: the API (server.port); 9090: /metrics when metrics.port is set (the Kubernetes examples set it).
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# Reads server.port from $GATEWAY_CONFIG and GETs /healthz (Kubernetes ignores this and uses its probes).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-m", "gateway", "healthcheck"]
ENTRYPOINT ["python", "-m", "gateway"]
CMD ["serve"]
