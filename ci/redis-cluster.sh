# Sourced by .ci/run: `source ci/redis-cluster.sh; start_redis_cluster`.
# Starts a local three-node Redis Cluster (three masters, no replicas) on loopback
# ports 7001-7003 for the KV conformance suite, and exports its URL as
# REDRAIN_REDIS_CLUSTER_URL. Idempotent: a cluster that is up and ok is left alone;
# nodes that are down are started again; a cluster that does not come back to ok is
# wiped (its own directory only; nothing is persisted) and created afresh.
# Safe under `set -euo pipefail`.

REDRAIN_CLUSTER_PORTS="${REDRAIN_CLUSTER_PORTS:-7001 7002 7003}"
REDRAIN_CLUSTER_DIR="${REDRAIN_CLUSTER_DIR:-/tmp/redrain-redis-cluster}"
# How long to wait for the cluster to agree (cluster_state:ok), in seconds.
REDRAIN_CLUSTER_WAIT_S="${REDRAIN_CLUSTER_WAIT_S:-30}"

redis_cluster_url() {
  local port seeds=""
  for port in $REDRAIN_CLUSTER_PORTS; do
    seeds="${seeds:+$seeds,}127.0.0.1:$port"
  done
  echo "redis+cluster://$seeds"
}

export REDRAIN_REDIS_CLUSTER_URL="${REDRAIN_REDIS_CLUSTER_URL:-$(redis_cluster_url)}"

redis_cluster_node_up() {
  redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1
}

# Every node answers and says cluster_state:ok.
redis_cluster_ok() {
  local port
  for port in $REDRAIN_CLUSTER_PORTS; do
    redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

# The nodes know each other already (a cluster was created before).
redis_cluster_formed() {
  local first
  first="${REDRAIN_CLUSTER_PORTS%% *}"
  redis-cli -h 127.0.0.1 -p "$first" cluster info 2>/dev/null | grep -q '^cluster_slots_assigned:16384'
}

redis_cluster_start_node() {
  local port="$1" dir="$REDRAIN_CLUSTER_DIR/$1"
  mkdir -p "$dir"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
    --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 5000 \
    --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
}

redis_cluster_wait() {
  local tries
  for tries in $(seq 1 "$REDRAIN_CLUSTER_WAIT_S"); do
    redis_cluster_ok && return 0
    sleep 1
  done
  return 1
}

# Stops our own nodes (by their ports) and removes their directory.
redis_cluster_wipe() {
  local port
  for port in $REDRAIN_CLUSTER_PORTS; do
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  sleep 1
  rm -rf "$REDRAIN_CLUSTER_DIR"
}

redis_cluster_create() {
  local port nodes=()
  for port in $REDRAIN_CLUSTER_PORTS; do
    nodes+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
}

redis_cluster_bring_up() {
  local port tries
  for port in $REDRAIN_CLUSTER_PORTS; do
    redis_cluster_node_up "$port" || redis_cluster_start_node "$port" || return 1
  done
  for port in $REDRAIN_CLUSTER_PORTS; do
    for tries in $(seq 1 20); do
      redis_cluster_node_up "$port" && break
      sleep 0.5
    done
    redis_cluster_node_up "$port" || return 1
  done
  if ! redis_cluster_formed; then
    redis_cluster_create || return 1
  fi
  redis_cluster_wait
}

start_redis_cluster() {
  if redis_cluster_ok; then
    echo "ci: redis cluster is up ($REDRAIN_REDIS_CLUSTER_URL)"
    return 0
  fi
  echo "ci: starting redis cluster on ports $REDRAIN_CLUSTER_PORTS"
  if ! redis_cluster_bring_up; then
    echo "ci: redis cluster did not come up; wiping $REDRAIN_CLUSTER_DIR and creating it afresh"
    redis_cluster_wipe
    if ! redis_cluster_bring_up; then
      echo "ci: redis cluster is still down (tests that need it will say so)"
      return 1
    fi
  fi
  echo "ci: redis cluster is up ($REDRAIN_REDIS_CLUSTER_URL)"
}
