"""Helpers of the RL agents' resume tests: stop a training loop as Ctrl-C would, read its
``metrics.csv`` and compare two checkpoints' networks."""

from __future__ import annotations

import csv
from contextlib import nullcontext

import torch


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


def rows(run_dir) -> list[dict[str, str]]:
    """The run's ``metrics.csv`` as rows of strings."""
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def assert_same_modules(a: dict, b: dict, **tolerance) -> None:
    """The agents' parameters in two checkpoints are equal (``torch.testing.assert_close``)."""
    for name, value in a["agent"]["modules"].items():
        torch.testing.assert_close(b["agent"]["modules"][name], value, msg=name, **tolerance)
