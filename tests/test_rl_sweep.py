"""``era rl sweep``: the grid, its folders, skipping and resuming trials, both backends."""

import json
from pathlib import Path

import pytest

from era.cli import main as era
from era.rl.config import SACConfig
from era.rl.sweep import SweepConfig, sweep, trials
from era.runs import RunError

RUN_FILES = {"config.json", "versions.json", "metrics.csv", "summary.json", "checkpoint.pt", "tb"}


def tiny(out: Path, **changes) -> SweepConfig:
    """Two trials (era, alpha) of one seed each on InvertedPendulum-v5, a few seconds each."""
    settings = dict(
        envs=["InvertedPendulum-v5"],
        heads=["era", "alpha"],
        seeds=[0],
        total_steps=300,
        eval_every=300,
        eval_episodes=1,
        checkpoint_every=300,
        out=out,
        sac=SACConfig(hidden=16, batch_size=32, learning_starts=100),
    )
    return SweepConfig(**(settings | changes))


def test_grid_is_env_major_with_one_folder_per_head_and_target(tmp_path):
    config = SweepConfig(
        envs=["Hopper-v5", "dm_control/walker-run"],
        heads=["era", "alpha"],
        targets=[-1.5, 0.25],
        seeds=[3, 4],
        total_steps=1000,
        out=tmp_path,
    )
    grid = trials(config)
    assert [(t.env, t.head, t.target_entropy) for t in grid] == [
        (env, head, target)
        for env in ["Hopper-v5", "dm_control/walker-run"]
        for head in ["era", "alpha"]
        for target in [-1.5, 0.25]
    ]
    assert [t.out.relative_to(tmp_path).as_posix() for t in grid[:2]] == [
        "Hopper-v5/era--1.5",
        "Hopper-v5/era-0.25",
    ]
    assert grid[-1].out == tmp_path / "dm_control-walker-run" / "alpha-0.25"
    assert all(t.seeds == [3, 4] and t.total_steps == 1000 and not t.resume for t in grid)
    assert grid[0].for_seed(4).out == tmp_path / "Hopper-v5" / "era--1.5" / "seed4"
    default = trials(SweepConfig(envs=["Hopper-v5"], heads=["alpha"], out=tmp_path))
    assert [(t.out.name, t.target_entropy) for t in default] == [("alpha", None)]


