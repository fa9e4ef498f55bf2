#!/usr/bin/env bash
# make demo: local broker + registry, topics, schemas, the example service, sample traffic,
# then what was processed and where the metrics are. The service keeps running: stop it all
# with `make demo-stop`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
CONFIG=examples/payment_service/service.yaml
LOG=.local/demo-service.log
COUNT=${DEMO_COUNT:-200}

step() { printf '\n== %s\n' "$*"; }

if [ ! -f .local/kafka.env ]; then
  step "starting a local Kafka broker and schema registry"
  bash "$HERE/up.sh"
fi
set -a; . .local/kafka.env; set +a
export SERVICE_CONFIG=$CONFIG

step "creating the topics"
"$PY" -m service topics create -c "$CONFIG"
"$PY" - <<'PY'  # the topic the example service publishes its events to
from service.config import load_config
from service.wiring import build_backend
build_backend(load_config("examples/payment_service/service.yaml")).create_topics({"payment-events": 6})
PY

step "registering the schemas"
"$PY" -m service schemas register --registry "$SCHEMA_REGISTRY_URL"

step "starting the service (log: $LOG)"
if [ -f .local/demo-service.pid ] && kill -0 "$(cat .local/demo-service.pid)" 2>/dev/null; then
  kill "$(cat .local/demo-service.pid)"; sleep 2
fi
nohup "$PY" -m service run -c "$CONFIG" >"$LOG" 2>&1 &
echo $! > .local/demo-service.pid
for _ in $(seq 1 60); do
  curl -sf http://127.0.0.1:9100/readyz >/dev/null 2>&1 && break
  kill -0 "$(cat .local/demo-service.pid)" 2>/dev/null || { tail -20 "$LOG"; exit 1; }
  sleep 1
done
curl -s http://127.0.0.1:9100/readyz; echo

step "publishing sample traffic"
"$PY" -m examples.payment_service.traffic --count "$COUNT"

step "waiting for the service to process it"
metric() {
  curl -s http://127.0.0.1:9100/metrics | awk -v name="$1" -v outcome="$2" '
    $1 ~ "^"name"\\{" && $1 ~ "outcome=\""outcome"\"" { total += $2 } END { print total + 0 }'
}
for _ in $(seq 1 60); do
  done_count=$(metric kafka_dispatch_settled_messages_total acknowledged)
  [ "${done_count%.*}" -ge "$COUNT" ] && break
  sleep 1
done

step "what was processed"
curl -s http://127.0.0.1:9100/metrics | grep -E '^kafka_dispatch_(settled|processed|deduplicated|dead_lettered)_messages_total|^kafka_dispatch_assigned_partitions|^kafka_dispatch_consumer_lag_messages' | sed 's/^/  /'
echo
echo "metrics:   http://127.0.0.1:9100/metrics"
echo "probes:    http://127.0.0.1:9100/healthz  http://127.0.0.1:9100/readyz"
echo "service:   pid $(cat .local/demo-service.pid), log $LOG"
echo "stop all:  make demo-stop"
