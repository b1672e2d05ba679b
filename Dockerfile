# funnelwatch worker image (used by docker-compose.yml; the non-Docker path is
# `make run` / deploy/kafka/kafka.sh).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md* ./
COPY streams ./streams
COPY agents ./agents
RUN pip install '.[rocksdb]'

RUN useradd --system --uid 10001 --home-dir /data funnelwatch \
    && mkdir -p /data && chown funnelwatch /data
USER funnelwatch

ENV FUNNELWATCH_BROKER_URL=kafka://kafka:9092 \
    FUNNELWATCH_WEB_HOST=0.0.0.0 \
    FUNNELWATCH_WEB_PORT=6066 \
    FUNNELWATCH_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 6066
# Liveness: 503 once an agent crashed (see README, Web views). Python's own HTTP client: the
# slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('FUNNELWATCH_WEB_PORT', '6066'), timeout=4).status != 200)"]
CMD ["funnelwatch", "worker"]
