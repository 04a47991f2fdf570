"""Accuracy and calibration on Fashion-MNIST: cross-entropy vs label smoothing vs ERA.

Every method trains the same timm ResNet (``resnet10t``, 1-channel input, randomly initialised)
with the same data, schedule and budget, for several seeds; the script reports test top-1, NLL,
ECE (15 bins) and predictive entropy as mean ± std over seeds, writes them to
``benchmarks/results/vision_calibration.json`` and draws ``docs/img/vision_calibration*.png``.
Finished runs are skipped and interrupted ones resumed, so rerunning the command continues.

The CPU budget run (what docs/benchmarks/vision.md reports: 5 methods x 3 seeds, each 200 steps
of batch 128 on a fixed 25,600-image subset, evaluated on the full 10,000-image test set; about
20 min of one core uncontended):

    OMP_NUM_THREADS=1 python benchmarks/vision_calibration.py --era-min-entropy 0.1 0.3 0.6

The full recipe on a GPU (all 60,000 images, 30 epochs, evaluation every epoch):

    python benchmarks/vision_calibration.py --train-subset 0 --epochs 30 --device cuda \
        --threads 0 --parallel 1 --era-min-entropy 0.1 0.3 0.6 \
        --out-dir runs/vision_calibration_full \
        --results benchmarks/results/vision_calibration_full.json \
        --figure docs/img/vision_calibration_full.png
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from era.plotting import save_figure
from era.runs import run_in_parallel
from era.vision.plot import group_runs, plot_reliability, run_label
from era.vision.train import CHECKPOINT, TrainConfig, train

METRICS = ("top1", "top5", "nll", "ece", "entropy_mean", "entropy_min")


@dataclass
class Args:
    """Train every method for every seed on the same budget, then tabulate and plot."""

    epochs: int = 1
    """epochs per run (1 on the CPU budget; 30 for the full recipe)"""
    train_subset: int = 25_600
    """training images per run (0 = all 60,000)"""
    eval_every: int = 0
    """evaluate every this many steps (0 = every epoch); the last step is always evaluated"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of every method"""
    era_min_entropy: tuple[float, ...] = (0.1, 0.3, 0.6)
    """ERA entropy floors to compare (nats; log 10 ≈ 2.30 is the maximum)"""
    label_smoothing: float = 0.1
    """the label-smoothing baseline's epsilon"""
    model: str = "resnet10t"
    """timm model name"""
    lr: float = 0.1
    """peak SGD learning rate"""
    warmup_epochs: float = 0.1
    """linear warmup before the cosine decay"""
    device: str = "auto"
    """auto, cpu or cuda"""
    threads: int = 1
    """torch threads per run"""
    parallel: int = 2
    """runs at a time (separate processes)"""
    out_dir: Path = Path("runs/vision_calibration")
    """where the runs are written"""
    results: Path = Path("benchmarks/results/vision_calibration.json")
    """the JSON summary"""
    report_only: bool = False
    """train nothing: tabulate and plot the runs that have finished"""
    figure: Path = Path("docs/img/vision_calibration.png")
    """bar chart of the metrics; the reliability diagram goes beside it (*_reliability.png)"""


def configs(args: Args) -> list[TrainConfig]:
    """One TrainConfig per (method, seed), differing only in the method's fields and the seed."""
    methods = {"ce": {}, f"ls{args.label_smoothing:g}": {"label_smoothing": args.label_smoothing}}
    for h0 in args.era_min_entropy:
        methods[f"era{h0:g}"] = {"era_min_entropy": h0}
    common = dict(
        model=args.model,
        epochs=args.epochs,
        train_subset=args.train_subset,
        eval_every=args.eval_every,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        device=args.device,
        threads=args.threads,
        progress=False,
    )
    return [
        TrainConfig(out=args.out_dir / name / f"seed{seed}", seed=seed, **common, **method)
        for name, method in methods.items()
        for seed in args.seeds
    ]


