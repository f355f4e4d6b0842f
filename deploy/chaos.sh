#!/usr/bin/env bash
# The chaos pod-deletion demo, on a cluster where `kubectl apply -f deploy/`
# has run (kind, minikube, or a real one):
#
#   1. waits until Kafka, the shards and the producer are ready;
#   2. for CHAOS_DURATION seconds, while the producer writes, every
#      KILL_INTERVAL seconds one disruption: mostly the deletion of a random
#      shard or the producer (sometimes with a 1-second grace period, which
#      lands mid-batch like a crash), and once each: a shard's volume lost
#      (its PersistentVolumeClaim deleted with it, from a quarter in), the
#      Kafka pod deleted (from half-way), the StatefulSet scaled out by one
#      (from half-way) and back in (from three quarters); after each it
#      prints the pods, the way `kubectl get pods -w` would, until all are
#      ready again;
#   3. stops the producer and waits until the shards are quiescent (their
#      offsets and sums stop moving, no batch in doubt);
#   4. runs the audit as a Job (deploy/jobs/audit-job.yaml), prints its
#      verdict and exits with its status: 0 only if the audit passed.
#
# Settings (environment): NAMESPACE (txledger), CHAOS_DURATION (300 s),
# KILL_INTERVAL (20 s), READY_TIMEOUT (600 s per recovery), SETTLE_TIMEOUT
# (600 s), AUDIT_TIMEOUT (1200 s), RESTORE_PRODUCER (1: scale the producer
# back up at the end).
set -euo pipefail

readonly NAMESPACE="${NAMESPACE:-txledger}"
readonly CHAOS_DURATION="${CHAOS_DURATION:-300}"
readonly KILL_INTERVAL="${KILL_INTERVAL:-20}"
readonly READY_TIMEOUT="${READY_TIMEOUT:-600}"
readonly SETTLE_TIMEOUT="${SETTLE_TIMEOUT:-600}"
readonly AUDIT_TIMEOUT="${AUDIT_TIMEOUT:-1200}"
readonly RESTORE_PRODUCER="${RESTORE_PRODUCER:-1}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly AUDIT_JOB_FILE="$SCRIPT_DIR/jobs/audit-job.yaml"
readonly AUDIT_JOB=ledger-audit
readonly SHARDS_STS=ledger-consumer
readonly PRODUCER_DEPLOY=ledger-producer
readonly KAFKA_POD=kafka-0
readonly PART_OF=app.kubernetes.io/part-of=txledger

k() { kubectl --namespace "$NAMESPACE" "$@"; }
log() { printf '\n[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() {
  printf 'chaos: %s\n' "$*" >&2
  exit 2
}

for setting in CHAOS_DURATION KILL_INTERVAL READY_TIMEOUT SETTLE_TIMEOUT AUDIT_TIMEOUT; do
  [[ "${!setting}" =~ ^[0-9]+$ ]] || die "$setting must be a whole number of seconds, not '${!setting}'"
done
((KILL_INTERVAL > 0)) || die "KILL_INTERVAL must be at least 1"
command -v kubectl >/dev/null || die "kubectl not found"
[[ -f "$AUDIT_JOB_FILE" ]] || die "missing $AUDIT_JOB_FILE"

# The shard count chaos starts from, and ends with.
shards=$(k get statefulset "$SHARDS_STS" -o jsonpath='{.spec.replicas}') \
  || die "no StatefulSet $SHARDS_STS in namespace $NAMESPACE: run 'kubectl apply -f deploy/' first"
readonly shards
# The shard count right now: scaling changes it.
replicas() { k get statefulset "$SHARDS_STS" -o jsonpath='{.spec.replicas}'; }

# One line per pod of the pipeline: name, phase, ready containers, restarts,
# and "terminating" while it is being deleted.
pod_table() {
  k get pods -l "$PART_OF" --sort-by=.metadata.name -o \
    jsonpath='{range .items[*]}{.metadata.name}{"\t"}{.status.phase}{"\tready="}{range .status.containerStatuses[*]}{.ready}{end}{"\trestarts="}{range .status.containerStatuses[*]}{.restartCount}{end}{"\t"}{.metadata.deletionTimestamp}{"\n"}{end}' \
    | awk -F'\t' '{ printf "  %-22s %-10s %-12s %-12s %s\n", $1, $2, $3, $4, ($5 == "" ? "" : "terminating") }'
}

