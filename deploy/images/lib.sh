# shellcheck shell=bash
# Shared by deploy/images/*.sh and deploy/podman/*.sh: podman settings for this machine, the
# versions file, the local image names and a small log/timing helper. Source it; do not run it.

IMAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$IMAGES_DIR/../.." && pwd)

# The one versions file (deploy/versions.env, through the local scripts' reader: a version
# already in the environment wins); every image build reads it.
# shellcheck source=../local/versions.sh
. "$REPO_ROOT/deploy/local/versions.sh"
export KAFKA_VERSION APICURIO_VERSION

# Project-local podman configuration (runc, cgroupfs, ulimits this machine allows), unless the
# caller brought its own.
export CONTAINERS_CONF=${CONTAINERS_CONF:-$REPO_ROOT/deploy/podman/containers.conf}

# Build cache outside the work tree: the debootstrap tarball, the Kafka classpath for the image.
IMAGES_CACHE=${IMAGES_CACHE:-$HOME/.cache/kafka-service/images}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# Local image names (podman resolves "localhost/..." from local storage only, never a registry).
LOCAL_PREFIX=${LOCAL_PREFIX:-localhost/kafka-dispatch}
DEBIAN_IMAGE=$LOCAL_PREFIX/debian:$DEBIAN_SUITE
PYTHON_BASE_IMAGE=$LOCAL_PREFIX/python:3.11-$DEBIAN_SUITE
JRE17_IMAGE=$LOCAL_PREFIX/jre:17-$DEBIAN_SUITE
SERVICE_IMAGE=${SERVICE_IMAGE:-localhost/kafka-dispatch:latest}
KAFKA_LOCAL_IMAGE=$LOCAL_PREFIX/kafka:$KAFKA_VERSION
APICURIO_LOCAL_IMAGE=$LOCAL_PREFIX/apicurio-registry:$APICURIO_VERSION
PROMETHEUS_LOCAL_IMAGE=$LOCAL_PREFIX/prometheus:debian-$DEBIAN_SUITE

log() { printf '%s: %s\n' "${LOG_TAG:-images}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (as root: apt-get install podman runc debootstrap; see docs/containers.md)"
  done
}

image_exists() { podman image exists "$1"; }
