#!/usr/bin/env bash
# podman's Docker-compatible API on a project-local socket, for testcontainers.
#
# Usage: deploy/podman/api.sh {start|stop|status|env}
#   start  start `podman system service` on $PODMAN_SOCKET (if not answering yet), wait for
#          GET /_ping, print the variables testcontainers needs (as `env` does)
#   stop   stop the service this script started
#   status exit 0 if the socket answers
#   env    print DOCKER_HOST=..., TESTCONTAINERS_RYUK_DISABLED=true (its image cannot be
#          pulled without a registry; the fixture removes its own container),
#          TESTCONTAINERS_CONNECTION_MODE=docker_host and TC_HOST=127.0.0.1 (this machine has
#          a /.dockerenv, so testcontainers would otherwise think it runs inside a container)
# Environment: PODMAN_SOCKET (default <repo>/.local/podman/podman.sock).
set -euo pipefail
LOG_TAG=podman-api
# shellcheck source=../images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../images/lib.sh"

SOCKET=${PODMAN_SOCKET:-$REPO_ROOT/.local/podman/podman.sock}
PIDFILE=$(dirname "$SOCKET")/podman-api.pid

answers() {
  command -v curl >/dev/null 2>&1 || die "curl not found"
  [ "$(curl -s -m 3 --unix-socket "$SOCKET" -o /dev/null -w '%{http_code}' http://d/_ping 2>/dev/null)" = 200 ]
}

print_env() {
  printf 'DOCKER_HOST=unix://%s\nTESTCONTAINERS_RYUK_DISABLED=true\nTESTCONTAINERS_CONNECTION_MODE=docker_host\nTC_HOST=127.0.0.1\n' "$SOCKET"
}

start() {
  need podman
  if answers; then
    print_env
    return 0
  fi
  mkdir -p "$(dirname "$SOCKET")"
  rm -f "$SOCKET"
  # --time=0: no idle timeout; CONTAINERS_CONF (lib.sh) applies to the containers it runs
  nohup podman system service --time=0 "unix://$SOCKET" </dev/null >"$(dirname "$SOCKET")/podman-api.log" 2>&1 &
  echo $! >"$PIDFILE"
  local _
  for _ in $(seq 1 100); do
    answers && { log "podman API on unix://$SOCKET (pid $(cat "$PIDFILE"))"; print_env; return 0; }
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    sleep 0.1
  done
  cat "$(dirname "$SOCKET")/podman-api.log" >&2 || true
  die "podman system service did not answer on $SOCKET"
}

stop() {
  local pid
  if [ -f "$PIDFILE" ] && pid=$(cat "$PIDFILE") && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    log "stopped (pid $pid)"
  fi
  rm -f "$PIDFILE" "$SOCKET"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  env) print_env ;;
  *) echo "usage: $(basename "$0") {start|stop|status|env}" >&2; exit 2 ;;
esac