# True when Kafka, every shard and (unless it is scaled to 0) the producer
# each have exactly one pod, ready and not being deleted.
all_ready() {
  local producers expected ready
  producers=$(k get deployment "$PRODUCER_DEPLOY" -o jsonpath='{.spec.replicas}')
  expected=$((1 + $(replicas) + producers))
  ready=$(k get pods -l "$PART_OF" -o \
    jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.deletionTimestamp}{" "}{range .status.conditions[?(@.type=="Ready")]}{.status}{end}{"\n"}{end}' \
    | awk '$NF == "True" && NF == 2 && $1 !~ /^ledger-audit-/' | wc -l)
  [[ "$ready" -eq "$expected" ]] && [[ "$(k get pods -l "$PART_OF" --no-headers | grep -vc '^ledger-audit-')" -eq "$expected" ]]
}

# Prints the pod table whenever it changes (like `kubectl get pods -w`) until
# everything is ready again.
wait_recovered() {
  local deadline=$((SECONDS + READY_TIMEOUT)) last="" table
  while true; do
    table=$(pod_table)
    if [[ "$table" != "$last" ]]; then
      printf '%s\n' "--- +$((SECONDS - started))s"
      printf '%s\n' "$table"
      last="$table"
    fi
    if all_ready; then
      log "all pods ready"
      return 0
    fi
    ((SECONDS < deadline)) || die "the pipeline did not recover within ${READY_TIMEOUT}s"
    sleep 2
  done
}

delete_pod() { # POD
  local pod="$1" grace
  # Half the deletions are abrupt: 1 s after SIGTERM comes SIGKILL, which
  # lands mid-batch (or mid-transaction) like a crash or an OOM kill.
  if ((RANDOM % 2)); then grace=1; else grace=30; fi
  log "deleting $pod (grace period ${grace}s)"
  k delete pod "$pod" --grace-period="$grace" --wait=false
}

random_victim() {
  local running choice
  running=$(replicas)
  choice=$((RANDOM % (running + 1)))
  if ((choice < running)); then
    printf '%s-%d\n' "$SHARDS_STS" "$choice"
  else
    k get pods -l app.kubernetes.io/name="$PRODUCER_DEPLOY" -o jsonpath='{.items[*].metadata.name}' \
      | awk '{ print $1 }'
  fi
}

# The shard's volume is lost: its claim is deleted, then the pod, so that the
# StatefulSet gives the new pod a new, empty volume; the shard rebuilds its
# partitions from the changelog.
lose_volume() {
  local ordinal=$((RANDOM % $(replicas)))
  local pod="$SHARDS_STS-$ordinal" claim="data-$SHARDS_STS-$ordinal"
  lost_pod=$pod
  log "deleting the volume claim $claim, then $pod: its successor starts on an empty volume"
  # Deleted once no pod uses it (Kubernetes keeps a claim in use).
  k delete pvc "$claim" --wait=false
  k delete pod "$pod" --grace-period=1 --wait=false
  k wait --for=delete "pvc/$claim" --timeout="${READY_TIMEOUT}s" >/dev/null \
    || die "the claim $claim was not deleted within ${READY_TIMEOUT}s"
}

scale_shards() { # REPLICAS
  log "scaling the shards from $(replicas) to $1 (the consumer group moves their partitions)"
  k scale statefulset "$SHARDS_STS" --replicas="$1"
}

# Stable when three readings 5 s apart are identical and no batch is in
# doubt: the producer is stopped, so moving offsets mean shards still catch up
# (or forward credits to each other).
wait_quiescent() {
  local deadline=$((SECONDS + SETTLE_TIMEOUT)) previous="" current same=0
  while ((same < 3)); do
    ((SECONDS < deadline)) || die "the shards did not settle within ${SETTLE_TIMEOUT}s"
    sleep 5
    if ! current=$(k exec "$SHARDS_STS-0" -c consumer -- ledger query stats --json 2>/dev/null); then
      same=0
      continue
    fi
    if [[ "$current" == "$previous" ]] && ! grep -q '"pending": *{' <<<"$current"; then
      same=$((same + 1))
    else
      same=0
    fi
    previous="$current"
  done
  log "shards quiescent:"
  k exec "$SHARDS_STS-0" -c consumer -- ledger query stats
}

