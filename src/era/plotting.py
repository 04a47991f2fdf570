"""Learning curves with mean ± std over seeds, from the ``metrics.csv`` of several runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from era.runs import read_metrics


def mean_std(csv_paths: Sequence[Path], x: str, y: str) -> tuple[np.ndarray, ...]:
    """Mean and std of column ``y`` over runs, on the ``x`` grid of the shortest run.

    Runs evaluated at different steps are linearly interpolated onto that grid, so seeds stopped at
    different points can still be averaged (only over the range they all cover).
    """
    runs = [read_metrics(p) for p in csv_paths]
    runs = [r for r in runs if r and y in r and len(r[x])]
    if not runs:
        raise ValueError(f"no run among {list(map(str, csv_paths))} has column {y!r}")
    grid = min((r[x] for r in runs), key=lambda v: v[-1])
    values = np.stack([np.interp(grid, r[x], r[y]) for r in runs])
    return grid, values.mean(0), values.std(0), len(runs)


def plot_curves(
    groups: Mapping[str, Sequence[Path]],
    x: str,
    panels: Sequence[tuple[str, str]],
    out_png: Path,
    *,
    hlines: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """One panel per ``(column, label)``; one line ± std band per group of runs (label → CSVs).

    ``hlines`` draws a dashed reference line in the panel of that column (e.g. the target entropy).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (column, ylabel) in zip(axes[0], panels, strict=True):
        for label, paths in groups.items():
            try:
                grid, mean, std, n = mean_std(paths, x, column)
            except ValueError:
                continue
            (line,) = ax.plot(grid, mean, label=f"{label} (n={n})")
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2, color=line.get_color())
        if hlines and column in hlines:
            ax.axhline(hlines[column], ls="--", color="k", lw=1, label="target")
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_png)


def save_figure(fig, out_png: Path, dpi: int = 120) -> Path:
    """Lay out, write (creating its folder) and close a figure, so none stays open in memory."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png
