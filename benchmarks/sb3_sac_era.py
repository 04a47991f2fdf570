"""Stable-Baselines3: SAC (auto-tuned temperature) against ERASAC (exact per-state floor).

Both use SB3's defaults (batch 256, lr 3e-4, buffer 1e6, tau 0.005) except ``learning_starts``
and the width of the MLPs (``--hidden``: SB3's 256 did not fit the CPU budget of a shared
machine). The only difference is the policy: SAC's tanh-squashed Gaussian with a
temperature tuned towards ``-D`` nats, or ``era.rl.sb3.ERASAC``'s truncated normal held at
``-D/2`` nats in every state with ``ent_coef = 0``. Every ``--eval-every`` steps the
deterministic policy is evaluated for ``--eval-episodes`` episodes on a separately seeded env.

Runs go seed-major (a budget cut short leaves every variant with the same seeds). Each run's
evaluations are written to ``RESULTS/TASK_STEPSsteps/VARIANT/seedN/metrics.csv`` when it
finishes; finished runs are skipped, so the script can be killed and restarted (an unfinished
run restarts from step 0: a run takes minutes, and SB3 checkpoints would have to hold the whole
replay buffer). Then it writes ``summary.json``, ``table.md`` and the learning curves
``curves.png`` beside them.

``--variants`` adds controls: ``SB3-SAC-ERA-target-D``, ERASAC with the floor at SAC's target
``-D`` (separates the effect of the target from that of the policy's form), and
``SB3-SAC-ERA-target-0``, a wider floor at 0 nats (SAC's policy starts wider still: a unit
Gaussian squashed by tanh has 0.67 nats, uniform on [-1, 1] has 0.69).

What docs/integrations.md reports (one core, ``nice -n 10``, on a shared, loaded machine)::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sb3_sac_era.py --task InvertedPendulum-v5 \\
        --variants SB3-SAC-ERA SB3-SAC SB3-SAC-ERA-target-D SB3-SAC-ERA-target-0 \\
        --total-steps 6000 --eval-every 500
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sb3_sac_era.py --task InvertedPendulum-v5 \\
        --total-steps 10000 --eval-every 1000
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from era.plotting import plot_curves
from era.rl.sb3 import ERASAC
from era.runs import read_metrics

# name: (algorithm, target entropy: "auto" = the algorithm's default, "-D" = minus the action dim)
VARIANTS = {
    "SB3-SAC-ERA": (ERASAC, "auto"),  # floor at -D/2
    "SB3-SAC": (SAC, "auto"),  # temperature tuned towards -D
    "SB3-SAC-ERA-target-D": (ERASAC, "-D"),  # floor at SAC's target: isolates the target's effect
    "SB3-SAC-ERA-target-0": (ERASAC, "0"),  # a wider floor, towards SAC's starting entropy
}
COLUMNS = ("step", "return_mean", "return_std", "time_s")


@dataclass
class Args:
    task: str = "InvertedPendulum-v5"
    """Gymnasium task id (continuous actions, finite bounds)"""
    variants: list[str] = field(default_factory=lambda: ["SB3-SAC-ERA", "SB3-SAC"])
    """which of SB3-SAC-ERA, SB3-SAC, SB3-SAC-ERA-target-D, SB3-SAC-ERA-target-0 to run"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds, run in this order (seed-major)"""
    total_steps: int = 6000
    """environment steps per run"""
    hidden: int = 64
    """width of the two hidden layers of actor and critics (SB3's default is 256)"""
    learning_starts: int = 1000
    """random steps before learning"""
    eval_every: int = 500
    """steps between evaluations"""
    eval_episodes: int = 5
    """episodes per evaluation (deterministic policy)"""
    results: Path = Path("benchmarks/results/sb3_sac_era")
    """root of the results: per-run metrics.csv, summary.json, table.md and curves.png go to a
    folder per task and step count under it"""
    aggregate_only: bool = False
    """skip training; rebuild the table and figure from the CSVs"""


