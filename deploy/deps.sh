#!/usr/bin/env bash
# Installs every external tool the test suite needs (`make deps`; `make test`, `make demo` and
# .ci/run go through it). Idempotent: with everything in place it only checks and returns.
#
#   * Debian packages (as root: apt-get install; apt-get update only when the package lists
#     lack them; not root: the apt-get command to run is printed and the script fails):
#       prometheus   promtool and the server (tests/deploy/test_prometheus.py)
#       maven, a JDK only when mvn / java are missing (make fetch resolves the broker jars)
#   * Go tools from the Go module proxy, built into .local/bin (needs `go` on PATH):
#       kubeconform     Kubernetes manifest validator
#       kustomize       renders deploy/k8s as `kubectl apply -k` would
#       compose-check   deploy/tools/compose-check: the Compose Spec loader (compose-go)
#   * JSON schemas for kubeconform in .local/schemas/<kubernetes>+<keda>/, converted by
#     deploy/tools/k8s_schemas.py from the Go modules k8s.io/kubernetes
#     (api/openapi-spec/swagger.json) and github.com/kedacore/keda/v2 (config/crd/bases).
#
# It writes .local/deps.env (tool paths, schema dir, versions) for tests/deploy to read.
# Versions of these tools are pinned below; bump them here (the schema dir is per version).
#
# Environment: PYTHON (interpreter with PyYAML, default .venv/bin/python), DEPS_DIR (default
# <repo>/.local).
set -euo pipefail

KUBECONFORM_VERSION=v0.8.0
KUSTOMIZE_VERSION=v5.8.2
KUBERNETES_VERSION=v1.37.2 # schemas: the OpenAPI spec of this Kubernetes release
KEDA_VERSION=v2.21.0       # schemas: this KEDA release's CRDs

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
LOCAL=${DEPS_DIR:-$REPO_ROOT/.local}
BIN=$LOCAL/bin
PYTHON=${PYTHON:-$REPO_ROOT/.venv/bin/python}
SCHEMAS=$LOCAL/schemas/kubernetes-$KUBERNETES_VERSION+keda-$KEDA_VERSION
COMPOSE_CHECK_SRC=$HERE/tools/compose-check
# never fetch another Go toolchain; the versions above build with the machine's Go
export GOTOOLCHAIN=local GOFLAGS=${GOFLAGS:--buildvcs=false}

log() { printf 'deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$BIN" "$LOCAL/schemas"
exec 9>"$LOCAL/.deps.lock" # one run at a time (parallel make test in two shells)
flock 9

# ---- Debian packages ---------------------------------------------------------------------

apt_install() {
  local packages=("$@")
  [ "${#packages[@]}" -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    die "missing Debian packages: ${packages[*]}; install them as root:
    apt-get update && apt-get install -y --no-install-recommends ${packages[*]}
  then run make deps again"
  fi
  local package policy
  for package in "${packages[@]}"; do
    policy=$(apt-cache policy "$package" 2>/dev/null || true)
    if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
      log "apt-get update (the package lists do not know $package)"
      apt-get update -qq
      break
    fi
  done
  log "apt-get install ${packages[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "${packages[@]}" >/dev/null
}

missing=()
{ command -v promtool && command -v prometheus; } >/dev/null || missing+=(prometheus)
command -v mvn >/dev/null || missing+=(maven)
command -v java >/dev/null || [ -n "${JAVA_HOME:-}" ] || missing+=(default-jdk-headless)
apt_install "${missing[@]}"

# ---- Go tools ----------------------------------------------------------------------------

command -v go >/dev/null || die "go not found on PATH (the Go toolchain builds kubeconform, kustomize and compose-check)"

# go_install NAME PACKAGE VERSION: build PACKAGE@VERSION into $BIN/NAME unless already there
go_install() {
  local name=$1 package=$2 version=$3 stamp="$BIN/.$1.version" tmp
  if [ -x "$BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$package@$version" ]; then
    return 0
  fi
  log "building $package@$version (Go module proxy) into $BIN/$name ..."
  tmp=$(mktemp -d "$BIN/.build.XXXXXX")
  GOBIN=$tmp nice go install "$package@$version" || { rm -rf "$tmp"; die "go install $package@$version failed"; }
  mv -f "$tmp"/* "$BIN/$name" # one binary (kustomize/v5 builds "kustomize")
  rm -rf "$tmp"
  echo "$package@$version" >"$stamp"
}

go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
go_install kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"

source_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

hash=$(source_hash "$COMPOSE_CHECK_SRC"/go.mod "$COMPOSE_CHECK_SRC"/go.sum "$COMPOSE_CHECK_SRC"/*.go)
if ! [ -x "$BIN/compose-check" ] || [ "$(cat "$BIN/.compose-check.version" 2>/dev/null)" != "$hash" ]; then
  log "building deploy/tools/compose-check (compose-go from the Go module proxy) ..."
  (cd "$COMPOSE_CHECK_SRC" && nice go build -trimpath -o "$BIN/compose-check.partial" .) \
    || die "building compose-check failed"
  mv -f "$BIN/compose-check.partial" "$BIN/compose-check"
  echo "$hash" >"$BIN/.compose-check.version"
fi

# ---- schemas -----------------------------------------------------------------------------

# module_dir MODULE VERSION: download the module (cached by Go) and print its directory
module_dir() {
  local json
  json=$(go mod download -json "$1@$2") || die "go mod download $1@$2 failed: $json"
  "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])' <<<"$json"
}

hash=$(source_hash "$HERE/tools/k8s_schemas.py")
if [ "$(cat "$SCHEMAS/.complete" 2>/dev/null)" != "$hash" ]; then
  [ -x "$PYTHON" ] || die "$PYTHON not found (run make install first, or set PYTHON)"
  log "converting Kubernetes $KUBERNETES_VERSION and KEDA $KEDA_VERSION schemas into $SCHEMAS ..."
  kubernetes=$(module_dir k8s.io/kubernetes "$KUBERNETES_VERSION")
  keda=$(module_dir github.com/kedacore/keda/v2 "$KEDA_VERSION")
  rm -rf "$SCHEMAS.partial"
  "$PYTHON" "$HERE/tools/k8s_schemas.py" "$SCHEMAS.partial" \
    "$kubernetes/api/openapi-spec/swagger.json" "$keda"/config/crd/bases/keda.sh_*.yaml >&2
  echo "$hash" >"$SCHEMAS.partial/.complete"
  rm -rf "$SCHEMAS"
  mv "$SCHEMAS.partial" "$SCHEMAS"
fi

# ---- what the tests read -----------------------------------------------------------------

cat >"$LOCAL/deps.env.partial" <<EOF
# written by deploy/deps.sh (make deps); read by tests/deploy
KUBECONFORM=$BIN/kubeconform
KUBECONFORM_VERSION=$KUBECONFORM_VERSION
KUSTOMIZE=$BIN/kustomize
KUSTOMIZE_VERSION=$KUSTOMIZE_VERSION
COMPOSE_CHECK=$BIN/compose-check
K8S_SCHEMAS=$SCHEMAS
KUBERNETES_VERSION=$KUBERNETES_VERSION
KEDA_VERSION=$KEDA_VERSION
PROMTOOL=$(command -v promtool)
PROMETHEUS=$(command -v prometheus)
EOF
mv -f "$LOCAL/deps.env.partial" "$LOCAL/deps.env"
log "ready: prometheus, kubeconform $KUBECONFORM_VERSION, kustomize $KUSTOMIZE_VERSION, compose-check, schemas (Kubernetes $KUBERNETES_VERSION, KEDA $KEDA_VERSION)"
