#!/usr/bin/env bash
# A one-minute demo on this machine, no Docker: starts Kafka and Redis, one worker,
# streams a synthetic shop (or a dataset) at a steady rate, prints a few shoppers'
# lists read back from Redis and where the metrics are, then stops everything.
#
#   scripts/demo.sh                       synthetic shop, 1,000 events/s for 60 s
#   scripts/demo.sh PATH [--format F]     replay a dataset file instead, e.g.
#       ../shared/data/taobao-userbehavior/stream_slice_2017-11-26.csv.gz
#
# DEMO_RATE and DEMO_SECONDS change the pace and the length.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATE=${DEMO_RATE:-1000}
SECONDS_TO_RUN=${DEMO_SECONDS:-60}
EVENTS=$((RATE * SECONDS_TO_RUN))

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e .

started=0
worker_pid=
cleanup() {
    if [[ -n $worker_pid ]] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" && wait "$worker_pid" 2>/dev/null || true
    fi
    if ((started)); then scripts/services.sh stop; fi
}
trap cleanup EXIT
if ! scripts/services.sh status >/dev/null 2>&1; then
    scripts/services.sh start
    started=1
fi
eval "$(scripts/services.sh env)"

# A fresh app id and topics per run, so a demo never replays an older one.
run=demo-$(date +%s)
export STREAMREC_APP_ID=$run STREAMREC_EVENTS_TOPIC=$run-events \
    STREAMREC_RECOMMENDATIONS_TOPIC=$run-recommendations \
    STREAMREC_DEAD_LETTER_TOPIC=$run-dead-letter STREAMREC_ITEM_UPDATES_TOPIC=$run-item-updates \
    STREAMREC_DATA_DIR=.run/$run STREAMREC_KEY_PREFIX="rec:"
mkdir -p ".run/$run"
port=${STREAMREC_WEB_PORT:-6066}

echo "==> starting a worker (log: .run/$run/worker.log)"
.venv/bin/streamrec worker >".run/$run/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 120); do
    grep -q "replica caught up" ".run/$run/worker.log" && break
    kill -0 "$worker_pid" 2>/dev/null || { tail -20 ".run/$run/worker.log"; exit 1; }
    sleep 0.5
done

if [[ $# -gt 0 ]]; then
    echo "==> replaying $1 at $RATE events/s for up to $SECONDS_TO_RUN s"
    .venv/bin/streamrec produce "$@" --rate "$RATE" --limit "$EVENTS" --retime
else
    echo "==> streaming a synthetic shop at $RATE events/s for $SECONDS_TO_RUN s"
    .venv/bin/streamrec generate --events "$EVENTS" --rate "$RATE"
fi
sleep 2

echo "==> lists of a few shoppers, read back from Redis"
mapfile -t users < <(.venv/bin/python - <<'PY'
import os, redis
client = redis.Redis.from_url(os.environ["STREAMREC_REDIS_URL"])
prefix = os.environ["STREAMREC_KEY_PREFIX"]
keys = sorted(k.decode() for k in client.scan_iter(match=prefix + "*", count=1000))
for key in keys[:3]:
    print(key.removeprefix(prefix))
PY
)
.venv/bin/streamrec show "${users[@]}"

echo "==> the HTTP API (docs/openapi.yaml): a list, trending, health"
for path in "recommendations/${users[0]:-nobody}?k=5" "trending?k=5" healthz; do
    curl -s "http://127.0.0.1:$port/$path" && echo || true
done

echo "==> metrics: http://127.0.0.1:$port/metrics (a few of them now)"
curl -s "http://127.0.0.1:$port/metrics" | grep -E \
    '^streamrec_(events_consumed_total|lists_published_total|users_known|items_known|freshness_seconds_(count|sum))' \
    || true
echo "==> stopping"
