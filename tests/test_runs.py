"""The shared run-directory helpers: logs that survive resume, atomic checkpoints, clear errors."""

import json
import math

import pytest
import torch

from era.plotting import mean_std, plot_curves
from era.runs import (
    DivergenceError,
    MetricLogger,
    check_finite,
    load_checkpoint,
    read_metrics,
    run_in_parallel,
    save_checkpoint,
    write_run_metadata,
)


def test_metric_logger_resume_drops_rows_after_checkpoint(tmp_path):
    log = MetricLogger(tmp_path)
    for step in (100, 200, 300):
        log.row(step, {"return_mean": step / 10, "entropy": -1.0})
    log.close()
    # The run was checkpointed at step 200 and killed after logging step 300.
    log = MetricLogger(tmp_path, resume_step=200)
    log.row(300, {"return_mean": 99.0, "entropy": -2.0})
    log.close()
    metrics = read_metrics(tmp_path / "metrics.csv")
    assert metrics["step"].tolist() == [100, 200, 300]
    assert metrics["return_mean"].tolist() == [10.0, 20.0, 99.0]
    assert list((tmp_path / "tb").iterdir()), "TensorBoard events were not written"


def test_metric_logger_fresh_run_overwrites_and_rejects_unknown_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,old\n1,2\n")
    log = MetricLogger(tmp_path)
    log.row(1, {"a": 1.0})
    with pytest.raises(ValueError, match="not CSV columns"):
        log.row(2, {"b": 1.0})
    log.close()
    assert read_metrics(tmp_path / "metrics.csv")["a"].tolist() == [1.0]


def test_checkpoint_roundtrip_and_missing_file(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"step": 7, "w": torch.arange(3.0)})
    state = load_checkpoint(path)
    assert state["step"] == 7 and torch.equal(state["w"], torch.arange(3.0))
    assert not path.with_name("last.pt.tmp").exists()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_check_finite_names_the_bad_values():
    check_finite(3, loss=1.0, q=torch.tensor(2.0))
    with pytest.raises(DivergenceError, match="actor_loss.*step 5|step 5.*actor_loss"):
        check_finite(5, actor_loss=math.nan, q=1.0)


def test_write_run_metadata(tmp_path):
    from dataclasses import dataclass
    from pathlib import Path

    @dataclass
    class Config:
        lr: float = 1e-3
        out: Path = Path("runs/x")

    write_run_metadata(tmp_path, Config())
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-3, "out": "runs/x"}
    versions = json.loads((tmp_path / "versions.json").read_text())
    assert torch.__version__.startswith(versions["packages"]["torch"])
    assert "git_commit" in versions and versions["python"].count(".") == 2


def _square_or_fail(x):
    if x == 3:
        raise ValueError("three")
    return x * x


def test_run_in_parallel_keeps_results_and_reports_failures():
    assert run_in_parallel(_square_or_fail, [1, 2], max_workers=2) == [1, 4]
    with pytest.raises(RuntimeError, match="1 of 2 jobs failed"):
        run_in_parallel(_square_or_fail, [2, 3], max_workers=2)


def test_mean_std_interpolates_and_plot_writes_png(tmp_path):
    for seed, scale in enumerate((1.0, 3.0)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        log = MetricLogger(d)
        for step in (0, 10, 20):
            log.row(step, {"ret": scale * step})
        log.close()
    paths = [tmp_path / f"seed{i}" / "metrics.csv" for i in range(2)]
    grid, mean, std, n = mean_std(paths, "step", "ret")
    assert n == 2 and grid.tolist() == [0, 10, 20]
    assert mean.tolist() == [0.0, 20.0, 40.0] and std.tolist() == [0.0, 10.0, 20.0]
    png = plot_curves(
        {"a": paths}, "step", [("ret", "return")], tmp_path / "p.png", hlines={"ret": 1.0}
    )
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="has column"):
        mean_std(paths, "step", "missing")


_CTRL_C_SCRIPT = """
import sys, time
from pathlib import Path
from era.runs import graceful_interrupt, run_in_parallel

def job(n):
    with graceful_interrupt() as stop:
        Path(sys.argv[1], f"started{n}").touch()
        deadline = time.time() + 60
        while not stop.requested and time.time() < deadline:
            time.sleep(0.05)
    return f"saved{n}" if stop.requested else f"timeout{n}"

if __name__ == "__main__":
    print(run_in_parallel(job, [0, 1, 2], max_workers=2), flush=True)
"""


def test_ctrl_c_lets_running_jobs_save_and_cancels_queued_ones(tmp_path):
    """Ctrl-C reaches the whole process group: running seeds must save, not die."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not all((tmp_path / f"started{i}").exists() for i in (0, 1)):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "['saved0', 'saved1', None]"
    assert "not started (Ctrl-C): 2" in err
