#!/bin/bash
# kafka-run-class.sh CLASS [ARGS...]: one JVM with every jar of the image on
# the class path. Takes the same variables as Kafka's own script, with its
# defaults: KAFKA_HEAP_OPTS (256 MB for tools; kafka-server-start.sh sets
# the broker's), KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_OPTS, KAFKA_LOG4J_OPTS.
set -euo pipefail
base=/opt/kafka
# Word splitting is wanted: each variable holds several JVM options.
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xmx256M} \
  ${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true} \
  ${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base/config/tools-log4j2.properties} \
  ${KAFKA_OPTS:-} \
  -cp "$base/libs/*" "$@"
