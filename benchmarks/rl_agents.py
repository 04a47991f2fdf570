"""FastSAC and OBAC, each with the ERA head (exact per-state floor) and its native temperature.

Runs every (seed, agent, head) with ``era.rl.train`` into ``RUNS/AGENT-HEAD/seedN``, seed-major
so that a budget cut short still leaves every agent and head with the same seeds. Finished runs
(``summary.json`` at the full step count) are skipped and a run with a checkpoint is resumed, so
the script can be killed and restarted at any time. Afterwards (or with ``--aggregate-only``) it
writes per agent and head the final evaluation return, the return averaged over a run's
evaluations (a learning-curve area), the lowest per-state entropy seen on replay states and the
wall-clock steps/s, as JSON and a markdown table; copies each run's ``metrics.csv`` beside them
and draws the learning curves with ``era rl plot``.

Full scale on a CPU (Hopper-v5, 3 seeds, 300k steps; days on 2 cores, see docs/benchmarks/rl.md)::

    OMP_NUM_THREADS=1 python benchmarks/rl_agents.py --total-steps 300000 --seeds 0 1 2

On a GPU (networks, batches and updates on CUDA, MuJoCo still on the CPU; FastSAC at the
authors' widths and batch)::

    python benchmarks/rl_agents.py --device cuda --total-steps 1000000 --seeds 0 1 2 \\
        --fastsac-num-envs 64 --fastsac-actor-hidden 512 --fastsac-critic-hidden 768 \\
        --fastsac-batch-size 8192 --fastsac-updates-per-step 8 --obac-hidden 512 \\
        --obac-batch-size 512 --runs runs/rl_agents_gpu --results benchmarks/results/rl_agents/gpu

What was run for docs/benchmarks/rl.md is in that file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro
from _rl_common import args_json, copy_metrics, is_finished, mean_std, seed_summary, write_results

from era.rl.config import FastSACConfig, OBACConfig, TrainConfig
from era.runs import exit_on_stop

NAMES = {("fastsac", "era"): "FastSAC-ERA", ("fastsac", "alpha"): "FastSAC",
         ("obac", "era"): "OBAC-ERA", ("obac", "alpha"): "OBAC"}  # fmt: skip


@dataclass
class Args:
    task: str = "Hopper-v5"
    """Gymnasium or dm_control task id"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds, run in this order (seed-major)"""
    agents: list[Literal["fastsac", "obac"]] = field(default_factory=lambda: ["fastsac", "obac"])
    """agents to run"""
    heads: list[Literal["era", "alpha"]] = field(default_factory=lambda: ["era", "alpha"])
    """policy heads to run"""
    total_steps: int = 100_000
    """environment steps per run"""
    learning_starts: int = 5000
    """random steps before learning (both agents)"""
    eval_every: int = 10_000
    """steps between evaluations"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """where networks and updates live"""
    fastsac_num_envs: int = 16
    """FastSAC parallel environments"""
    fastsac_actor_hidden: int = 256
    """FastSAC actor width (first layer)"""
    fastsac_critic_hidden: int = 512
    """FastSAC critic width (first layer)"""
    fastsac_batch_size: int = 1024
    """FastSAC batch"""
    fastsac_updates_per_step: int = 4
    """FastSAC critic updates per step of all environments"""
    fastsac_v_max: float = 400.0
    """FastSAC critic support [-v_max, v_max]: Hopper's discounted returns reach ~350"""
    obac_hidden: int = 256
    """OBAC width"""
    obac_batch_size: int = 256
    """OBAC batch"""
    runs: Path = Path("runs/rl_agents")
    """run directories (checkpoints, TensorBoard)"""
    results: Path = Path("benchmarks/results/rl_agents")
    """JSON, markdown table and the runs' metrics.csv copies"""
    figure: Path = Path("docs/img/rl_agents.png")
    """learning curves"""
    aggregate_only: bool = False
    """skip training; rebuild the tables and figure from the copied CSVs"""


def configs(args: Args) -> list[tuple[str, str]]:
    return [(agent, head) for agent in args.agents for head in args.heads]


def run_dir(args: Args, agent: str, head: str, seed: int) -> Path:
    return args.runs / NAMES[agent, head] / f"seed{seed}"


def csv_copy(args: Args, agent: str, head: str, seed: int) -> Path:
    return args.results / NAMES[agent, head] / f"seed{seed}" / "metrics.csv"


def train_config(args: Args, agent: str, head: str, seed: int) -> TrainConfig:
    out = run_dir(args, agent, head, seed)
    return TrainConfig(
        env=args.task,
        algo=agent,
        head=head,
        total_steps=args.total_steps,
        seed=seed,
        out=out,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=args.eval_every,
        resume=(out / "checkpoint.pt").exists(),
        progress=False,
        device=args.device,
        fastsac=FastSACConfig(
            num_envs=args.fastsac_num_envs,
            actor_hidden=args.fastsac_actor_hidden,
            critic_hidden=args.fastsac_critic_hidden,
            batch_size=args.fastsac_batch_size,
            updates_per_step=args.fastsac_updates_per_step,
            v_min=-args.fastsac_v_max,
            v_max=args.fastsac_v_max,
            learning_starts=args.learning_starts,
        ),
        obac=OBACConfig(
            hidden=args.obac_hidden,
            batch_size=args.obac_batch_size,
            learning_starts=args.learning_starts,
        ),
    )


def train_all(args: Args) -> None:
    from era.rl.train import train

    for seed in args.seeds:
        for agent, head in configs(args):
            config, copy = train_config(args, agent, head, seed), csv_copy(args, agent, head, seed)
            if is_finished(config.out, args.total_steps, copy):
                print(f"done already: {config.out}", flush=True)
            else:
                start = time.perf_counter()
                train(config)
                print(f"trained {config.out} in {time.perf_counter() - start:.0f} s", flush=True)
            if (config.out / "metrics.csv").exists():
                copy_metrics(config.out / "metrics.csv", copy)


def aggregate(args: Args) -> dict:
    """Per agent and head, over the seeds whose runs reached ``total_steps``."""
    table = {}
    for agent, head in configs(args):
        csvs = [csv_copy(args, agent, head, seed) for seed in args.seeds]
        row = seed_summary(csvs, args.total_steps, entropy_key="lowest_state_entropy")
        if row is not None:
            table[NAMES[agent, head]] = row
    result = {"args": args_json(args), "runs": table}
    write_results(args.results, result, markdown(result))
    plot(args)
    return result


def markdown(result: dict) -> str:
    lines = [
        "| agent | seeds | final return | mean over evaluations | lowest per-state entropy "
        "| steps/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["runs"].items():
        lines.append(
            f"| {name} | {row['seeds']} "
            f"| {mean_std(row, 'final')} | {mean_std(row, 'curve')} "
            f"| {row['lowest_state_entropy']:.3f} | {row['steps_per_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(args: Args) -> None:
    """Learning and entropy curves of every finished agent and head with ``era rl plot``."""
    from era.rl.cli import PlotConfig, plot

    names = [NAMES[c] for c in configs(args)]
    runs = [args.results / name for name in names]
    present = [(r, n) for r, n in zip(runs, names, strict=True) if any(r.glob("seed*/metrics.csv"))]
    if present:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        plot(PlotConfig(runs=[r for r, _ in present], out=args.figure,
                        labels=[n for _, n in present]))  # fmt: skip


def main(args: Args) -> dict:
    if not args.aggregate_only:
        with exit_on_stop():  # the runs saved their checkpoints: a rerun resumes them
            train_all(args)
    result = aggregate(args)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
