"""Sample efficiency: SAC-ERA (exact per-state floor) against SAC with auto-tuned temperature.

Runs every (seed, task, head) with ``era.rl.train`` into ``RUNS/TASK/HEAD/seedN``, seed-major so
that a budget cut short still leaves every task and head with the same seeds. Finished runs
(``summary.json`` at the full step count) are skipped; a run with a checkpoint is resumed, so the
script can be killed and restarted at any time. Afterwards (or with ``--aggregate-only``) it
writes, per task and head, the final evaluation return and the return averaged over all
evaluations of a run (a learning-curve area; both as mean and std over seeds) with the ERA / SAC
ratios of the means to a JSON file and a markdown table, copies each run's ``metrics.csv`` beside
the JSON (so the tables and plots can be rebuilt without the run directories) and draws the
learning curves with ``era rl plot``.

The issue's full scale (3M environment steps; docs/benchmarks/rl.md estimates its cost)::

    OMP_NUM_THREADS=1 python benchmarks/rl_sample_efficiency.py \\
        --tasks HalfCheetah-v5 Hopper-v5 Walker2d-v5 Ant-v5 dm_control/walker-run \\
        --seeds 0 1 2 --total-steps 100000 --hidden 256 --learning-starts 5000 --eval-every 10000

What was run for docs/benchmarks/rl.md is in that file.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from era.rl.config import SACConfig, TrainConfig
from era.runs import read_metrics

HEADS = {"SAC-ERA": ("era", "exact"), "SAC": ("alpha", "exact")}


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["Hopper-v5", "dm_control/cartpole-swingup"])
    """Gymnasium or dm_control task ids"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds, run in this order (seed-major)"""
    total_steps: int = 100_000
    """environment steps per run"""
    hidden: int = 256
    """hidden width of actor and critics"""
    batch_size: int = 256
    """transitions per gradient update"""
    learning_starts: int = 5000
    """random steps before learning"""
    eval_every: int = 10_000
    """steps between evaluations"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    runs: Path = Path("runs/rl_sample_efficiency")
    """run directories (checkpoints, TensorBoard)"""
    results: Path = Path("benchmarks/results/rl_sample_efficiency")
    """JSON, markdown table and the runs' metrics.csv copies"""
    figure: Path = Path("docs/img/rl_sample_efficiency.png")
    """learning curves"""
    aggregate_only: bool = False
    """skip training; rebuild the tables and figure from the copied CSVs"""


def run_dir(args: Args, task: str, head: str, seed: int) -> Path:
    return args.runs / task.replace("/", "_") / head / f"seed{seed}"


def csv_copy(args: Args, task: str, head: str, seed: int) -> Path:
    return args.results / task.replace("/", "_") / head / f"seed{seed}" / "metrics.csv"


def is_finished(out: Path, total_steps: int) -> bool:
    summary = out / "summary.json"
    return summary.exists() and json.loads(summary.read_text())["step"] >= total_steps


def train_all(args: Args) -> None:
    from era.rl.train import train

    for seed in args.seeds:
        for task in args.tasks:
            for head, (policy, mode) in HEADS.items():
                out = run_dir(args, task, head, seed)
                if is_finished(out, args.total_steps):
                    print(f"done already: {out}", flush=True)
                else:
                    config = TrainConfig(
                        env=task,
                        algo="sac",
                        head=policy,
                        era_mode=mode,
                        total_steps=args.total_steps,
                        seed=seed,
                        out=out,
                        eval_every=args.eval_every,
                        eval_episodes=args.eval_episodes,
                        checkpoint_every=args.eval_every,
                        resume=(out / "checkpoint.pt").exists(),
                        progress=False,
                        sac=SACConfig(
                            hidden=args.hidden,
                            batch_size=args.batch_size,
                            learning_starts=args.learning_starts,
                        ),
                    )
                    start = time.perf_counter()
                    train(config)
                    print(f"trained {out} in {time.perf_counter() - start:.0f} s", flush=True)
                target = csv_copy(args, task, head, seed)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / "metrics.csv", target)


def aggregate(args: Args) -> dict:
    """Final return per task and head over the seeds whose runs reached ``total_steps``."""
    table = {}
    for task in args.tasks:
        row = {}
        for head in HEADS:
            finals, curves, sps = [], [], []
            for seed in args.seeds:
                path = csv_copy(args, task, head, seed)
                metrics = read_metrics(path) if path.exists() else {}
                if metrics and metrics["step"][-1] >= args.total_steps:
                    finals.append(float(metrics["return_mean"][-1]))
                    curves.append(float(metrics["return_mean"].mean()))
                    sps.append(float(metrics["step"][-1] / metrics["time_s"][-1]))
            if finals:
                row[head] = {
                    "final_return_mean": statistics.mean(finals),
                    "final_return_std": statistics.pstdev(finals),
                    "final_returns": finals,
                    "curve_return_mean": statistics.mean(curves),
                    "curve_return_std": statistics.pstdev(curves),
                    "seeds": len(finals),
                    "steps_per_s": statistics.mean(sps),
                }
        if len(row) == len(HEADS):  # ratios of mean returns, meaningful where both are > 0
            for key in ("final", "curve"):
                era, sac = (row[h][f"{key}_return_mean"] for h in HEADS)
                row[f"{key}_ratio_era_over_sac"] = era / sac if era > 0 and sac > 0 else None
        table[task] = row
    result = {"args": json.loads(json.dumps(dataclasses.asdict(args), default=str)), "tasks": table}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "table.md").write_text(markdown(result) + "\n")
    plot(args)
    return result


def markdown(result: dict) -> str:
    lines = [
        "| task | seeds | final return SAC-ERA | final return SAC | ERA / SAC "
        "| mean over evaluations SAC-ERA | SAC | ERA / SAC | wall steps/s ERA, SAC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(value):
        return "–" if value is None else f"{value:.2f}"

    for task, row in result["tasks"].items():
        if len(row) < len(HEADS):
            lines.append(f"| {task} | unfinished |" + " |" * 7)
            continue
        era, sac = row["SAC-ERA"], row["SAC"]
        lines.append(
            f"| {task} | {era['seeds']}, {sac['seeds']} "
            f"| {era['final_return_mean']:.1f} ± {era['final_return_std']:.1f} "
            f"| {sac['final_return_mean']:.1f} ± {sac['final_return_std']:.1f} "
            f"| {ratio(row['final_ratio_era_over_sac'])} "
            f"| {era['curve_return_mean']:.1f} ± {era['curve_return_std']:.1f} "
            f"| {sac['curve_return_mean']:.1f} ± {sac['curve_return_std']:.1f} "
            f"| {ratio(row['curve_ratio_era_over_sac'])} "
            f"| {era['steps_per_s']:.0f}, {sac['steps_per_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(args: Args) -> None:
    """Learning curves per task with ``era rl plot``, written as ``--figure`` + ``_<task>``."""
    from era.rl.cli import PlotConfig, plot

    for task in args.tasks:
        runs = [args.results / task.replace("/", "_") / head for head in HEADS]
        if all(any(r.glob("seed*/metrics.csv")) for r in runs):
            name = task.replace("/", "_")
            out = args.figure.with_name(f"{args.figure.stem}_{name}.png")
            plot(PlotConfig(runs=runs, out=out, labels=list(HEADS)))


def main(args: Args) -> dict:
    if not args.aggregate_only:
        train_all(args)
    result = aggregate(args)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
