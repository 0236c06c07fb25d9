# openclaw-orchestrator in a container. compose.yaml runs it beside Redis; see docs/operations.md.
#
# The image has no redis-server, so ORCH_REDIS_URL must point at a Redis server (the embedded
# mode of a bare host install does not work here).

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.11-slim-bookworm
# A fixed UID and GID, so that a gateway container can be given the group (group_add: ["10001"])
# to connect to the socket, which the daemon creates with mode 0660 (ORCH_SOCKET_MODE).
RUN groupadd --system --gid 10001 orchestrator \
    && useradd --system --uid 10001 --gid orchestrator --no-create-home \
        --home-dir /var/lib/openclaw-orchestrator --shell /usr/sbin/nologin orchestrator \
    && install -d -o orchestrator -g orchestrator -m 0750 \
        /var/lib/openclaw-orchestrator /run/openclaw-orchestrator
COPY --from=build /opt/venv /opt/venv

# ORCH_HTTP_HOST is 0.0.0.0 only inside the container, so that the health checks and a Prometheus
# on the container network reach /healthz, /readyz and /metrics. The listener has no
# authentication: publish its port on the host's loopback address only, as compose.yaml does.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORCH_STATE_DIR=/var/lib/openclaw-orchestrator \
    ORCH_SOCKET_PATH=/run/openclaw-orchestrator/orchestrator.sock \
    ORCH_HTTP_HOST=0.0.0.0 \
    ORCH_HTTP_PORT=9464 \
    ORCH_LOG_FORMAT=json

USER orchestrator
# The socket directory is shared with the gateway container; the state directory holds the lock
# file and, when ORCH_SPOOL_PATH is unset, the spool.
VOLUME ["/run/openclaw-orchestrator", "/var/lib/openclaw-orchestrator"]
EXPOSE 9464

# slim images have no curl, so the check uses Python's urllib. urlopen raises for any status
# other than 2xx, which makes the check fail.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ORCH_HTTP_PORT', '9464') + '/healthz', timeout=4)"]

# SIGTERM starts the daemon's phased shutdown; compose.yaml gives it stop_grace_period to finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["orchestrator"]
CMD ["serve"]
