"""Continuous control with ERA: SAC, PPO and TD-MPC2 agents on Gymnasium MuJoCo and dm_control.

``era.rl.train(era.rl.TrainConfig(algo="sac", head="era", env="Hopper-v5"))`` is what
``era rl train --algo sac --head era --env Hopper-v5`` runs; see ``docs/rl.md``.
"""

from era.rl.config import PPOConfig, SACConfig, TDMPC2Config, TrainConfig
from era.rl.train import train

__all__ = ["PPOConfig", "SACConfig", "TDMPC2Config", "TrainConfig", "train"]
