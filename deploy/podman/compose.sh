#!/usr/bin/env bash
# docker-compose.yml under podman-compose on the images deploy/images/build.sh makes, in the
# order Docker Compose would follow, on a machine without systemd and with podman 4.3.
#
# Usage: deploy/podman/compose.sh {up|down|ps|logs [SERVICE]|env}
#   up    kafka + registry healthy -> init exits 0 -> consumer x3 healthy -> publisher,
#         prometheus healthy; prints the host addresses. Grafana is not started (no image).
#   down  stop (grace as compose says) and remove the containers, network and volumes
#   env   print the variables compose is run with
#
# Why a driver and not `podman-compose up` alone: podman-compose ignores `service_healthy`
# with podman < 4.6 and treats `service_completed_successfully` as "stopped" (any exit code),
# and podman runs health checks from systemd timers, which this machine lacks. So this script
# runs the checks itself (a "health ticker" in the background, as long as the project has
# containers) and starts the services phase by phase.
#
# Environment: COMPOSE_PROJECT (default kafka-dispatch), KAFKA_HOST_PORT, REGISTRY_HOST_PORT,
# PROMETHEUS_HOST_PORT (the compose defaults 29092, 8081, 9090), HEALTH_INTERVAL (longest
# time between two checks of a container, 10 s), UP_TIMEOUT (s per phase, 360: a loaded
# 2-core machine can take minutes to start the JVMs), PODMAN_COMPOSE (default:
# .venv/bin/podman-compose, else PATH).
set -euo pipefail
LOG_TAG=compose
# shellcheck source=../images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../images/lib.sh"

PROJECT=${COMPOSE_PROJECT:-kafka-dispatch}
STATE=$REPO_ROOT/.local/compose/$PROJECT
HEALTH_INTERVAL=${HEALTH_INTERVAL:-10}
UP_TIMEOUT=${UP_TIMEOUT:-360}

# the local images, unless the caller names others
while IFS='=' read -r key value; do
  [ -n "${!key:-}" ] || export "$key=$value"
done < <(bash "$IMAGES_DIR/build.sh" list)
export SERVICE_IMAGE KAFKA_IMAGE REGISTRY_IMAGE PROMETHEUS_IMAGE
export KAFKA_HOST_PORT=${KAFKA_HOST_PORT:-29092} REGISTRY_HOST_PORT=${REGISTRY_HOST_PORT:-8081}
export PROMETHEUS_HOST_PORT=${PROMETHEUS_HOST_PORT:-9090}

podman_compose() {
  local pc=${PODMAN_COMPOSE:-}
  if [ -z "$pc" ]; then
    if [ -x "$REPO_ROOT/.venv/bin/podman-compose" ]; then
      pc=$REPO_ROOT/.venv/bin/podman-compose
    else
      pc=$(command -v podman-compose) || die "podman-compose not found (make compose-up installs it into .venv)"
    fi
  fi
  "$pc" --project-name "$PROJECT" -f "$REPO_ROOT/docker-compose.yml" "$@"
}

containers() {  # containers: SERVICE... (all of the project when none)
  local args=(--filter "label=io.podman.compose.project=$PROJECT") service
  if [ $# -eq 0 ]; then
    podman ps -a "${args[@]}" --format '{{.Names}}'
    return
  fi
  for service in "$@"; do
    podman ps -a "${args[@]}" --filter "label=io.podman.compose.service=$service" --format '{{.Names}}'
  done
}

health_of() { podman inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null || echo gone; }

# What systemd timers do elsewhere: run each running container's health check every
# `interval` of its healthcheck (at most HEALTH_INTERVAL s apart), one check in flight per
# container. Stops by itself once the project has had no container for a minute (after
# `down`, or a crash).
health_ticker() {
  local idle=0 name running interval now names
  declare -A due=() inflight=()
  while :; do
    names=$(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' 2>/dev/null || true)
    if [ -z "$names" ]; then
      idle=$((idle + 2))
      [ "$idle" -lt 60 ] || exit 0
      sleep 2
      continue
    fi
    idle=0
    now=$SECONDS
    # shellcheck disable=SC2086  # one name per word
    while read -r name running interval; do
      if [ "$running" != true ] || [ -z "$interval" ]; then continue; fi
      [ "$now" -ge "${due[$name]:-0}" ] || continue
      if [ -n "${inflight[$name]:-}" ] && kill -0 "${inflight[$name]}" 2>/dev/null; then
        continue
      fi
      [ "$interval" -ge 1 ] || interval=1
      [ "$interval" -le "$HEALTH_INTERVAL" ] || interval=$HEALTH_INTERVAL
      due[$name]=$((now + interval))
      podman healthcheck run "$name" >/dev/null 2>&1 &
      inflight[$name]=$!
    done < <(podman inspect --format \
      '{{.Name}} {{.State.Running}} {{if .Config.Healthcheck}}{{printf "%.0f" .Config.Healthcheck.Interval.Seconds}}{{end}}' \
      $names 2>/dev/null || true)
    sleep 1
  done
}

ticker_running() {
  local pid
  [ -f "$STATE/ticker.pid" ] && pid=$(cat "$STATE/ticker.pid") && kill -0 "$pid" 2>/dev/null
}

start_ticker() {
  mkdir -p "$STATE"
  ticker_running && return 0
  nohup "$0" ticker </dev/null >"$STATE/ticker.log" 2>&1 &
  echo $! >"$STATE/ticker.pid"
}

stop_ticker() {
  if ticker_running; then
    kill "$(cat "$STATE/ticker.pid")" 2>/dev/null || true
  fi
  rm -f "$STATE/ticker.pid"
}

wait_healthy() {  # wait_healthy SERVICE...
  local deadline=$((SECONDS + UP_TIMEOUT)) name status pending names
  names=$(containers "$@")
  [ -n "$names" ] || die "no container for $*"
  while :; do
    pending=""
    for name in $names; do
      status=$(health_of "$name")
      case $status in
        healthy) ;;
        unhealthy | gone) podman logs --tail 40 "$name" >&2 || true; die "$name is $status" ;;
        *) pending+=" $name" ;;
      esac
    done
    [ -z "$pending" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      for name in $pending; do podman logs --tail 40 "$name" >&2 || true; done
      die "not healthy after ${UP_TIMEOUT}s:$pending"
    fi
    sleep 1
  done
}

