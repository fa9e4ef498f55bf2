#!/usr/bin/env bash
# Build every image the compose file and the container tests run on, locally with podman, from
# Debian packages, PyPI and Maven Central only (no image registry is needed or contacted).
#
# Usage: deploy/images/build.sh [base|service|kafka|apicurio|prometheus|all|list]...  (default all)
#   base        Debian bookworm minbase (debootstrap, cached), python 3.11 and JRE 17 bases
#   service     localhost/kafka-dispatch:latest from deploy/Dockerfile (PYTHON_IMAGE = python base)
#   kafka       Kafka $KAFKA_VERSION (deploy/versions.env) with apache/kafka's KAFKA_* interface
#   apicurio    Apicurio Registry $APICURIO_VERSION on the host's JDK >= 21 (copied in)
#   prometheus  Prometheus from Debian's package
#   list        print the image variables for compose / tests (KAFKA_IMAGE=... lines)
#
# Cached: the debootstrap tarball ($IMAGES_CACHE) and the base images (rebuilt only when missing
# or with REBUILD_BASE=1); the other images use podman's layer cache, so a second run is quick.
# Environment: CONTAINERS_CONF (default deploy/podman/containers.conf), IMAGES_CACHE,
# DEBIAN_MIRROR, REBUILD_BASE=1, HOST_CA_BUNDLE (default: the system bundle).
set -euo pipefail
LOG_TAG=images
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# a fresh build context under the cache (never the work tree), emptied first
context() {
  local dir=$IMAGES_CACHE/ctx/$1
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "$dir"
}

podman_build() {
  # --format docker keeps HEALTHCHECK (the OCI format has no such field and podman drops it)
  nice podman build --format docker --layers "$@"
}

host_ca_bundle() {
  local f
  for f in "${HOST_CA_BUNDLE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    [ -n "$f" ] && [ -s "$f" ] && { echo "$f"; return 0; }
  done
  die "no CA bundle on the host (set HOST_CA_BUNDLE)"
}

debian_base() {
  if image_exists "$DEBIAN_IMAGE" && [ "${REBUILD_BASE:-0}" != 1 ]; then
    log "$DEBIAN_IMAGE cached"
    return 0
  fi
  local tarball=$IMAGES_CACHE/debian-$DEBIAN_SUITE-minbase.tar t0
  t0=$(now)
  if [ ! -s "$tarball" ] || [ "${REBUILD_BASE:-0}" = 1 ]; then
    need debootstrap
    [ "$(id -u)" = 0 ] || die "debootstrap needs root (or put a minbase tarball at $tarball)"
    local root=$IMAGES_CACHE/rootfs-$DEBIAN_SUITE.$$
    rm -rf "$root"
    mkdir -p "$IMAGES_CACHE"
    log "debootstrap --variant=minbase $DEBIAN_SUITE from $DEBIAN_MIRROR ..."
    if ! nice debootstrap --variant=minbase "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" \
        >"$IMAGES_CACHE/debootstrap.log" 2>&1; then
      tail -n 30 "$IMAGES_CACHE/debootstrap.log" >&2
      rm -rf "$root"
      die "debootstrap failed (log $IMAGES_CACHE/debootstrap.log)"
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    tar --numeric-owner -C "$root" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$root"
    log "debootstrap done in $(elapsed "$t0")s ($(du -h "$tarball" | cut -f1))"
  fi
  podman import --change 'CMD ["/bin/bash"]' "$tarball" "$DEBIAN_IMAGE-minbase" >/dev/null
  podman_build -f "$IMAGES_DIR/debian/Containerfile" --build-arg BASE="$DEBIAN_IMAGE-minbase" \
    --build-arg DEBIAN_SUITE="$DEBIAN_SUITE" --build-arg DEBIAN_MIRROR="$DEBIAN_MIRROR" \
    -t "$DEBIAN_IMAGE" "$IMAGES_DIR/debian"
  log "$DEBIAN_IMAGE built in $(elapsed "$t0")s"
}

python_base() {
  if image_exists "$PYTHON_BASE_IMAGE" && [ "${REBUILD_BASE:-0}" != 1 ]; then
    log "$PYTHON_BASE_IMAGE cached"
    return 0
  fi
  local ctx t0
  t0=$(now)
  ctx=$(context python)
  cp "$(host_ca_bundle)" "$ctx/host-ca-bundle.crt"
  podman_build -f "$IMAGES_DIR/python/Containerfile" --build-arg BASE="$DEBIAN_IMAGE" \
    -t "$PYTHON_BASE_IMAGE" "$ctx"
  log "$PYTHON_BASE_IMAGE built in $(elapsed "$t0")s"
}

jre_base() {
  if image_exists "$JRE17_IMAGE" && [ "${REBUILD_BASE:-0}" != 1 ]; then
    log "$JRE17_IMAGE cached"
    return 0
  fi
  local ctx t0
  t0=$(now)
  ctx=$(context jre)
  cp "$(host_ca_bundle)" "$ctx/host-ca-bundle.crt"
  podman_build -f "$IMAGES_DIR/kafka/jre.Containerfile" --build-arg BASE="$DEBIAN_IMAGE" \
    -t "$JRE17_IMAGE" "$ctx"
  log "$JRE17_IMAGE built in $(elapsed "$t0")s"
}

base() {
  need podman
  debian_base
  python_base
  jre_base
}

service() {
  need podman
  image_exists "$PYTHON_BASE_IMAGE" || python_base
  local t0
  t0=$(now)
  podman_build -f "$REPO_ROOT/deploy/Dockerfile" --build-arg PYTHON_IMAGE="$PYTHON_BASE_IMAGE" \
    -t "$SERVICE_IMAGE" "$REPO_ROOT"
  log "$SERVICE_IMAGE built in $(elapsed "$t0")s"
}

