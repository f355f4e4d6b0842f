# shellcheck shell=bash
# shellcheck disable=SC2154 # work, engine_user: set by the sourcing script
# The Docker engine for the checks that need one (scripts/compose-check,
# scripts/k8s-check), sourced, not run. A check that finds no engine starts
# dockerd and, when it stops it, puts back the iptables rules and sysctls
# dockerd changed, so that the host is left as it was found.
#
# The sourcing script provides `die MESSAGE`, a private directory in `$work`,
# and its own name in `$engine_user` (for messages).

# One check with an engine at a time: each changes the host's iptables and
# puts them back when it ends, which would undo another's rules mid-run.
hold_engine_lock() {
  exec 9>/run/lock/txledger-engine-checks.lock
  flock -w 3600 9 || die "another check held the engine lock for an hour"
}

# Room for the images' build: the workspace's release build inside Docker
# and the image layers take about 6 GiB (measured with `docker system df`).
# A full disk shows up as the linker dying with SIGBUS mid-build, which says
# nothing about space, so the check names it first.
readonly ENGINE_MIN_FREE_GIB=10
readonly ENGINE_BUILD_CACHE_KEEP_GIB=4
require_disk_space() {
  local dir=/var/lib/docker free_kib
  [[ -d "$dir" ]] || dir=/var/lib
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  echo "disk: $((free_kib / 1024 / 1024)) GiB free for $dir"
  ((free_kib >= ENGINE_MIN_FREE_GIB * 1024 * 1024)) \
    || die "only $((free_kib / 1024 / 1024)) GiB free for $dir; building the images needs $ENGINE_MIN_FREE_GIB GiB (\`docker builder prune\` drops old build layers)"
}

started_dockerd=""
saved_sysctls=()
# Every sysctl dockerd may change, with its value before.
save_host_state() {
  local key value
  iptables-save >"$work/iptables.before"
  for key in net.ipv4.ip_forward net.ipv6.conf.all.forwarding \
    net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables; do
    if value=$(sysctl -n "$key" 2>/dev/null); then
      saved_sysctls+=("$key=$value")
    fi
  done
  ip link show docker0 >/dev/null 2>&1 && touch "$work/docker0.existed"
  return 0
}

# Undoes what dockerd did, and only that: the machine may be shared (a
# Kubernetes node, another engine), and rules or settings another program
# made during the run must stay.
# Chains and rules of an iptables-save, without packet counters.
rule_lines() {
  grep -E '^[:-]' | sed -E 's/ \[[0-9]+:[0-9]+\]$//'
}

restore_host_state() {
  local table line chain policy rule entry key
  for table in filter nat; do
    # dockerd's rules jump to its chains or name its bridges (no quoting in
    # them, so a line splits into words as iptables reads it).
    while read -r line; do
      grep -qxF -- "$line" "$work/iptables.before" && continue
      read -ra rule <<<"${line#-A }"
      iptables -t "$table" -D "${rule[@]}" 2>/dev/null || true
    done < <(iptables-save -t "$table" | grep '^-A ' | grep -E 'DOCKER|docker0|br-[0-9a-f]{12}' || true)
    for chain in DOCKER DOCKER-USER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2; do
      grep -q "^:$chain " "$work/iptables.before" && continue
      if iptables -t "$table" -F "$chain" 2>/dev/null; then
        iptables -t "$table" -X "$chain" 2>/dev/null || true
      fi
    done
  done
  # dockerd sets FORWARD's policy to DROP.
  policy=$(awk '/^:FORWARD / { print $2; exit }' "$work/iptables.before")
  iptables -P FORWARD "${policy:-ACCEPT}"
  for entry in "${saved_sysctls[@]}"; do
    key=${entry%%=*}
    [[ "$(sysctl -n "$key")" != "${entry#*=}" ]] || continue
    # Forwarding stays on while another program forwards packets through
    # rules of its own.
    # grep -c reads to the end: grep -q would leave early, and with pipefail
    # the writer's SIGPIPE would read as "no such rules".
    if [[ "$key" == net.ipv4.ip_forward ]] && iptables-save -t filter | grep -c '^-A FORWARD ' >/dev/null; then
      echo "$engine_user: leaving $key on: other FORWARD rules use it" >&2
      continue
    fi
    sysctl -q -w "$entry"
  done
  [[ -e "$work/docker0.existed" ]] || ip link delete docker0 2>/dev/null || true
  # Rules a dockerd of before the run left are not this run's to remove.
  local left
  left=$(comm -13 <(rule_lines <"$work/iptables.before" | sort) <(iptables-save | rule_lines | sort) \
    | grep -E 'DOCKER|docker0|br-[0-9a-f]{12}' || true)
  if [[ -n "$left" ]]; then
    echo "$engine_user: WARNING: rules of dockerd are left in iptables:" >&2
    printf '%s\n' "$left" >&2
  fi
}

