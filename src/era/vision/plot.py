"""``era vision plot``: accuracy/calibration curves and a reliability diagram from run folders.

Runs whose configurations differ only in the seed (and in bookkeeping such as ``out_dir``) form
one group, drawn as mean ± std over its seeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from era.plotting import plot_curves, save_figure

CURVE_PANELS = [
    ("top1", "test top-1 accuracy"),
    ("nll", "test NLL (nats)"),
    ("ece", "test ECE (15 bins)"),
    ("entropy_mean", "mean predictive entropy (nats)"),
]


def run_label(config: dict) -> str:
    """A short name for a run's method, e.g. ``ERA H0=0.3`` or ``CE + LS 0.1``."""
    if config.get("era_min_entropy") is not None:
        label = f"ERA H0={config['era_min_entropy']:g}"
        if config.get("era_floor", "tight") != "tight":
            label += f" ({config['era_floor']} floor)"
    else:
        label = "CE"
    extras = [
        ("label_smoothing", "LS"),
        ("confidence_penalty", "CP"),
        ("drop_rate", "dropout"),
        ("mixup", "mixup"),
        ("cutmix", "cutmix"),
    ]
    for key, name in extras:
        if config.get(key):
            label += f" + {name} {config[key]:g}"
    return label


def group_runs(run_dirs: Sequence[Path]) -> dict[str, list[Path]]:
    """Run folders (each with ``config.json`` and ``metrics.csv``) grouped by :func:`run_label`."""
    groups: dict[str, list[Path]] = {}
    for run_dir in map(Path, run_dirs):
        config_path = run_dir / "config.json"
        if not config_path.is_file() or not (run_dir / "metrics.csv").is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a finished or running vision run (no config.json/metrics.csv)"
            )
        groups.setdefault(run_label(json.loads(config_path.read_text())), []).append(run_dir)
    return groups


def plot_reliability(groups: dict[str, list[Path]], out_png: Path) -> Path:
    """Accuracy against confidence per bin (pooled over seeds), and how confidences spread.

    Uses each run's ``reliability.json``: the bins of its latest evaluation.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for label, run_dirs in groups.items():
        count = confidence = correct = 0.0
        for run_dir in run_dirs:
            bins = json.loads((Path(run_dir) / "reliability.json").read_text())
            n = np.array(bins["count"])
            count = count + n
            # Empty bins hold None (NaN here); they add nothing.
            confidence = confidence + n * np.nan_to_num(np.array(bins["confidence"], float))
            correct = correct + n * np.nan_to_num(np.array(bins["accuracy"], float))
        filled = count > 0
        centres = (np.arange(len(count)) + 0.5) / len(count)
        ax.plot(
            confidence[filled] / count[filled],
            correct[filled] / count[filled],
            "o-",
            ms=3,
            label=f"{label} (n={len(run_dirs)})",
        )
        hist.plot(centres, count / count.sum(), "o-", ms=3, label=label)
    ax.set(
        xlabel="confidence (top-1 probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title="reliability diagram",
    )
    hist.set(
        xlabel="confidence bin",
        ylabel="share of test images",
        xlim=(0, 1),
        title="confidence histogram",
    )
    for a in (ax, hist):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return save_figure(fig, out_png)


def plot_runs(run_dirs: Sequence[Path], out_png: Path) -> tuple[Path, Path]:
    """Curves to ``out_png`` and the reliability diagram beside it (``*_reliability.png``)."""
    groups = group_runs(run_dirs)
    curves = plot_curves(
        {label: [d / "metrics.csv" for d in dirs] for label, dirs in groups.items()},
        x="step",
        panels=CURVE_PANELS,
        out_png=out_png,
    )
    return curves, plot_reliability(groups, out_png.with_name(out_png.stem + "_reliability.png"))
