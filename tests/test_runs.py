"""The shared run lifecycle: one rule set for new/refused/resumed runs, logs that survive
resume (CSV and TensorBoard), checkpoints that load weights-only, stop signals, clear errors."""

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from era.plotting import mean_std, plot_curves
from era.runs import (
    DivergenceError,
    Interrupted,
    MetricLogger,
    RunError,
    check_finite,
    exit_on_stop,
    load_checkpoint,
    open_run,
    read_metrics,
    run_in_parallel,
    save_checkpoint,
    stop_signals,
    write_run_metadata,
)

CONFIG = {"lr": 1e-3, "steps": 100, "out": "runs/x", "resume": False, "sac": {"hidden": 16}}


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars TensorBoard shows for a run folder, as ``tag -> [(step, value)]``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_new_run_writes_metadata_and_refuses_a_folder_with_any_run_file(tmp_path):
    run = open_run(tmp_path / "a", CONFIG, resume=False)
    assert not run.resumed and json.loads((run.out / "config.json").read_text()) == CONFIG
    assert (run.out / "versions.json").is_file()
    for name in ("config.json", "metrics.csv", "versions.json", "tb", "checkpoint.pt"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text("x")
        before = (folder / name).read_text()
        with pytest.raises(RunError, match=f"already holds a run \\({name}\\).*--resume"):
            open_run(folder, CONFIG, resume=False)
        assert (folder / name).read_text() == before and len(list(folder.iterdir())) == 1
    open_run(tmp_path / "unrelated", CONFIG, resume=False)  # an empty folder is fine


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(RunError, match="no checkpoint"):
        open_run(tmp_path / "missing", CONFIG, resume=True)
    run = open_run(tmp_path / "run", CONFIG, resume=False)  # config.json, no checkpoint yet
    with pytest.raises(RunError, match="--resume: no checkpoint"):
        open_run(run.out, CONFIG, resume=True)
    assert not (tmp_path / "missing").exists()


def test_resume_continues_only_the_same_configuration(tmp_path, monkeypatch):
    run = open_run(tmp_path / "run", CONFIG, resume=False)
    run.save_checkpoint({"step": 5})
    changed = CONFIG | {"lr": 2e-3, "sac": {"hidden": 32}, "steps": 200}
    with pytest.raises(RunError) as error:
        open_run(run.out, changed, resume=True, may_change={"steps"})
    message = str(error.value)
    assert "--lr 0.001 -> 0.002" in message and "--sac.hidden 16 -> 32" in message
    assert "--steps" in message and "\n" not in message  # listed as allowed, not as differing
    assert json.loads((run.out / "config.json").read_text()) == CONFIG  # not rewritten
    # The same run, its --out spelled absolute, relative from another directory, or moved.
    monkeypatch.chdir(tmp_path)
    same = open_run(Path("run"), CONFIG | {"out": "run", "resume": True}, resume=True)
    assert same.resumed and same.load_checkpoint()["step"] == 5
    open_run(run.out.resolve(), CONFIG | {"out": str(run.out.resolve())}, resume=True)
    moved = run.out.rename(tmp_path / "moved")
    extended = open_run(moved, CONFIG | {"steps": 300}, resume=True, may_change={"steps"})
    assert json.loads((extended.out / "config.json").read_text())["steps"] == 300


def test_out_that_is_a_file_or_not_writable_is_one_clear_error(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        open_run(file, CONFIG, resume=False)
    with pytest.raises(RunError, match="cannot write the run folder"):
        open_run(file / "sub", CONFIG, resume=False)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(RunError, match="not writable"):
            open_run(locked, CONFIG, resume=False)


class _Payload:
    """Unpickling it would create the file named by its argument."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    torch.save({"step": 1, "x": _Payload(marker)}, crafted)  # torch's own zip format
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"step": 1, "x": _Payload(marker)}))  # a bare pickle
    assert not marker.exists()
    for path in (crafted, pickled):
        with pytest.raises(RunError, match=str(path.name)):
            load_checkpoint(path)
    assert not marker.exists()
    # --resume on a folder with a crafted checkpoint: refused without executing it either.
    run = open_run(tmp_path / "run", CONFIG, resume=False)
    os.replace(crafted, run.checkpoint_path)
    with pytest.raises(RunError, match="checkpoint.pt"):
        open_run(run.out, CONFIG, resume=True).load_checkpoint()
    assert not marker.exists()


def test_corrupt_or_truncated_checkpoint_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 3, "w": torch.ones(100)})
    data = path.read_bytes()
    for broken in (data[: len(data) // 2], b"garbage", b""):
        path.write_bytes(broken)
        with pytest.raises(RunError, match="ckpt.pt is not a readable checkpoint") as error:
            load_checkpoint(path)
        assert "\n" not in str(error.value)


def test_resumed_logs_equal_an_unsplit_run_in_csv_and_tensorboard(tmp_path):
    def log_steps(logger, steps):
        for step in steps:
            logger.scalars(step, {"loss": step / 100})
            if step % 20 == 0:
                logger.row(step, {"ret": float(step)})

    whole = tmp_path / "whole"
    whole.mkdir()
    logger = MetricLogger(whole)
    log_steps(logger, range(10, 110, 10))
    logger.close()

    split = tmp_path / "split"
    split.mkdir()
    logger = MetricLogger(split)
    log_steps(logger, range(10, 80, 10))  # checkpointed at 40, killed after logging 70
    logger.close()
    with (split / "metrics.csv").open("a") as f:
        f.write("80,")  # the write of the next row was cut short
    logger = MetricLogger(split, resume_step=40)
    log_steps(logger, range(50, 110, 10))
    logger.close()

    assert (split / "metrics.csv").read_text() == (whole / "metrics.csv").read_text()
    expected = tb_scalars(whole)
    assert expected["loss"] == [(s, pytest.approx(s / 100)) for s in range(10, 110, 10)]
    assert tb_scalars(split) == expected  # each step once, the checkpoint's step 40 kept


def test_torn_rows_are_dropped_on_resume(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("step,a,b\n2,1.0,2.0\n4,3.0,\n6,,\n")  # 4: a legitimately empty cell
    MetricLogger(tmp_path, resume_step=10).close()
    assert csv_path.read_text() == "step,a,b\n2,1.0,2.0\n4,3.0,\n"
    csv_path.write_text("step,a,b\n2,1.0,2.0\n4,3.0\n")  # a row missing a cell
    MetricLogger(tmp_path, resume_step=10).close()
    assert csv_path.read_text() == "step,a,b\n2,1.0,2.0\n"


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


def test_metric_logger_never_overwrites_and_rejects_unknown_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,old\n1,2\n")
    with pytest.raises(RunError, match="overwrite"):
        MetricLogger(tmp_path)
    (tmp_path / "metrics.csv").unlink()
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
    with pytest.raises(RunError, match="no checkpoint at .*nope.pt"):
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


_STOP_SCRIPT = """
import sys, time
from pathlib import Path
from era.runs import stop_signals, run_in_parallel

def job(n):
    with stop_signals() as stop:
        Path(sys.argv[1], f"started{n}").touch()
        deadline = time.time() + 60
        while not stop.requested and time.time() < deadline:
            time.sleep(0.05)
        Path(sys.argv[1], f"saved{n}").touch()
    return "finished"  # not reached after a stop signal

if __name__ == "__main__":
    from era.cli import user_errors
    with user_errors("job"):
        print(run_in_parallel(job, [0, 1, 2], max_workers=2), flush=True)
"""


def test_ctrl_c_lets_running_jobs_save_and_cancels_queued_ones(tmp_path):
    """Ctrl-C reaches the whole process group: running seeds must save, not die; then 130."""
    script = tmp_path / "stop.py"
    script.write_text(_STOP_SCRIPT)
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    deadline = time.time() + 120
    while not all((tmp_path / f"started{i}").exists() for i in (0, 1)):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out == "" and (tmp_path / "saved0").exists() and (tmp_path / "saved1").exists()
    assert not (tmp_path / "started2").exists()
    assert "not started (stopped): 2" in err and "job: stopped by SIGINT" in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_sets_the_flag_and_leaving_raises_interrupted(signum):
    with pytest.raises(Interrupted) as stopped:  # noqa: PT012
        with stop_signals() as stop:
            os.kill(os.getpid(), signum)
            deadline = time.time() + 10
            while not stop.requested and time.time() < deadline:
                time.sleep(0.01)
            assert stop.requested
            with pytest.raises(Interrupted):  # a second signal aborts at once
                os.kill(os.getpid(), signum)
                time.sleep(5)
    assert stopped.value.exit_code == 128 + signum
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


@pytest.mark.parametrize(
    ("stop", "code"),
    [
        (Interrupted(signal.SIGTERM), 143),
        (Interrupted(signal.SIGINT), 130),
        (KeyboardInterrupt(), 130),
    ],
)
def test_exit_on_stop_is_one_line_and_the_signal_status(stop, code, capsys):
    with pytest.raises(SystemExit) as exit_info, exit_on_stop("rerun it"):
        raise stop
    assert exit_info.value.code == code
    assert capsys.readouterr().err == "stopped; rerun it\n"


def test_exit_on_stop_lets_errors_through():
    with pytest.raises(ValueError, match="bad"), exit_on_stop():
        raise ValueError("bad")
