#!/bin/bash
# The second preregistered confirmation (docs/where_pruning_helps.md, "Second confirmation"), run and finished
# with one command each, so a lost workspace costs one command to restart (it has been lost twice).
#
#   bash examples/confirm2.sh run      # (re)start or resume all four studies, in order, from a frozen checkout
#   bash examples/confirm2.sh finish   # when all have ended: reports into docs/figures/confirm2_*, verdicts
#
# `run` makes a frozen checkout of 585271d (the commit that added the four files) at $FROZEN if there is none,
# sets it up, and runs each file's own header command there (`gst --portable sweep ... --store STUDIES/store`,
# STUDIES = $STUDIES), in the order Figure 2, 6, 5, 3. The same command resumes: finished runs are kept, a run
# cut off resumes from its checkpoint. Run it in the background (it takes ~16 h of two cores), e.g.
#   nohup setsid bash examples/confirm2.sh run >> $STUDIES/confirm2.log 2>&1 &
# `finish` runs this checkout's `gst report` on each study, checks the counts and windows the files name,
# copies each report (figures, report.md, runs.csv, curvature.csv, SHA256SUMS) to docs/figures/confirm2_*,
# checks the copies against their SHA256SUMS, and prints the verdict table beside the first confirmation's.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
FROZEN=${FROZEN:-/work/frozen-confirm2}
STUDIES=${STUDIES:-/work/studies}
COMMIT=585271d
ORDER=(confirm2_fig2_vgg confirm2_fig6 confirm2_fig5 confirm2_fig3)
declare -A RUNS=([confirm2_fig2_vgg]=60 [confirm2_fig6]=60 [confirm2_fig5]=80 [confirm2_fig3]=105)
declare -A WINDOW=([confirm2_fig2_vgg]=274 [confirm2_fig5]=246)

header_command() {  # the file's own `gst --portable sweep` line, STUDIES filled in
  local line
  line=$(grep -m1 '^#   gst --portable sweep ' "$FROZEN/examples/$1.yaml") || {
    echo "confirm2: $1.yaml has no sweep command in its header" >&2; exit 1; }
  line=${line#\#   }
  echo "${line//STUDIES/$STUDIES}"
}

frozen_checkout() {
  if [ ! -x "$FROZEN/.venv/bin/gst" ]; then
    git -C "$REPO" worktree prune
    [ -d "$FROZEN" ] || git -C "$REPO" worktree add --detach "$FROZEN" "$COMMIT"
    make -C "$FROZEN" setup
  fi
  [ "$(git -C "$FROZEN" rev-parse --short=7 HEAD)" = "$COMMIT" ] || {
    echo "confirm2: $FROZEN is not at $COMMIT" >&2; exit 1; }
  git -C "$FROZEN" diff --quiet HEAD -- examples src || {
    echo "confirm2: $FROZEN has changes to examples/ or src/; the study runs unchanged" >&2; exit 1; }
}

run() {
  frozen_checkout
  mkdir -p "$STUDIES"
  cd "$FROZEN"
  for study in "${ORDER[@]}"; do
    local cmd rc=0
    cmd=$(header_command "$study")
    echo "=== $(date -u +%FT%TZ) start $study: $cmd"
    .venv/bin/$cmd || rc=$?
    echo "=== $(date -u +%FT%TZ) end $study rc=$rc"
  done
}

finish() {
  local gst="$REPO/.venv/bin/gst" py="$REPO/.venv/bin/python"
  for study in "${ORDER[@]}"; do
    local dir="$STUDIES/$study" dest="$REPO/docs/figures/$study"
    local finished
    finished=$(awk -F, 'NR>1 && $NF=="finished"' "$dir/index.csv" | wc -l)
    [ "$finished" = "${RUNS[$study]}" ] || {
      echo "confirm2: $study has $finished finished runs of ${RUNS[$study]}" >&2; exit 1; }
    "$gst" report "$dir"
    (cd "$dir/report" && sha256sum --quiet -c --ignore-missing SHA256SUMS)
    rm -rf "$dest" && mkdir -p "$dest"
    cp "$dir"/report/{report.md,runs.csv,SHA256SUMS} "$dir"/report/*.png "$dest"/
    [ ! -f "$dir/report/curvature.csv" ] || cp "$dir/report/curvature.csv" "$dest"/
    (cd "$dest" && sha256sum --quiet -c --ignore-missing SHA256SUMS)
    if [ -n "${WINDOW[$study]:-}" ]; then
      "$py" - "$dest/runs.csv" "${WINDOW[$study]}" <<'EOF'
import sys
import pandas as pd
starts = set(pd.read_csv(sys.argv[1])["window_start"].dropna().astype(int))
if starts != {int(sys.argv[2])}:
    sys.exit(f"confirm2: {sys.argv[1]}: common window starts {sorted(starts)}, the files name {sys.argv[2]}")
EOF
    fi
  done
  "$py" "$REPO/examples/verdict_table.py" --regime "2,000 images (first)" "$REPO/docs/figures/confirm" student \
    --regime "4,000 images (second)" "$REPO/docs/figures/confirm2" paired
}

case "${1:-}" in
  run) run ;;
  finish) finish ;;
  *) echo "usage: bash examples/confirm2.sh run|finish" >&2; exit 2 ;;
esac
