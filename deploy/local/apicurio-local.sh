#!/usr/bin/env bash
# Local Apicurio Registry (Confluent-compatible API at /apis/ccompat/v7) on loopback, no Docker.
# Runs the "all" assembly of io.apicurio:apicurio-registry-app from Maven Central on Java 17,
# with in-memory H2 storage (schemas are lost on stop).
#
# Usage: apicurio-local.sh {fetch|start|stop|status|appdir}
#   fetch   download + unpack the assembly once into $APICURIO_LOCAL_CACHE (no network if there)
#   start   fetch if needed, start the registry, wait for GET /apis/ccompat/v7/subjects = 200,
#           print the ccompat base URL as the last line of stdout
#   stop    stop the registry started from $WORK (SIGTERM, then SIGKILL after 30 s)
#   status  print the base URL if running, exit 1 if not
#   appdir  print the unpacked application directory (no network)
#
# Environment:
#   APICURIO_VERSION      default 3.0.9 (3.3.x is built for Java 21; 3.1.x/3.2.x are not on Central)
#   APICURIO_LOCAL_CACHE  default $HOME/.cache/kafka-service/apicurio-$APICURIO_VERSION
#   MAVEN_CENTRAL_URL     default https://repo.maven.apache.org/maven2
#   WORK                  work dir: log, pid (default <repo>/.local/apicurio)
#   PORT                  HTTP port (default: a free port picked at start)
#   APICURIO_HEAP_OPTS    default "-Xms64m -Xmx384m"
#   APICURIO_START_TIMEOUT seconds to wait for startup (default 120)
#   JAVA_HOME             java to use (default: java on PATH)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
APICURIO_VERSION=${APICURIO_VERSION:-3.0.9}
CACHE=${APICURIO_LOCAL_CACHE:-$HOME/.cache/kafka-service/apicurio-$APICURIO_VERSION}
CENTRAL=${MAVEN_CENTRAL_URL:-https://repo.maven.apache.org/maven2}
WORK=${WORK:-$REPO_ROOT/.local/apicurio}
case $WORK in /*) ;; *) WORK=$PWD/$WORK ;; esac
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java
PIDFILE=$WORK/apicurio.pid
LOG=$WORK/apicurio.out
START_TIMEOUT=${APICURIO_START_TIMEOUT:-120}
CCOMPAT=/apis/ccompat/v7

log() { printf 'apicurio-local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

app_ready() { [ -f "$CACHE/app/.complete" ]; }

# the runnable jar: 3.0.x legacy-jar "*-runner.jar", 3.1+ fast-jar "quarkus-run.jar"
find_jar() {
  find "$CACHE/app" -maxdepth 3 \( -name quarkus-run.jar -o -name 'apicurio-registry-app-*-runner.jar' \) \
    -print 2>/dev/null | head -n 1
}

fetch() {
  if app_ready; then
    log "registry already cached in $CACHE/app"
    return 0
  fi
  command -v curl >/dev/null 2>&1 || die "curl not found"
  # Plain HTTPS GET from Maven Central (checksum-verified) instead of "mvn dependency:copy":
  # 3.0.9's parent POM io.apicurio:apicurio-registry:3.0.9 is not on Central, so Maven fails
  # with "Failed to read artifact descriptor" for any artifact of that version.
  local name="apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
  local url="$CENTRAL/io/apicurio/apicurio-registry-app/$APICURIO_VERSION/$name"
  local tmp="$CACHE/download.$$" t0 want got
  mkdir -p "$CACHE"
  rm -rf "$tmp"
  mkdir -p "$tmp/app"
  t0=$(now)
  log "downloading $url ..."
  curl -fsSL --retry 3 --connect-timeout 20 -o "$tmp/$name" "$url" \
    || { rm -rf "$tmp"; die "download failed: $url"; }
  want=$(curl -fsSL --retry 3 --connect-timeout 20 "$url.sha1" | cut -c1-40) \
    || { rm -rf "$tmp"; die "checksum download failed: $url.sha1"; }
  got=$(sha1sum "$tmp/$name" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { rm -rf "$tmp"; die "sha1 mismatch for $name (want $want, got $got)"; }
  local size
  size=$(du -h "$tmp/$name" | cut -f1)
  tar -xzf "$tmp/$name" -C "$tmp/app" || { rm -rf "$tmp"; die "could not unpack $name"; }
  rm -f "$tmp/$name"
  touch "$tmp/app/.complete"
  rm -rf "$CACHE/app"
  mv "$tmp/app" "$CACHE/app"
  rm -rf "$tmp"
  [ -n "$(find_jar)" ] || die "no runnable jar in $CACHE/app"
  log "fetched $name ($size, unpacked $(du -sh "$CACHE/app" | cut -f1)) in $(elapsed "$t0")s"
}

appdir() { echo "$CACHE/app"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' \
    || die "could not pick a free port (python3 missing?); set PORT"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" 2>/dev/null || true; }

running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-Dkafka-service.work=$WORK " || return 1
  echo "$pid"
}

status() {
  if running_pid >/dev/null && [ -f "$WORK/url" ]; then
    cat "$WORK/url"
  else
    log "not running (work dir $WORK)"
    return 1
  fi
}

start() {
  if running_pid >/dev/null; then
    log "already running (pid $(cat "$PIDFILE")); use stop first for a fresh registry"
    cat "$WORK/url"
    return 0
  fi
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (set JAVA_HOME)"
  command -v curl >/dev/null 2>&1 || die "curl not found"
  app_ready || fetch
  local jar
  jar=$(find_jar)
  [ -n "$jar" ] || die "no runnable jar under $CACHE/app (delete $CACHE and fetch again)"

  local port=${PORT:-} mport
  [ -n "$port" ] || port=$(free_port)
  port_open "$port" && die "port $port is already in use"
  mport=$(free_port)   # Quarkus management interface (enabled by default from 3.2 on)
  rm -f "$WORK/url" "$PIDFILE"
  mkdir -p "$WORK"

  local t0
  t0=$(now)
  # shellcheck disable=SC2086  # APICURIO_HEAP_OPTS is a list of flags
  (cd "$WORK" && exec nohup "$JAVA" ${APICURIO_HEAP_OPTS:--Xms64m -Xmx384m} -XX:+UseSerialGC \
      -Dkafka-service.work="$WORK" \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$mport" \
      -Dquarkus.banner.enabled=false -Dquarkus.log.level=WARN \
      -Dquarkus.log.category.\"io.quarkus\".level=INFO \
      -Dquarkus.log.category.\"io.apicurio\".level=WARN \
      -Dapicurio.ccompat.use-canonical-hash=true \
      -jar "$jar" </dev/null >"$LOG" 2>&1) &
  local pid=$!
  echo "$pid" >"$PIDFILE"

  local url="http://127.0.0.1:$port$CCOMPAT" deadline=$((SECONDS + START_TIMEOUT))
  until [ "$(http_code "$url/subjects")" = 200 ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      log "registry exited during startup; last lines of $LOG:"
      tail -n 40 "$LOG" >&2 || true
      die "apicurio failed to start"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "no startup after ${START_TIMEOUT}s; last lines of $LOG:"
      tail -n 40 "$LOG" >&2 || true
      stop >/dev/null 2>&1 || true
      die "apicurio startup timed out"
    fi
    sleep 0.2
  done
  echo "$url" >"$WORK/url"
  log "apicurio $APICURIO_VERSION up (pid $pid) in $(elapsed "$t0")s; log $LOG"
  echo "$url"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE" "$WORK/url"
    log "not running (work dir $WORK)"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local _
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after 30s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE" "$WORK/url"
  log "stopped (pid $pid)"
}

case "${1:-}" in
  fetch | start | stop | status | appdir) "$1" ;;
  *) echo "usage: $(basename "$0") {fetch|start|stop|status|appdir}" >&2; exit 2 ;;
esac
