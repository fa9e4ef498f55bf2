#!/usr/bin/env bash
# Install what `make images`, `make compose-up` and `make test-containers` need on Debian:
# podman (with runc, netavark/aardvark-dns for compose DNS, iptables for published ports),
# debootstrap for the base image, maven for the Kafka jars, curl. As root through apt; as
# another user, it names what is missing and exits 1. Nothing happens when all are there.
set -euo pipefail

packages=()
command -v podman >/dev/null 2>&1 || packages+=(podman)
command -v runc >/dev/null 2>&1 || packages+=(runc)
[ -x /usr/lib/podman/netavark ] || packages+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || packages+=(aardvark-dns)
command -v iptables >/dev/null 2>&1 || packages+=(iptables)
command -v debootstrap >/dev/null 2>&1 || packages+=(debootstrap)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
command -v curl >/dev/null 2>&1 || packages+=(curl)
[ ${#packages[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "containers: missing ${packages[*]}; as root: apt-get install -y ${packages[*]}" >&2
  exit 1
fi
echo "containers: apt-get install ${packages[*]}" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >/dev/null
