"""Continuous control with ERA: SAC, PPO, FastSAC and OBAC agents on Gymnasium MuJoCo and
dm_control tasks.

``era.rl.train(era.rl.TrainConfig(algo="sac", head="era", env="Hopper-v5"))`` is what
``era rl train --algo sac --head era --env Hopper-v5`` runs; see ``docs/rl.md``.
"""

from era.rl.config import FastSACConfig, OBACConfig, PPOConfig, SACConfig, TrainConfig
from era.rl.train import train

__all__ = ["FastSACConfig", "OBACConfig", "PPOConfig", "SACConfig", "TrainConfig", "train"]
