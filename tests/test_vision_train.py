"""The vision trainer end to end on a Fashion-MNIST slice: exact resume, DDP equals one process,
the command line, Ctrl-C, divergence and overwrite errors."""

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from era.runs import DivergenceError, RunError, load_checkpoint, read_metrics
from era.vision.data import FASHION_MNIST_DIR
from era.vision.train import CHECKPOINT, TrainConfig, _main, train

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install "
    "dataset-fashion-mnist)",
)

# A small GroupNorm network (no BatchNorm, so a batch split across processes computes the same
# function), 128 training images in batches of 32: 4 steps per epoch.
TINY = dict(
    model="test_efficientnet_gn",
    train_subset=128,
    eval_subset=64,
    batch_size=32,
    eval_batch_size=64,
    lr=0.02,
    warmup_epochs=0.5,
    progress=False,
    threads=1,
    era_min_entropy=0.3,
    amp=False,  # float32: the equality tests compare rounding-level differences
)


def _weights(run_dir):
    return load_checkpoint(run_dir / CHECKPOINT)["model"]


def _assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0.0, msg=key)


def test_resume_continues_exactly(tmp_path):
    """Stopped after 3 of 8 steps (mid-epoch, between evaluations) and resumed == uninterrupted,
    with augmentation and dropout on, so data order and every random stream must be restored."""
    config = TrainConfig(**TINY, epochs=2, eval_every=3, drop_rate=0.2, out=tmp_path / "a")
    straight = train(config)
    stopped = dataclasses.replace(config, out=tmp_path / "b", max_steps=5)
    assert train(stopped)["top1"] >= 0  # evaluated at step 3, stopped at step 5
    stop = load_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert stop["step"] == 5
    resumed = train(dataclasses.replace(stopped, max_steps=0, resume=True))
    assert resumed == straight
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    a, b = (
        read_metrics(tmp_path / "a" / "metrics.csv"),
        read_metrics(tmp_path / "b" / "metrics.csv"),
    )
    assert a["step"].tolist() == b["step"].tolist() == [3, 6, 8]
    torch.testing.assert_close(torch.tensor(a["nll"]), torch.tensor(b["nll"]), rtol=0, atol=0)
    # The resumed invocation continues the run's clock instead of restarting it at zero.
    assert b["time_s"][0] <= stop["elapsed"] < b["time_s"][1] < b["time_s"][2]
    # Resuming a finished run trains nothing more and returns its final metrics.
    assert train(dataclasses.replace(stopped, max_steps=0, resume=True)) == straight


def _ddp_worker(rank, init_file, config):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train(config)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    """2 processes with 16 images each == 1 process with the combined batch of 32."""
    config = TrainConfig(**TINY, epochs=1, eval_every=2, out=tmp_path / "one")
    train(config)
    ddp = dataclasses.replace(config, out=tmp_path / "two")
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), ddp), nprocs=2, join=True)
    _assert_same_weights(_weights(tmp_path / "one"), _weights(tmp_path / "two"), atol=1e-5)
    one = read_metrics(tmp_path / "one" / "metrics.csv")
    two = read_metrics(tmp_path / "two" / "metrics.csv")
    assert one["step"].tolist() == two["step"].tolist() == [2, 4]
    for column in ("top1", "nll", "ece", "entropy_mean", "entropy_min", "train_loss"):
        torch.testing.assert_close(
            torch.tensor(one[column]), torch.tensor(two[column]), atol=1e-4, rtol=0, msg=column
        )


