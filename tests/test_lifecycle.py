"""The run lifecycle through ``era rl``: what a user sees when a run folder, a checkpoint or a
signal is not the happy path. One test per defect found by the hostile probe of issue 14."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from era.cli import main as era
from era.runs import CHECKPOINT, load_checkpoint, read_metrics

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = [
    "--env", "InvertedPendulum-v5", "--eval-episodes", "1", "--no-progress",
    "--sac.hidden", "16", "--sac.batch-size", "16", "--sac.learning-starts", "50",
]  # fmt: skip


def train(out: Path, *args: str) -> None:
    era(["rl", "train", "--out", str(out), "--total-steps", "100", "--eval-every", "100",
         "--checkpoint-every", "100", *TINY, *args])  # fmt: skip


def refused(capsys, argv: list[str], code: int = 2) -> str:
    """Run ``era ARGV`` expecting a one-line error; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        era(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("era rl: error: "), err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_runs_no_code_on_eval_or_resume(tmp_path, capsys):
    run = tmp_path / "run"
    train(run)
    marker = tmp_path / "pwned"
    state = load_checkpoint(run / CHECKPOINT) | {"extra": Payload(marker)}
    torch.save(state, run / CHECKPOINT)
    assert "checkpoint.pt is not a readable checkpoint" in refused(capsys, ["rl", "eval", str(run)])
    line = refused(capsys, ["rl", "train", "--out", str(run), "--resume", "--total-steps", "100",
                            "--eval-every", "100", "--checkpoint-every", "100", *TINY])  # fmt: skip
    assert "checkpoint.pt" in line and not marker.exists()


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    train(run)
    data = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(data[: len(data) // 3])
    line = refused(capsys, ["rl", "eval", str(run)])
    assert f"{run / CHECKPOINT} is not a readable checkpoint" in line


@pytest.mark.parametrize("files", [["config.json"], ["metrics.csv"], ["config.json", "tb"]])
def test_a_folder_with_run_files_but_no_checkpoint_is_never_overwritten(tmp_path, capsys, files):
    run = tmp_path / "run"
    run.mkdir()
    for name in files:
        (run / name).write_text("from an earlier run\n")
    before = snapshot(run)
    line = refused(capsys, ["rl", "train", "--out", str(run), *TINY])
    assert f"{run} already holds a run" in line and "--resume" in line
    assert snapshot(run) == before


def test_a_sweep_is_refused_before_any_seed_starts(tmp_path, capsys):
    (tmp_path / "sweep" / "seed1").mkdir(parents=True)
    (tmp_path / "sweep" / "seed1" / "metrics.csv").write_text("step,return_mean\n100,5.0\n")
    line = refused(capsys, ["rl", "train", "--out", str(tmp_path / "sweep"), "--seeds", "0", "1",
                            "--workers", "1", *TINY])  # fmt: skip
    assert "seed1 already holds a run (metrics.csv)" in line
    assert not (tmp_path / "sweep" / "seed0").exists()


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    line = refused(capsys, ["rl", "train", "--out", str(tmp_path / "new"), "--resume", *TINY])
    assert "no checkpoint" in line and not (tmp_path / "new").exists()


def test_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = refused(capsys, ["rl", "train", "--out", str(tmp_path / "file"), *TINY])
    assert "is a file" in line


def test_resume_is_the_same_run_however_out_is_spelled(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train(run)
    before = snapshot(run)
    line = refused(capsys, ["rl", "train", "--out", str(run), "--resume", "--total-steps", "200",
                            "--eval-every", "100", "--checkpoint-every", "100", *TINY,
                            "--sac.lr", "0.001", "--seed", "3"])  # fmt: skip
    assert "--sac.lr 0.0003 -> 0.001" in line and "--seed 0 -> 3" in line
    assert snapshot(run) == before  # a refused resume changes nothing
    # Same run: relative --out from another working directory, then moved, then absolute.
    monkeypatch.chdir(tmp_path)
    train(Path("run"), "--resume", "--total-steps", "200")
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    run.rename(moved)
    train(moved.resolve(), "--resume", "--total-steps", "300")
    assert read_metrics(moved / "metrics.csv")["step"].tolist() == [100, 200, 300]
    assert json.loads((moved / "config.json").read_text())["total_steps"] == 300


def _train_until_signalled(tmp_path: Path, signum: int) -> tuple[int, str, Path]:
    """A real ``era rl train`` process, sent ``signum`` once it has written a checkpoint."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "era.cli", "rl", "train", "--out", str(out),
            "--total-steps", "1000000", "--eval-every", "100", "--checkpoint-every", "100",
            *TINY]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(SRC), "MUJOCO_GL": "disable"}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / CHECKPOINT).exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, out


@pytest.mark.parametrize(
    ("signum", "code"),
    # ~20 s each on a loaded 2-core machine; SIGTERM's handling is the same code path as SIGINT's
    # (tests/test_runs.py sends both in-process), so only its end-to-end run is slow-marked.
    [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)],
)
def test_a_stop_signal_saves_and_exits_non_zero(tmp_path, signum, code):
    returncode, err, out = _train_until_signalled(tmp_path, signum)
    assert returncode == code, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err
    step = load_checkpoint(out / CHECKPOINT)["step"]
    assert 100 <= step < 1_000_000
    # no evaluation on the way out: the last row is the last periodic one (--eval-every 100)
    assert read_metrics(out / "metrics.csv")["step"][-1] == step // 100 * 100
    assert not (out / "summary.json").exists()  # the run did not finish
    # and it continues from there
    era(["rl", "train", "--out", str(out), "--resume", "--total-steps", str(step + 50),
         "--eval-every", "100", "--checkpoint-every", "100", *TINY])  # fmt: skip
    assert load_checkpoint(out / CHECKPOINT)["step"] == step + 50


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    for argv, env in (
        (["--debug", "rl", "eval", str(tmp_path)], "0"),
        (["rl", "eval", str(tmp_path)], "1"),
    ):
        monkeypatch.setenv("ERA_DEBUG", env)
        with pytest.raises(SystemExit) as exit_info:
            era(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "RunError" in err
        assert err.endswith(f"era rl: error: no checkpoint at {tmp_path / CHECKPOINT}\n")


def test_the_agents_do_not_import_the_dispatcher():
    """train.py imports the agents; they and their helpers must not import it back (a cycle)."""
    import ast

    import era.rl

    dispatchers = {"__init__", "train", "cli", "sweep"}  # these may import train.py
    agents = [p for p in Path(era.rl.__file__).parent.glob("*.py") if p.stem not in dispatchers]
    assert {"sac", "ppo", "tdmpc2", "fastsac", "obac"} <= {p.stem for p in agents}
    for path in agents:
        name = path.stem
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {"era.rl.train", "era.rl.cli"} & imported, name
