"""The RL benchmarks' summaries: which seeds count, and at which step a cut-short run is read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from _rl_common import seed_summary  # noqa: E402


def _write_curve(path: Path, returns: dict[int, float]) -> Path:
    rows = ["step,return_mean,time_s"] + [f"{s},{r},{s / 100}" for s, r in returns.items()]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_longer_runs_are_read_up_to_the_requested_step(tmp_path):
    long_run = _write_curve(tmp_path / "a.csv", {10: 1.0, 20: 3.0, 30: 100.0})
    exact_run = _write_curve(tmp_path / "b.csv", {10: 2.0, 20: 5.0})
    short_run = _write_curve(tmp_path / "c.csv", {10: 7.0})
    summary = seed_summary([long_run, exact_run, short_run], total_steps=20)
    assert summary["seeds"] == 2  # the run that stopped at step 10 does not count
    assert summary["final_returns"] == [3.0, 5.0]  # the evaluation at step 20, not after it
    assert summary["curve_return_mean"] == pytest.approx((2.0 + 3.5) / 2)
    assert summary["steps_per_s"] == pytest.approx(100.0)


def test_no_run_reaching_the_step_gives_no_summary(tmp_path):
    assert seed_summary([_write_curve(tmp_path / "a.csv", {10: 1.0})], total_steps=20) is None
    assert seed_summary([tmp_path / "missing.csv"], total_steps=20) is None
