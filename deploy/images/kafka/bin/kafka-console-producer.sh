#!/bin/sh
# as upstream bin/kafka-console-producer.sh
exec /opt/kafka/bin/kafka-run-class.sh org.apache.kafka.tools.ConsoleProducer "$@"
