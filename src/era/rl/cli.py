"""``era rl train | sweep | plot | eval``: the command line of the RL agents.

Each command is a dataclass (parsed by tyro) and a function of the same name taking it, so every
command is also a Python call: ``era.rl.cli.plot(PlotConfig(runs=[Path("runs/hopper")]))``.
Errors reach ``era.cli``, which prints them as one line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from era.rl.config import TrainConfig, config_from_dict
from era.rl.sweep import SweepConfig, sweep
from era.runs import CHECKPOINT, load_checkpoint, read_metrics


@dataclass
class PlotConfig:
    """Learning and entropy curves, mean +- std over seeds, one line per RUN_DIR."""

    runs: Annotated[list[Path], tyro.conf.Positional]
    """run directories: a run (with metrics.csv) or a --seeds sweep (seed*/metrics.csv)"""
    out: Path | None = None
    """PNG to write (default: curves.png in the runs' common parent directory)"""
    labels: list[str] | None = None
    """legend label per RUN_DIR (default: the directory names)"""


@dataclass
class EvalConfig:
    """Evaluate a run's last checkpoint with its deterministic policy."""

    run: Annotated[Path, tyro.conf.Positional]
    """run directory holding checkpoint.pt"""
    episodes: int = 10
    """evaluation episodes"""
    seed: int = 12_345
    """episode k starts from reset(seed=SEED + k)"""


def metrics_files(run: Path) -> list[Path]:
    """``metrics.csv`` of a run, or of each seed of a sweep directory."""
    if (run / "metrics.csv").is_file():
        return [run / "metrics.csv"]
    found = sorted(run.glob("*/metrics.csv"))
    if not found:
        raise FileNotFoundError(f"{run} holds no metrics.csv (nor */metrics.csv)")
    return found


def plot(config: PlotConfig) -> Path:
    """Return, mean per-state entropy and per-state minimum entropy against steps."""
    from era.plotting import plot_curves

    labels = config.labels or [run.resolve().name for run in config.runs]
    if len(labels) != len(config.runs):
        raise ValueError(f"labels={config.labels} must give one label per run ({len(config.runs)})")
    groups = {label: metrics_files(run) for label, run in zip(labels, config.runs, strict=True)}
    targets = {}
    for label, paths in groups.items():
        column = read_metrics(paths[0]).get("target_entropy")
        if column is not None and len(column) and math.isfinite(column[-1]):  # heads without
            targets[label] = float(column[-1])  # a target (PPO std, TD-MPC2 alpha) draw none
    out = config.out or Path(os.path.commonpath([r.resolve() for r in config.runs])) / "curves.png"
    # One dashed target line per panel: the first run's; the others' targets go in the title.
    first = next(iter(targets.values()), None)
    title = None
    if len(set(targets.values())) > 1:
        title = "target entropy (dashed: first): " + ", ".join(
            f"{label} {value:.2f}" for label, value in targets.items()
        )
    return plot_curves(
        groups,
        "step",
        [
            ("return_mean", "evaluation return"),
            ("entropy", "mean policy entropy (nats)"),
            ("entropy_min", "lowest per-state entropy (nats)"),
        ],
        out,
        hlines=None if first is None else {"entropy": first, "entropy_min": first},
        title=title,
    )


def evaluate_run(config: EvalConfig) -> tuple[float, float]:
    """Mean and std return of the checkpoint's deterministic policy."""
    from era.rl.envs import make_env
    from era.rl.loop import evaluate
    from era.rl.train import ALGORITHMS

    checkpoint = load_checkpoint(config.run / CHECKPOINT)
    train_config = config_from_dict(checkpoint["config"])
    act = ALGORITHMS[train_config.algo].load_policy(train_config, checkpoint)
    env = make_env(train_config.env, config.seed)
    return evaluate(act, env, config.episodes, config.seed)


def main(argv: list[str] | None = None) -> None:
    from era.rl.train import train

    config = tyro.extras.subcommand_cli_from_dict(
        {"train": TrainConfig, "sweep": SweepConfig, "plot": PlotConfig, "eval": EvalConfig},
        prog="era rl",
        args=argv,
        description="SAC / PPO / FastSAC / OBAC / TD-MPC2 with an ERA policy, MuJoCo / dm_control.",
    )
    if isinstance(config, TrainConfig):
        runs = train(config)
        print(
            "runs: "
            + " ".join(map(str, runs))
            + "   (plot: era rl plot "
            + " ".join(map(str, runs if len(runs) == 1 else [config.out]))
            + ")"
        )
    elif isinstance(config, SweepConfig):
        sweep(config)
        print(f"wrote {config.out / 'summary.csv'} and summary.md  (plot: era rl plot OUT/ENV/*)")
    elif isinstance(config, PlotConfig):
        print(f"wrote {plot(config)}")
    else:
        mean, std = evaluate_run(config)
        print(f"{config.run}: return {mean:.1f} +- {std:.1f} over {config.episodes} episodes")
