#!/usr/bin/env bash
# The invariant suite: the smoke profile over several seeds on both embedded
# ledgers. Any violation exits non-zero and prints the command that reproduces it.
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
trap 'rm -rf "$out"' EXIT
for ledger in memory "sqlite://$out/suite.db"; do
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
echo "invariant suite: all runs passed"
