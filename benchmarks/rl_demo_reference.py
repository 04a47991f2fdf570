"""Stable-Baselines3 SAC on the demo's task and budget: our agent or the task?

Same task (InvertedPendulum-v5), width (2 x 64), random steps (1,000), seed and step budget as
``era demo``; deterministic evaluation on 3 episodes every 2,000 steps, as the demo does.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_demo_reference.py
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch
import tyro
from stable_baselines3 import SAC
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor


@dataclass
class Args:
    env: str = "InvertedPendulum-v5"
    """Gymnasium task (the demo's default)."""
    steps: int = 10_000
    """Environment steps (the demo's default)."""
    eval_every: int = 2_000
    """Steps between deterministic evaluations."""
    hidden: int = 64
    """Width of the two hidden layers (the demo's default)."""
    learning_starts: int = 1_000
    """Random steps before learning (the demo's default)."""
    seed: int = 0
    """Random seed."""


def main(args: Args) -> None:
    torch.set_num_threads(1)
    model = SAC(
        "MlpPolicy",
        gym.make(args.env),
        learning_starts=args.learning_starts,
        policy_kwargs={"net_arch": [args.hidden, args.hidden]},
        seed=args.seed,
    )
    eval_env = Monitor(gym.make(args.env))
    for step in range(args.eval_every, args.steps + 1, args.eval_every):
        model.learn(args.eval_every, reset_num_timesteps=False)
        mean, std = evaluate_policy(model, eval_env, n_eval_episodes=3)
        print(f"step {step}: return {mean:.1f} ± {std:.1f}", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
