#!/usr/bin/env bash
# A live load of every profile at a scaled rate: for each, a fresh
# `redrain serve` (memory stores) with the same --rate-scale, then
# `redrain load` against it, which drains the server, reads its audit export
# and checks I1-I8. Records and reports go to target/live/<profile>.json.
# Long (minutes); not part of .ci/run. Usage:
#   ci/live-profiles.sh [path/to/redrain]   (default: target/release/redrain)
set -euo pipefail
cd "$(dirname "$0")/.."
redrain="${1:-target/release/redrain}"
export REDRAIN_ADMIN_TOKEN="${REDRAIN_ADMIN_TOKEN:-live-profiles-admin-token}"
mkdir -p target/live
status=0
# profile, rate scale, seconds of trace at most
runs=("red-packet-rain 0.002 150" "fireworks 0.01 60" "card-collection 0.005 120" "spring-festival-eve 0.002 120")
if [ -n "${ONLY:-}" ]; then
  runs=($(printf '%s\n' "${runs[@]}" | grep -E "^($ONLY) " | tr '\n' '|' | sed 's/ /_/g; s/|/ /g'))
  runs=("${runs[@]//_/ }")
fi
for run in "${runs[@]}"; do
  set -- $run
  profile=$1 scale=$2 seconds=$3
  port=$((18200 + RANDOM % 500))
  "$redrain" serve "scenarios/$profile.toml" --listen "127.0.0.1:$port" --rate-scale "$scale" \
    > "target/live/$profile-serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 50); do
    curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "== $profile at rate scale $scale for at most $seconds s"
  "$redrain" load "scenarios/$profile.toml" --target "http://127.0.0.1:$port" \
    --rate-scale "$scale" --duration-s-max "$seconds" --json "target/live/$profile.json" || status=1
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
done
exit $status
