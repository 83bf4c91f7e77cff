#!/usr/bin/env bash
# Regenerates reports/examples/: one rendered report per profile (the HTML file,
# charts inline) and a screenshot of its top in headless Chromium, so people can
# see what a run gives without running anything. Not part of .ci/run (it needs a
# release build and takes a few minutes); run it after a change to the reports.
#   ci/examples.sh            # all profiles
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/services.sh
ensure_chromium
cargo build -q --release -p simulator
out=reports/examples
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# profile:sample — small samples keep each file a few hundred KB.
for spec in smoke:1 red-packet-rain:0.001 card-collection:0.001 fireworks:0.001 spring-festival-eve:0.0005; do
  name=${spec%%:*}
  sample=${spec##*:}
  CI=true target/release/redrain run "scenarios/$name.toml" --sample "$sample" \
    --json "$work/$name.json" > "$work/$name.txt"
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$work/chromium" --window-size=1100,2600 \
    --screenshot="$work/$name.png" "file://$work/$name.html" 2>/dev/null || true
  [ -s "$work/$name.png" ] || { echo "no screenshot of $name" >&2; exit 1; }
  cp "$work/$name.html" "$out/$name.html"
  cp "$work/$name.png" "$out/$name.png"
  echo "$out/$name.html ($(du -k "$out/$name.html" | cut -f1) KB) · $out/$name.png"
done
