"""``era vision train | plot``: the command line of the image classifier.

Each command is a dataclass parsed by tyro, and the same dataclass is the Python API:
``era.vision.train(TrainConfig(era_min_entropy=0.3))``, ``era.vision.cli.plot(PlotConfig(...))``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from era.vision.train import TrainConfig


@dataclass
class PlotConfig:
    """Accuracy / NLL / ECE / entropy curves (mean ± std over seeds) and a reliability diagram."""

    runs: Annotated[list[Path], tyro.conf.Positional]
    """run directories, or folders holding runs (searched for */metrics.csv); runs that differ
    only in the seed are averaged"""
    out: Path | None = None
    """PNG of the curves (default: vision_curves.png in the runs' common parent); the reliability
    diagram is written beside it as *_reliability.png"""


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path if it is a run (has metrics.csv), else every run found below it."""
    runs = []
    for path in paths:
        found = (
            [path]
            if (path / "metrics.csv").is_file()
            else sorted(p.parent for p in path.rglob("metrics.csv"))
        )
        if not found:
            raise FileNotFoundError(f"{path} holds no metrics.csv (nor any below it)")
        runs += found
    return runs


def plot(config: PlotConfig) -> tuple[Path, Path]:
    """Write the curves and the reliability diagram; return both paths."""
    from era.vision.plot import plot_runs

    runs = find_runs(config.runs)
    common = Path(os.path.commonpath([r.resolve() for r in config.runs]))
    return plot_runs(runs, config.out or common / "vision_curves.png")


def main(argv: list[str] | None = None) -> None:
    from era.vision.train import train

    # Errors reach `era`'s one-line error handler (era.cli.user_errors): exit 2 for a setting or
    # run folder to fix, 130 / 143 after Ctrl-C / SIGTERM saved the run.
    config = tyro.extras.subcommand_cli_from_dict(
        {"train": TrainConfig, "plot": PlotConfig},
        prog="era vision",
        args=argv,
        description="Image classification with the ERA softmax head (timm / torchvision).",
    )
    if isinstance(config, TrainConfig):
        metrics = train(config)
        if int(os.environ.get("RANK", "0")) == 0:  # once, not once per torchrun process
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"{config.out}: {shown}   (plot: era vision plot {config.out})")
    else:
        curves, reliability = plot(config)
        print(f"wrote {curves} and {reliability}")