kafka() {
  need podman
  image_exists "$JRE17_IMAGE" || { image_exists "$DEBIAN_IMAGE" || debian_base; jre_base; }
  local lib=$IMAGES_CACHE/kafka-$KAFKA_VERSION-lib ctx t0
  t0=$(now)
  if [ ! -f "$lib/.complete" ]; then
    need mvn
    local tmp=$lib.partial.$$
    rm -rf "$tmp"
    log "resolving Kafka $KAFKA_VERSION (broker + tools) from Maven Central ..."
    if ! mvn -q -B -Dstyle.color=never -f "$IMAGES_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
      rm -rf "$tmp"
      die "maven could not resolve Kafka $KAFKA_VERSION"
    fi
    [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] && [ -f "$tmp/kafka-tools-$KAFKA_VERSION.jar" ] \
      || { rm -rf "$tmp"; die "kafka_2.13 / kafka-tools $KAFKA_VERSION jars missing after resolution"; }
    touch "$tmp/.complete"
    rm -rf "$lib"
    mv "$tmp" "$lib"
  fi
  ctx=$(context kafka)
  cp -a "$lib" "$ctx/libs"
  rm -f "$ctx/libs/.complete"
  cp -a "$IMAGES_DIR/kafka/bin" "$IMAGES_DIR/kafka/config" "$ctx/"
  podman_build -f "$IMAGES_DIR/kafka/Containerfile" --build-arg BASE="$JRE17_IMAGE" \
    --build-arg KAFKA_VERSION="$KAFKA_VERSION" -t "$KAFKA_LOCAL_IMAGE" "$ctx"
  log "$KAFKA_LOCAL_IMAGE built in $(elapsed "$t0")s"
}

apicurio() {
  need podman
  image_exists "$DEBIAN_IMAGE" || debian_base
  local app java_home ctx t0
  t0=$(now)
  APICURIO_VERSION=$APICURIO_VERSION bash "$REPO_ROOT/deploy/local/apicurio-local.sh" fetch
  app=$(APICURIO_VERSION=$APICURIO_VERSION bash "$REPO_ROOT/deploy/local/apicurio-local.sh" appdir)
  # the JDK (>= 21) the local script would run the registry on
  java_home=$(dirname "$(dirname "$(APICURIO_VERSION=$APICURIO_VERSION bash "$REPO_ROOT/deploy/local/apicurio-local.sh" java)")")
  ctx=$(context apicurio)
  jre "$java_home" "$ctx/jre"
  cp -a "$app" "$ctx/app"
  rm -f "$ctx/app/.complete"
  cp "$(host_ca_bundle)" "$ctx/host-ca-bundle.crt"
  podman_build -f "$IMAGES_DIR/apicurio/Containerfile" --build-arg BASE="$DEBIAN_IMAGE" \
    --build-arg APICURIO_VERSION="$APICURIO_VERSION" -t "$APICURIO_LOCAL_IMAGE" "$ctx"
  log "$APICURIO_LOCAL_IMAGE built in $(elapsed "$t0")s"
}

# the Java runtime for the registry: the JDK at $1 without sources, headers, man pages and
# jmods (jlink cannot be used: the host's JDK ships no packaged modules), cached per release
jre() {
  local jdk=$1 out=$2 key cached
  key=$(sed -n 's/^JAVA_VERSION="\([^"]*\)".*/\1/p' "$jdk/release" 2>/dev/null | head -n 1)
  cached=$IMAGES_CACHE/jre-${key:-unknown}
  if [ ! -f "$cached/.complete" ]; then
    rm -rf "$cached"
    mkdir -p "$cached"
    log "copying a Java runtime from $jdk ..."
    tar -C "$jdk" --exclude=./lib/src.zip --exclude=./lib/ct.sym --exclude=./include \
      --exclude=./man --exclude=./jmods --exclude=./demo -cf - . | tar -C "$cached" -xf -
    touch "$cached/.complete"
  fi
  cp -a "$cached" "$out"
  rm -f "$out/.complete"
}

prometheus() {
  need podman
  image_exists "$DEBIAN_IMAGE" || debian_base
  local t0
  t0=$(now)
  podman_build -f "$IMAGES_DIR/prometheus/Containerfile" --build-arg BASE="$DEBIAN_IMAGE" \
    -t "$PROMETHEUS_LOCAL_IMAGE" "$IMAGES_DIR/prometheus"
  log "$PROMETHEUS_LOCAL_IMAGE built in $(elapsed "$t0")s"
}

list() {
  printf 'SERVICE_IMAGE=%s\nKAFKA_IMAGE=%s\nREGISTRY_IMAGE=%s\nPROMETHEUS_IMAGE=%s\n' \
    "$SERVICE_IMAGE" "$KAFKA_LOCAL_IMAGE" "$APICURIO_LOCAL_IMAGE" "$PROMETHEUS_LOCAL_IMAGE"
}

all() {
  base
  service
  kafka
  apicurio
  prometheus
}

[ $# -gt 0 ] || set -- all
T0=$(now)
for target in "$@"; do
  case $target in
    base | service | kafka | apicurio | prometheus | all | list) "$target" ;;
    *) echo "usage: $(basename "$0") [base|service|kafka|apicurio|prometheus|all|list]..." >&2; exit 2 ;;
  esac
done
[ "$*" = list ] || log "done ($*) in $(elapsed "$T0")s"