up() {
  need podman
  local image t0 name code
  for image in "$SERVICE_IMAGE" "$KAFKA_IMAGE" "$REGISTRY_IMAGE" "$PROMETHEUS_IMAGE"; do
    image_exists "$image" || die "image $image missing: run \`make images\` first"
  done
  t0=$(now)
  start_ticker
  local up=(up -d --no-build --no-deps --pull never)
  log "project $PROJECT: kafka, registry ..."
  podman_compose "${up[@]}" kafka registry >"$STATE/up.log" 2>&1 || { cat "$STATE/up.log" >&2; die "podman-compose up failed"; }
  wait_healthy kafka registry
  log "kafka and registry healthy after $(elapsed "$t0")s; init ..."
  podman_compose "${up[@]}" init >>"$STATE/up.log" 2>&1 || { cat "$STATE/up.log" >&2; die "podman-compose up init failed"; }
  name=$(containers init | head -n 1)
  code=$(podman wait "$name")
  if [ "$code" != 0 ]; then
    podman logs "$name" >&2 || true
    die "init exited with $code"
  fi
  log "init done after $(elapsed "$t0")s; consumer x3 ..."
  podman_compose "${up[@]}" consumer >>"$STATE/up.log" 2>&1 || { cat "$STATE/up.log" >&2; die "podman-compose up consumer failed"; }
  wait_healthy consumer
  log "consumers healthy after $(elapsed "$t0")s; publisher, prometheus ..."
  podman_compose "${up[@]}" publisher prometheus >>"$STATE/up.log" 2>&1 || { cat "$STATE/up.log" >&2; die "podman-compose up failed"; }
  wait_healthy prometheus
  log "up in $(elapsed "$t0")s: kafka localhost:$KAFKA_HOST_PORT, registry http://localhost:$REGISTRY_HOST_PORT/apis/ccompat/v7, prometheus http://localhost:$PROMETHEUS_HOST_PORT"
}

down() {
  need podman
  local t0 names volumes=""
  t0=$(now)
  mkdir -p "$STATE"
  # anonymous volumes (the images' VOLUMEs: Kafka's data, Prometheus' TSDB), which
  # `podman-compose down -v` leaves behind
  names=$(containers)
  if [ -n "$names" ]; then
    # shellcheck disable=SC2086  # one name per word
    volumes=$(podman inspect --format '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' $names 2>/dev/null || true)
  fi
  # the consumers' stop_grace_period is 40s; podman-compose passes -t to podman stop
  podman_compose down -v -t 45 >"$STATE/down.log" 2>&1 || { cat "$STATE/down.log" >&2; stop_ticker; die "podman-compose down failed"; }
  stop_ticker
  local volume
  for volume in $volumes; do
    if [ "$(podman volume inspect --format '{{.Anonymous}}' "$volume" 2>/dev/null)" = true ]; then
      podman volume rm "$volume" >/dev/null 2>&1 || true
    fi
  done
  log "down in $(elapsed "$t0")s"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  ps) podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format 'table {{.Names}}\t{{.Status}}\t{{.Ports}}' ;;
  logs) shift; podman_compose logs "$@" ;;
  env) env | grep -E '^(SERVICE|KAFKA|REGISTRY|PROMETHEUS)_(IMAGE|HOST_PORT)=|^(KAFKA|APICURIO)_VERSION=' | sort ;;
  ticker) health_ticker ;;
  *) echo "usage: $(basename "$0") {up|down|ps|logs [SERVICE]|env}" >&2; exit 2 ;;
esac
