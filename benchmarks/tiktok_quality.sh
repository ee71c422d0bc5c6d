#!/usr/bin/env bash
# SEA vs LightGCN (and SEA ablations) on ../shared/data/tiktok, full-graph, one worker.
# Usage: bash benchmarks/tiktok_quality.sh [OUT_DIR]   (results: OUT_DIR/<run>/report.json)
# All runs share the protocol: lr 1e-3 (the reference's 1e-4 needs hundreds of epochs on CPU),
# at most 60 epochs, early stopping on valid Recall@20 with patience 10, test at the best epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/tiktok}
COMMON=(--set train.lr=1e-3 --set train.epochs=60 --set train.patience=10 --set data.cache_dir=runs/cache --quiet)
run() {
  local name=$1 config=$2; shift 2
  [ -f "$OUT/$name/report.json" ] && return 0
  rm -rf "$OUT/$name"
  .venv/bin/sea-dist --log-level WARNING train --config "$config" --output "$OUT/$name" "${COMMON[@]}" "$@"
}
run lightgcn configs/lightgcn.yaml
run sea configs/sea.yaml
run sea_no_club configs/sea.yaml --set model.distancing=none
run sea_no_solo configs/sea.yaml --set model.use_solo=false
run sand configs/sand.yaml
