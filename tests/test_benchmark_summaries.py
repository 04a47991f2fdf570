"""The RL benchmarks' summaries: which seeds count, at which step a cut-short run is read, and
which runs count as finished on a machine that has only the committed copies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from _rl_common import is_finished, seed_summary  # noqa: E402


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


def test_a_run_is_finished_by_its_summary_or_by_its_committed_copy(tmp_path):
    out, copy = tmp_path / "run", tmp_path / "results" / "metrics.csv"
    out.mkdir()
    copy.parent.mkdir()
    assert not is_finished(out, 20, copy)  # nothing yet
    _write_curve(copy, {10: 1.0})
    assert not is_finished(out, 20, copy)  # the copy of a run stopped at step 10
    (out / "summary.json").write_text('{"step": 20}')
    assert is_finished(out, 20, copy)  # the run itself finished
    (out / "summary.json").unlink()
    _write_curve(copy, {10: 1.0, 20: 2.0})
    assert is_finished(tmp_path / "absent", 20, copy)  # a fresh clone: only the copy is left
