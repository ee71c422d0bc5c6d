#!/usr/bin/env bash
# SEA vs LightGCN (and SEA ablations) on ../shared/data/tiktok, full-graph, one worker.
# Usage: bash benchmarks/tiktok_quality.sh [OUT_DIR]   (results: OUT_DIR/<run>/report.json)
# All runs share the protocol: lr 1e-3 (the reference's 1e-4 needs hundreds of epochs on CPU),
# at most 20 epochs (a CPU budget), early stopping on valid Recall@20 with patience 5, test at the best epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/tiktok}
COMMON=(--set train.lr=1e-3 --set train.epochs=20 --set train.patience=5 --set data.cache_dir=runs/cache --quiet)
run() {
  local name=$1 config=$2; shift 2
  # A finished run is kept; an unfinished one resumes from its last checkpoint.
  [ -f "$OUT/$name/report.json" ] && return 0
  .venv/bin/sea-dist --log-level WARNING train --config "$config" --output "$OUT/$name" "${COMMON[@]}" "$@"
}
run sea configs/sea.yaml
run lightgcn configs/lightgcn.yaml
run sand configs/sand.yaml
run sea_no_club configs/sea.yaml --set model.distancing=none
run sea_no_solo configs/sea.yaml --set model.use_solo=false
# Issue 8: VBPR, MENTOR and the SGFD plug-in under the same protocol (MENTOR's own config stops
# on Recall@10; the table uses one rule for every model).
run vbpr configs/vbpr.yaml
run vbpr_sgfd configs/vbpr_sgfd.yaml
run sea_sgfd configs/sea_sgfd.yaml
run mentor configs/mentor.yaml --set eval.metric=recall@20
# Seed repeats of the headline pair, for the spread (quality_table --seeds pools them).
for seed in 1 2; do
  run "sea_seed$seed" configs/sea.yaml --set train.seed=$seed
  run "lightgcn_seed$seed" configs/lightgcn.yaml --set train.seed=$seed
done
