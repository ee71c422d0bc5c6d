#!/usr/bin/env bash
# Quality of two CLUB estimator fits side by side on TikTok, 3 seeds each.
#
#   bash benchmarks/estimator_quality.sh OUT NAME=CHECKOUT[,VAR=VALUE] NAME=CHECKOUT[,VAR=VALUE]
#
# Each side trains from CHECKOUT (a git worktree of the commit to compare, or .) with the
# environment variable VAR=VALUE set. The two comparisons recorded in
# benchmarks/results/estimator_quality.md:
#   fused fit against the autograd fit it replaced (a430f7a: gradients all-reduced at each
#   inner step; `git worktree add --detach /tmp/base a430f7a`):
#     bash benchmarks/estimator_quality.sh runs/estq fused=. base=/tmp/base
#   compiled kernel against torch's route in the same checkout:
#     bash benchmarks/estimator_quality.sh runs/estq_native compiled=. torch=.,SEA_DIST_NATIVE=0
# SEA in sampled mode on 2 Ray workers (where fits that average differently can differ), the
# README's protocol: lr 1e-3, at most 20 epochs, patience 5, seeds 0 1 2, test at the
# best-valid epoch. Then:
#   python -m benchmarks.quality_table OUT --seeds
set -u
out=$(realpath -m "$1")
shift
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
for seed in 0 1 2; do
  for side in "$@"; do
    name=${side%%=*}
    spec=${side#*=}
    root=$(cd "$here" && realpath "${spec%%,*}")
    env_var=""
    [ "$spec" != "${spec#*,}" ] && env_var=${spec#*,}
    run=$out/${name}_seed$seed
    [ -f "$run/report.json" ] && continue
    rm -rf "$run"
    (cd "$root" && env $env_var PYTHONPATH="$root" "$here/.venv/bin/sea-dist" train \
      --config configs/sea.yaml \
      --set train.mode=sampled --set train.lr=1e-3 --set train.epochs=20 --set train.patience=5 \
      --set train.seed=$seed --set data.path="$(realpath "$here/../shared/data/tiktok")" \
      --set data.cache_dir="$here/runs/cache" --workers 2 --output "$run" --json > "$run.json")
    echo "$name seed $seed: exit $?"
  done
done
