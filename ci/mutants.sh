#!/usr/bin/env bash
# Mutation score of the checking power: cargo-mutants mutates the reference
# wallet's business modules (wallet, token, worker, pipeline, counter, stability,
# config) and runs, for each mutant, the test a wallet team's CI would run —
# `simulator/tests/mutation_gate.rs`: conform against the reference server (fault
# cases included) plus the quick invariant suite. A mutant that keeps both green
# is "missed". Not part of .ci/run: ~910 mutants at 1.5-3 min each on 2 cores is
# a day; shard it across machines or sessions.
#
#   ci/mutants.sh                       # every mutant (long)
#   ci/mutants.sh --shard 3/40          # one shard of forty (same n everywhere)
#   ci/mutants.sh --file reference/src/stability.rs --budget-min 30
#   ci/mutants.sh --list                # count the mutants, build nothing
#
# The score printed is caught / (caught + missed + timeout); unviable mutants (do
# not compile) are left out, and the mutants listed in ci/mutants-equivalent.txt
# (with the reason each changes no behaviour) are excluded by name.
set -euo pipefail
cd "$(dirname "$0")/.."

shard=""
budget_min=""
files=()
list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --shard) shard="$2"; shift 2 ;;
    --budget-min) budget_min="$2"; shift 2 ;;
    --file) files+=("$2"); shift 2 ;;
    --list) list=1; shift ;;
    *) echo "ci/mutants.sh: unknown argument \`$1\` (see the header of this file)" >&2; exit 2 ;;
  esac
done
if [ ${#files[@]} -eq 0 ]; then
  files=(
    'reference/src/wallet/**/*.rs' 'reference/src/token/**/*.rs'
    'reference/src/worker/**/*.rs' 'reference/src/pipeline/**/*.rs'
    reference/src/counter.rs reference/src/stability.rs reference/src/config.rs
  )
fi

# cargo-mutants from crates.io, in a root of its own.
bin_root="${REDRAIN_MUTANTS_ROOT:-target/mutants-bin}"
if ! command -v cargo-mutants >/dev/null; then
  if [ ! -x "$bin_root/bin/cargo-mutants" ]; then
    cargo install --locked cargo-mutants --root "$bin_root"
  fi
  case "$bin_root" in /*) ;; *) bin_root="$PWD/$bin_root" ;; esac
  export PATH="$bin_root/bin:$PATH"
fi

# The gate is a simulator test; each mutant builds only that test binary (the
# --cargo-arg reaches the build phase too). cargo-mutants 27 runs its own
# baseline over the mutated package's tests whatever --test-package says, so its
# baseline is skipped and the unmutated gate is run first below instead.
args=(--test-package simulator --cargo-arg=--test=mutation_gate --baseline=skip
      --exclude '**/tests.rs')
for f in "${files[@]}"; do args+=(--file "$f"); done
# Mutants proven equivalent: one per line, `FILE: DESCRIPTION` as --list prints
# it (a line:col after FILE is ignored, so entries survive code moving), then
# `  # why`; blank and comment lines skipped.
if [ -f ci/mutants-equivalent.txt ]; then
  while IFS= read -r line; do
    name="${line%%  #*}"
    [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
    file="${name%%:*}"
    what="${name#*: }"
    esc() { printf '%s' "$1" | sed 's/[][\.*^$(){}+?|/]/\\&/g'; }
    args+=(--exclude-re "^$(esc "$file"):[0-9]+:[0-9]+: $(esc "$what")\$")
  done < ci/mutants-equivalent.txt
fi

if [ "$list" = 1 ]; then
  cargo mutants "${args[@]}" --list | tee /dev/stderr | wc -l | sed 's/^/mutants: /'
  exit 0
fi

[ -n "$shard" ] && args+=(--shard "$shard")
# Extra cargo-mutants arguments, e.g. REDRAIN_MUTANTS_ARGS="--in-place" in a
# disposable clone whose target/ is already built.
read -r -a extra <<< "${REDRAIN_MUTANTS_ARGS:-}"
args+=("${extra[@]}")
out="target/mutants/${shard:+shard-${shard//\//-of-}}"
[ -n "$shard" ] || out="target/mutants/all"
mkdir -p "$out"
run=(cargo mutants "${args[@]}" --output "$out" --timeout 600 --build-timeout 900
     --test-tool cargo)
# The baseline: the gate must pass on the unmutated reference.
if ! cargo test -q -p simulator --test mutation_gate >"$out/baseline.log" 2>&1; then
  cat "$out/baseline.log" >&2
  echo "ci/mutants.sh: the gate fails on the unmutated code; nothing to measure" >&2
  exit 2
fi
status=0
if [ -n "$budget_min" ]; then
  # cargo-mutants writes outcomes as it goes; stopping it at the budget keeps
  # what was tested so far.
  timeout --signal=INT "$((budget_min * 60))" "${run[@]}" || status=$?
else
  "${run[@]}" || status=$?
fi

outcomes="$out/mutants.out/outcomes.json"
if [ ! -f "$outcomes" ]; then
  echo "ci/mutants.sh: no outcomes in $out (cargo-mutants exited $status)" >&2
  exit 2
fi
python3 - "$outcomes" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
counts = {}
missed = []
for o in data.get("outcomes", []):
    scenario = o.get("scenario")
    if not isinstance(scenario, dict):
        continue  # the baseline
    summary = o.get("summary", "")
    counts[summary] = counts.get(summary, 0) + 1
    if summary in ("MissedMutant", "Timeout"):
        m = scenario.get("Mutant", {})
        missed.append(f"{m.get('file', '?')}:{m.get('span', {}).get('start', {}).get('line', '?')}: {m.get('name', m)}")
caught = counts.get("CaughtMutant", 0)
lost = counts.get("MissedMutant", 0) + counts.get("Timeout", 0)
print("mutants:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
if caught + lost:
    print(f"mutation score: {caught}/{caught + lost} = {100.0 * caught / (caught + lost):.1f}% caught (missed and timeouts count as missed; unviable left out)")
for line in missed:
    print("  missed:", line)
PY
exit 0
