#!/usr/bin/env bash
# Every profile's RunRecord, captured with one redrain binary, and two captures
# compared byte for byte apart from the wall-clock fields (`wall`: elapsed time,
# requests per wall second, where the time went). For changes that must not move
# behaviour (a refactor, a dependency bump): capture before, capture after, diff.
#
#   ci/records.sh capture DIR [REDRAIN_BIN]   # default bin: target/debug/redrain
#   ci/records.sh diff DIR_A DIR_B            # exit 0 when every record is identical
#
# The runs use the quick suite's samples (seconds each in a debug build), plus a
# sharded run, a mid-run-checked run and a replayed trace, so those paths count too.
set -euo pipefail
cd "$(dirname "$0")/.."

# name | arguments after `redrain`
RUNS=(
  "smoke|run scenarios/smoke.toml"
  "smoke-midway|run scenarios/smoke.toml --check-every-s 10 --seed 1"
  "red-packet-rain|run scenarios/red-packet-rain.toml --sample 0.0002"
  "red-packet-rain-shard|run scenarios/red-packet-rain.toml --sample 0.0002 --shard 1/3"
  "card-collection|run scenarios/card-collection.toml --sample 0.0002"
  "fireworks|run scenarios/fireworks.toml --sample 0.0005"
  "spring-festival-eve|run scenarios/spring-festival-eve.toml --sample 0.0001"
  "conform|run scenarios/conform/conform.toml"
)

capture() {
  local dir=$1 bin=${2:-target/debug/redrain}
  mkdir -p "$dir"
  for entry in "${RUNS[@]}"; do
    local name=${entry%%|*} args=${entry#*|}
    # Exit 1 (an invariant violated) is a record too; only 2 (an error) stops.
    # shellcheck disable=SC2086
    CI=true "$bin" $args --json "$dir/$name.json" --no-report >"$dir/$name.txt" || [ $? -eq 1 ]
    echo "captured $name: history $(jq -r .history_hash "$dir/$name.json")"
  done
  # A trace exported and replayed, from one path whatever DIR is (the record
  # names the trace it replayed).
  local trace=target/redrain-records/smoke.trace.jsonl
  mkdir -p "$(dirname "$trace")"
  CI=true "$bin" trace export scenarios/smoke.toml --requests 5000 --out "$trace" >/dev/null
  CI=true "$bin" trace replay scenarios/smoke.toml "$trace" \
    --json "$dir/smoke-replay.json" --no-report >"$dir/smoke-replay.txt" || [ $? -eq 1 ]
  echo "captured smoke-replay: history $(jq -r .history_hash "$dir/smoke-replay.json")"
}

compare() {
  local a=$1 b=$2 differ=0 count=0
  for record in "$a"/*.json; do
    local name
    name=$(basename "$record")
    count=$((count + 1))
    if [ ! -f "$b/$name" ]; then
      echo "MISSING  $name (not in $b)"
      differ=1
      continue
    fi
    if diff <(jq -S 'del(.wall)' "$record") <(jq -S 'del(.wall)' "$b/$name") >"$b/$name.diff"; then
      echo "same     $name  history $(jq -r .history_hash "$record")  ($(jq -S 'del(.wall)' "$record" | wc -c) bytes compared)"
      rm -f "$b/$name.diff"
    else
      echo "DIFFERS  $name (see $b/$name.diff)"
      head -20 "$b/$name.diff"
      differ=1
    fi
  done
  echo "$count records compared: $([ $differ -eq 0 ] && echo 'all byte-identical apart from wall' || echo 'some differ')"
  return $differ
}

case "${1:-}" in
  capture) capture "${2:?usage: ci/records.sh capture DIR [REDRAIN_BIN]}" "${3:-}" ;;
  diff) compare "${2:?usage: ci/records.sh diff DIR_A DIR_B}" "${3:?usage: ci/records.sh diff DIR_A DIR_B}" ;;
  *) echo "usage: ci/records.sh capture DIR [REDRAIN_BIN] | diff DIR_A DIR_B" >&2; exit 2 ;;
esac
