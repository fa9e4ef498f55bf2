#!/bin/sh
# as upstream bin/kafka-configs.sh
exec /opt/kafka/bin/kafka-run-class.sh kafka.admin.ConfigCommand "$@"
