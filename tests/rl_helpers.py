"""Helpers of the RL agents' resume tests: stop a training loop as Ctrl-C would, train a run
unsplit and interrupted-then-resumed, read its ``metrics.csv`` and compare two checkpoints'
networks."""

from __future__ import annotations

import csv
import dataclasses
from contextlib import nullcontext

import torch

from era.rl import TrainConfig, train
from era.rl.train import CHECKPOINT
from era.runs import load_checkpoint


class StopAfter:
    """Stands in for Ctrl-C: ``requested`` turns True after ``n`` checks (one per loop step)."""

    def __init__(self, n: int):
        self.n = n

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n < 0


def interrupt_after(monkeypatch, module, checks: int) -> None:
    """Make the training loop of ``module`` stop, as on Ctrl-C, after ``checks`` checks."""
    monkeypatch.setattr(module, "stop_signals", lambda: nullcontext(StopAfter(checks)))


def train_unsplit_and_resumed(
    whole: TrainConfig, monkeypatch, module, checks: int, stopped_at: int
) -> tuple[TrainConfig, dict, dict]:
    """Train ``whole`` in one go, and a copy in the folder ``split`` beside it stopped after
    ``checks`` checks (its checkpoint at step ``stopped_at``) and then resumed. Returns the
    split run's configuration and the final checkpoints of the whole and the split run."""
    train(whole)
    split = dataclasses.replace(whole, out=whole.out.with_name("split"))
    interrupt_after(monkeypatch, module, checks)
    train(split)
    assert load_checkpoint(split.out / CHECKPOINT)["step"] == stopped_at
    monkeypatch.undo()
    train(dataclasses.replace(split, resume=True))
    return split, load_checkpoint(whole.out / CHECKPOINT), load_checkpoint(split.out / CHECKPOINT)


def rows(run_dir) -> list[dict[str, str]]:
    """The run's ``metrics.csv`` as rows of strings."""
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def assert_same_modules(a: dict, b: dict, **tolerance) -> None:
    """The agents' parameters in two checkpoints are equal (``torch.testing.assert_close``)."""
    for name, value in a["agent"]["modules"].items():
        torch.testing.assert_close(b["agent"]["modules"][name], value, msg=name, **tolerance)