start_engine() {
  if docker info >/dev/null 2>&1; then
    echo "a Docker engine answers: $(docker version -f '{{.Server.Version}}')"
    require_disk_space
    return 0
  fi
  ((EUID == 0)) || die "no Docker engine answers, and only root can start one"
  require_disk_space
  save_host_state
  # overlay2: the default driver probe can settle on vfs here, which copies
  # every layer. dockerd manages iptables itself, so that containers and
  # builds reach the network through NAT; the rules go when it stops.
  dockerd --storage-driver=overlay2 --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    kill -0 "$started_dockerd" 2>/dev/null || { tail -n 30 "$work/dockerd.log"; die "dockerd exited"; }
    ((SECONDS < deadline)) || { tail -n 30 "$work/dockerd.log"; die "dockerd did not answer within 60s"; }
    sleep 1
  done
  echo "started dockerd $(docker version -f '{{.Server.Version}}') (pid $started_dockerd)"
}

stop_engine() {
  [[ -n "$started_dockerd" ]] || return 0
  # Every build of changed sources leaves a superseded image and a few GiB
  # of build layers; on an engine the check started (a CI machine's), they
  # are trimmed so that repeated runs do not fill the disk. A running
  # engine's owner keeps theirs.
  docker image prune --force >/dev/null 2>&1 || true
  docker builder prune --force --keep-storage "${ENGINE_BUILD_CACHE_KEEP_GIB}GB" >/dev/null 2>&1 || true
  kill -TERM "$started_dockerd" 2>/dev/null || true
  local deadline=$((SECONDS + 90))
  while kill -0 "$started_dockerd" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "$engine_user: dockerd did not stop within 90s: killing it" >&2
      kill -KILL "$started_dockerd" 2>/dev/null || true
      break
    fi
    sleep 1
  done
  wait "$started_dockerd" 2>/dev/null || true
  restore_host_state
  echo "stopped dockerd; iptables and sysctls restored"
}

# The Compose release built when the docker client has no v2 plugin.
readonly COMPOSE_MODULE=github.com/docker/compose/v2
readonly COMPOSE_VERSION=v2.40.3

compose_major() {
  local version
  version=$(docker compose version --short 2>/dev/null) || return 1
  version=${version#v}
  printf '%s\n' "${version%%.*}"
}

# `go install` refuses this module (its go.mod has exclude directives), so the
# module is downloaded and its command built in place.
ensure_compose() {
  local major dir plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  if major=$(compose_major) && ((major >= 2)); then
    echo "docker compose $(docker compose version --short)"
    return 0
  fi
  command -v go >/dev/null || die "no Compose v2 plugin and no Go to build one"
  echo "building Compose $COMPOSE_VERSION from the Go module proxy"
  dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" \
    | sed -nE 's/^\t"Dir": "(.*)",$/\1/p')
  [[ -d "$dir" ]] || die "go mod download $COMPOSE_MODULE@$COMPOSE_VERSION failed"
  mkdir -p "$plugins"
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 go build -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
    -o "$plugins/docker-compose" ./cmd)
  echo "docker compose $(docker compose version --short)"
}
