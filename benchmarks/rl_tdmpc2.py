"""TD-MPC2-ERA (exact per-state floor on the policy prior) against TD-MPC2 (entropy bonus).

Runs every (seed, head) of one task with ``era.rl.train`` into ``RUNS/TASK/HEAD/seedN``,
seed-major, ``--workers`` runs at a time (one process each). Finished runs (``summary.json`` at
the full step count) are skipped and a run with a checkpoint is resumed, so the script can be
killed and restarted at any time. Afterwards (or with ``--aggregate-only``) it writes the final
and the mean-over-evaluations return per head (mean and std over seeds), the wall-clock speed,
the exact settings, a markdown table, a copy of each run's ``metrics.csv`` and the learning and
entropy curves (``era rl plot``).

Defaults are the authors' full TD-MPC2 (model size 1, 512 samples x 6 MPPI iterations, batch
256). The full-scale run of docs/benchmarks/rl.md, on a CUDA machine::

    python benchmarks/rl_tdmpc2.py --task dm_control/cartpole-swingup --seeds 0 1 2 \\
        --total-steps 100000 --device cuda --workers 6

The CPU pilot that was actually run, and its cost, are in docs/benchmarks/rl.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro
from _rl_common import args_json, copy_metrics, is_finished, mean_std, seed_summary, write_results

from era.rl.config import TDMPC2Config, TrainConfig
from era.runs import exit_on_stop, run_in_parallel

HEADS = {"TD-MPC2-ERA": "era", "TD-MPC2": "alpha"}


@dataclass
class Args:
    task: str = "dm_control/cartpole-swingup"
    """Gymnasium or dm_control task id"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds, run in this order (seed-major)"""
    total_steps: int = 100_000
    """environment steps per run"""
    seed_steps: int | None = None
    """random steps before learning (default: the authors' max(1000, 5 episodes))"""
    num_samples: int = 512
    """MPPI samples per iteration"""
    num_elites: int = 64
    """MPPI elites"""
    num_pi_trajs: int = 24
    """MPPI samples drawn from the policy prior"""
    iterations: int = 6
    """MPPI iterations"""
    batch_size: int = 256
    """sequences per update"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where networks and replay live"""
    eval_every: int = 10_000
    """steps between evaluations"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    workers: int = 1
    """runs at a time, one process each"""
    runs: Path = Path("runs/rl_tdmpc2")
    """run directories (checkpoints, TensorBoard)"""
    results: Path = Path("benchmarks/results/rl_tdmpc2")
    """JSON, markdown table, the runs' metrics.csv copies and the curves"""
    aggregate_only: bool = False
    """skip training; rebuild the table and figure from the copied CSVs"""
    time_only: int = 0
    """skip training; instead time this many plans and updates per head at these settings
    (process CPU time, one thread) into RESULTS/timing_<samples>x<iterations>_b<batch>.json"""


def task_name(args: Args) -> str:
    return args.task.replace("/", "_")


def run_dir(args: Args, head: str, seed: int) -> Path:
    return args.runs / task_name(args) / head / f"seed{seed}"


def csv_copy(args: Args, head: str, seed: int) -> Path:
    return args.results / task_name(args) / head / f"seed{seed}" / "metrics.csv"


def config_for(args: Args, head: str, seed: int) -> TrainConfig:
    out = run_dir(args, head, seed)
    return TrainConfig(
        env=args.task,
        algo="tdmpc2",
        head=HEADS[head],
        total_steps=args.total_steps,
        seed=seed,
        out=out,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=min(args.eval_every, 5000),
        resume=(out / "checkpoint.pt").exists(),
        progress=False,
        tdmpc2=TDMPC2Config(
            seed_steps=args.seed_steps,
            num_samples=args.num_samples,
            num_elites=args.num_elites,
            num_pi_trajs=args.num_pi_trajs,
            iterations=args.iterations,
            batch_size=args.batch_size,
            device=args.device,
        ),
    )


def train_one(job: tuple[TrainConfig, Path]) -> Path:
    """Train one run, then copy its ``metrics.csv`` beside the results at once, so a finished
    run's numbers survive whatever stops the benchmark later."""
    from era.rl.train import train_one as train

    config, csv = job
    start = time.perf_counter()
    train(config)
    print(f"trained {config.out} in {time.perf_counter() - start:.0f} s", flush=True)
    copy_metrics(config.out / "metrics.csv", csv)
    return config.out