run_audit() {
  k delete job "$AUDIT_JOB" --ignore-not-found --wait=true
  k apply -f "$AUDIT_JOB_FILE"
  local deadline=$((SECONDS + AUDIT_TIMEOUT)) succeeded failed
  while true; do
    succeeded=$(k get job "$AUDIT_JOB" -o jsonpath='{.status.succeeded}')
    failed=$(k get job "$AUDIT_JOB" -o jsonpath='{.status.conditions[?(@.type=="Failed")].status}')
    if [[ "$succeeded" == 1 || "$failed" == True ]]; then
      break
    fi
    ((SECONDS < deadline)) || die "the audit did not finish within ${AUDIT_TIMEOUT}s"
    sleep 5
  done
  log "audit output:"
  k logs "job/$AUDIT_JOB" --tail=-1 || true
  [[ "$succeeded" == 1 ]]
}

started=$SECONDS
log "waiting for the pipeline in namespace $NAMESPACE ($shards shards)"
wait_recovered

log "chaos for ${CHAOS_DURATION}s: a disruption every ${KILL_INTERVAL}s; once each a volume loss, Kafka, a scale-out and a scale-in"
chaos_start=$SECONDS
deletions=0
volumes_lost=0
kafka_deleted=0
scaled_out=0
scaled_in=0
# Each event once, when its time has come (or after the loop, if the run was
# too short for it); one disruption per round.
due() { # NUMERATOR DENOMINATOR: that fraction of the chaos time has passed
  ((SECONDS >= chaos_start + CHAOS_DURATION * $1 / $2))
}
next_event() { # ANYWAY (1: every event still pending is due); prints its name
  local anyway=$1
  if ((volumes_lost == 0)) && { ((anyway)) || due 1 4; }; then
    echo volume
  elif ((kafka_deleted == 0)) && { ((anyway)) || due 1 2; }; then
    echo kafka
  elif ((scaled_out == 0)) && { ((anyway)) || due 1 2; }; then
    echo scale-out
  elif ((scaled_in == 0)) && { ((anyway)) || due 3 4; }; then
    echo scale-in
  elif ((anyway == 0)); then
    echo pod
  fi
}
disrupt() { # EVENT
  local victim
  case "$1" in
    volume)
      lose_volume
      volumes_lost=1
      ;;
    kafka)
      delete_pod "$KAFKA_POD"
      kafka_deleted=1
      deletions=$((deletions + 1))
      ;;
    scale-out)
      scale_shards $((shards + 1))
      scaled_out=1
      ;;
    scale-in)
      scale_shards "$shards"
      scaled_in=1
      ;;
    pod)
      victim=$(random_victim)
      [[ -n "$victim" ]] || return 0
      delete_pod "$victim"
      deletions=$((deletions + 1))
      ;;
  esac
  wait_recovered
  if [[ "$1" == volume ]]; then
    # Proof that the volume really was new: the shard rebuilt its state.
    local logs
    logs=$(k logs "$lost_pod" -c consumer)
    grep -q 'Restored from the changelog' <<<"$logs" \
      || die "$lost_pod came back on its new volume without restoring from the changelog"
    log "$lost_pod restored its partitions from the changelog"
  fi
}
while ((SECONDS < chaos_start + CHAOS_DURATION)); do
  sleep "$KILL_INTERVAL"
  disrupt "$(next_event 0)"
done
event=$(next_event 1)
while [[ -n "$event" ]]; do
  disrupt "$event"
  event=$(next_event 1)
done
log "survived: $deletions pod deletions (Kafka $kafka_deleted), $volumes_lost volume lost, $scaled_out scale-out, $scaled_in scale-in; pod restarts so far:"
pod_table

log "stopping the producer, then waiting for the shards to catch up"
k scale deployment "$PRODUCER_DEPLOY" --replicas=0
# SIGTERM makes the producer commit or abort its open transaction and exit.
deadline=$((SECONDS + 120))
while [[ -n "$(k get pods -l app.kubernetes.io/name="$PRODUCER_DEPLOY" -o name)" ]]; do
  ((SECONDS < deadline)) || die "the producer did not stop within 120s"
  sleep 2
done
wait_quiescent

log "running the audit (job/$AUDIT_JOB)"
if run_audit; then
  verdict=0
  log "VERDICT: the audit PASSED after $deletions pod deletions, $volumes_lost volume lost, $scaled_out scale-out and $scaled_in scale-in"
else
  verdict=1
  log "VERDICT: the audit FAILED (see its output above)"
fi

if [[ "$RESTORE_PRODUCER" == 1 ]]; then
  k scale deployment "$PRODUCER_DEPLOY" --replicas=1
fi
exit "$verdict"
