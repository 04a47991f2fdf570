"""`era llm` as one data-parallel job: 2 processes (gloo, CPU) compute what 1 process does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

HERE = Path(__file__).parent


def torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(nproc), *args]  # fmt: skip
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_two_processes_give_the_one_process_loss_gradients_and_metrics(tmp_path):
    sys.path.insert(0, str(HERE))
    from llm_dp_worker import loss_step

    one = loss_step(str(tmp_path / "one"))
    run = torchrun(2, str(HERE / "llm_dp_worker.py"), str(tmp_path / "two.pt"), str(tmp_path),
                   cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two["world"] == 2 and one["world"] == 1
    # float64 throughout: only the summation order differs (the split, DDP's averaging).
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-12, atol=1e-14)
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-10, atol=1e-13, msg=name)
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-12)
    # The band split the batch (2 below, 2 inside, 2 above): decisions are per response.
    assert one["metrics"]["frac_below"] == pytest.approx(2 / 6)
    assert one["metrics"]["frac_scaled"] == pytest.approx(2 / 6)


def test_a_batch_the_processes_cannot_split_is_refused_before_loading(tmp_path, monkeypatch):
    from era.llm.config import TrainConfig
    from era.llm.runner import train

    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = TrainConfig(model="missing", out=tmp_path / "x", prompts_per_step=2,
                      num_generations=4)  # fmt: skip
    with pytest.raises(ValueError, match="3 processes cannot split a batch of .* = 8 completions"):
        train(cfg)
    assert not (tmp_path / "x").exists()


def test_cpu_processes_join_one_job():
    """Without use_cpu, transformers would leave torchrun's CPU processes as independent copies."""
    from era.llm.config import TrainConfig
    from era.llm.runner import _trainer_config

    args = _trainer_config(TrainConfig(prompts_per_step=4, num_generations=2))
    assert args.use_cpu is (not torch.cuda.is_available())
    assert args.per_device_train_batch_size == 8 and args.world_size == 1


@pytest.mark.slow
def test_era_llm_train_under_torchrun_writes_one_run(tmp_path):
    tiny = ["--warm-start.steps", "2", "--warm-start.eval-samples", "2", "--warm-start.hidden-size",
            "16", "--warm-start.layers", "1", "--warm-start.heads", "2",
            "--warm-start.vocab-size", "48"]  # fmt: skip
    run = torchrun(
        2, "-m", "era.cli", "llm", "train", "--model", "tiny", "--out", str(tmp_path / "run"),
        "--steps", "2", "--eval-every", "1", "--save-every", "2", *tiny, "--task.train-size",
        "64", "--task.held-out-size", "8", "--prompts-per-step", "2", "--num-generations", "4",
        "--max-completion-length", "4", "--eval-problems", "4", "--eval-samples", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    from era.runs import read_metrics

    out = tmp_path / "run"
    assert list(read_metrics(out / "metrics.csv")["step"]) == [0, 1, 2]  # one writer
    assert {p.name for p in (out / "checkpoint-2").glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }  # two ranks of one job
    assert (out / "final" / "model.safetensors").is_file()
