#!/bin/bash
# kafka-server-start.sh server.properties: the broker, with Kafka's default
# 1 GB heap unless KAFKA_HEAP_OPTS says otherwise, logging to stdout.
set -euo pipefail
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
export KAFKA_LOG4J_OPTS="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties}"
exec "$(dirname "$0")/kafka-run-class.sh" kafka.Kafka "$@"
