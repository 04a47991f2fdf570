"""``era demo``: what it trains, reuses and refuses; its report says only what it measured."""

from __future__ import annotations

import pytest

from era.demo import DemoConfig, run_configs, table_rows, verdict
from era.demo import main as demo
from era.runs import RunError

TINY = ["--steps", "200", "--learning-starts", "50", "--eval-every", "100", "--hidden", "16",
        "--seeds", "0", "1", "--eval-episodes", "1", "--workers", "1"]  # fmt: skip


def test_demo_writes_report_plot_and_table_and_reuses_only_the_same_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    demo(["--out", str(out), *TINY])
    report = (out / "report.md").read_text()
    assert "| final return (mean ± std over seeds) |" in report and "curves.png" in report
    assert "| seeds solving it (return ≥ 950) | " in report  # InvertedPendulum-v5's threshold
    assert "solved the task with" in report
    assert (out / "curves.png").stat().st_size > 10_000
    for head in ("sac-era", "sac"):
        for seed in (0, 1):
            assert (out / head / f"seed{seed}" / "checkpoint.pt").is_file()
    assert "SAC-ERA vs SAC" in capsys.readouterr().out
    # The same options again: the finished runs are reused, not trained again.
    checkpoint = out / "sac-era" / "seed0" / "checkpoint.pt"
    mtime = checkpoint.stat().st_mtime
    demo(["--out", str(out), *TINY])
    assert checkpoint.stat().st_mtime == mtime
    assert "reused finished runs" in (out / "report.md").read_text()
    # Other options on the same folder: refused, never reported as if they were these runs.
    with pytest.raises(RunError, match="sac.hidden"):
        demo(["--out", str(out), *TINY[:-2], "--hidden", "32", "--workers", "1"])


def summary(ret: float, entropy_min: float = -0.5) -> dict:
    return {"return_mean": ret, "target_entropy": -0.5, "entropy": -0.5,
            "entropy_min": entropy_min, "entropy_max": -0.5, "seconds": 10.0}  # fmt: skip


def test_report_claims_are_computed_from_the_results():
    summaries = {
        "sac-era": [summary(1000.0), summary(951.0), summary(949.9)],
        "sac": [summary(200.0, -3.0), summary(1000.0, -2.0), summary(50.0, -4.5)],
    }
    rows = {row[0]: row[1:] for row in table_rows(summaries, threshold=950.0)}
    assert rows["seeds solving it (return ≥ 950)"] == ["2 of 3", "1 of 3"]
    assert rows["lowest per-state entropy (any seed)"] == ["-0.500", "-4.500"]
    assert rows["final return (mean ± std over seeds)"][0].startswith("967.0 ± ")
    text = verdict(summaries, 950.0)
    assert "sac-era solved the task with 2 of 3 seeds" in text
    assert "sac solved the task with 1 of 3 seeds" in text
    assert "no reward threshold" in verdict(summaries, None)


def test_both_heads_train_on_equal_terms():
    """Same target entropy, networks, learning rates and budget; only the head differs."""
    configs = run_configs(DemoConfig(target_entropy=-2.0, lr=5e-4, tau=0.01, hidden=32, steps=300))
    assert {c.head for c in configs.values()} == {"era", "alpha"}
    for c in configs.values():
        assert c.target_entropy == -2.0 and c.total_steps == 300
        assert (c.sac.lr, c.sac.tau, c.sac.hidden) == (5e-4, 0.01, 32)
