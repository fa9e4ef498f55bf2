#!/usr/bin/env bash
# Regenerate deploy/requirements.lock: the service's runtime dependencies (pyproject.toml
# [project] dependencies, no extras) pinned with hashes, which deploy/Dockerfile builds from.
# Run it after changing those dependencies; the image build fails (pip check) while the lock
# is stale. pip-tools runs in a throwaway venv under the cache, not in the project venv.
#
# Usage: deploy/images/lock.sh            (PYTHON: the interpreter to resolve for, default python3;
#                                          the image runs Python 3.11 on linux x86_64)
set -euo pipefail
LOG_TAG=lock
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PIP_TOOLS_VERSION=7.6.2
venv=$IMAGES_CACHE/pip-tools-$PIP_TOOLS_VERSION
if [ ! -x "$venv/bin/pip-compile" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install -q "pip-tools==$PIP_TOOLS_VERSION"
fi
cd "$REPO_ROOT"
CUSTOM_COMPILE_COMMAND=deploy/images/lock.sh "$venv/bin/pip-compile" --quiet --generate-hashes --strip-extras --allow-unsafe \
  --no-emit-index-url --no-emit-trusted-host --no-emit-find-links \
  --no-emit-options \
  --output-file deploy/requirements.lock pyproject.toml
log "wrote deploy/requirements.lock ($(grep -c '^[a-zA-Z]' deploy/requirements.lock) packages)"
