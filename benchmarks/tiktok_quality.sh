#!/usr/bin/env bash
# SEA, its variants and LightGCN on ../shared/data/tiktok, each trained to convergence.
# Usage: bash benchmarks/tiktok_quality.sh [OUT_DIR]   (results: OUT_DIR/<run>/report.json)
# Then: python -m benchmarks.quality_table OUT_DIR [--seeds]
#
# The protocol (issue "SEA equal to the authors' code ... then trained to convergence"): early
# stopping on valid Recall@20 with the reference's patience (MMRec's stopping_step: 20 epochs),
# test scored once at the best-valid epoch, at most 300 epochs; the reference defaults by
# modality name (README, Models); lr 1e-3 (the reference's SEA config says 1e-4: the sea_lr1e-4
# runs at the end check that the faster schedule reaches the same best); sampled mode on 2 Ray
# workers of 1,024 seed edges a batch (train.batch_size is per worker: 2,048 a step across both,
# the reference's batch), which trains a TikTok epoch several times faster than the full graph
# on one worker (benchmarks/results/reference.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/tiktok}
COMMON=(--set train.lr=1e-3 --set train.epochs=300 --set train.patience=20
        --set train.mode=sampled --set train.batch_size=1024 --workers 2
        --set data.cache_dir=runs/cache --quiet)
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
run sea_sgfd configs/sea_sgfd.yaml
# Seed repeats of the headline pair, for the spread (quality_table --seeds pools them).
for seed in 1 2; do
  run "sea_seed$seed" configs/sea.yaml --set train.seed=$seed
  run "lightgcn_seed$seed" configs/lightgcn.yaml --set train.seed=$seed
done
# SEA at the reference's own learning rate (its SEA config: 1e-4), for the same seeds.
for seed in 999 1 2; do
  name=sea_lr1e-4; [ "$seed" = 999 ] || name="sea_lr1e-4_seed$seed"
  run "$name" configs/sea.yaml --set train.seed=$seed --set train.lr=1e-4 --set train.epochs=600
done
# Sampled with every neighbour, one worker of 2,048 seed edges: TikTok's user degrees are
# heavy-tailed, so fanout 10 is a noisy estimate early on (README, against the authors' code).
ALL=(--workers 1 --set train.batch_size=2048 --set "train.fanouts=[all,all]")
for seed in 999 1 2; do
  suffix=""; [ "$seed" = 999 ] || suffix="_seed$seed"
  run "sea_all$suffix" configs/sea.yaml --set train.seed=$seed "${ALL[@]}"
  run "lightgcn_all$suffix" configs/lightgcn.yaml --set train.seed=$seed "${ALL[@]}"
done
