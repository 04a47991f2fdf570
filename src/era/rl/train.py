"""What every RL run does around its algorithm: seeds, run directory, resume, evaluation, output.

``train(config)`` is the entry point of ``era rl train`` and of the Python API. The algorithm
modules (``sac.py``, ``ppo.py``) own their training loops and use the helpers below for the parts
that are the same for both.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from era.rl.config import TrainConfig
from era.runs import (
    MetricLogger,
    load_checkpoint,
    progress_bar,
    run_in_parallel,
    to_jsonable,
    write_run_metadata,
)

CHECKPOINT = "checkpoint.pt"
# Changing these between a run and its resume does not change what the run computes.
RESUMABLE_CHANGES = {"total_steps", "resume", "progress", "seeds", "workers", "eval_episodes"}


def train(config: TrainConfig) -> list[Path]:
    """Train one run, or one per seed of ``config.seeds`` in parallel processes.

    Returns the run directories. Errors in the configuration (unknown environment, infeasible
    target entropy) surface before any training, in the calling process.
    """
    if not config.seeds:
        return [train_one(config)]
    jobs = [dataclasses.replace(config.for_seed(s), progress=False) for s in config.seeds]
    _check(jobs[0])
    run_in_parallel(train_one, jobs, max_workers=min(config.workers, len(jobs)))
    return [job.out for job in jobs]


def train_one(config: TrainConfig) -> Path:
    """One seed, in this process."""
    torch.set_num_threads(config.threads)
    return _algorithm(config).train(config)


def _algorithm(config: TrainConfig):
    return importlib.import_module(f"era.rl.{config.algo}")  # era.rl.sac or era.rl.ppo


def _check(config: TrainConfig) -> None:
    """Build the environment and the agent once, so a bad configuration fails here."""
    _algorithm(config).build(config)[0].close()


def start_run(config: TrainConfig) -> tuple[MetricLogger, dict | None]:
    """Prepare the run directory; on ``--resume`` return the checkpoint to continue from."""
    path = config.out / CHECKPOINT
    checkpoint = None
    if config.resume:
        checkpoint = load_checkpoint(path)
        saved = checkpoint["config"]
        current = to_jsonable(config)
        changed = sorted(
            k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]
        )
        if changed:
            raise ValueError(
                f"--resume with a different configuration: {', '.join(changed)} differ from the "
                f"run in {config.out} (only {sorted(RESUMABLE_CHANGES)} may change)"
            )
    elif path.exists():
        raise ValueError(
            f"{config.out} already holds a run; pass --resume to continue it or "
            "choose another --out"
        )
    write_run_metadata(config.out, config)
    logger = MetricLogger(config.out, resume_step=checkpoint["step"] if checkpoint else None)
    return logger, checkpoint


def rng_state() -> dict:
    """The training loops draw all randomness (exploration, batches) from torch's global
    generator; environments are seeded per episode (``vec_env``)."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])


def evaluate(act: Callable[[np.ndarray], np.ndarray], env, episodes: int, seed: int):
    """Mean and std of the undiscounted return of ``episodes`` deterministic episodes.

    Episode ``k`` always starts from ``reset(seed=seed + k)``, so every evaluation of a run (and
    of every run with the same seed) faces the same start states; the training generators are
    not touched.
    """
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        if hasattr(act, "reset"):  # a planner's warm start must not carry over between episodes
            act.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


class Reporter:
    """Progress for a person watching: a rich bar (steps/s, ETA, latest return and entropy), or
    one printed line per evaluation when the bar is off (parallel seeds)."""

    def __init__(self, config: TrainConfig, start_step: int):
        self.config = config
        self.start_time = time.perf_counter()
        self.start_step = start_step
        self.bar = progress_bar(unit="steps", disable=not config.progress)
        self.bar.start()
        label = f"{config.algo}-{config.head} {config.env} s{config.seed}"
        self.task = self.bar.add_task(
            label, total=config.total_steps, completed=start_step, info=""
        )

    def sps(self, step: int) -> float:
        return (step - self.start_step) / max(time.perf_counter() - self.start_time, 1e-9)

    def advance_to(self, step: int) -> None:
        self.bar.update(self.task, completed=step)

    def evaluation(self, step: int, row: dict) -> None:
        info = f"return {row['return_mean']:.1f}  entropy {row['entropy']:.2f}"
        self.bar.update(self.task, info=info)
        if not self.config.progress:
            print(
                f"[{self.config.algo}-{self.config.head} {self.config.env} seed "
                f"{self.config.seed}] step {step}: {info}",
                flush=True,
            )

    def close(self) -> None:
        self.bar.stop()


def write_summary(out: Path, metrics: dict[str, np.ndarray], seconds: float) -> None:
    """``summary.json``: the last evaluation row and the wall time, for scripts comparing runs."""
    summary = {k: float(v[-1]) for k, v in metrics.items()} | {"seconds": seconds}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
