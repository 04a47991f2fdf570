"""Configuration of an RL run: one dataclass for the command line and the Python API.

``era rl train --algo sac --head era --env Hopper-v5`` and
``era.rl.train(TrainConfig(algo="sac", head="era", env="Hopper-v5"))`` are the same run. Fields
shared by all algorithms live on :class:`TrainConfig`; the algorithm's own hyper-parameters are
in :class:`SACConfig` (``--sac.*``), :class:`PPOConfig` (``--ppo.*``),
:class:`TDMPC2Config` (``--tdmpc2.*``), :class:`FastSACConfig` (``--fastsac.*``) and
:class:`OBACConfig` (``--obac.*``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from era.validation import AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT, UNIT_NO_0, Range, check_ranges

HEADS = {"sac": ("era", "alpha"), "ppo": ("era", "std"), "tdmpc2": ("era", "alpha")}
HEADS |= {"fastsac": ("era", "alpha"), "obac": ("era", "alpha")}


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
    """torch.compile both losses, one graph each (faster updates after ~1 min compiling)"""
    amp: Literal["none", "bf16"] = "none"
    """bf16 autocast of the networks (targets and losses stay float32); fast where the CPU/GPU
    has bf16 matrix units"""

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
class FastSACConfig:
    """FastSAC (many parallel environments, large batches, a distributional critic). Defaults
    follow the authors' FastSAC (holosoma) except where noted: CPU-sized environments, batch and
    widths. The alpha head's default target entropy is FastSAC's 0 nats (-0.0*dim(A))."""

    num_envs: int = 16
    """environments stepped in lockstep (authors: 1024-4096 on a GPU simulator)"""
    actor_hidden: int = 256
    """width of the actor's first layer; then /2 and /4 (authors: 512)"""
    critic_hidden: int = 512
    """width of each critic's first layer; then /2 and /4 (authors: 768)"""
    lr: float = 3e-4
    """AdamW learning rate of actor, critics and temperature"""
    weight_decay: float = 0.001
    """AdamW weight decay of actor and critics"""
    batch_size: int = 1024
    """transitions per gradient update (authors: 8192)"""
    updates_per_step: int = 4
    """critic updates after each step of all environments (authors: 8)"""
    policy_frequency: int = 4
    """one actor update every this many critic updates"""
    gamma: float = 0.99
    """discount factor (authors: 0.97 for humanoid locomotion)"""
    tau: float = 0.125
    """Polyak averaging rate of the target critics"""
    num_atoms: int = 101
    """atoms of the distributional (C51) critic"""
    v_min: float = -250.0
    """lowest return of the critic's support (FastTD3's default)"""
    v_max: float = 250.0
    """highest return of the critic's support"""
    clipped_double_q: bool = False
    """FastTD3's target (the distribution of the critic with the lower mean); FastSAC's default
    lets each critic bootstrap from its own target and the actor maximise their mean"""
    init_alpha: float = 0.001
    """initial temperature of the alpha head"""
    learning_starts: int = 5000
    """uniformly random actions for this many environment steps before learning starts"""
    buffer_size: int = 1_000_000
    """replay capacity (capped at the run's total steps)"""
    obs_norm: bool = True
    """normalise observations with running statistics (saved with the agent)"""
    compile: bool = False
    """torch.compile both losses (faster updates after ~1 min compiling)"""
    amp: Literal["none", "bf16"] = "none"
    """bf16 autocast of the networks (targets and losses stay float32)"""

    def __post_init__(self):
        check_ranges(
            self,
            "fastsac.",
            {
                "num_envs": AT_LEAST_1,
                "actor_hidden": Range(4),
                "critic_hidden": Range(4),
                "lr": POSITIVE,
                "weight_decay": AT_LEAST_0,
                "batch_size": AT_LEAST_1,
                "updates_per_step": AT_LEAST_1,
                "policy_frequency": AT_LEAST_1,
                "gamma": UNIT,
                "tau": UNIT_NO_0,
                "num_atoms": Range(2),
                "init_alpha": POSITIVE,
                "learning_starts": AT_LEAST_0,
                "buffer_size": AT_LEAST_1,
            },
        )
        finite = math.isfinite(self.v_min) and math.isfinite(self.v_max)
        if not (finite and self.v_min < self.v_max):
            raise ValueError(
                f"--fastsac.v-min {self.v_min} and --fastsac.v-max {self.v_max}: need finite "
                "v_min < v_max"
            )


