#!/usr/bin/env bash
# Stop what up.sh started and remove <repo>/.local/kafka.env. Safe to run when nothing runs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
LOCAL=$REPO_ROOT/.local

rc=0
WORK="$LOCAL/apicurio" bash "$HERE/apicurio-local.sh" stop || rc=1
WORK="$LOCAL/kafka" bash "$HERE/kafka-local.sh" stop || rc=1
rm -f "$LOCAL/kafka.env"
exit "$rc"
