"""Continuous control with ERA: SAC, PPO, FastSAC, OBAC and TD-MPC2 agents on Gymnasium MuJoCo
and dm_control tasks.

``era.rl.train(era.rl.TrainConfig(algo="sac", head="era", env="Hopper-v5"))`` is what
``era rl train --algo sac --head era --env Hopper-v5`` runs; see ``docs/rl.md``.
"""

from era.rl.config import (
    FastSACConfig,
    OBACConfig,
    PPOConfig,
    SACConfig,
    TDMPC2Config,
    TrainConfig,
)
from era.rl.train import train

__all__ = [
    "FastSACConfig",
    "OBACConfig",
    "PPOConfig",
    "SACConfig",
    "TDMPC2Config",
    "TrainConfig",
    "train",
]