@dataclass
class OBACConfig:
    """Offline-boosted actor-critic: SAC plus the in-sample value of the replay buffer's
    behaviour and a behaviour-cloning term where that value beats the policy's. Defaults follow
    the authors' OBAC except the CPU-sized width (authors: 512) and batch (authors: 512)."""

    hidden: int = 256
    """width of the hidden layers of actor, critics and value network"""
    layers: int = 2
    """number of hidden layers"""
    lr: float = 3e-4
    """Adam learning rate of every network and the temperature"""
    batch_size: int = 256
    """transitions per gradient update"""
    updates_per_step: int = 1
    """gradient updates per environment step"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak averaging rate of both target critics"""
    expectile: float = 0.9
    """expectile of the offline value regression (0.5 = the behaviour's mean value)"""
    bc_weight: float = 0.001
    """lambda: weight of the buffer actions' log-likelihood where the offline value is higher"""
    gate: Literal["state", "batch"] = "state"
    """where the constraint is active: per state (the paper) or for the whole batch when the
    batch means compare so (the authors' code)"""
    init_alpha: float = 1.0
    """initial temperature of the alpha head"""
    learning_starts: int = 5000
    """uniformly random actions for this many steps before learning starts"""
    buffer_size: int = 1_000_000
    """replay capacity (capped at the run's total steps)"""

    def __post_init__(self):
        check_ranges(
            self,
            "obac.",
            {
                "hidden": AT_LEAST_1,
                "layers": AT_LEAST_1,
                "lr": POSITIVE,
                "batch_size": AT_LEAST_1,
                "updates_per_step": AT_LEAST_1,
                "gamma": UNIT,
                "tau": UNIT_NO_0,
                "expectile": Range(0, 1, low_closed=False, high_closed=False),
                "bc_weight": AT_LEAST_0,
                "init_alpha": POSITIVE,
                "learning_starts": AT_LEAST_0,
                "buffer_size": AT_LEAST_1,
            },
        )


@dataclass
class TDMPC2Config:
    """TD-MPC2 (Hansen et al., ICLR 2024): the authors' hyper-parameters and smallest model.

    The model size picks the widths of the authors' presets (era.rl.world_model.MODEL_SIZES)."""

    model_size: Literal[1, 5, 19, 48, 317] = 1
    """the authors' model presets, in millions of parameters (1 runs on a CPU)"""
    num_q: int | None = None
    """Q-ensemble size (default: the preset's, 2 for size 1 and 5 for 5-48)"""
    horizon: int = 3
    """planning horizon and length of the training sequences"""
    iterations: int = 6
    """MPPI iterations per action (+2 when dim(A) >= 20, as the authors)"""
    num_samples: int = 512
    """action sequences evaluated per MPPI iteration"""
    num_elites: int = 64
    """best sequences the MPPI update averages"""
    num_pi_trajs: int = 24
    """of the samples, sequences drawn from the policy prior"""
    temperature: float = 0.5
    """MPPI temperature of the elite weights exp(temperature * value)"""
    min_std: float = 0.05
    """lower clip of the MPPI standard deviation"""
    max_std: float = 2.0
    """initial (and upper clip of the) MPPI standard deviation"""
    mpc: bool = True
    """plan with MPPI; off: act with the policy prior alone"""
    batch_size: int = 256
    """sequences per gradient update"""
    lr: float = 3e-4
    """Adam learning rate"""
    enc_lr_scale: float = 0.3
    """the encoder learns at lr * enc_lr_scale"""
    grad_clip_norm: float = 20.0
    """gradient norm clip of the model and of the policy prior"""
    tau: float = 0.01
    """Polyak rate of the target Q-ensemble and of the running Q scale"""
    rho: float = 0.5
    """temporal weight rho^t of the losses along a sequence"""
    consistency_coef: float = 20.0
    """weight of the latent consistency loss"""
    reward_coef: float = 0.1
    """weight of the reward loss"""
    value_coef: float = 0.1
    """weight of the value loss"""
    entropy_coef: float = 1e-4
    """entropy bonus of the alpha head's prior (the era head has none)"""
    discount: float | None = None
    """discount factor (default: the authors' heuristic from the episode length)"""
    seed_steps: int | None = None
    """random steps before learning, then as many updates at once (default max(1000, 5 episodes))"""
    buffer_size: int = 1_000_000
    """replay capacity (capped at the run's total steps)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """networks and replay on this device (auto: cuda when present); environments stay on CPU"""
    compile: bool = False
    """torch.compile the losses and the planner's rollouts"""

    def __post_init__(self):
        check_ranges(
            self,
            "tdmpc2.",
            {
                "horizon": AT_LEAST_1,
                "iterations": AT_LEAST_1,
                "num_samples": AT_LEAST_1,
                "num_elites": Range(1, self.num_samples),
                "num_pi_trajs": Range(0, self.num_samples, high_closed=False),
                "temperature": POSITIVE,
                "min_std": POSITIVE,
                "max_std": Range(self.min_std),
                "batch_size": AT_LEAST_1,
                "lr": POSITIVE,
                "enc_lr_scale": POSITIVE,
                "grad_clip_norm": POSITIVE,
                "tau": UNIT_NO_0,
                "rho": UNIT_NO_0,
                "consistency_coef": AT_LEAST_0,
                "reward_coef": AT_LEAST_0,
                "value_coef": AT_LEAST_0,
                "entropy_coef": AT_LEAST_0,
                "buffer_size": AT_LEAST_1,
            },
        )
        optional = {
            "num_q": Range(2),  # targets and planning draw two members
            "discount": Range(0, 1, low_closed=False, high_closed=False),
            "seed_steps": Range(self.horizon),  # learning needs one full sequence
        }
        check_ranges(
            self, "tdmpc2.", {k: r for k, r in optional.items() if getattr(self, k) is not None}
        )


