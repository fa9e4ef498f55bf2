#!/usr/bin/env bash
# Start a local Kafka broker and an Apicurio schema registry (no Docker) and write
# <repo>/.local/kafka.env with KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL.
# Env: KAFKA_PORT, KAFKA_CPORT, SR_PORT (default: free ports), SASL=1 (SCRAM broker,
# users admin/admin-secret, alice/alice-secret), plus everything kafka-local.sh and
# apicurio-local.sh read (KAFKA_VERSION, APICURIO_VERSION, caches, heap, JAVA_HOME; the registry
# needs Java 21+ and picks APICURIO_JAVA_HOME or the newest JDK >= 21, see apicurio-local.sh).
# Stop with down.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
LOCAL=$REPO_ROOT/.local
ENV_FILE=$LOCAL/kafka.env

mkdir -p "$LOCAL"
rm -f "$ENV_FILE"

# start both at once (JVM startups overlap); each script prints its address as its last line
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
WORK="$LOCAL/kafka" PORT="${KAFKA_PORT:-}" CPORT="${KAFKA_CPORT:-}" \
  bash "$HERE/kafka-local.sh" start >"$tmp/kafka" &
kafka_job=$!
WORK="$LOCAL/apicurio" PORT="${SR_PORT:-}" \
  bash "$HERE/apicurio-local.sh" start >"$tmp/apicurio" &
sr_job=$!
ok=1
wait "$kafka_job" || ok=0
wait "$sr_job" || ok=0
if [ "$ok" != 1 ]; then
  echo "up.sh: startup failed (see messages above); stopping whatever did start" >&2
  bash "$HERE/down.sh" || true
  exit 1
fi
bootstrap=$(tail -n 1 "$tmp/kafka")
sr_url=$(tail -n 1 "$tmp/apicurio")

{
  echo "# written by deploy/local/up.sh; removed by deploy/local/down.sh"
  echo "KAFKA_BOOTSTRAP_SERVERS=$bootstrap"
  echo "SCHEMA_REGISTRY_URL=$sr_url"
  if [ "${SASL:-0}" = 1 ]; then
    echo "# SASL_PLAINTEXT + SCRAM-SHA-512; users admin/admin-secret (super user), alice/alice-secret"
  fi
} >"$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "up.sh: wrote $ENV_FILE" >&2
cat "$ENV_FILE"
