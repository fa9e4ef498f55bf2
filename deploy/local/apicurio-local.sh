#!/usr/bin/env bash
# Local Apicurio Registry (Confluent-compatible API at /apis/ccompat/v7) on loopback, no Docker.
# Runs the "all" assembly of io.apicurio:apicurio-registry-app (resolved by Maven) on a Java 21+
# JDK, with in-memory H2 storage (schemas are lost on stop).
#
# Usage: apicurio-local.sh {fetch|start|stop|status|appdir|java}
#   fetch   resolve + unpack the assembly once into $APICURIO_LOCAL_CACHE (no network if there)
#   start   fetch if needed, start the registry, wait for GET /apis/ccompat/v7/subjects = 200,
#           print the ccompat base URL as the last line of stdout
#   stop    stop the registry started from $WORK (SIGTERM, then SIGKILL after 30 s)
#   status  print the base URL if running, exit 1 if not
#   appdir  print the unpacked application directory (no network)
#   java    print the java executable the registry runs on (see "Java" below), exit 1 if none
#
# Java: Apicurio 3.3.x is compiled for Java 21, while the machine default stays Java 17. The JDK
# is, in order: $APICURIO_JAVA_HOME (must be >= 21); $JAVA_HOME if it is >= 21; the newest
# JDK >= 21 under /usr/lib/jvm (version from its "release" file, else "java -version").
# tests/support/local_brokers.py asks this script ("java") so both pick the same one.
#
# Environment:
#   APICURIO_VERSION      default: deploy/versions.env (artifact io.apicurio:apicurio-registry-app:<v>:tar.gz:all)
#   APICURIO_LOCAL_CACHE  default $HOME/.cache/kafka-service/apicurio-$APICURIO_VERSION
#   APICURIO_JAVA_HOME    JDK (>= 21) to run the registry on (default: see "Java" above)
#   WORK                  work dir: log, pid (default <repo>/.local/apicurio)
#   PORT                  HTTP port (default: a free port picked at start)
#   APICURIO_HEAP_OPTS    default "-Xms64m -Xmx384m"
#   APICURIO_START_TIMEOUT seconds to wait for startup (default 120)
#   MAVEN_ARGS_EXTRA      extra arguments for the mvn fetch (e.g. "-s settings.xml" or "-o")
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$HERE/versions.sh" # APICURIO_VERSION: the environment, else deploy/versions.env
CACHE=${APICURIO_LOCAL_CACHE:-$HOME/.cache/kafka-service/apicurio-$APICURIO_VERSION}
WORK=${WORK:-$REPO_ROOT/.local/apicurio}
case $WORK in /*) ;; *) WORK=$PWD/$WORK ;; esac
PIDFILE=$WORK/apicurio.pid
LOG=$WORK/apicurio.out
START_TIMEOUT=${APICURIO_START_TIMEOUT:-120}
CCOMPAT=/apis/ccompat/v7
ARTIFACT=io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all
# same plugin version deploy/local/pom.xml pins for kafka-local.sh
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
MIN_JAVA=21
JVM_DIR=/usr/lib/jvm

log() { printf 'apicurio-local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

app_ready() { [ -f "$CACHE/app/.complete" ]; }

# the runnable jar: 3.0.x legacy-jar "*-runner.jar", 3.1+ fast-jar "quarkus-run.jar"
find_jar() {
  find "$CACHE/app" -maxdepth 3 \( -name quarkus-run.jar -o -name 'apicurio-registry-app-*-runner.jar' \) \
    -print 2>/dev/null | sort | head -n 1
}

fetch() {
  if app_ready; then
    log "registry already cached in $CACHE/app"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch the registry)"
  local tmp="$CACHE/app.partial.$$" t0
  mkdir -p "$CACHE"
  rm -rf "$tmp"
  mkdir -p "$tmp/app" "$tmp/mvn"
  t0=$(now)
  log "resolving $ARTIFACT with Maven into $CACHE/app ..."
  # Run from an empty dir so no pom.xml is picked up (the plugin's unpack markers land in
  # $tmp/mvn/target and go away with it). -C: fail on a checksum mismatch instead of warning.
  # The tar.gz itself stays in the local Maven repository (~/.m2), so a re-fetch is offline.
  # shellcheck disable=SC2086  # MAVEN_ARGS_EXTRA is a list of arguments
  if ! (cd "$tmp/mvn" && mvn -q -B -C -Dstyle.color=never ${MAVEN_ARGS_EXTRA:-} \
      "$DEPENDENCY_PLUGIN:unpack" -Dartifact="$ARTIFACT" -DoutputDirectory="$tmp/app" \
      -Dmdep.overWriteReleases=true >"$tmp/mvn.log" 2>&1); then
    log "mvn output (last 40 lines):"
    tail -n 40 "$tmp/mvn.log" >&2 || true
    rm -rf "$tmp"
    die "maven could not resolve $ARTIFACT (is the version on Maven Central? is it reachable?)"
  fi
  if [ -z "$(find "$tmp/app" -maxdepth 3 \( -name quarkus-run.jar -o -name '*-runner.jar' \) -print -quit)" ]; then
    rm -rf "$tmp"
    die "no runnable jar (quarkus-run.jar / *-runner.jar) in $ARTIFACT"
  fi
  touch "$tmp/app/.complete"
  rm -rf "$CACHE/app"
  mv "$tmp/app" "$CACHE/app"
  rm -rf "$tmp"
  log "fetched $ARTIFACT (unpacked $(du -sh "$CACHE/app" | cut -f1)) in $(elapsed "$t0")s"
}

appdir() { echo "$CACHE/app"; }

# --- java selection

# major.minor.patch of the JDK at $1 as a sortable number (25.0.3 -> 25000003), or nothing
java_version_key() {
  local home=$1 v=""
  [ -x "$home/bin/java" ] || return 0
  if [ -f "$home/release" ]; then
    v=$(sed -n 's/^JAVA_VERSION="\([^"]*\)".*/\1/p' "$home/release" | head -n 1)
  fi
  if [ -z "$v" ]; then
    # first line: openjdk version "25.0.3" 2026-04-21 LTS   (or "1.8.0_402")
    v=$("$home/bin/java" -version 2>&1 | sed -n 's/^[^"]*version "\([^"]*\)".*/\1/p' | head -n 1) || true
  fi
  [ -n "$v" ] || return 0
  v=${v#1.}   # 1.8.0_402 -> 8.0_402
  local IFS='._+-' major minor patch
  read -r major minor patch _ <<<"$v" || true
  [[ $major =~ ^[0-9]+$ ]] || return 0
  [[ ${minor:-0} =~ ^[0-9]+$ ]] || minor=0
  [[ ${patch:-0} =~ ^[0-9]+$ ]] || patch=0
  echo $((10#$major * 1000000 + 10#${minor:-0} * 1000 + 10#${patch:-0}))
}

java_major() { local k; k=$(java_version_key "$1"); [ -n "$k" ] && echo $((k / 1000000)); }

# print the JDK home to run the registry on, or fail naming everything that was looked at
java_home() {
  local home major key best="" best_key=0 jvms=()
  if [ -n "${APICURIO_JAVA_HOME:-}" ]; then
    [ -x "$APICURIO_JAVA_HOME/bin/java" ] || die "APICURIO_JAVA_HOME=$APICURIO_JAVA_HOME has no bin/java"
    major=$(java_major "$APICURIO_JAVA_HOME") || true
    [ "${major:-0}" -ge "$MIN_JAVA" ] \
      || die "APICURIO_JAVA_HOME=$APICURIO_JAVA_HOME is Java ${major:-(unknown version)}; Apicurio $APICURIO_VERSION needs Java $MIN_JAVA+"
    echo "$APICURIO_JAVA_HOME"
    return 0
  fi
  if [ -n "${JAVA_HOME:-}" ]; then
    major=$(java_major "$JAVA_HOME") || true
    if [ "${major:-0}" -ge "$MIN_JAVA" ]; then
      echo "$JAVA_HOME"
      return 0
    fi
  fi
  for home in "$JVM_DIR"/*/; do
    home=${home%/}
    [ -x "$home/bin/java" ] || continue
    key=$(java_version_key "$home") || true
    jvms+=("$home (Java $(( ${key:-0} / 1000000 )))")
    if [ -n "$key" ] && [ $((key / 1000000)) -ge "$MIN_JAVA" ] && [ "$key" -gt "$best_key" ]; then
      best=$home best_key=$key
    fi
  done
  if [ -z "$best" ]; then
    log "no JDK >= $MIN_JAVA found. Looked for, in order:"
    log "  APICURIO_JAVA_HOME: unset"
    if [ -n "${JAVA_HOME:-}" ] && [ -n "${major:-}" ]; then
      log "  JAVA_HOME: $JAVA_HOME (Java $major, too old)"
    elif [ -n "${JAVA_HOME:-}" ]; then
      log "  JAVA_HOME: $JAVA_HOME (no usable bin/java)"
    else
      log "  JAVA_HOME: unset"
    fi
    log "  JDKs under $JVM_DIR: ${jvms[*]:-none}"
    die "Apicurio $APICURIO_VERSION needs Java $MIN_JAVA+: install one under $JVM_DIR or set APICURIO_JAVA_HOME"
  fi
  echo "$best"
}

java_cmd() { local home; home=$(java_home) && echo "$home/bin/java"; }

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
  command -v curl >/dev/null 2>&1 || die "curl not found (used to poll the registry on loopback)"
  local java
  java=$(java_cmd)
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
  (cd "$WORK" && exec nohup "$java" ${APICURIO_HEAP_OPTS:--Xms64m -Xmx384m} -XX:+UseSerialGC \
      -Dkafka-service.work="$WORK" \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$mport" \
      -Dquarkus.banner.enabled=false -Dquarkus.log.level=WARN -Dquarkus.http.access-log.enabled=false \
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
  log "apicurio $APICURIO_VERSION up (pid $pid, $java) in $(elapsed "$t0")s; log $LOG"
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
  java) java_cmd ;;
  *) echo "usage: $(basename "$0") {fetch|start|stop|status|appdir|java}" >&2; exit 2 ;;
esac
