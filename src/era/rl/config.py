"""Configuration of an RL run: one dataclass for the command line and the Python API.

``era rl train --algo sac --head era --env Hopper-v5`` and
``era.rl.train(TrainConfig(algo="sac", head="era", env="Hopper-v5"))`` are the same run. Fields
shared by both algorithms live on :class:`TrainConfig`; the algorithm's own hyper-parameters are
in :class:`SACConfig` (``--sac.*``) and :class:`PPOConfig` (``--ppo.*``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from era.validation import AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT, UNIT_NO_0, Range, check_ranges

HEADS = {"sac": ("era", "alpha"), "ppo": ("era", "std")}


@dataclass
class SACConfig:
    """Soft actor-critic. Defaults follow the authors' SAC-ERA (docs/activations.md) except
    where noted: 256 wide instead of 512 and 1 update per step instead of 2, so a CPU run
    stays fast."""

    hidden: int = 256
    """width of the hidden layers of actor and critics (authors: 512)"""
    layers: int = 2
    """number of hidden layers"""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and temperature"""
    batch_size: int = 256
    """transitions per gradient update"""
    updates_per_step: int = 1
    """gradient updates per environment step (authors: 2)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak averaging rate of the target critics"""
    learning_starts: int = 5000
    """uniformly random actions for this many steps before learning starts"""
    buffer_size: int = 1_000_000
    """replay capacity (capped at the run's total steps)"""
    init_alpha: float = 1.0
    """initial temperature of the alpha head"""
    compile: bool = False
    """torch.compile the losses and the acting policy (faster updates after ~1 min compiling)"""

    def __post_init__(self):
        check_ranges(
            self,
            "sac.",
            {
                "hidden": AT_LEAST_1,
                "layers": AT_LEAST_1,
                "lr": POSITIVE,
                "batch_size": AT_LEAST_1,
                "updates_per_step": AT_LEAST_1,
                "gamma": UNIT,
                "tau": UNIT_NO_0,
                "learning_starts": AT_LEAST_0,
                "buffer_size": AT_LEAST_1,
                "init_alpha": POSITIVE,
            },
        )


@dataclass
class PPOConfig:
    """Proximal policy optimisation with CleanRL's MuJoCo defaults, on vectorised environments."""

    num_envs: int = 4
    """environments stepped in lockstep"""
    num_steps: int = 512
    """steps per environment per rollout (rollout = num_envs x num_steps transitions)"""
    hidden: int = 64
    """width of the hidden layers (tanh) of actor and critic"""
    lr: float = 3e-4
    """Adam learning rate, annealed linearly to 0 over the run"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    epochs: int = 10
    """passes over each rollout"""
    minibatches: int = 32
    """minibatches per pass"""
    clip: float = 0.2
    """PPO ratio clip (also used for the value function)"""
    ent_coef: float = 0.01
    """entropy bonus; the paper keeps 0.01 with ERA (an exact-mode ERA entropy is constant, so
    there it only acts where the lower log-std clip binds)"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """gradient clipping norm"""
    norm_obs: bool = True
    """normalise observations with running statistics (saved with the agent, frozen in eval)"""
    norm_reward: bool = True
    """scale rewards by the running std of the discounted return"""

    def __post_init__(self):
        check_ranges(
            self,
            "ppo.",
            {
                "num_envs": AT_LEAST_1,
                "num_steps": AT_LEAST_1,
                "hidden": AT_LEAST_1,
                "lr": POSITIVE,
                "gamma": UNIT,
                "gae_lambda": UNIT,
                "epochs": AT_LEAST_1,
                "minibatches": Range(1, self.num_envs * self.num_steps),
                "clip": POSITIVE,
                "ent_coef": AT_LEAST_0,
                "vf_coef": AT_LEAST_0,
                "max_grad_norm": POSITIVE,
            },
        )


@dataclass
class TrainConfig:
    """One training run (or one per seed with --seeds)."""

    env: str = "Hopper-v5"
    """Gymnasium id (Hopper-v5) or dm_control task (dm_control/walker-run)"""
    algo: Literal["sac", "ppo"] = "sac"
    """learning algorithm"""
    head: Literal["era", "alpha", "std"] = "era"
    """policy head: era for both algorithms; baselines alpha (SAC) and std (PPO)"""
    era_mode: Literal["exact", "delta"] = "exact"
    """SAC-ERA: exact per-state floor, or the paper's learned delta compensation"""
    target_entropy: float | None = None
    """policy entropy target; default -0.5*dim(A) SAC-ERA, -0.3*dim(A) PPO-ERA, -dim(A) SAC-alpha"""
    total_steps: int = 100_000
    """environment steps (summed over vectorised environments)"""
    seed: int = 0
    """random seed of a single run"""
    seeds: list[int] | None = None
    """run these seeds in parallel processes, into OUT/seed{N}"""
    workers: int = 2
    """parallel processes for --seeds"""
    out: Path = Path("runs/rl")
    """run directory (config, metrics.csv, TensorBoard, checkpoint)"""
    eval_every: int = 10_000
    """steps between deterministic evaluations (a final one always runs)"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    checkpoint_every: int = 10_000
    """steps between checkpoints (one is also written at the end and on Ctrl-C)"""
    resume: bool = False
    """continue from OUT/checkpoint.pt exactly where it stopped"""
    threads: int = 1
    """torch CPU threads per run"""
    progress: bool = True
    """show a rich progress bar (parallel seeds print one line per evaluation instead)"""
    sac: SACConfig = field(default_factory=SACConfig)
    """SAC hyper-parameters"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyper-parameters"""

    def __post_init__(self):
        if self.head not in HEADS[self.algo]:
            raise ValueError(
                f"head={self.head!r} is not a {self.algo} head; choose one of {HEADS[self.algo]}"
            )
        check_ranges(
            self,
            "",
            {
                "total_steps": AT_LEAST_1,
                "seed": AT_LEAST_0,
                "eval_every": AT_LEAST_1,
                "eval_episodes": AT_LEAST_1,
                "checkpoint_every": AT_LEAST_1,
                "threads": AT_LEAST_1,
                "workers": AT_LEAST_1,
            },
        )
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ValueError(f"--target-entropy {self.target_entropy} must be a finite number")
        if self.seeds is not None:
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"--seeds {self.seeds} contains duplicates")
            if min(self.seeds, default=0) < 0:
                raise ValueError(f"--seeds {self.seeds}: every seed must be >= 0")

    def for_seed(self, seed: int) -> TrainConfig:
        """The single-seed run of a --seeds sweep, written to OUT/seed{seed}."""
        return dataclasses.replace(self, seed=seed, seeds=None, out=self.out / f"seed{seed}")


def default_target_entropy(algo: str, head: str, action_dim: int) -> float:
    """As in docs/activations.md: -D/2 for SAC-ERA, -0.3*D for PPO-ERA; SAC's usual -D for
    the alpha head.

    The std head of PPO has no target (its entropy is only pushed up by the bonus)."""
    if head == "alpha":
        return -float(action_dim)
    return (-0.5 if algo == "sac" else -0.3) * action_dim


def config_from_dict(values: dict) -> TrainConfig:
    """The inverse of era.runs.to_jsonable for a :class:`TrainConfig` (config.json)."""
    values = dict(values)
    values["sac"] = SACConfig(**values["sac"])
    values["ppo"] = PPOConfig(**values["ppo"])
    values["out"] = Path(values["out"])
    return TrainConfig(**values)
