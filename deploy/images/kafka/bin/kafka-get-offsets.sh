#!/bin/sh
# as upstream bin/kafka-get-offsets.sh
exec /opt/kafka/bin/kafka-run-class.sh org.apache.kafka.tools.GetOffsetShell "$@"
