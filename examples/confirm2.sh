#!/bin/bash
# The second preregistered confirmation (docs/where_pruning_helps.md, "Second confirmation"), run and finished
# with one command each, so a lost workspace costs one command to restart (it has been lost six times).
#
#   bash examples/confirm2.sh run      # (re)start or resume the studies, in order, from a frozen checkout
#   bash examples/confirm2.sh report   # report every study that has finished and has no report yet
#   bash examples/confirm2.sh finish   # when all are reported: the verdict table beside the first confirmation's
#
# `run` makes a frozen checkout of 585271d (the commit that added the four files) at $FROZEN if there is none,
# sets it up, and runs each file's own header command there (`gst --portable sweep ... --store STUDIES/store`,
# STUDIES = $STUDIES), in the order Figure 2, 6, 5, 3. The same command resumes: finished runs are kept, a run
# cut off resumes from its checkpoint. Run it in the background (it takes ~16 h of two cores), e.g.
#   nohup setsid bash examples/confirm2.sh run >> $STUDIES/confirm2.log 2>&1 &
# Each study is reported as soon as all its runs have finished, into docs/figures/confirm2_* (to be committed:
# the workspace outside the repository has been lost six times, the committed reports survive), and a study
# with a report there that matches its SHA256SUMS is not run again.
# A report is this checkout's `gst report` on the study; it checks the run counts (60 / 60 / 80 / 105) and the
# common windows (Figure 2: 274, from the erratum in docs/where_pruning_helps.md, which corrects its file's
# 246; Figure 5: 246, as its file says), copies report.md, runs.csv, curvature.csv, SHA256SUMS and the figures
# to docs/figures/confirm2_* and checks the copies against their SHA256SUMS.
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

reported() {  # the study's report is in docs/figures, whole, and matches its SHA256SUMS (which also lists
  # report files not copied, hence --ignore-missing)
  local dest="$REPO/docs/figures/$1" file
  for file in SHA256SUMS report.md runs.csv; do [ -f "$dest/$file" ] || return 1; done
  [ "$1" != confirm2_fig6 ] || [ -f "$dest/curvature.csv" ] || return 1
  (cd "$dest" && sha256sum --quiet -c --ignore-missing SHA256SUMS)
}

finished_runs() {
  local index="$STUDIES/$1/index.csv"
  [ -f "$index" ] || { echo 0; return; }
  awk -F, 'NR>1 && $NF=="finished"' "$index" | wc -l
}

report_study() {  # report one finished study into docs/figures/STUDY; every step checked (called under ||,
  # where set -e does not apply)
  local study=$1 dir="$STUDIES/$1" dest="$REPO/docs/figures/$1" py="$REPO/.venv/bin/python"
  local finished
  finished=$(finished_runs "$study")
  [ "$finished" = "${RUNS[$study]}" ] || {
    echo "confirm2: $study has $finished finished runs of ${RUNS[$study]}" >&2; return 1; }
  echo "=== $(date -u +%FT%TZ) report $study with gst at $(git -C "$REPO" rev-parse --short=7 HEAD)"
  "$REPO/.venv/bin/gst" report "$dir" || return 1
  (cd "$dir/report" && sha256sum --quiet -c --ignore-missing SHA256SUMS) || return 1
  if [ -n "${WINDOW[$study]:-}" ]; then
    "$py" - "$dir/report/runs.csv" "${WINDOW[$study]}" <<'PY' || return 1
import sys
import pandas as pd
starts = set(pd.read_csv(sys.argv[1])["window_start"].dropna().astype(int))
if starts != {int(sys.argv[2])}:
    sys.exit(f"confirm2: {sys.argv[1]}: common window starts {sorted(starts)}, expected {sys.argv[2]}")
PY
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp" || return 1  # copied whole, then renamed: never half a folder
  cp "$dir"/report/{report.md,runs.csv,SHA256SUMS} "$dir"/report/*.png "$dest.tmp"/ || return 1
  [ ! -f "$dir/report/curvature.csv" ] || cp "$dir/report/curvature.csv" "$dest.tmp"/ || return 1
  rm -rf "$dest" && mv "$dest.tmp" "$dest" && reported "$study" || return 1
  echo "=== $(date -u +%FT%TZ) reported $study into docs/figures/$study: commit it"
}

report() {  # every study that has finished and is not reported yet
  local study rc=0
  for study in "${ORDER[@]}"; do
    reported "$study" || report_study "$study" || rc=1
  done
  return $rc
}

run() {
  frozen_checkout
  mkdir -p "$STUDIES"
  local study cmd rc
  for study in "${ORDER[@]}"; do
    if reported "$study"; then
      echo "=== $(date -u +%FT%TZ) $study is reported in docs/figures/$study: not run again"
      continue
    fi
    cmd=$(header_command "$study")
    echo "=== $(date -u +%FT%TZ) start $study: $cmd"
    rc=0
    (cd "$FROZEN" && .venv/bin/$cmd) || rc=$?  # $cmd split into words
    echo "=== $(date -u +%FT%TZ) end $study rc=$rc"
    [ "$rc" != 0 ] || report_study "$study" || echo "=== confirm2: reporting $study failed; the next study runs" >&2
  done
}

finish() {
  local study
  for study in "${ORDER[@]}"; do
    reported "$study" || { echo "confirm2: $study has no checked report in docs/figures/$study" >&2; exit 1; }
  done
  "$REPO/.venv/bin/python" "$REPO/examples/verdict_table.py" \
    --regime "2,000 images (first)" "$REPO/docs/figures/confirm" student \
    --regime "4,000 images (second)" "$REPO/docs/figures/confirm2" paired
}

main() {
  case "${1:-}" in
    run) run ;;
    report) report ;;
    finish) finish ;;
    *) echo "usage: bash examples/confirm2.sh run|report|finish" >&2; exit 2 ;;
  esac
}

# One line, read whole before it runs: bash reads a script as it executes it, so an edit to this file while
# `run` works would otherwise hand bash a fragment of the new file when `run` returns.
main "$@"; exit
