"""The floor along real training runs: per-state policy entropy on replay batches vs the target.

At every evaluation, ``era.rl.sac`` computes the entropy of the policy in each of 1,024 states
drawn from the replay buffer and logs its min / mean / max (``entropy_min``, ``entropy``,
``entropy_max``) beside ``target_entropy``. This script reads those columns from the runs of
``benchmarks/rl_sample_efficiency.py`` (no extra training) for SAC-ERA in exact mode, and for
contrast for SAC(auto-alpha), whose constraint holds only on average (its entropy is a 16-sample
Monte Carlo estimate per state: the tanh-Gaussian has no closed form). Per task and evaluation
step it reports the min over seeds of the per-state minimum, the mean of the means, the max of
the maxima and the largest |entropy - target| in any state.

    OMP_NUM_THREADS=1 python benchmarks/rl_floor.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro

from era.plotting import save_figure
from era.runs import read_metrics

HEADS = ("SAC-ERA", "SAC")


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["Hopper-v5", "dm_control/cartpole-swingup"])
    """tasks run by rl_sample_efficiency.py"""
    results: Path = Path("benchmarks/results/rl_sample_efficiency")
    """where rl_sample_efficiency.py copied the runs' metrics.csv"""
    out: Path = Path("benchmarks/results/rl_floor.json")
    """JSON result (the markdown table is printed and written beside it)"""
    figure: Path = Path("docs/img/rl_floor.png")
    """per-state entropy band against the target"""


def floor_rows(csv_paths: list[Path]) -> list[dict]:
    """One row per evaluation step shared by all runs: per-state entropy extremes over seeds."""
    runs = [read_metrics(p) for p in csv_paths]
    steps = sorted(set.intersection(*(set(r["step"].tolist()) for r in runs)))
    rows = []
    for step in steps:
        at = [{k: v[r["step"] == step][0] for k, v in r.items()} for r in runs]
        target = at[0]["target_entropy"]
        low = min(a["entropy_min"] for a in at)
        high = max(a["entropy_max"] for a in at)
        rows.append(
            {
                "step": int(step),
                "target": float(target),
                "min": float(low),
                "mean": float(np.mean([a["entropy"] for a in at])),
                "max": float(high),
                "max_abs_gap": float(max(abs(low - target), abs(high - target))),
                "unreachable": int(sum(a.get("unreachable", 0) for a in at)),
            }
        )
    return rows


def main(args: Args) -> dict:
    result: dict = {}
    for task in args.tasks:
        name = task.replace("/", "_")
        for head in HEADS:
            paths = sorted((args.results / name / head).glob("seed*/metrics.csv"))
            if paths:
                result.setdefault(task, {})[head] = {
                    "seeds": len(paths),
                    "rows": floor_rows(paths),
                }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    plot(result, args.figure)
    return result


def markdown(result: dict) -> str:
    lines = [
        "| task | head | step | target | per-state min | mean | per-state max | max abs gap |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, heads in result.items():
        for head, data in heads.items():
            for r in data["rows"]:
                lines.append(
                    f"| {task} | {head} | {r['step']} | {r['target']:.3f} | {r['min']:.6f} | "
                    f"{r['mean']:.6f} | {r['max']:.6f} | {r['max_abs_gap']:.1e} |"
                )
    return "\n".join(lines)


def plot(result: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for head, data in result[task].items():
            rows = data["rows"]
            steps = [r["step"] for r in rows]
            (line,) = ax.plot(steps, [r["mean"] for r in rows], label=f"{head} mean")
            ax.fill_between(
                steps,
                [r["min"] for r in rows],
                [r["max"] for r in rows],
                alpha=0.2,
                color=line.get_color(),
                label=f"{head} per-state min-max",
            )
            ax.axhline(
                rows[0]["target"], ls="--", lw=1, color=line.get_color(), label=f"{head} target"
            )
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("per-state policy entropy (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out_png)


if __name__ == "__main__":
    main(tyro.cli(Args))
