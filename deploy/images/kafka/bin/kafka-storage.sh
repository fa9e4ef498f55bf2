#!/bin/sh
# as upstream bin/kafka-storage.sh
exec /opt/kafka/bin/kafka-run-class.sh kafka.tools.StorageTool "$@"
