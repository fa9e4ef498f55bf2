#!/bin/sh
# as upstream bin/kafka-metadata-quorum.sh
exec /opt/kafka/bin/kafka-run-class.sh org.apache.kafka.tools.MetadataQuorumCommand "$@"
