"""What the RL training loops do around their algorithm: open the run, keep time, evaluate,
report progress, write the summary.

The algorithm modules (``sac.py``, ``ppo.py``, ``tdmpc2.py``) import these helpers;
``train.py`` imports the algorithm modules. Nothing here imports an algorithm, so the
dependencies point one way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from era.rl.config import TrainConfig
from era.runs import Clock, MetricLogger, Run, check_run, open_run, progress_bar

# Changing these between a run and its resume does not change what the run computes.
MAY_CHANGE = frozenset(
    {"total_steps", "progress", "seeds", "seed_mode", "workers", "eval_episodes"}
)


def check_folder(config: TrainConfig) -> None:
    """Refuse a run folder as :func:`start_run` would, without writing (``RunError``)."""
    check_run(config.out, config, resume=config.resume, may_change=MAY_CHANGE)


def start_run(config: TrainConfig) -> tuple[Run, MetricLogger, dict | None]:
    """Open the run folder (new, or resumed with the same configuration; see ``era.runs``), its
    logs, and on ``--resume`` the checkpoint to continue from."""
    run = open_run(config.out, config, resume=config.resume, may_change=MAY_CHANGE)
    checkpoint = run.load_checkpoint() if run.resumed else None
    logger = MetricLogger(run.out, resume_step=checkpoint["step"] if checkpoint else None)
    return run, logger, checkpoint


def rng_state() -> dict:
    """The training loops draw all randomness (exploration, batches) from torch's global
    generator; environments are seeded per episode (``vec_env``)."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])


def loop_checkpoint(
    run: Run, step: int, row_step: int | None, elapsed: float, agent, buffer, envs, **rng
) -> dict:
    """What an off-policy loop saves to resume exactly: position, agent, replay buffer,
    environments, ``rng`` (the loop's own generator states) and the training clock."""
    return {
        "step": step,
        "config": run.config,
        "agent": agent.checkpoint_state(),
        "buffer": buffer.state_dict(),
        "envs": envs.state_dict(),
        **rng,
        "elapsed": elapsed,
        "row_step": row_step,
    }


def restore_loop(checkpoint: dict, agent, buffer, envs) -> None:
    """Load agent, replay buffer and environments from a :func:`loop_checkpoint`."""
    agent.load_checkpoint_state(checkpoint["agent"])
    buffer.load_state_dict(checkpoint["buffer"])
    envs.load_state_dict(checkpoint["envs"])


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


def log_row(
    logger: MetricLogger, reporter: Reporter, clock: Clock, step: int, row: dict[str, float]
) -> int:
    """Write an evaluation row (plus steps/s and wall time) to the logs and the progress display;
    returns ``step``, the step of the last row."""
    row = row | {"sps": reporter.sps(step), "time_s": clock.seconds()}
    logger.row(step, row)
    reporter.evaluation(step, row)
    return step


def write_summary(out: Path, metrics: dict[str, np.ndarray], seconds: float) -> None:
    """``summary.json``: the last evaluation row and the wall time, for scripts comparing runs."""
    summary = {k: float(v[-1]) for k, v in metrics.items()} | {"seconds": seconds}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
