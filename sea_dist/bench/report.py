"""Bench outputs: ``results.json`` (everything), ``results.md`` (tables), PNG plots.

Every file is written beside its final name and renamed into place, so a reader never sees a
half-written one; ``results.json`` is written last and marks the bench as finished.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from sea_dist.io import atomic_write_text


def write_results(out: Path, results: dict[str, Any]) -> None:
    """Plots, ``results.md``, then ``results.json``."""
    plots = []
    if results.get("kind") == "training":
        plots = _training_plots(out, results)
    elif results.get("kind") == "stages":
        plots = _stage_plots(out, results)
    results["plots"] = plots
    atomic_write_text(out / "results.md", markdown(results))
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ms(s: dict[str, Any], digits: int = 0, scale: float = 1.0) -> str:
    """``median [min, max]`` of a spread."""
    if not s or s.get("n", 0) == 0:
        return "-"
    return (f"{_fmt(s['median'] * scale, digits)} "
            f"[{_fmt(s['min'] * scale, digits)}, {_fmt(s['max'] * scale, digits)}]")


def machine_line(m: dict[str, Any]) -> str:
    gpus = ", ".join(g["name"] for g in m.get("gpus", [])) or "no GPU"
    v = m.get("versions", {})
    return (f"{m.get('cpu')}, {m.get('logical_cores')} logical cores, {m.get('memory_gib')} GiB, "
            f"{gpus}; torch {v.get('torch')}, dgl {v.get('dgl')}, ray {v.get('ray')}, "
            f"Python {m.get('python')}")


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Bench: {results['scenario']}{' (quick)' if results.get('quick') else ''}",
        "",
        results.get("description", "").strip(),
        "",
        f"Machine: {machine_line(results['machine'])}. Device: {results.get('device')}. "
        f"Bench wall time {_fmt(results.get('bench_wall_s'), 0)} s.",
        "",
    ]
    if results.get("kind") == "training":
        lines += _training_markdown(results)
    else:
        lines += _stage_markdown(results)
    return "\n".join(lines).rstrip() + "\n"


def _training_markdown(r: dict[str, Any]) -> list[str]:
    cfg = r["config"]
    tp = r["throughput"]
    lines = [
        f"Model {cfg['model']}, mode {cfg['mode']}, batch {cfg['batch_size']}, fanouts "
        f"{cfg['fanouts']}; each figure is the median [min, max] over {tp['repeats']} epochs after "
        f"{tp['warmup_epochs']} warm-up epoch(s).",
        "",
        "## Training throughput",
        "",
        "| run | workers | steps/worker | seed edges/s (total) | per worker | epoch s "
        "| sampling s | data movement s | fwd-bwd s | communication s | estimator s | optimizer s "
        "| bytes/step | peak RSS/worker MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in tp["runs"]:
        t = row["time_s"]
        rss = ", ".join(_fmt(x, 0) for x in row["peak_rss_mb_per_worker"])
        if row.get("peak_gpu_mb_rank0") is not None:
            rss += f" (GPU {_fmt(row['peak_gpu_mb_rank0'], 0)})"
        lines.append(
            f"| {row['label']} | {row['workers']} | {row['steps_per_worker']} "
            f"| {_ms(row['edges_per_s_total'])} | {_ms(row['edges_per_s_per_worker'])} "
            f"| {_ms(row['epoch_time_s'], 2)} | {_fmt(t['sampling']['median'], 2)} "
            f"| {_fmt(t['data movement']['median'], 3)} | {_fmt(t['forward-backward']['median'], 2)} "
            f"| {_fmt(t['communication']['median'], 2)} | {_fmt(t['estimator']['median'], 2)} "
            f"| {_fmt(t['optimizer']['median'], 2)} "
            f"| {_fmt(row['bytes_per_step']['total']['median'], 0)} | {rss} |"
        )
    lines += _limit_markdown(r["machine"].get("peaks"),
                             [(row["label"], row["roofline"]) for row in tp["runs"] if "roofline" in row])
    lines += ["", "## Scaling", "",
              "| regime | workers | steps/worker | seed edges/s (total) | speedup | efficiency |",
              "|---|---|---|---|---|---|"]
    for regime in ("strong", "weak"):
        s = tp[regime]
        for w in sorted(s["edges_per_s_total"], key=int):
            lines.append(
                f"| {regime} | {w} | {s['steps_per_worker'][w]} | {_fmt(s['edges_per_s_total'][w])} "
                f"| {_fmt(s['speedup'][w], 2)} | {_fmt(s['efficiency'][w], 2)} |"
            )
    lines += ["", "Strong: fixed total steps per epoch shared by the workers; weak: fixed steps per "
              "worker. Efficiency = (total throughput / that of the fewest workers) / (worker ratio).",
              "Communication is the row-sparse embedding-gradient sync; DDP's dense all-reduce "
              "overlaps the backward pass and is counted in forward-backward."]
    if "sampler" in r:
        s = r["sampler"]
        lines += ["", "## Sampler", "",
                  f"Seed edges/s of the sampled loader alone ({s['threads']} DGL thread(s), batch "
                  f"{s['batch_size']}, windows of {s['steps_per_window']} batches): "
                  f"{_ms(s['seed_edges_per_s'])}; mean input nodes per batch "
                  f"{_fmt(s['mean_input_nodes'])}."]
    if "eval" in r:
        e = r["eval"]
        lines += ["", "## Evaluation", "",
                  f"Exact full ranking of {e['users']} {e['split']} users against {e['num_items']} "
                  f"items: {_ms(e['users_per_s'])} users/s "
                  f"({_ms(e['pairs_per_s'], 1, 1e-6)} M pairs/s), {_ms(e['seconds'], 2)} s per pass."]
        if "roofline" in e:
            x = e["roofline"]
            lines += ["", f"As a GEMM ({x['flop_per_pair']} FLOP per scored pair): "
                      f"{_fmt(x['flop_per_s'] / 1e9, 1)} GFLOP/s, "
                      f"{_fmt(100 * x['fraction_of_gemm_peak'], 0)} % of the GEMM peak "
                      f"({x['peak']['where']}, {_fmt(x['peak']['gemm_flop_per_s'] / 1e9, 1)} GFLOP/s)."]
    if "time_to_accuracy" in r:
        t = r["time_to_accuracy"]
        lines += ["", "## Time to accuracy", "",
                  f"Target valid Recall@20 = {_fmt(t['target'], 4)} ({t['target_rule']}); "
                  f"at most {t['max_epochs']} epochs.", "",
                  "| run | workers | epochs | median epoch s | best Recall@20 | time to target s |",
                  "|---|---|---|---|---|---|"]
        for mode, c in t["runs"].items():
            lines.append(
                f"| {mode} ({c['label']}) | {c['workers']} | {len(c['epochs'])} "
                f"| {_fmt(c['epoch_time_s']['median'], 2)} | {_fmt(c['best_recall@20'], 4)} "
                f"| {_fmt(c['time_to_target_s'], 1) if c['time_to_target_s'] is not None else 'not reached'} |"
            )
        lines += ["", f"Clock: {t['clock']}."]
    if r.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in r["plots"])]
    return lines


_COMPONENTS = {
    "inputs": "inputs (feature tower, ID rows)",
    "propagation": "propagation over the blocks",
    "item_hop": "item hop",
    "losses": "losses (BPR, SoloSim, distancing)",
}


def _limit_markdown(peaks: dict[str, Any] | None, runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The machine's peaks, then per run each phase against them (see bench/roofline.py)."""
    if not peaks or not runs:
        return []
    cpu = "; ".join(f"{p['threads']} thread(s) {_fmt(p['gemm_flop_per_s'] / 1e9, 1)} GFLOP/s, "
                    f"{_fmt(p['bandwidth_bytes_per_s'] / 1e9, 1)} GB/s" for p in peaks["cpu"])
    gpu = peaks.get("cuda")
    gpu_text = (f" GPU {gpu['device']}: {_fmt(gpu['gemm_flop_per_s'] / 1e12, 1)} TFLOP/s, "
                f"{_fmt(gpu['bandwidth_bytes_per_s'] / 1e9, 0)} GB/s." if gpu else "")
    load = peaks.get("load_average")
    load_text = f", 1-minute load average {load:.1f}" if load is not None else ""
    lines = ["", "## Against the machine's limit", "",
             f"Peaks measured at the start of the bench ({peaks['method']}{load_text}): "
             f"CPU {cpu}.{gpu_text} A fraction above 100 % means the peak was measured low "
             "(other work on the machine).",
             "Each phase's FLOPs and bytes are counted from the model config and the batches' "
             "sizes (`sea_dist/bench/roofline.py`); the fraction of the limit is the larger of "
             "achieved FLOP/s / GEMM peak (compute) and bytes/s / bandwidth (memory). Rows in "
             "italics split the forward-backward's counts: time at the limit per step, no "
             "measured time of their own. Communication counts the bytes a rank sent, held to "
             "the memory bandwidth (local workers exchange them through memory; across "
             "machines the network is the limit). Figures are per worker (rank 0)."]
    for label, x in runs:
        peak = x["peak"]
        lines += ["", f"**{label}** (held to {peak['where']}: "
                  f"{_fmt(peak['gemm_flop_per_s'] / 1e9, 1)} GFLOP/s, "
                  f"{_fmt(peak['bandwidth_bytes_per_s'] / 1e9, 1)} GB/s; step "
                  f"{_fmt((x['step_s'] or math.nan) * 1e3, 1)} ms, at the limit "
                  f"{_fmt((x['step_ideal_s'] if x['step_ideal_s'] is not None else math.nan) * 1e3, 2)} ms"
                  + ("" if x["counted"] else f"; no FLOP count for model {x['model']}") + ")", "",
                  "| phase | s/epoch | share | MFLOP/step | MB/step | GFLOP/s | GB/s "
                  "| fraction of limit | bound |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for p in x["phases"]:
            flops, nbytes = p.get("flops_per_step"), p.get("bytes_per_step")
            frac = p.get("fraction_of_limit")
            lines.append(
                f"| {p['phase']} | {_fmt(p['time_s'], 3)} | {_fmt(100 * p['share'], 1)} % "
                f"| {_fmt(flops / 1e6 if flops is not None else None, 1)} "
                f"| {_fmt(nbytes / 1e6 if nbytes is not None else None, 1)} "
                f"| {_fmt(p['flop_per_s'] / 1e9 if p.get('flop_per_s') is not None else None, 2)} "
                f"| {_fmt(p['bytes_per_s'] / 1e9 if p.get('bytes_per_s') is not None else None, 2)} "
                f"| {_fmt(100 * frac, 2) + ' %' if frac is not None else '-'} | {p.get('bound') or '-'} |"
            )
            if p["phase"] == "forward-backward":
                for c in x["components"]:
                    lines.append(
                        f"| *{_COMPONENTS.get(c['component'], c['component'])}* | - | - "
                        f"| *{_fmt(c['flops_per_step'] / 1e6, 1)}* | *{_fmt(c['bytes_per_step'] / 1e6, 1)}* "
                        f"| - | - | *{_fmt(c['ideal_s_per_step'] * 1e3, 3)} ms at the limit* | - |"
                    )
    return lines


def _stage_markdown(r: dict[str, Any]) -> list[str]:
    lines = [r.get("what", ""), "", "| stage | wall s | peak RSS MiB | notes |", "|---|---|---|---|"]
    for s in r["stages"]:
        lines.append(f"| {s['stage']} | {_fmt(s['seconds'], 1)} | {_fmt(s['peak_rss_mib'], 0)} | {s.get('notes', '')} |")
    lines += ["", f"Total: {_fmt(sum(s['seconds'] for s in r['stages']), 0)} s."]
    lines += _limit_markdown(r["machine"].get("peaks"),
                             [(f"stage {s['stage']}", s["roofline"]) for s in r["stages"] if "roofline" in s])
    if r.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in r["plots"])]
    return lines


