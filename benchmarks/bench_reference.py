"""SEA in sea_dist against the authors' code (github.com/bruno686/SEA) at equal epochs on TikTok.

Run from the repository root, with the reference checked out *outside* the repository (it is
never committed, and no code of it goes into sea_dist)::

    git clone <bare dir from the search tool's fetch of github:bruno686/SEA> /tmp/ref/SEA
    pip install --target /tmp/ref/site --no-deps torch_geometric==2.5.3 lmdb
    PYTHONPATH=. python -m benchmarks.bench_reference --reference /tmp/ref/SEA \\
        --site /tmp/ref/site --work /tmp/ref/bench --seeds 999 1 2
    # after an interruption: --reuse reads the runs that finished in --work
    # one side only (the others kept from the JSON): --sides reference_after_epoch

Flow: copy the reference's ``src/`` to ``WORK/reference`` and patch the copy (below) → lay
out the TikTok files the way MMRec reads them in ``WORK/data/tiktok`` → for each seed, train
the reference (``main.py -m SEA -d tiktok``), then ``sea-dist train``, one process at a time
→ per-epoch valid Recall@20 and training seconds of every side into
``benchmarks/results/reference.json`` (rewritten after every run, so a cut-short sweep keeps
what finished) and ``reference.md``.

Protocol (the issue "SEA equal to the authors' code at equal epochs"): 5 epochs, lr 1e-3,
batch 2048, embedding 64, the CLUB estimator fitted at the model's lr (the reference's
``optimizer_D`` uses ``learning_rate``; sea_dist's ``model.estimator_lr: null``), the same
seeds. A second copy of the reference, ``reference_after_epoch``, ranks with a forward after
the epoch's last step (:data:`AFTER_EPOCH`), as sea_dist does, and trains the same. sea_dist
runs with its defaults (image 0.1 / audio 0.9 item-graph weights, SoloSim anchored on audio,
negatives from training items) in each of :data:`SEA_DIST_SIDES`' settings. Both sides
use the same number of torch threads (the machine's cores, what a sea_dist worker gets) and
the same niceness (15, Ray's for its workers). "Seconds per epoch" is the training part only
on both sides: the reference's ``epoch N training [time: ...]`` (``pre_epoch_processing`` plus
the batches) and sea_dist's ``epoch_time_s`` (the batches); evaluation is outside both. The
seconds are only comparable on an otherwise idle machine: on a shared one another job's load
can stretch an epoch tenfold, so each run records the 1-minute load average before it starts.

What it takes to run the reference on a CPU, applied to the scratch copy by ``PATCHES``
(each a checked text substitution, so a changed upstream file fails loudly) and
``_write_support_files``:

1. ``utils/utils.py`` imports ``models.<name.lower()>``, but the file is ``models/SEA.py``
   (it works only on case-insensitive file systems): import ``models.<name>``.
2. ``models/SEA.py`` hard-codes the Amazon feature widths: the maps to 4096 (image) and 384
   (text), halves of 2048 and 192 for the generic/unique split, SoloSim heads and CLUB inputs.
   The widths follow the feature files instead (TikTok: 128 and 128, halves of 64); on
   Amazon the patched code computes the same numbers.
3. ``result_embed`` (and three unused siblings) are ``nn.Parameter(...).to(device)``: on a
   GPU ``.to`` returns a plain tensor, on the CPU the Parameter itself, which gets registered
   and then ``forward``'s ``self.result_embed = torch.cat(...)`` raises. They become plain
   tensors, as on a GPU (same random draws).
4. ``wandb`` is imported and called (``init``/``log``) but not needed: a no-op ``wandb.py``
   stub sits beside ``main.py``. ``torchvision`` is imported by ``utils/data_utils.py`` only
   for raw-image helpers this run never calls: the imports are removed.
5. ``torch_geometric`` (``MessagePassing``) and ``lmdb`` (imported by ``utils/dataset.py``)
   must be importable: ``--site`` (pure-python torch_geometric works without its compiled
   extensions).
6. MMRec needs ``configs/dataset/tiktok.yaml`` (written here: ``userID``/``itemID`` columns,
   ``tiktok.inter``) and ``user_graph_dict.npy`` (user–user co-interaction counts, top 200
   per user, as MMRec's ``preprocessing/dualgnn-gen-u-u-matrix.py`` builds it; SEA reads it
   every epoch but its output never reaches the loss). Image features are the vision input
   (``v_feat``, ``image_feat.npy``) and audio the text input (``t_feat``: ``text_feat.npy``
   is a symlink to ``audio_feat.npy``), so ``mm_image_weight: 0.1`` gives image 0.1 and
   audio 0.9. The item kNN graph is cached by the reference as ``mm_adj_10.pt`` in the data
   folder, hence a writable copy of it.
7. The run's settings go in through MMRec's ``config_dict`` (highest priority): ``main.py``
   is patched to merge a JSON object from ``SEA_REF_CONFIG`` (seed, epochs, lr, ...).
   Lists there are MMRec's hyperparameter grid, so ``seed`` and ``learning_rate`` are
   one-element lists.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from sea_dist.bench.measure import machine
from sea_dist.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SEA_DIST = str(Path(sys.executable).with_name("sea-dist"))
DATA = Path("/work/shared/data/tiktok")
RESULTS = ROOT / "benchmarks" / "results"
USER_GRAPH_TOP = 200  # neighbours kept per user by MMRec's u-u graph script
# sea_dist's sides: (workers, seed edges per worker, --set overrides); 2,048 edges a step on
# each, the reference's batch, so an epoch takes as many optimizer steps.
SEA_DIST_SIDES: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "sea_dist": (1, 2048, ()),  # full graph
    "sea_dist_sampled": (2, 1024, ("train.mode=sampled",)),  # fanouts 10/10, DDP
    # Every neighbour: TikTok's degrees are heavy-tailed (1 % of users hold 70 % of the
    # training edges), so fanout 10 estimates their sums from few edges.
    "sea_dist_sampled_all": (1, 2048, ("train.mode=sampled", "train.fanouts=[all,all]")),
}
OURS = tuple(SEA_DIST_SIDES)
RAY_WORKER_NICENESS = 15  # what Ray gives its worker processes (ray worker_niceness)


@dataclass(frozen=True)
class Patch:
    """One text substitution in the scratch copy of the reference: ``count`` hits exactly."""

    path: str
    old: str
    new: str
    count: int
    why: str


_SEA = "models/SEA.py"
_INIT = "nn.init.xavier_normal_(torch.tensor(np.random.randn(num_user + num_item, dim_x)))"
_HALVES = "self.t_half, self.v_half = self.t_feat.shape[1] // 2, self.v_feat.shape[1] // 2"
_TORCHVISION = ("import torchvision.transforms as transforms\n",
                "from torchvision.transforms.functional import pad as img_pad\n",
                "from torchvision.transforms.functional import resize as img_resize\n")
_SUPER = "super(SEA, self).__init__(config, dataset)\n"
_CONFIG_DICT = "'gpu_id': args.gpu,\n    }"
_CONFIG_ENV = "**__import__('json').loads(os.environ.get('SEA_REF_CONFIG', '{}')),"

PATCHES: tuple[Patch, ...] = (
    Patch("utils/utils.py", "model_file_name = model_name.lower()", "model_file_name = model_name",
          1, "models/SEA.py is not models/sea.py on a case-sensitive file system"),
    Patch(_SEA, _SUPER, f"{_SUPER}        {_HALVES}\n", 1,
          "halves of the feature widths, for the generic/unique split"),
    Patch(_SEA, "nn.Linear(self.t_feat.shape[1], 384)",
          "nn.Linear(self.t_feat.shape[1], self.t_feat.shape[1])", 1, "text map: 384 on Amazon"),
    Patch(_SEA, "nn.Linear(self.v_feat.shape[1], 4096)",
          "nn.Linear(self.v_feat.shape[1], self.v_feat.shape[1])", 1, "image map: 4096 on Amazon"),
    Patch(_SEA, "input_dim=192", "input_dim=self.t_half", 1, "text SoloSim head input"),
    Patch(_SEA, "input_dim=2048", "input_dim=self.v_half", 1, "image SoloSim head input"),
    Patch(_SEA, "nn.Linear(192,32)", "nn.Linear(self.t_half, 32)", 2, "text CLUB inputs"),
    Patch(_SEA, "nn.Linear(2048,32)", "nn.Linear(self.v_half, 32)", 2, "image CLUB inputs"),
    Patch(_SEA, "[:, :192]", "[:, :self.t_half]", 2, "text generic half"),
    Patch(_SEA, "[:, :2048]", "[:, :self.v_half]", 2, "image generic half"),
    Patch(_SEA, "[:, 192:]", "[:, self.t_half:]", 1, "text unique half"),
    Patch(_SEA, "[:, 2048:]", "[:, self.v_half:]", 1, "image unique half"),
    Patch(_SEA, f"nn.Parameter(\n            {_INIT}).to(self.device)", f"{_INIT}.to(self.device)",
          4,
          "result_embed (+_guide/_v/_t): plain tensors as on a GPU, so forward may reassign it"),
    *(Patch("utils/data_utils.py", line, "", 1, "torchvision: imported, never called here")
      for line in _TORCHVISION),
    Patch("main.py", _CONFIG_DICT, f"'gpu_id': args.gpu,\n    {_CONFIG_ENV}\n    }}", 1,
          "the benchmark's settings through MMRec's config_dict"),
)

# The `reference_after_epoch` side only: rank with a forward after the epoch's last optimizer
# step, as sea_dist does, instead of the last training forward's cached ``result_embed``. The
# forward draws no random numbers (no dropout; the edge dropout is drawn in pre_epoch_processing),
# so training is the same as the plain reference's, step for step.
_EVALUATE = "        self.model.eval()\n"
AFTER_EPOCH = Patch(
    "common/trainer.py", _EVALUATE,
    f"{_EVALUATE}        self.model.forward([torch.zeros(1, dtype=torch.long, device=self.device)"
    " for _ in range(3)])\n", 1, "rank with the parameters the epoch ended with")

# The reference's sides: the patches each adds to :data:`PATCHES`.
REFERENCE_SIDES: dict[str, tuple[Patch, ...]] = {
    "reference": (), "reference_after_epoch": (AFTER_EPOCH,),
}
REFERENCES = tuple(REFERENCE_SIDES)
SIDES = REFERENCES + OURS

DATASET_YAML = """\
USER_ID_FIELD: userID
ITEM_ID_FIELD: itemID
TIME_FIELD: timestamp
filter_out_cod_start_users: True
inter_file_name: 'tiktok.inter'
vision_feature_file: 'image_feat.npy'
text_feature_file: 'text_feat.npy'
user_graph_dict_file: 'user_graph_dict.npy'
field_separator: "\\t"
"""

WANDB_STUB = '''"""No-op wandb: the reference logs to it, the benchmark reads its log file."""


def login(*args, **kwargs):
    return None


def init(*args, **kwargs):
    return None


def log(*args, **kwargs):
    return None
'''


def apply_patches(src: Path, patches: tuple[Patch, ...] = PATCHES) -> None:
    """Apply ``patches`` in place under ``src`` (the reference's ``src/`` folder)."""
    for patch in patches:
        file = src / patch.path
        text = file.read_text()
        found = text.count(patch.old)
        if found != patch.count:
            raise RuntimeError(
                f"{patch.path}: expected {patch.count} of {patch.old!r}, found {found}")
        file.write_text(text.replace(patch.old, patch.new))


def prepare_reference(checkout: Path, dst: Path, extra: tuple[Patch, ...] = ()) -> None:
    """Copy ``checkout/src`` to ``dst``, patch it (:data:`PATCHES`, then ``extra``), and add the
    TikTok config and wandb stub."""
    if dst.exists():
        shutil.rmtree(dst)
    skip = shutil.ignore_patterns("log", "saved", "__pycache__")
    shutil.copytree(checkout / "src", dst, ignore=skip)
    apply_patches(dst, PATCHES + extra)
    (dst / "configs" / "dataset" / "tiktok.yaml").write_text(DATASET_YAML)
    (dst / "wandb.py").write_text(WANDB_STUB)


def user_graph_dict(inter_file: Path) -> dict[int, list[list[float]]]:
    """MMRec's ``user_graph_dict``: per user, [neighbour ids, shared training items], top 200.

    Neighbours are the users sharing at least one training item, by count, descending (ties
    by id; MMRec's ``torch.topk`` breaks them its own way, which the model never sees).
    """
    rows = np.loadtxt(inter_file, dtype=np.int64, delimiter="\t", skiprows=1)
    num_users = int(rows[:, 0].max()) + 1
    train = rows[rows[:, 2] == 0]
    incidence = sp.csr_matrix((np.ones(len(train)), (train[:, 0], train[:, 1])),
                              shape=(num_users, int(rows[:, 1].max()) + 1))
    incidence.data[:] = 1.0  # repeated (user, item) rows count once, as MMRec's sets do
    shared = (incidence @ incidence.T).tocsr()
    shared.setdiag(0)
    shared.eliminate_zeros()
    graph: dict[int, list[list[float]]] = {}
    for user in range(num_users):
        cols = shared.indices[shared.indptr[user]:shared.indptr[user + 1]]
        vals = shared.data[shared.indptr[user]:shared.indptr[user + 1]]
        order = np.lexsort((cols, -vals))[:USER_GRAPH_TOP]
        graph[user] = [cols[order].tolist(), vals[order].astype(float).tolist()]
    return graph


def prepare_data(data: Path, dst: Path) -> None:
    """TikTok as MMRec reads it: image as vision, audio as text, plus the user graph."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, source in (("tiktok.inter", "tiktok.inter"), ("image_feat.npy", "image_feat.npy"),
                         ("text_feat.npy", "audio_feat.npy")):
        link = dst / name
        if not link.exists():
            link.symlink_to(data / source)
    if not (dst / "user_graph_dict.npy").exists():
        graph = np.array(user_graph_dict(data / "tiktok.inter"), dtype=object)
        np.save(dst / "user_graph_dict.npy", graph, allow_pickle=True)


_TRAIN = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s, train loss: ([-\d.naif]+)\]")
_EVAL = re.compile(r"epoch (\d+) evaluating \[time: ([\d.]+)s, valid_score: ([\d.]+)\]")
_RESULT = re.compile(r"(valid|test) result: *\n([^\n]*)")
_METRIC = re.compile(r"([a-z]+@\d+): ([\d.]+)")


def parse_reference_log(text: str) -> list[dict[str, Any]]:
    """Per-epoch records from an MMRec/SEA log: train seconds, loss, valid and test metrics.

    The trainer logs, per epoch, ``epoch N training [time: Ts, train loss: L]``, then
    ``epoch N evaluating [time: Es, valid_score: V]`` and two lines each headed
    ``valid result:`` / ``test result:`` followed by ``recall@20: 0.0513    ...``.
    """
    epochs: dict[int, dict[str, Any]] = {}
    for match in _TRAIN.finditer(text):
        epochs[int(match[1])] = {"epoch": int(match[1]), "epoch_time_s": float(match[2]),
                                 "loss": float(match[3])}
    evals = list(_EVAL.finditer(text))
    for index, match in enumerate(evals):
        record = epochs.setdefault(int(match[1]), {"epoch": int(match[1])})
        record["eval_time_s"] = float(match[2])
        end = evals[index + 1].start() if index + 1 < len(evals) else len(text)
        for split, line in _RESULT.findall(text[match.end():end]):
            for metric, value in _METRIC.findall(line):
                record[f"{split}/{metric}"] = float(value)
    return [epochs[e] for e in sorted(epochs)]


def run_reference(src: Path, data_root: Path, site: Path, seed: int, epochs: int, lr: float,
                  threads: int, log_file: Path, reuse: bool = False
                  ) -> tuple[list[str], list[dict[str, Any]], float | None]:
    """Train the patched reference for one seed; its log (stderr) is kept in ``log_file``.

    With ``reuse``, a log that already holds every epoch's valid metrics is read, not redone
    (wall time then unknown: None).
    """
    settings = {
        "seed": [seed], "learning_rate": [lr], "epochs": epochs, "train_batch_size": 2048,
        "embedding_size": 64, "stopping_step": 10, "use_gpu": False,
        "data_path": f"{data_root}/",  # MMRec joins data_path + dataset by string
    }
    env = {**os.environ, "PYTHONPATH": str(site), "SEA_REF_CONFIG": json.dumps(settings),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # Ray starts its workers at niceness 15 (sea_dist's one worker included); the reference
    # gets the same, or another job's load would slow only the sea_dist side.
    cmd = ["nice", "-n", str(RAY_WORKER_NICENESS), sys.executable, "main.py", "-m", "SEA", "-d",
           "tiktok"]
    printed = [f"SEA_REF_CONFIG='{json.dumps(settings)}' OMP_NUM_THREADS={threads} "
               f"PYTHONPATH={site} {' '.join(cmd)}  # cwd {src}"]
    if reuse and log_file.exists():
        history = parse_reference_log(log_file.read_text())
        if _complete(history, epochs):
            return printed, history, None
    started = time.perf_counter()
    with log_file.open("w") as log:
        subprocess.run(cmd, cwd=src, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    return printed, parse_reference_log(log_file.read_text()), wall


def _complete(history: list[dict[str, Any]], epochs: int) -> bool:
    return len(history) == epochs and all("valid/recall@20" in row for row in history)


def run_sea_dist(side: str, out: Path, cache: Path, seed: int, epochs: int, lr: float,
                 reuse: bool = False) -> tuple[list[str], list[dict[str, Any]], float | None]:
    """``sea-dist train`` of configs/sea.yaml for one seed as ``side`` of
    :data:`SEA_DIST_SIDES` (``train.batch_size`` is per worker); per-epoch rows of
    metrics.jsonl. With ``reuse``, a finished run in ``out`` (every epoch evaluated) is read,
    not redone.
    """
    workers, batch_size, overrides = SEA_DIST_SIDES[side]
    sets = [f"data.path={DATA}", f"data.cache_dir={cache}", f"train.lr={lr}",
            f"train.epochs={epochs}", f"train.seed={seed}", "train.patience=10",
            f"train.batch_size={batch_size}", "model.embedding_dim=64", *overrides]
    cmd = [SEA_DIST, "--log-level", "WARNING", "train", "--config", "configs/sea.yaml",
           "--output", str(out), "--quiet", "--json", "--workers", str(workers)]
    for item in sets:
        cmd += ["--set", item]
    printed = [f"PYTHONPATH={ROOT} {' '.join(cmd)}"]
    if reuse and (out / "metrics.jsonl").exists():
        history = _sea_dist_history(out)
        if _complete(history, epochs):
            return printed, history, None
    if out.exists():
        shutil.rmtree(out)  # a left-over run would be resumed, not rerun
    # The console script's editable install may point at another checkout.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return printed, _sea_dist_history(out), wall


def _sea_dist_history(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    keep = ("epoch", "epoch_time_s", "loss")
    return [{**{k: row[k] for k in keep},
             **{k: v for k, v in row.items() if k.startswith(("valid/", "test/"))}}
            for row in rows]


def markdown(result: dict[str, Any]) -> str:
    """Per seed and epoch: valid Recall@20 and training seconds of every side; then per epoch,
    each side's mean against the reference's spread over seeds, and seconds per epoch."""
    lines = [
        "# SEA: sea_dist against the authors' code (TikTok, equal epochs)",
        "",
        f"Protocol: {result['protocol']['summary']}. Machine: {result['machine']['cpu']}, "
        f"{result['machine']['logical_cores']} logical cores. "
        "Generated by `benchmarks/bench_reference.py`.",
        "",
        "| seed | epoch | " + " | ".join(f"{side} R@20" for side in SIDES) + " | "
        + " | ".join(f"{side} s/epoch" for side in SIDES) + " |",
        "|---:|---:|" + "---:|" * (2 * len(SIDES)),
    ]
    for run in result["runs"]:
        by_side = {side: _by_epoch(run, side) for side in SIDES}
        for epoch in sorted(set().union(*by_side.values())):
            cells = [_cell(by_side[side].get(epoch), "valid/recall@20", 4) for side in SIDES]
            cells += [_cell(by_side[side].get(epoch), "epoch_time_s", 1) for side in SIDES]
            lines.append(f"| {run['seed']} | {epoch} | " + " | ".join(cells) + " |")
    lines += ["", "Valid Recall@20 per epoch over the seeds (mean ± sample std; the reference's "
              "min-max is its seed spread):", "",
              "| epoch | " + " | ".join(f"{ref} | {ref} min-max" for ref in REFERENCES) + " | "
              + " | ".join(OURS) + " | "
              + " | ".join(f"{side} inside ({' / '.join(REFERENCES)})" for side in OURS) + " |",
              "|---:|" + "---|" * (2 * len(REFERENCES) + 2 * len(OURS))]
    spread = per_epoch_spread(result)
    for epoch, row in spread.items():
        cells = []
        for ref in REFERENCES:
            values = row[ref]
            cells += [_mean_std(values), f"{min(values):.4f}-{max(values):.4f}" if values else "–"]
        cells += [_mean_std(row[side]) for side in OURS]
        cells += [" / ".join(_yes_no(row[f"{side}_inside_{ref}"]) for ref in REFERENCES)
                  for side in OURS]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += ["", "| side | seeds | s/epoch, median | s/epoch, min | reference median / this "
              "median | load before, per seed |", "|---|---:|---:|---:|---:|---|"]
    medians = {}
    for side in SIDES:
        runs = [run[side] for run in result["runs"] if run.get(side, {}).get("epochs")]
        seconds = [e["epoch_time_s"] for r in runs for e in r["epochs"] if "epoch_time_s" in e]
        if not seconds:
            continue
        medians[side] = statistics.median(seconds)
        ratio = f"{medians['reference'] / medians[side]:.2f}" if "reference" in medians else "–"
        loads = ", ".join("–" if r.get("load_before") is None else f"{r['load_before']:.1f}"
                          for r in runs)
        lines.append(f"| {side} | {len(runs)} | {medians[side]:.1f} | {min(seconds):.1f} "
                     f"| {ratio} | {loads} |")
    lines += ["", "Seconds per epoch: training only (evaluation excluded on every side). On a "
              "shared machine the minimum is the figure least stretched by other jobs' load."]
    lines += [f"- {note}" for note in result.get("notes", [])]  # added by hand to the JSON
    return "\n".join(lines) + "\n"


def per_epoch_spread(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per epoch: each side's valid Recall@20 over seeds, and whether each sea_dist side's
    mean lies within each reference side's min-max over seeds (``{side}_inside_{reference}``;
    ``None`` without both)."""
    out: dict[int, dict[str, Any]] = {}
    for run in result["runs"]:
        for side in SIDES:
            for epoch, row in _by_epoch(run, side).items():
                if "valid/recall@20" in row:
                    entry = out.setdefault(epoch, {s: [] for s in SIDES})
                    entry[side].append(row["valid/recall@20"])
    for row in out.values():
        for ref, side in itertools.product(REFERENCES, OURS):
            seeds, values = row[ref], row[side]
            inside = None
            if len(seeds) >= 2 and values:
                inside = min(seeds) <= statistics.fmean(values) <= max(seeds)
            row[f"{side}_inside_{ref}"] = inside
    return dict(sorted(out.items()))


def _by_epoch(run: dict[str, Any], side: str) -> dict[int, dict[str, Any]]:
    return {r["epoch"]: r for r in run.get(side, {}).get("epochs", [])}


def _yes_no(inside: bool | None) -> str:
    return "–" if inside is None else "yes" if inside else "no"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def _cell(row: dict[str, Any] | None, key: str, digits: int) -> str:
    return "–" if row is None or key not in row else f"{row[key]:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="checkout of github.com/bruno686/SEA")
    parser.add_argument("--site", type=Path, required=True,
                        help="folder holding torch_geometric and lmdb")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ref/bench"), help="scratch folder")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[999, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=RESULTS / "reference.json")
    parser.add_argument("--reuse", action="store_true",
                        help="read finished runs left in --work instead of training them again")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES),
                        help="sides to run; the others are kept from --out's JSON")
    args = parser.parse_args()

    data_root = args.work / "data"
    for side, extra in REFERENCE_SIDES.items():
        if side in args.sides:
            prepare_reference(args.reference, args.work / side, extra)
    prepare_data(args.data, data_root / "tiktok")
    threads = os.cpu_count() or 1  # a lone sea_dist worker's torch threads (train/trainer.py)
    commit = subprocess.run(["git", "-C", str(args.reference), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or None
    result: dict[str, Any] = {
        "machine": machine(),
        "reference": {"repo": "https://github.com/bruno686/SEA", "commit": commit,
                      "patches": [{"file": p.path, "why": p.why} for p in PATCHES],
                      "reference_after_epoch_patch": AFTER_EPOCH.why},
        "protocol": {"epochs": args.epochs, "lr": args.lr, "batch_size": 2048, "embedding_dim": 64,
                     "seeds": args.seeds, "threads": threads,
                     "summary": f"{args.epochs} epochs, lr {args.lr:g}, batch 2048, embedding 64, "
                                "CLUB at the model's lr; sea_dist full graph on one worker "
                                "(`sea_dist`), sampled on 2 workers of 1024 edges a batch "
                                "(`sea_dist_sampled`) and sampled with every neighbour on one "
                                "worker (`sea_dist_sampled_all`); `reference_after_epoch` is the "
                                "reference ranking, as sea_dist, with a forward after the "
                                "epoch's last step"},
        "runs": [],
    }
    # Sides not run now, and with --reuse a run read back from --work, keep what the last JSON
    # said of them (a run's load and wall time are not in its logs).
    previous = _previous_sides(args.out)
    if args.out.exists():
        result["notes"] = json.loads(args.out.read_text()).get("notes", [])
    for seed in args.seeds:
        run: dict[str, Any] = {"seed": seed}
        result["runs"].append(run)
        for side in SIDES:
            if side not in args.sides:
                if (seed, side) in previous:
                    run[side] = previous[(seed, side)]
                continue
            # The machine may be shared: the 1-minute load before each side says how much.
            load = os.getloadavg()[0]
            if side in REFERENCES:
                cmd, history, wall = run_reference(
                    args.work / side, data_root, args.site, seed, args.epochs, args.lr, threads,
                    args.work / f"{side}_seed{seed}.log", args.reuse)
            else:
                cmd, history, wall = run_sea_dist(
                    side, args.work / f"{side}_seed{seed}", args.work / "cache", seed,
                    args.epochs, args.lr, args.reuse)
            run[side] = previous.get((seed, side)) if wall is None else None
            run[side] = run[side] or {"commands": cmd, "epochs": history, "wall_time_s": wall,
                                      "load_before": load}
            _write(args.out, result)
        _write(args.out, result)  # with the sides kept after the last one run
        print(f"seed {seed} done", flush=True)


def _previous_sides(out: Path) -> dict[tuple[int, str], dict[str, Any]]:
    if not out.exists():
        return {}
    runs = json.loads(out.read_text()).get("runs", [])
    return {(run["seed"], side): run[side] for run in runs for side in SIDES if run.get(side)}


def _write(out: Path, result: dict[str, Any]) -> None:
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(result))


if __name__ == "__main__":
    main()
