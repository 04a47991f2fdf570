"""``era rl train | plot | eval`` and ``era demo`` through their real command lines."""

from __future__ import annotations

import csv

import pytest

from era.cli import main as era
from era.demo import main as demo

TINY = [
    "--total-steps", "200", "--eval-every", "100", "--checkpoint-every", "100",
    "--eval-episodes", "1", "--no-progress", "--sac.hidden", "16", "--sac.batch-size", "16",
    "--sac.learning-starts", "50",
]  # fmt: skip


def test_train_plot_eval_from_the_command_line(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    era(["rl", "train", "--env", "InvertedPendulum-v5", "--head", "era", "--seeds", "0", "1",
         "--workers", "1", "--out", str(sweep), *TINY])  # fmt: skip
    for seed in (0, 1):
        with (sweep / f"seed{seed}" / "metrics.csv").open() as f:
            assert [r["step"] for r in csv.DictReader(f)] == ["100", "200"]
    single = tmp_path / "sac"
    era(["rl", "train", "--env", "InvertedPendulum-v5", "--head", "alpha", "--out", str(single),
         *TINY])  # fmt: skip

    png = tmp_path / "curves.png"
    era(["rl", "plot", str(sweep), str(single), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    era(["rl", "eval", str(sweep / "seed0"), "--episodes", "2"])
    assert "over 2 episodes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "Hopper-v9"], "Hopper-v9"),
        (["--target-entropy", "5"], "target_entropy=5.0"),
        (["--algo", "ppo", "--head", "alpha"], "head='alpha'"),
        (["--sac.batch-size", "0"], "--sac.batch-size 0 is out of range: it must be >= 1"),
        (["--sac.gamma", "5"], "--sac.gamma 5.0 is out of range: it must be in [0, 1]"),
        (["--sac.tau", "-1"], "--sac.tau -1.0 is out of range: it must be in (0, 1]"),
        (["--sac.hidden", "-1"], "--sac.hidden -1 is out of range: it must be >= 1"),
        (["--algo", "ppo", "--ppo.minibatches", "0"], "--ppo.minibatches 0 is out of range"),
        (["--total-steps", "0"], "--total-steps 0 is out of range: it must be >= 1"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        era(["rl", "train", "--out", str(tmp_path / "run"), *TINY, *args])
    assert exit_info.value.code == 2
    # one message, from era.cli (our errors) or tyro (settings rejected while parsing)
    err = capsys.readouterr().err
    assert message in " ".join(err.replace("│", " ").split()) and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_plot_of_a_directory_without_runs_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        era(["rl", "plot", str(tmp_path)])
    assert exit_info.value.code == 1
    assert (
        capsys.readouterr().err
        == f"era rl: error: {tmp_path} holds no metrics.csv (nor */metrics.csv)\n"
    )


def test_demo_writes_report_plot_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--steps", "200", "--learning-starts", "50", "--eval-every",
            "100", "--hidden", "16", "--workers", "1"]  # fmt: skip
    demo(argv)
    report = (out / "report.md").read_text()
    assert "| final return |" in report and "curves.png" in report
    assert (out / "curves.png").stat().st_size > 10_000
    assert "SAC-ERA vs SAC" in capsys.readouterr().out
    # A second invocation reuses the finished runs instead of training again.
    mtime = (out / "sac-era" / "checkpoint.pt").stat().st_mtime
    demo(argv)
    assert (out / "sac-era" / "checkpoint.pt").stat().st_mtime == mtime


@pytest.mark.slow
def test_seeds_train_in_parallel_processes(tmp_path):
    from era.runs import load_checkpoint

    out = tmp_path / "sweep"
    era(["rl", "train", "--env", "InvertedPendulum-v5", "--seeds", "0", "1", "--workers", "2",
         "--out", str(out), *TINY])  # fmt: skip
    a, b = (load_checkpoint(out / f"seed{s}" / "checkpoint.pt") for s in (0, 1))
    assert a["step"] == b["step"] == 200
    weight = "actor.trunk.0.weight"
    assert not (a["agent"]["modules"][weight] == b["agent"]["modules"][weight]).all()
