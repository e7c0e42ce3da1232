# The mqttlb image: the router by default; the same image runs `worker`,
# `status` and `simulate`. A slim Python, a non-root user, no build tools.
#
#   docker build -t mqttlb .
#   docker run --rm -v "$PWD/my.yaml:/etc/mqttlb/mqttlb.yaml:ro" -p 9108:9108 mqttlb
#
# compose.yaml runs it beside Mosquitto and two workers.

FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /tmp/src/
COPY mqttlb /tmp/src/mqttlb
RUN pip install /tmp/src \
    && rm -rf /tmp/src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin mqttlb
COPY deploy/mqttlb.yaml /etc/mqttlb/mqttlb.yaml

USER mqttlb
# /metrics and /healthz (metrics.listen)
EXPOSE 9108
# docker stop: the router takes no new message, finishes its forwards, disconnects, exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2)"]

ENTRYPOINT ["python", "-m", "mqttlb"]
CMD ["run", "-c", "/etc/mqttlb/mqttlb.yaml"]
