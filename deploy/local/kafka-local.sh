#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) on loopback, no Docker.
# The broker classpath comes from Maven Central (deploy/local/pom.xml) and runs on Java 17+.
#
# Usage: kafka-local.sh {fetch|start|stop|status|libdir}
#   fetch   resolve the jars once into $KAFKA_LOCAL_CACHE/lib (no network if already there)
#   start   fetch if needed, format fresh storage, start the broker, wait until it is up,
#           print the bootstrap address (127.0.0.1:PORT) as the last line of stdout
#   stop    stop the broker started from $WORK (SIGTERM, then SIGKILL after 30 s)
#   status  print the bootstrap address if running, exit 1 if not
#   libdir  print the lib directory (no network)
#
# Environment:
#   KAFKA_VERSION       org.apache.kafka:kafka_2.13 version (default: deploy/versions.env)
#   KAFKA_LOCAL_CACHE   cache dir (default $HOME/.cache/kafka-service/kafka-$KAFKA_VERSION)
#   WORK                work dir: config, data, logs, pid (default <repo>/.local/kafka)
#   PORT, CPORT         client / controller port (default: free ports picked at start)
#   SASL=1              SASL_PLAINTEXT + SCRAM-SHA-512 + ACLs; users admin/admin-secret
#                       (super user) and alice/alice-secret
#   KAFKA_HEAP_OPTS     default "-Xms128m -Xmx512m"
#   KAFKA_START_TIMEOUT seconds to wait for startup (default 90)
#   JAVA_HOME           java to use (default: java on PATH)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$HERE/versions.sh" # KAFKA_VERSION: the environment, else deploy/versions.env
CACHE=${KAFKA_LOCAL_CACHE:-$HOME/.cache/kafka-service/kafka-$KAFKA_VERSION}
LIB=$CACHE/lib
WORK=${WORK:-$REPO_ROOT/.local/kafka}
case $WORK in /*) ;; *) WORK=$PWD/$WORK ;; esac
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java
PIDFILE=$WORK/kafka.pid
LOG=$WORK/logs/server.out
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}

log() { printf 'kafka-local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

lib_ready() { [ -f "$LIB/.complete" ] && [ -f "$LIB/kafka_2.13-$KAFKA_VERSION.jar" ]; }

fetch() {
  if lib_ready; then
    log "jars already cached in $LIB"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch the broker jars)"
  mkdir -p "$CACHE"
  local tmp="$CACHE/lib.partial.$$" t0
  rm -rf "$tmp"
  t0=$(now)
  log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central into $LIB ..."
  if ! mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
    rm -rf "$tmp"
    die "maven could not resolve the broker classpath (is Maven Central reachable?)"
  fi
  [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after resolution"; }
  touch "$tmp/.complete"
  rm -rf "$LIB"
  mv "$tmp" "$LIB"
  log "fetched $(find "$LIB" -name '*.jar' | wc -l) jars, $(du -sh "$LIB" | cut -f1) in $(elapsed "$t0")s"
}

libdir() { echo "$LIB"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' \
    || die "could not pick a free port (python3 missing?); set PORT and CPORT"
}

# == org.apache.kafka.common.Uuid.randomUuid().toString() (url-safe base64 of 16 random bytes,
# no padding, never starting with "-"); saves a JVM start over "StorageTool random-uuid"
new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [ "${#id}" = 22 ] && [ "${id:0:1}" != - ] && { echo "$id"; return 0; }
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid from the pid file, only if that process is alive and is our broker
running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $WORK/server.properties" || return 1
  echo "$pid"
}

status() {
  if running_pid >/dev/null && [ -f "$WORK/bootstrap" ]; then
    cat "$WORK/bootstrap"
  else
    log "not running (work dir $WORK)"
    return 1
  fi
}

start() {
  if running_pid >/dev/null; then
    log "already running (pid $(cat "$PIDFILE")); use stop first for a fresh broker"
    cat "$WORK/bootstrap"
    return 0
  fi
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (set JAVA_HOME); Kafka 4.x needs Java 17+"
  lib_ready || fetch

  local port=${PORT:-} cport=${CPORT:-} tmpl="$HERE/server.properties.tmpl"
  [ -n "$port" ] || port=$(free_port)
  [ -n "$cport" ] || { cport=$(free_port); [ "$cport" != "$port" ] || cport=$(free_port); }
  [ "$port" != "$cport" ] || die "PORT and CPORT must differ"
  port_open "$port" && die "port $port is already in use"
  port_open "$cport" && die "port $cport is already in use"
  [ "${SASL:-0}" = 1 ] && tmpl="$HERE/server-sasl.properties.tmpl"

  # fresh, throwaway storage on every start
  rm -rf "$WORK/data" "$WORK/logs" "$WORK/bootstrap" "$PIDFILE"
  mkdir -p "$WORK/data" "$WORK/logs"
  sed -e "s#@PORT@#$port#g" -e "s#@CPORT@#$cport#g" -e "s#@DATA@#$WORK/data#g" "$tmpl" >"$WORK/server.properties"

  local t0 cluster_id
  t0=$(now)
  local tools=("$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$HERE/tools-log4j2.properties" -cp "$LIB/*")
  cluster_id=$(new_cluster_id)
  local fmt=(kafka.tools.StorageTool format -t "$cluster_id" -c "$WORK/server.properties")
  if [ "${SASL:-0}" = 1 ]; then
    fmt+=(--add-scram 'SCRAM-SHA-512=[name=admin,password=admin-secret]'
          --add-scram 'SCRAM-SHA-512=[name=alice,password=alice-secret]')
  fi
  "${tools[@]}" "${fmt[@]}" >"$WORK/logs/format.out" 2>&1 || { cat "$WORK/logs/format.out" >&2; die "storage format failed"; }

  # flags as kafka-server-start.sh / kafka-run-class.sh would pass them, with a small heap
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of flags
  nohup "$JAVA" ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} \
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
    -Dkafka.logs.dir="$WORK/logs" -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -cp "$LIB/*" kafka.Kafka "$WORK/server.properties" </dev/null >"$LOG" 2>&1 &
  local pid=$!
  echo "$pid" >"$PIDFILE"

  local deadline=$((SECONDS + START_TIMEOUT))
  until grep -q "Kafka Server started" "$LOG" 2>/dev/null && port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      log "broker exited during startup; last lines of $LOG:"
      tail -n 40 "$LOG" >&2 || true
      die "kafka failed to start"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "no startup after ${START_TIMEOUT}s; last lines of $LOG:"
      tail -n 40 "$LOG" >&2 || true
      stop >/dev/null 2>&1 || true
      die "kafka startup timed out"
    fi
    sleep 0.2
  done
  echo "127.0.0.1:$port" >"$WORK/bootstrap"
  log "kafka $KAFKA_VERSION up (pid $pid, sasl=${SASL:-0}, controller port $cport) in $(elapsed "$t0")s; log $LOG"
  echo "127.0.0.1:$port"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE" "$WORK/bootstrap"
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
  rm -f "$PIDFILE" "$WORK/bootstrap"
  log "stopped (pid $pid)"
}

case "${1:-}" in
  fetch | start | stop | status | libdir) "$1" ;;
  *) echo "usage: $(basename "$0") {fetch|start|stop|status|libdir}" >&2; exit 2 ;;
esac