class EvalToRows(BaseCallback):
    """Evaluate every ``every`` steps (and at step 0) and keep the rows in memory."""

    def __init__(self, eval_env: gym.Env, every: int, episodes: int):
        super().__init__()
        self.eval_env, self.every, self.episodes = eval_env, every, episodes
        self.rows: list[dict] = []
        self.start = time.perf_counter()

    def _evaluate(self) -> None:
        returns, _ = evaluate_policy(
            self.model, self.eval_env, n_eval_episodes=self.episodes, return_episode_rewards=True
        )
        self.rows.append(
            {
                "step": self.num_timesteps,
                "return_mean": float(np.mean(returns)),
                "return_std": float(np.std(returns)),
                "time_s": time.perf_counter() - self.start,
            }
        )
        print(f"  step {self.num_timesteps}: return {np.mean(returns):.1f}", flush=True)

    def _on_training_start(self) -> None:
        self._evaluate()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            self._evaluate()
        return True


def results_dir(args: Args) -> Path:
    return args.results / f"{args.task}_{args.total_steps}steps"


def csv_path(args: Args, variant: str, seed: int) -> Path:
    return results_dir(args) / variant / f"seed{seed}" / "metrics.csv"


def run(args: Args, variant: str, seed: int) -> None:
    env = gym.make(args.task)
    eval_env = Monitor(gym.make(args.task))
    eval_env.reset(seed=10_000 + seed)
    algorithm, target = VARIANTS[variant]
    model = algorithm(
        "MlpPolicy",
        env,
        target_entropy={"auto": "auto", "0": 0.0, "-D": -float(np.prod(env.action_space.shape))}[
            target
        ],
        learning_starts=args.learning_starts,
        policy_kwargs={"net_arch": [args.hidden, args.hidden]},
        seed=seed,
        verbose=0,
    )
    callback = EvalToRows(eval_env, args.eval_every, args.eval_episodes)
    model.learn(args.total_steps, callback=callback)
    out = csv_path(args, variant, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(callback.rows)
    partial.rename(out)  # metrics.csv exists only for finished runs


def train_all(args: Args) -> None:
    torch.set_num_threads(1)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"--variants {sorted(unknown)}: unknown, choose from {list(VARIANTS)}")
    for seed in args.seeds:
        for variant in args.variants:
            if csv_path(args, variant, seed).exists():
                print(f"done already: {variant} seed {seed}", flush=True)
                continue
            print(f"{variant} seed {seed} on {args.task}", flush=True)
            start = time.perf_counter()
            run(args, variant, seed)
            print(f"  finished in {time.perf_counter() - start:.0f} s", flush=True)


def aggregate(args: Args) -> dict:
    table = {}
    for variant in args.variants:
        finals, curves, seconds = [], [], []
        for seed in args.seeds:
            path = csv_path(args, variant, seed)
            if path.exists():
                metrics = read_metrics(path)
                finals.append(float(metrics["return_mean"][-1]))
                curves.append(float(metrics["return_mean"].mean()))
                seconds.append(float(metrics["time_s"][-1]))
        if finals:
            table[variant] = {
                "seeds": len(finals),
                "final_return_mean": statistics.mean(finals),
                "final_return_std": statistics.pstdev(finals),
                "final_returns": finals,
                "curve_return_mean": statistics.mean(curves),
                "curve_return_std": statistics.pstdev(curves),
                "wall_s_mean": statistics.mean(seconds),
            }
    result = {"args": json.loads(json.dumps(dataclasses.asdict(args), default=str)), **table}
    out = results_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.md").write_text(markdown(args, table) + "\n")
    groups = {v: sorted((out / v).glob("seed*/metrics.csv")) for v in table}
    if groups:
        plot_curves(
            groups,
            "step",
            [("return_mean", "evaluation return")],
            out / "curves.png",
            title=f"{args.task}, hidden {args.hidden}, mean ± std over seeds",
        )
    return result


def markdown(args: Args, table: dict) -> str:
    lines = [
        f"| {args.task}, {args.total_steps} steps, hidden {args.hidden} | seeds | final return "
        "| mean over evaluations | wall s per run |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, row in table.items():
        lines.append(
            f"| {variant} | {row['seeds']} "
            f"| {row['final_return_mean']:.1f} ± {row['final_return_std']:.1f} "
            f"| {row['curve_return_mean']:.1f} ± {row['curve_return_std']:.1f} "
            f"| {row['wall_s_mean']:.0f} |"
        )
    return "\n".join(lines)


def main(args: Args) -> dict:
    if not args.aggregate_only:
        train_all(args)
    result = aggregate(args)
    print((results_dir(args) / "table.md").read_text())
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