def _save(fig: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _training_plots(out: Path, r: dict[str, Any]) -> list[str]:
    plt = _pyplot()
    tp = r["throughput"]
    by_label = {row["label"]: row for row in tp["runs"]}
    names = []

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for regime, marker in (("strong", "o"), ("weak", "s")):
        s = tp[regime]
        ws = sorted(s["runs"], key=int)
        rows = [by_label[s["runs"][w]]["edges_per_s_total"] for w in ws]
        med = [x["median"] for x in rows]
        err = [[m - x["min"] for m, x in zip(med, rows)], [x["max"] - m for m, x in zip(med, rows)]]
        left.errorbar([int(w) for w in ws], med, yerr=err, marker=marker, capsize=3, label=regime)
        right.plot([int(w) for w in ws], [s["efficiency"][w] for w in ws], marker=marker, label=regime)
    left.set(xlabel="workers", ylabel="seed edges/s (all workers)", title="Training throughput")
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    right.set(xlabel="workers", ylabel="efficiency", title="Scaling efficiency", ylim=(0, None))
    for ax in (left, right):
        ax.set_xticks(r["workers"])
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, out / "scaling.png")
    plt.close(fig)
    names.append("scaling.png")

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(tp["runs"])), 4))
    labels = [f"{row['workers']}w x {row['steps_per_worker']}" for row in tp["runs"]]
    bottom = [0.0] * len(labels)
    for part in ("sampling", "data movement", "forward-backward", "communication", "estimator", "optimizer"):
        vals = [row["time_s"][part]["median"] / max(row["steps_per_worker"], 1) * 1e3 for row in tp["runs"]]
        ax.bar(labels, vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(ylabel="ms per step (rank 0, median epoch)", xlabel="workers x steps per worker",
           title="Time per step")
    ax.legend(fontsize=8)
    _save(fig, out / "time_breakdown.png")
    plt.close(fig)
    names.append("time_breakdown.png")

    if "time_to_accuracy" in r:
        t = r["time_to_accuracy"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode, c in t["runs"].items():
            ax.plot(c["elapsed_s"], c["recall@20"], marker=".", label=f"{mode}, {c['workers']} worker(s)")
        if t["target"] is not None and math.isfinite(t["target"]):
            ax.axhline(t["target"], color="grey", ls="--", lw=0.8, label="target")
        ax.set(xlabel="training wall time (s)", ylabel="valid Recall@20", title="Time to accuracy")
        ax.legend()
        ax.grid(alpha=0.3)
        _save(fig, out / "time_to_accuracy.png")
        plt.close(fig)
        names.append("time_to_accuracy.png")
    return names


def _stage_plots(out: Path, r: dict[str, Any]) -> list[str]:
    plt = _pyplot()
    stages = r["stages"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [s["stage"] for s in stages]
    left.barh(names, [s["seconds"] for s in stages])
    left.set(xlabel="wall time (s)", title="Stage time")
    right.barh(names, [s["peak_rss_mib"] for s in stages])
    right.set(xlabel="peak RSS (MiB)", title="Stage peak memory")
    for ax in (left, right):
        ax.invert_yaxis()
    _save(fig, out / "stages.png")
    plt.close(fig)
    return ["stages.png"]