@dataclass
class TrainConfig:
    """One training run (or one per seed with --seeds)."""

    env: str = "Hopper-v5"
    """Gymnasium id (Hopper-v5) or dm_control task (dm_control/walker-run)"""
    algo: Literal["sac", "ppo", "fastsac", "obac", "tdmpc2"] = "sac"
    """learning algorithm"""
    head: Literal["era", "alpha", "std"] = "era"
    """policy head: era for every algorithm; baselines alpha (SAC, FastSAC, OBAC, TD-MPC2) and std
    (PPO)"""
    era_mode: Literal["exact", "delta"] = "exact"
    """SAC-ERA: exact per-state floor, or the paper's learned delta compensation"""
    target_entropy: float | None = None
    """policy entropy target; default -0.5*dim(A) SAC/FastSAC/OBAC/TD-MPC2-ERA, -0.3*dim(A) PPO-ERA,
    -dim(A) SAC/OBAC-alpha, 0 FastSAC-alpha"""
    total_steps: int = 100_000
    """environment steps (summed over vectorised environments)"""
    seed: int = 0
    """random seed of a single run"""
    seeds: list[int] | None = None
    """train these seeds, into OUT/seed{N} (see --seed-mode)"""
    seed_mode: Literal["vector", "processes"] = "vector"
    """--seeds as one vectorised run (SAC: networks stacked along a seed axis) or one process
    per seed (PPO always uses processes)"""
    workers: int = 2
    """parallel processes for --seeds with --seed-mode processes"""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """SAC, FastSAC, OBAC: where networks, replay batches and updates live (environments stay on
    the CPU); auto = cuda if available"""
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
    tdmpc2: TDMPC2Config = field(default_factory=TDMPC2Config)
    """TD-MPC2 hyper-parameters"""
    fastsac: FastSACConfig = field(default_factory=FastSACConfig)
    """FastSAC hyper-parameters"""
    obac: OBACConfig = field(default_factory=OBACConfig)
    """OBAC hyper-parameters"""

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
    """As in docs/activations.md: -D/2 for SAC-ERA (and TD-MPC2-ERA), -0.3*D for PPO-ERA; SAC's
    usual -D for the alpha head.

    The std head of PPO has no target (its entropy is only pushed up by the bonus)."""
    if head == "alpha":
        return -float(action_dim)
    return (-0.3 if algo == "ppo" else -0.5) * action_dim


def config_from_dict(values: dict) -> TrainConfig:
    """The inverse of era.runs.to_jsonable for a :class:`TrainConfig` (config.json)."""
    values = dict(values)
    values["sac"] = SACConfig(**values["sac"])
    values["ppo"] = PPOConfig(**values["ppo"])
    values["tdmpc2"] = TDMPC2Config(**values.get("tdmpc2", {}))
    values["fastsac"] = FastSACConfig(**values.get("fastsac", {}))
    values["obac"] = OBACConfig(**values.get("obac", {}))
    values["out"] = Path(values["out"])
    return TrainConfig(**values)
