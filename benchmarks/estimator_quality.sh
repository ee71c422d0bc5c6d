#!/usr/bin/env bash
# Quality of the fused CLUB estimator fit against the fit it replaced, on TikTok.
#
#   bash benchmarks/estimator_quality.sh BASE_CHECKOUT [OUT]
#
# BASE_CHECKOUT: a checkout of the commit before the fused fit (a430f7a: autograd, gradients
# all-reduced at each inner step), e.g. `git worktree add --detach /tmp/base a430f7a`.
# SEA in sampled mode on 2 Ray workers (where the two fits differ: one process fits the same
# either way), the README's protocol: lr 1e-3, at most 20 epochs, patience 5, seeds 0 1 2,
# test at the best-valid epoch. Then:
#   python -m benchmarks.quality_table OUT --seeds
set -u
base=$(realpath "$1")
out=$(realpath -m "${2:-runs/estq}")
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
for seed in 0 1 2; do
  for side in fused base; do
    run=$out/${side}_seed$seed
    [ -f "$run/report.json" ] && continue
    rm -rf "$run"
    root=$here; [ "$side" = base ] && root=$base
    (cd "$root" && PYTHONPATH=$root "$here/.venv/bin/sea-dist" train --config configs/sea.yaml \
      --set train.mode=sampled --set train.lr=1e-3 --set train.epochs=20 --set train.patience=5 \
      --set train.seed=$seed --set data.path="$(realpath "$here/../shared/data/tiktok")" \
      --set data.cache_dir="$here/runs/cache" --workers 2 --output "$run" --json > "$run.json")
    echo "$side seed $seed: exit $?"
  done
done
