#!/usr/bin/env bash
# `make run`: local broker + one worker + a bundled sample stream of both vendors.
# Ctrl-C stops everything this script started (the broker only if it started it).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
FW="${VENV:-.venv}/bin/funnelwatch"
PY="${VENV:-.venv}/bin/python"
export FUNNELWATCH_BROKER_URL="${FUNNELWATCH_BROKER_URL:-kafka://127.0.0.1:19092}"
export FUNNELWATCH_WEB_HOST="${FUNNELWATCH_WEB_HOST:-127.0.0.1}"
export FUNNELWATCH_WEB_PORT="${FUNNELWATCH_WEB_PORT:-6066}"
export FUNNELWATCH_DATA_DIR="${FUNNELWATCH_DATA_DIR:-$ROOT/.run/worker}"
export FUNNELWATCH_PUBLISH_INTERVAL_S="${FUNNELWATCH_PUBLISH_INTERVAL_S:-5}"
BASE="http://${FUNNELWATCH_WEB_HOST}:${FUNNELWATCH_WEB_PORT}"
mkdir -p "$ROOT/.run"

started_kafka=
if ! "$HERE/kafka/kafka.sh" status >/dev/null 2>&1; then
    "$HERE/kafka/kafka.sh" up
    started_kafka=1
fi
worker_pid=
cleanup() {
    trap - INT TERM EXIT
    echo
    if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
        echo "run: stopping worker (pid $worker_pid)"
        kill -TERM "$worker_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$worker_pid" 2>/dev/null || true
    fi
    if [[ -n "$started_kafka" ]]; then "$HERE/kafka/kafka.sh" down; fi
}
trap cleanup INT TERM EXIT

# The input topics normally come from the vendor mirror; create them for the demo.
"$PY" - <<'PY'
import asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from agents.settings import get_settings
async def main():
    s = get_settings()
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers, **s.aiokafka_security_kwargs())
    await admin.start()
    try:
        have = set(await admin.list_topics())
        new = [NewTopic(t, s.topic_partitions, s.topic_replication_factor)
               for t in (s.topic_activity_sync, s.topic_altcraft) if t not in have]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()
asyncio.run(main())
PY

echo "run: starting worker (log .run/worker.log)"
"$FW" worker >"$ROOT/.run/worker.log" 2>&1 &
worker_pid=$!
for i in $(seq 1 120); do
    if curl -fsS -o /dev/null "$BASE/funnel" 2>/dev/null; then break; fi
    if ! kill -0 "$worker_pid" 2>/dev/null; then
        echo "run: the worker exited; last lines of .run/worker.log:" >&2; tail -n 20 "$ROOT/.run/worker.log" >&2; exit 1
    fi
    sleep 1
done
curl -fsS -o /dev/null "$BASE/funnel" && kill -0 "$worker_pid" 2>/dev/null || { echo "run: worker did not become ready in 120 s (see .run/worker.log)" >&2; exit 1; }

echo "run: producing a sample stream (3000 messages of both vendors, some stuck, some bad records)"
"$FW" generate --messages 3000 --tenants 4 --stuck 0.06 --span-s 1800 --produce

cat <<MSG

funnelwatch is running.
  dashboard      $BASE/
  funnel (JSON)  $BASE/funnel?tenant=tenant-0
  stuck alerts   $BASE/alerts
  metrics        $BASE/metrics
  replay offline: $FW generate --messages 100 | $FW replay -
Ctrl-C stops the worker$( [[ -n "$started_kafka" ]] && echo " and the broker" ).
MSG
wait "$worker_pid"
