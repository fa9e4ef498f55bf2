# shellcheck shell=bash
# Sourced by kafka-local.sh and apicurio-local.sh. Sets KAFKA_VERSION and APICURIO_VERSION from
# deploy/versions.env, the one file that names them; a value already in the environment wins
# (e.g. KAFKA_VERSION=4.2.0 make kafka-up). tests/support/local_brokers.py reads the same file.
VERSIONS_FILE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/versions.env

# versions_get NAME: the value of NAME=... in versions.env (quotes and spaces trimmed)
versions_get() {
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*[\"']\{0,1\}\([^\"'[:space:]#]*\).*/\1/p" \
    "$VERSIONS_FILE" | tail -n 1
}

KAFKA_VERSION=${KAFKA_VERSION:-$(versions_get KAFKA_VERSION)}
APICURIO_VERSION=${APICURIO_VERSION:-$(versions_get APICURIO_VERSION)}
if [ -z "$KAFKA_VERSION" ] || [ -z "$APICURIO_VERSION" ]; then
  echo "$VERSIONS_FILE must name KAFKA_VERSION and APICURIO_VERSION" >&2
  exit 1
fi
