#!/usr/bin/env bash
# The invariant suite on the stores beyond memory: the smoke profile over several
# seeds on the embedded SQLite ledger, then the real servers. (Memory runs of
# every profile are in ci/quick.toml.) Any violation exits non-zero and prints
# the command that reproduces it.
# Seeds and sizes are kept small so the whole suite takes seconds; the long runs
# are behind REDRAIN_LONG=1.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=(20270209 1 2 3)
requests=20000
if [[ "${REDRAIN_LONG:-0}" == "1" ]]; then
  seeds+=(4 5 6 7 8 9 10 11)
  requests=200000
fi

out="$(mktemp -d)"
suite_db="redrain_suite_$$"
cleanup() {
  rm -rf "$out"
  # Best effort: the suite's own databases, also after a failed run.
  mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS $suite_db; DROP DATABASE IF EXISTS ${suite_db}_shadow; DROP DATABASE IF EXISTS ${suite_db}_conform" >/dev/null 2>&1 || true
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE IF EXISTS $suite_db" >/dev/null 2>&1 || true
}
trap cleanup EXIT
for ledger in "sqlite://$out/suite.db"; do
  for seed in "${seeds[@]}"; do
    rm -f "$out"/suite.db*
    echo "== smoke seed $seed ledger ${ledger%%/*}"
    if ! cargo run -q -p simulator -- run scenarios/smoke.toml --seed "$seed" --requests "$requests" \
        --ledger "$ledger" --json "$out/run.json" >"$out/summary.txt" 2>&1; then
      cat "$out/summary.txt"
      echo "invariant suite: FAILED (seed $seed, ledger $ledger)"
      exit 1
    fi
    grep -E "^  I[0-9]" "$out/summary.txt" | tr -s ' ' | paste -sd ';' -
  done
done

# The real backends, when .ci/run has set their URLs: one seed on MariaDB + Redis
# and one on PostgreSQL + Redis Cluster, each in a database of its own, plus a
# shadow run (I6 then also checks that the real tables and keys stay empty).
run_on() {
  local name="$1" ledger="$2" kv="$3" scenario="$4"
  echo "== $(basename "$scenario" .toml) seed 20270209 on $name"
  if ! cargo run -q -p simulator -- run "$scenario" --requests "$requests" \
      --ledger "$ledger" --kv "$kv" >"$out/summary.txt" 2>&1; then
    cat "$out/summary.txt"
    echo "invariant suite: FAILED ($name)"
    exit 1
  fi
  grep -E "^  I[0-9]" "$out/summary.txt" | tr -s ' ' | paste -sd ';' -
}
shadow="$out/smoke-shadow.toml"
sed 's/^users = 2000$/users = 2000\nshadow = true/' scenarios/smoke.toml >"$shadow"
cp -r scenarios/activities "$out/"
if [[ -n "${REDRAIN_MYSQL_URL:-}" && -n "${REDRAIN_REDIS_URL:-}" ]]; then
  # A run needs empty tables (a shadow run checks the real ones stay empty), so
  # each run gets a database of its own.
  db="$suite_db"
  mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db; DROP DATABASE IF EXISTS ${db}_shadow; CREATE DATABASE ${db}_shadow"
  run_on "mariadb + redis" "mysql://root@127.0.0.1:3306/$db" "$REDRAIN_REDIS_URL" scenarios/smoke.toml
  run_on "mariadb + redis, shadow" "mysql://root@127.0.0.1:3306/${db}_shadow" "$REDRAIN_REDIS_URL" "$shadow"
  mariadb -h 127.0.0.1 -u root -e "DROP DATABASE $db; DROP DATABASE ${db}_shadow"
fi
if [[ -n "${REDRAIN_POSTGRES_URL:-}" && -n "${REDRAIN_REDIS_CLUSTER_URL:-}" ]]; then
  db="$suite_db"
  psql -h 127.0.0.1 -U postgres -d test -qc "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  run_on "postgres + redis cluster" "postgres://postgres@127.0.0.1:5432/$db" "$REDRAIN_REDIS_CLUSTER_URL" scenarios/smoke.toml
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE $db"
fi
# Conformance over HTTP against the reference server on MariaDB + Redis: every
# case (the kill -9 of process_kill_restart included: conform starts the server),
# every invariant on its audit export, and the in-process reference compared.
if [[ -n "${REDRAIN_MYSQL_URL:-}" && -n "${REDRAIN_REDIS_URL:-}" ]]; then
  db="${suite_db}_conform"
  mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
  cargo build -q -p simulator --bin redrain
  export REDRAIN_ADMIN_TOKEN="ci-conform-admin-token-$$"
  port=$((19000 + $$ % 500))
  echo "== conform against redrain serve on mariadb + redis (started, and killed mid-case, by conform)"
  start="exec target/debug/redrain serve scenarios/conform/conform.toml --listen 127.0.0.1:$port \
    --ledger mysql://root@127.0.0.1:3306/$db --kv $REDRAIN_REDIS_URL --kv-prefix ci-conform-$$:"
  if ! target/debug/redrain conform --target "http://127.0.0.1:$port" --reference \
      --start-cmd "$start" --out target/redrain-conform/ci >"$out/conform.txt" 2>&1; then
    cat "$out/conform.txt" target/redrain-conform/ci/target.log
    echo "invariant suite: FAILED (conform on mariadb + redis)"
    exit 1
  fi
  grep -E "^  [a-z_]+ +(pass|FAIL|SKIP)" "$out/conform.txt" | tr -s ' ' | paste -sd ';' -
  if grep -q " SKIP " "$out/conform.txt"; then
    echo "invariant suite: FAILED (a conform case was skipped against the reference)"
    exit 1
  fi
  mariadb -h 127.0.0.1 -u root -e "DROP DATABASE $db"
fi
echo "invariant suite: all runs passed"