def test_local_sweep_runs_skips_and_resumes(tmp_path, capsys):
    rows = sweep(tiny(tmp_path))
    for head in ("era", "alpha"):
        run = tmp_path / "InvertedPendulum-v5" / head / "seed0"
        assert RUN_FILES <= {p.name for p in run.iterdir()}
        assert json.loads((run / "summary.json").read_text())["step"] == 300
    assert [(r["head"], r["seeds"], r["step"]) for r in rows] == [
        ("era", 1, 300),
        ("alpha", 1, 300),
    ]
    assert (tmp_path / "summary.csv").read_text().count("\n") == 3
    assert (
        "| InvertedPendulum-v5 | era | default | 1 | 300 |" in (tmp_path / "summary.md").read_text()
    )

    # A rerun trains nothing: both trials are finished.
    checkpoints = sorted(tmp_path.glob("*/*/seed0/checkpoint.pt"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    capsys.readouterr()
    assert sweep(tiny(tmp_path)) == rows
    assert "2 trials, 2 finished, 0 to resume, 0 to start" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps

    # More steps: both trials continue from their checkpoints (a resume keeps the first rows).
    rows = sweep(tiny(tmp_path, total_steps=400))
    assert "0 finished, 2 to resume, 0 to start" in capsys.readouterr().out
    assert [r["step"] for r in rows] == [400, 400]
    metrics = (tmp_path / "InvertedPendulum-v5" / "era" / "seed0" / "metrics.csv").read_text()
    assert [line.split(",")[0] for line in metrics.splitlines()[1:]] == ["300", "400"]


@pytest.mark.slow  # spawning processes: ~40 s on a loaded 2-core machine
def test_command_line_runs_trials_in_parallel_processes(tmp_path, capsys):
    era(["rl", "sweep", "--envs", "InvertedPendulum-v5", "--heads", "era", "alpha", "--seeds", "0",
         "--targets", "-0.5", "--total-steps", "200", "--eval-every", "200", "--eval-episodes", "1",
         "--sac.hidden", "16", "--sac.batch-size", "16", "--sac.learning-starts", "100",
         "--parallel", "2", "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert "2 trials, 0 finished, 0 to resume, 2 to start" in out and "final return" in out
    for head in ("era", "alpha"):
        config = json.loads((tmp_path / "InvertedPendulum-v5" / f"{head}--0.5" / "seed0" /
                             "config.json").read_text())  # fmt: skip
        assert (config["head"], config["target_entropy"]) == (head, -0.5)
    assert (
        "| InvertedPendulum-v5 | alpha | -0.5 | 1 | 200 |" in (tmp_path / "summary.md").read_text()
    )


def test_a_folder_holding_another_run_is_refused_before_any_trial_starts(tmp_path):
    sweep(tiny(tmp_path, heads=["era"]))
    # Same folder, another configuration: refused as `era rl train --resume` refuses it.
    with pytest.raises(RunError, match="another configuration"):
        sweep(tiny(tmp_path, total_steps=400, sac=SACConfig(hidden=32, learning_starts=100)))
    # A trial folder with run files but no checkpoint (not ours to overwrite).
    stray = tmp_path / "InvertedPendulum-v5" / "alpha" / "seed0"
    stray.mkdir(parents=True)
    (stray / "metrics.csv").write_text("step\n")
    with pytest.raises(RunError, match="holds run files but no checkpoint"):
        sweep(tiny(tmp_path))
    assert not (tmp_path / "InvertedPendulum-v5" / "alpha" / "seed0" / "config.json").exists()
    # A trial whose seeds are not all at a checkpoint cannot resume as one run.
    with pytest.raises(RunError, match="only seed0 of the trial's seeds have a checkpoint"):
        sweep(tiny(tmp_path, heads=["era"], seeds=[0, 1]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heads", "era", "std"], "--heads ['std'] are not sac heads"),
        (["--algo", "ppo", "--heads", "std", "--targets", "-1"], "std head of PPO has no target"),
        (["--targets", "1", "1"], "--targets [1.0, 1.0] contains duplicates"),
        (["--targets", "nan"], "--targets [nan] must be finite"),
        (["--seeds"], "--seeds is empty"),
        (["--parallel", "0"], "--parallel 0 is out of range"),
        (["--ray-address", "auto"], "--ray-address needs --backend ray"),
        (["--backend", "ray", "--parallel", "2"], "--parallel 2 is for --backend local"),
        (["--sac.hidden", "0"], "--sac.hidden 0 is out of range"),
    ],
)
def test_bad_flags_are_rejected_with_a_clear_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        era(["rl", "sweep", "--out", str(tmp_path / "sweep"), *args])
    assert exit_info.value.code == 2
    # one message, from era.cli (our errors) or tyro (settings rejected while parsing)
    err = capsys.readouterr().err
    assert message in " ".join(err.replace("│", " ").split()) and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_ray_backend_runs_the_same_sweep_into_the_same_folders(tmp_path):
    """The same trials as the local backend, computed in Ray's workers: the same run folders and,
    on the same machine with one thread, the same returns; rerun and resume work through Tune."""
    ray = pytest.importorskip("ray")
    local = sweep(tiny(tmp_path / "local"))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "ray"
        rows = sweep(tiny(out, backend="ray"))
        assert rows == local
        for head in ("era", "alpha"):
            run = out / "InvertedPendulum-v5" / head / "seed0"
            assert RUN_FILES <= {p.name for p in run.iterdir()}
        # Tune's records beside the runs, with each trial's result.
        results = [json.loads(p.read_text()) for p in sorted(out.glob("_tune/*/result.json"))]
        assert sorted(r["return_mean"] for r in results) == sorted(r["return_mean"] for r in rows)
        # Finished trials are skipped; more steps resume both trials as Tune trials again.
        assert sweep(tiny(out, backend="ray")) == rows
        assert [r["step"] for r in sweep(tiny(out, backend="ray", total_steps=400))] == [400, 400]
    finally:
        ray.shutdown()
