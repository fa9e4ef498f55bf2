#!/usr/bin/env bash
# `make test-containers`: the tests that need real containers, in one pytest session.
#   - tests/containers: the compose group (deploy/podman/compose.sh, its own project on free
#     ports): membership, health, Prometheus, non-root/read-only, kill/stop with a ledger;
#     and the proof that the fixture's broker runs in a container;
#   - tests/contract and tests/integration/test_kafka_dispatch.py through the fixture's
#     testcontainers branch: podman's Docker API on a project socket, Kafka from $KAFKA_IMAGE
#     (the local image); KAFKA_BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL are cleared so the
#     shared broker is not used (the registry is the local JVM one).
# Extra arguments go to pytest (e.g. -x, -k).
set -euo pipefail
LOG_TAG=test-containers
# shellcheck source=../images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../images/lib.sh"

PY=${PY:-$REPO_ROOT/.venv/bin/python}
API=$REPO_ROOT/deploy/podman/api.sh
started_api=0
cleanup() { if [ "$started_api" = 1 ]; then bash "$API" stop || true; fi; }
trap cleanup EXIT

bash "$API" status || started_api=1
while IFS='=' read -r key value; do export "$key=$value"; done < <(bash "$API" start)
export KAFKA_IMAGE=${KAFKA_IMAGE:-$KAFKA_LOCAL_IMAGE}
image_exists "$KAFKA_IMAGE" || die "image $KAFKA_IMAGE missing: run \`make images\` first"
unset KAFKA_BOOTSTRAP_SERVERS SCHEMA_REGISTRY_URL

cd "$REPO_ROOT"
t0=$(now)
rm -f .local/containers-figures.json
status=0
nice "$PY" -m pytest -q -p no:cacheprovider --durations=10 \
  tests/containers tests/contract tests/integration/test_kafka_dispatch.py "$@" || status=$?
log "pytest exit $status in $(elapsed "$t0")s"
[ -f .local/containers-figures.json ] && log "figures: $(tr -d ' \n' <.local/containers-figures.json)"
exit "$status"