def test_cli_train_with_baselines_then_plot(tmp_path):
    """``era vision train`` with mixup/cutmix, label smoothing, confidence penalty and dropout,
    then ``era vision plot``; the run leaves config, versions, CSV, TensorBoard and checkpoint."""
    from era.vision.cli import main

    out = tmp_path / "run"
    main(
        [
            "train",
            "--out-dir",
            str(out),
            "--model",
            "test_efficientnet_gn",
            "--train-subset",
            "64",
            "--eval-subset",
            "64",
            "--batch-size",
            "32",
            "--epochs",
            "1",
            "--mixup",
            "0.2",
            "--cutmix",
            "1.0",
            "--label-smoothing",
            "0.1",
            "--confidence-penalty",
            "0.1",
            "--drop-rate",
            "0.1",
            "--no-progress",
            "--threads",
            "1",
            "--lr",
            "0.01",
        ]
    )
    for name in ("config.json", "versions.json", "metrics.csv", "reliability.json", CHECKPOINT):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    assert json.loads((out / "config.json").read_text())["mixup"] == 0.2
    row = read_metrics(out / "metrics.csv")
    assert row["step"].tolist() == [2] and 0 <= row["ece"][0] <= 1
    main(["plot", str(tmp_path), "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "curves_reliability.png").stat().st_size > 0


def test_refuses_to_overwrite_and_stops_on_divergence(tmp_path):
    config = TrainConfig(**{**TINY, "era_min_entropy": None}, epochs=1, out=tmp_path / "x")
    train(dataclasses.replace(config, max_steps=1))
    with pytest.raises(RunError, match="--resume"):
        train(config)
    with pytest.raises(DivergenceError, match="non-finite"):
        train(dataclasses.replace(config, out=tmp_path / "y", lr=1e30, warmup_epochs=0.0))


def test_a_folder_with_run_files_but_no_checkpoint_is_never_overwritten(tmp_path):
    """A run killed before its first checkpoint leaves config.json and metrics.csv: a new run
    there is refused (not silently started over them), and so is --resume (nothing to resume),
    and neither touches the files."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"lr": 0.5}\n')
    (out / "metrics.csv").write_text("step,top1\n10,0.5\n")
    config = TrainConfig(**TINY, epochs=1, out=out)
    with pytest.raises(RunError, match="already holds a run"):
        train(config)
    with pytest.raises(RunError, match="no checkpoint"):
        train(dataclasses.replace(config, resume=True))
    assert (out / "metrics.csv").read_text() == "step,top1\n10,0.5\n"
    assert (out / "config.json").read_text() == '{"lr": 0.5}\n'


def test_resume_refuses_another_configuration_and_needs_a_checkpoint(tmp_path):
    config = TrainConfig(**TINY, epochs=2, eval_every=2, out=tmp_path / "run", max_steps=2)
    train(config)
    before = (tmp_path / "run" / "metrics.csv").read_text()
    resume = dataclasses.replace(config, resume=True, max_steps=0)
    for changed in (dict(lr=0.05), dict(era_min_entropy=0.5), dict(era_tau=5.0), dict(seed=1)):
        with pytest.raises(RunError, match="another configuration"):
            train(dataclasses.replace(resume, **changed))
    assert (tmp_path / "run" / "metrics.csv").read_text() == before
    with pytest.raises(RunError, match="no checkpoint"):
        train(dataclasses.replace(resume, out=tmp_path / "empty"))
    # The same run spelled through another path (relative, with ..) resumes.
    import os

    other_spelling = Path(os.path.relpath(tmp_path / "sub" / ".." / "run"))
    assert train(dataclasses.replace(resume, out=other_spelling))["top1"] >= 0


def test_checkpoint_loads_weights_only(tmp_path):
    """Tensors and plain data only: loads with torch.load(weights_only=True), config as JSON."""
    train(TrainConfig(**TINY, epochs=1, out=tmp_path / "run", max_steps=1))
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert state["step"] == 1 and state["config"]["lr"] == TINY["lr"]
    assert isinstance(state["config"], dict)


def test_batch_must_split_evenly_across_processes(tmp_path):
    config = TrainConfig(**{**TINY, "batch_size": 33}, out=tmp_path)
    with pytest.raises(ValueError, match="batch_size=33 must be divisible by the number of"):
        _main(config, rank=0, world=2, device=torch.device("cpu"))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_signal_saves_a_checkpoint_and_exits_non_zero(tmp_path, signum, code):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "era.cli",
        "vision",
        "train",
        "--out",
        str(out),
        "--model",
        "test_efficientnet_gn",
        "--train-subset",
        "6400",
        "--eval-subset",
        "32",
        "--batch-size",
        "32",
        "--eval-every",
        "2",
        "--epochs",
        "5",
        "--no-progress",
        "--threads",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == code, output
    assert "saving a checkpoint" in output and "--resume continues it" in output
    step = load_checkpoint(out / CHECKPOINT)["step"]
    assert 2 <= step < 1000  # stopped early, after the first evaluation


def test_run_directory_is_spelled_out_or_out_dir():
    """`--out` as in every era command, `--out-dir` as before."""
    import tyro

    assert tyro.cli(TrainConfig, args=["--out", "runs/a"]).out == Path("runs/a")
    assert tyro.cli(TrainConfig, args=["--out-dir", "runs/b"]).out == Path("runs/b")


def test_settings_are_checked_when_parsed():
    with pytest.raises(ValueError, match="--label-smoothing 1.0 is out of range"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="--warmup-epochs 20.0 is out of range"):
        TrainConfig(epochs=10, warmup_epochs=20.0)


def test_fast_path_equals_plain_path_in_float32(tmp_path):
    """channels_last (and the batched augmentation both paths share) changes only the order of
    float32 sums. The channels-last BatchNorm kernels add B·H·W = 25,088 terms in another order
    (their gradients differ from float64 by ~1e-2 relative on the CPU this was written on, the
    NCHW kernels' by ~3e-4), and through ResNet-20's 19 BatchNorm layers the first update of the
    two paths differs by up to ~8 % of its size. Tolerance: for every tensor, the two paths after
    one step differ by less than 25 % of what a second step changes. Different data, a different
    model or a wrong gradient would differ by about one step or more."""
    config = TrainConfig(
        **{**TINY, "era_min_entropy": 0.1, "model": "resnet20", "warmup_epochs": 0.0},
        epochs=1,
        eval_every=1,
        max_steps=1,
        channels_last=False,
        out=tmp_path / "plain",
    )
    plain = train(config)
    fast = train(dataclasses.replace(config, channels_last=True, out=tmp_path / "fast"))
    train(dataclasses.replace(config, max_steps=2, out=tmp_path / "two_steps"))
    one, other, two = (_weights(tmp_path / n) for n in ("plain", "fast", "two_steps"))
    for key in one:
        if one[key].is_floating_point():
            step = (two[key] - one[key]).abs().max()
            assert step > 0, key
            assert (one[key] - other[key]).abs().max() < 0.25 * step, key
    for key in ("nll", "entropy_mean"):
        assert abs(plain[key] - fast[key]) < 1e-3, key


def test_resnet20_is_a_timm_model_of_the_published_size():
    import timm

    from era.vision.head import create_model

    model = create_model("resnet20", num_classes=10, in_chans=3)
    assert timm.is_model("resnet20")
    # He et al. (2016) give 0.27 M parameters; the 1x1 projection shortcuts add 2.9 k.
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("resnet20", pretrained=True)
