"""``train(config)``: the entry point of ``era rl train`` and of the Python API.

One run in this process, or one per seed in parallel processes. The algorithm modules own their
training loops; what both loops share lives in ``era.rl.loop``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from era.rl import fastsac, obac, ppo, sac, tdmpc2
from era.rl.config import TrainConfig
from era.rl.loop import check_folder
from era.runs import CHECKPOINT, run_in_parallel

__all__ = ["CHECKPOINT", "train", "train_one"]

ALGORITHMS = {"sac": sac, "ppo": ppo, "fastsac": fastsac, "obac": obac, "tdmpc2": tdmpc2}


def train(config: TrainConfig) -> list[Path]:
    """Train one run, or one per seed of ``config.seeds``: SAC as one vectorised run (seeds
    stacked in one process), PPO or ``--seed-mode processes`` in parallel processes.

    Returns the run directories. Errors in the configuration (unknown environment, infeasible
    target entropy, a run folder that would be overwritten) surface before any training, in the
    calling process.
    """
    if not config.seeds:
        return [train_one(config)]
    vectorised = config.algo == "sac" and config.seed_mode == "vector"
    jobs = [dataclasses.replace(config.for_seed(s), progress=False) for s in config.seeds]
    if config.resume and not vectorised:
        # A stop cancels the seeds that had not started: on --resume they start now.
        jobs = [
            job if _holds_files(job.out) else dataclasses.replace(job, resume=False) for job in jobs
        ]
    for job in jobs:
        check_folder(job)
    if vectorised:
        torch.set_num_threads(config.threads)
        return sac.train_seeds([config.for_seed(s) for s in config.seeds])
    ALGORITHMS[config.algo].build(jobs[0])[0].close()  # a bad env or target fails here
    run_in_parallel(train_one, jobs, max_workers=min(config.workers, len(jobs)))
    return [job.out for job in jobs]


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def train_one(config: TrainConfig) -> Path:
    """One seed, in this process."""
    torch.set_num_threads(config.threads)
    return ALGORITHMS[config.algo].train(config)