def run_one(config: TrainConfig) -> dict[str, float]:
    """Train one run unless it has finished already; its final test metrics."""
    final = Path(config.out) / "final.json"
    if final.exists():
        return json.loads(final.read_text())
    started = time.perf_counter()
    metrics = train(dataclasses.replace(config, resume=(Path(config.out) / CHECKPOINT).exists()))
    print(f"{config.out}: {metrics} ({time.perf_counter() - started:.0f} s)", flush=True)
    return metrics


def summarise(runs: list[TrainConfig], results: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for config, metrics in zip(runs, results, strict=True):
        groups.setdefault(run_label(dataclasses.asdict(config)), []).append(metrics)
    table = {}
    for label, rows in groups.items():
        table[label] = {"n_seeds": len(rows)}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows])
            table[label][metric] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(rows) > 1 else math.nan,
                "values": values.tolist(),
            }
    return table


def _cell(stats: dict, scale: float = 1.0, digits: int = 3) -> str:
    if math.isnan(stats["std"]):  # a single seed
        return f"{stats['mean'] * scale:.{digits}f}"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def markdown(table: dict) -> str:
    lines = [
        "| method | top-1 (%) | NLL | ECE (%) | mean entropy | min entropy |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        lines.append(
            f"| {label} | {_cell(row['top1'], 100, 2)} | {_cell(row['nll'])} | "
            f"{_cell(row['ece'], 100, 2)} | {_cell(row['entropy_mean'])} | "
            f"{_cell(row['entropy_min'])} |"
        )
    return "\n".join(lines)


def plot_summary(table: dict, out_png: Path) -> Path:
    """Top-1, NLL, ECE and entropy per method: mean ± std over seeds, and each seed (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("top1", "test top-1 (%)", 100),
        ("nll", "test NLL (nats)", 1),
        ("ece", "test ECE, 15 bins (%)", 100),
        ("entropy_mean", "mean entropy (nats)", 1),
    ]
    labels = list(table)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (metric, title, scale) in zip(axes, panels, strict=True):
        means = [table[k][metric]["mean"] * scale for k in labels]
        stds = [np.nan_to_num(table[k][metric]["std"]) * scale for k in labels]  # 1 seed: NaN
        # Points, not bars: the axes do not start at zero.
        ax.errorbar(range(len(labels)), means, yerr=stds, fmt="o", capsize=4, color="C0")
        for i, k in enumerate(labels):
            values = np.array(table[k][metric]["values"]) * scale
            ax.plot([i + 0.15] * len(values), values, "k.", ms=3, alpha=0.6)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        low = min(m - s for m, s in zip(means, stds, strict=True))
        high = max(m + s for m, s in zip(means, stds, strict=True))
        ax.set_ylim(max(0.0, low - 0.3 * (high - low)), high + 0.3 * (high - low))
        ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out_png)


def main(args: Args) -> None:
    runs = configs(args)
    started = time.perf_counter()
    if args.report_only:
        runs = [c for c in runs if (Path(c.out) / "final.json").exists()]
        print(f"{len(runs)} finished runs under {args.out_dir}", flush=True)
        results = [run_one(c) for c in runs]
    else:
        print(f"{len(runs)} runs under {args.out_dir}", flush=True)
        results = run_in_parallel(run_one, runs, max_workers=args.parallel)
    table = summarise(runs, results)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": "python " + " ".join(sys.argv),
        "args": json.loads(json.dumps(dataclasses.asdict(args), default=str)),
        "wall_s_this_invocation": time.perf_counter() - started,
        "table": table,
    }
    args.results.write_text(json.dumps(summary, indent=2) + "\n")
    summary_png = plot_summary(table, args.figure)
    reliability = plot_reliability(
        group_runs([Path(c.out) for c in runs]),
        args.figure.with_name(args.figure.stem + "_reliability.png"),
    )
    print(markdown(table))
    print(f"wrote {args.results}, {summary_png}, {reliability}")


if __name__ == "__main__":
    main(tyro.cli(Args))