def train_all(args: Args) -> None:
    jobs = []
    for seed in args.seeds:
        for head in HEADS:
            out, copy = run_dir(args, head, seed), csv_copy(args, head, seed)
            if is_finished(out, args.total_steps, copy):
                print(f"done already: {out}", flush=True)
            else:
                jobs.append((config_for(args, head, seed), copy))
    run_in_parallel(train_one, jobs, max_workers=args.workers)
    for seed in args.seeds:  # finished runs whose copy an earlier, stopped invocation missed
        for head in HEADS:
            source = run_dir(args, head, seed) / "metrics.csv"
            if source.exists():
                copy_metrics(source, csv_copy(args, head, seed))


def aggregate(args: Args) -> dict:
    """Per head, over the seeds whose runs reached ``total_steps``."""
    table = {}
    for head in HEADS:
        csvs = [csv_copy(args, head, seed) for seed in args.seeds]
        row = seed_summary(csvs, args.total_steps, entropy_key="lowest_prior_entropy")
        if row is not None:
            table[head] = row
    settings = dataclasses.asdict(config_for(args, "TD-MPC2-ERA", args.seeds[0]).tdmpc2)
    result = {"args": args_json(args), "tdmpc2": settings, "heads": table}
    write_results(args.results, result, markdown(result))
    plot(args)
    return result


def markdown(result: dict) -> str:
    task, steps = result["args"]["task"], result["args"]["total_steps"]
    lines = [
        "| task | steps | head | seeds | final return | mean over evaluations "
        "| lowest per-state prior entropy | wall steps/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for head, row in result["heads"].items():
        lines.append(
            f"| {task} | {steps} | {head} | {row['seeds']} "
            f"| {mean_std(row, 'final')} | {mean_std(row, 'curve')} "
            f"| {row['lowest_prior_entropy']:.3f} | {row['steps_per_s']:.2f} |"
        )
    return "\n".join(lines)


def plot(args: Args) -> None:
    from era.rl.cli import PlotConfig, plot

    runs = [args.results / task_name(args) / head for head in HEADS]
    if all(any(r.glob("seed*/metrics.csv")) for r in runs):
        out = args.results / f"curves_{task_name(args)}.png"
        plot(PlotConfig(runs=runs, out=out, labels=list(HEADS)))


def time_steps(args: Args) -> dict:
    """CPU seconds of one MPPI plan and one update per head, on random transitions of the task's
    dimensions (the cost does not depend on the data), so the cost of a full-scale run can be
    computed without running it."""
    import numpy as np
    import torch

    from era.rl.tdmpc2 import SequenceBuffer, build

    torch.set_num_threads(1)
    torch.manual_seed(0)
    timing = {"threads": 1, "repeats": args.time_only, "heads": {}}
    for head in HEADS:
        config = config_for(args, head, args.seeds[0])
        config = dataclasses.replace(
            config, tdmpc2=dataclasses.replace(config.tdmpc2, device="cpu")
        )
        envs, agent = build(config)
        obs_dim, act_dim = envs.observation_space.shape[0], envs.action_space.shape[0]
        envs.close()
        buffer = SequenceBuffer(1000, obs_dim, act_dim, config.tdmpc2.horizon, agent.device)
        rng = np.random.default_rng(0)
        for i in range(1000):
            buffer.add(
                rng.normal(size=obs_dim),
                rng.uniform(-1, 1, act_dim),
                0.0,
                rng.normal(size=obs_dim),
                0.0,
                episode=i // 100,
            )
        obs = buffer.obs[0]
        agent.plan(obs, None, True)  # warm-up: first calls allocate
        agent.update(*buffer.sample(config.tdmpc2.batch_size))
        start = time.process_time()
        for _ in range(args.time_only):
            agent.plan(obs, None, True)
        plan = (time.process_time() - start) / args.time_only
        start = time.process_time()
        for _ in range(args.time_only):
            agent.update(*buffer.sample(config.tdmpc2.batch_size))
        update = (time.process_time() - start) / args.time_only
        timing["heads"][head] = {"plan_cpu_s": plan, "update_cpu_s": update}
        print(f"{head}: plan {plan:.3f} s, update {update:.3f} s (CPU time)", flush=True)
    timing["tdmpc2"] = dataclasses.asdict(config_for(args, "TD-MPC2", args.seeds[0]).tdmpc2)
    name = f"timing_{args.num_samples}x{args.iterations}_b{args.batch_size}.json"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / name).write_text(json.dumps(timing, indent=2) + "\n")
    return timing


def main(args: Args) -> dict:
    if args.time_only:
        return time_steps(args)
    if not args.aggregate_only:
        with exit_on_stop():  # the runs saved their checkpoints: a rerun resumes them
            train_all(args)
    result = aggregate(args)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
