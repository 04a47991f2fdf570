"""What the RL benchmarks (``rl_agents.py``, ``rl_tdmpc2.py``, ``rl_sample_efficiency.py``) do
alike: skip finished runs, keep a copy of each run's ``metrics.csv`` and summarise the finished
seeds of one configuration."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from pathlib import Path

from era.runs import read_metrics


def is_finished(out: Path, total_steps: int, copy: Path) -> bool:
    """Whether the run in ``out`` wrote its ``summary.json`` at the full step count, or the
    committed ``copy`` of its ``metrics.csv`` reaches it (a fresh machine has only the copies)."""
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["step"] >= total_steps:
        return True
    return copy.exists() and read_metrics(copy)["step"][-1] >= total_steps


def copy_metrics(source: Path, target: Path) -> None:
    """Keep a run's ``metrics.csv`` beside the results, so they rebuild without the runs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def seed_summary(csvs: list[Path], total_steps: int, entropy_key: str | None = None) -> dict | None:
    """Final return and return averaged over evaluations (mean and std over seeds) and wall
    steps/s of the copied ``metrics.csv`` files that reached ``total_steps``, each curve read up
    to ``total_steps`` (so longer runs compare at an earlier step); with ``entropy_key``, also
    the lowest per-state entropy seen, under that name. None if no seed finished."""
    finals, curves, floors, sps = [], [], [], []
    for path in csvs:
        metrics = read_metrics(path) if path.exists() else {}
        if metrics:
            upto = metrics["step"] <= total_steps
            metrics = {k: v[upto] for k, v in metrics.items()} if upto.any() else {}
        if metrics and metrics["step"][-1] >= total_steps:
            finals.append(float(metrics["return_mean"][-1]))
            curves.append(float(metrics["return_mean"].mean()))
            sps.append(float(metrics["step"][-1] / metrics["time_s"][-1]))
            if entropy_key is not None:
                floors.append(float(metrics["entropy_min"].min()))
    if not finals:
        return None
    row = {
        "final_return_mean": statistics.mean(finals),
        "final_return_std": statistics.pstdev(finals),
        "final_returns": finals,
        "curve_return_mean": statistics.mean(curves),
        "curve_return_std": statistics.pstdev(curves),
    }
    if entropy_key is not None:
        row[entropy_key] = min(floors)
    return row | {"seeds": len(finals), "steps_per_s": statistics.mean(sps)}


def mean_std(row: dict, key: str) -> str:
    """``"mean ± std"`` of a :func:`seed_summary` return (``key``: ``final`` or ``curve``)."""
    return f"{row[f'{key}_return_mean']:.1f} ± {row[f'{key}_return_std']:.1f}"


def args_json(args) -> dict:
    """The benchmark's arguments as JSON-able values (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(args), default=str))


def write_results(results: Path, result: dict, table: str) -> None:
    """``summary.json`` and the markdown ``table.md`` into ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / "table.md").write_text(table + "\n")
