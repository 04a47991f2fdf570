"""``era rl sweep``: a grid of training runs, tasks x heads x target entropies, every seed of a
grid point trained by one :func:`era.rl.train.train` call (a *trial*).

The trials run on this machine (``--backend local``: one after another, or a few at once in
their own processes; no Ray needed) or as Ray Tune trials (``--backend ray``), on this machine or
on a Ray cluster (``--ray-address``). Either way every seed's run lands in
``OUT/<env>/<head>[-<target>]/seed{N}/`` with the files ``era rl train`` writes, and the run
folder rules of ``era.runs`` hold: a finished trial is skipped, an interrupted one resumed from its
checkpoints, and a folder holding anything else is refused before any trial starts. At the end a
table of final returns (mean +- std over seeds) is printed and written to ``OUT/summary.csv`` and
``OUT/summary.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from era.rl.config import HEADS, PPOConfig, SACConfig, TrainConfig
from era.rl.loop import check_folder
from era.runs import CHECKPOINT, RUN_FILES, RunError, read_metrics, run_in_parallel
from era.validation import AT_LEAST_1, check_ranges


@dataclass
class SweepConfig:
    """A grid of runs: one trial per (env, head, target), each training all --seeds at once."""

    envs: list[str] = field(default_factory=lambda: ["Hopper-v5"])
    """Gymnasium ids (Hopper-v5) or dm_control tasks (dm_control/walker-run) to train on"""
    heads: list[Literal["era", "alpha", "std"]] = field(default_factory=lambda: ["era", "alpha"])
    """policy heads to compare (SAC: era, alpha; PPO: era, std)"""
    targets: list[float] | None = None
    """target entropies, one trial per head and target (default: each head's own target)"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds of every trial, trained by one run (vectorised where the algorithm allows)"""
    out: Path = Path("runs/sweep")
    """sweep folder: OUT/<env>/<head>[-<target>]/seed{N}/, summary.csv, summary.md"""
    backend: Literal["local", "ray"] = "local"
    """local: trials in this machine's processes, no Ray needed; ray: Ray Tune trials"""
    parallel: int = 1
    """local backend: trials run at once, each in its own process"""
    ray_address: str | None = None
    """ray backend: cluster to join (host:port from `ray start --head`, or auto); default: new"""
    algo: Literal["sac", "ppo"] = "sac"
    """learning algorithm of every trial"""
    era_mode: Literal["exact", "delta"] = "exact"
    """SAC-ERA: exact per-state floor, or the paper's learned delta compensation"""
    total_steps: int = 100_000
    """environment steps per seed"""
    eval_every: int = 10_000
    """steps between deterministic evaluations (a final one always runs)"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    checkpoint_every: int = 10_000
    """steps between checkpoints (an interrupted trial resumes from the last one)"""
    threads: int = 1
    """torch CPU threads per trial (on Ray also the CPUs reserved per trial)"""
    sac: SACConfig = field(default_factory=SACConfig)
    """SAC hyper-parameters of every trial"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyper-parameters of every trial"""

    def __post_init__(self):
        check_ranges(self, "", {"parallel": AT_LEAST_1, "threads": AT_LEAST_1})
        for flag, values in [
            ("envs", self.envs),
            ("heads", self.heads),
            ("seeds", self.seeds),
            ("targets", self.targets or []),
        ]:
            if flag != "targets" and not values:
                raise ValueError(f"--{flag} is empty: give at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"--{flag} {values} contains duplicates")
        wrong = [h for h in self.heads if h not in HEADS[self.algo]]
        if wrong:
            raise ValueError(
                f"--heads {wrong} are not {self.algo} heads; choose from {HEADS[self.algo]}"
            )
        if self.targets is not None:
            if not self.targets:
                raise ValueError("--targets is empty: give values, or leave it out for defaults")
            if not all(math.isfinite(t) for t in self.targets):
                raise ValueError(f"--targets {self.targets} must be finite numbers")
            if "std" in self.heads:
                raise ValueError("--targets: the std head of PPO has no target entropy to set")
            names = [trial_name("era", t) for t in self.targets]
            if len(set(names)) != len(names):
                raise ValueError(f"--targets {self.targets} do not differ in 6 significant digits")
        if self.ray_address is not None and self.backend != "ray":
            raise ValueError("--ray-address needs --backend ray")
        if self.parallel != 1 and self.backend != "local":
            raise ValueError(
                f"--parallel {self.parallel} is for --backend local; Ray runs as many trials at "
                "once as its CPUs allow (--threads each)"
            )


def trial_name(head: str, target: float | None) -> str:
    """``era`` for the head's default target, ``era--1.5`` for target -1.5."""
    return head if target is None else f"{head}-{target:g}"


def trials(config: SweepConfig) -> list[TrainConfig]:
    """The grid, env-major: one multi-seed :class:`TrainConfig` per (env, head, target)."""
    targets = config.targets or [None]
    return [
        TrainConfig(
            env=env,
            algo=config.algo,
            head=head,
            era_mode=config.era_mode,
            target_entropy=target,
            total_steps=config.total_steps,
            seeds=list(config.seeds),
            out=config.out / env.replace("/", "-") / trial_name(head, target),
            eval_every=config.eval_every,
            eval_episodes=config.eval_episodes,
            checkpoint_every=config.checkpoint_every,
            threads=config.threads,
            progress=False,
            sac=config.sac,
            ppo=config.ppo,
        )
        for env in config.envs
        for head in config.heads
        for target in targets
    ]


def seed_dirs(trial: TrainConfig) -> list[Path]:
    return [trial.for_seed(seed).out for seed in trial.seeds]


def finished(run: Path, total_steps: int) -> bool:
    """A run that wrote its summary (only a completed run does) at ``total_steps`` or later."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("step", -1) >= total_steps


def pending(trial: TrainConfig) -> TrainConfig | None:
    """The trial to run (resuming when its seeds have checkpoints), or None when it is done.

    Raises ``RunError`` for a folder ``era rl train`` would refuse (another run's files, a
    checkpoint of another configuration), before anything is written.
    """
    runs = seed_dirs(trial)
    if all(finished(run, trial.total_steps) for run in runs):
        return None
    for run in runs:
        if not (run / CHECKPOINT).is_file() and any(any(run.glob(f)) for f in RUN_FILES):
            raise RunError(
                f"{run} holds run files but no checkpoint (a trial stopped before its first "
                "checkpoint, or another run): the sweep can neither resume nor overwrite it; "
                "delete that folder to train the trial again"
            )
    with_checkpoint = [run.name for run in runs if (run / CHECKPOINT).is_file()]
    if with_checkpoint and len(with_checkpoint) < len(runs):
        raise RunError(
            f"{trial.out}: only {', '.join(with_checkpoint)} of the trial's seeds have a "
            "checkpoint; its seeds are one run and resume together: delete the folder to train "
            "the trial again, or sweep only those seeds"
        )
    trial = dataclasses.replace(trial, resume=bool(with_checkpoint))
    for seed in trial.seeds:
        check_folder(trial.for_seed(seed))
    return trial


def run_trial(trial: TrainConfig) -> Path:
    """Train every seed of a trial (one ``era rl train --seeds`` run); returns its folder."""
    from era.rl.train import train

    train(trial)
    return trial.out


def sweep(config: SweepConfig) -> list[dict]:
    """Run the sweep's unfinished trials, then write and print the summary; returns its rows."""
    grid = trials(config)
    if config.backend == "ray":  # Ray's workers run elsewhere: they need absolute folders
        grid = [dataclasses.replace(t, out=t.out.resolve()) for t in grid]
    todo = [t for t in map(pending, grid) if t is not None]
    print(
        f"sweep {config.out}: {len(grid)} trials, {len(grid) - len(todo)} finished, "
        f"{sum(t.resume for t in todo)} to resume, "
        f"{sum(not t.resume for t in todo)} to start",
        flush=True,
    )
    if todo:
        if config.backend == "local":
            run_in_parallel(run_trial, todo, max_workers=config.parallel)
        else:
            run_with_ray(config, todo)
    rows = [summary_row(t) for t in grid]
    write_summary(config.out, rows)
    return rows


def run_with_ray(config: SweepConfig, todo: list[TrainConfig]) -> None:
    """One Ray Tune trial per grid point, ``threads`` CPUs each; Tune's own records go to
    ``OUT/_tune``, the runs to their usual folders. Joins the running Ray instance if this
    process has one (``ray.init`` called before), else ``ray.init(address=--ray-address)``."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise ValueError(
            "--backend ray needs Ray Tune: pip install 'era-activation[sweep]' "
            "(or use --backend local)"
        ) from e
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.ray_address)
    try:
        _fit(config, todo, tune)
    finally:
        if started_here:
            ray.shutdown()


def _fit(config: SweepConfig, todo: list[TrainConfig], tune) -> None:
    by_name = {t.out.relative_to(config.out.resolve()).as_posix(): t for t in todo}
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trial, trials=by_name), {"cpu": config.threads}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(by_name))},
        run_config=tune.RunConfig(
            name="_tune",
            storage_path=str(config.out.resolve()),
            verbose=1,
        ),
    )
    failed = [(r.config["trial"], r.error) for r in tuner.fit() if r.error is not None]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(todo)} Ray trials failed: "
            + "; ".join(f"{name}: {error!r}" for name, error in failed)
        ) from failed[0][1]


def _tune_trial(params: dict, trials: dict[str, TrainConfig]) -> None:
    """The Tune trainable: train one trial, report its summary row as the trial's result."""
    from ray import tune

    trial = trials[params["trial"]]
    run_trial(trial)
    tune.report({k: v for k, v in summary_row(trial).items() if isinstance(v, (int, float))})


def summary_row(trial: TrainConfig) -> dict:
    """Final evaluation return of each seed, as mean and std over the seeds that logged one."""
    finals = []
    step = None
    for run in seed_dirs(trial):
        if (run / "metrics.csv").is_file():
            metrics = read_metrics(run / "metrics.csv")
            if "return_mean" in metrics and len(metrics["return_mean"]):
                finals.append(float(metrics["return_mean"][-1]))
                last = int(metrics["step"][-1])
                step = last if step is None else min(step, last)
    return {
        "env": trial.env,
        "head": trial.head,
        "target": "default" if trial.target_entropy is None else trial.target_entropy,
        "seeds": len(finals),
        "step": step if step is not None else 0,
        "return_mean": float(np.mean(finals)) if finals else float("nan"),
        "return_std": float(np.std(finals)) if finals else float("nan"),
    }


def write_summary(out: Path, rows: list[dict]) -> None:
    """``summary.csv`` and ``summary.md`` in ``out``, and the same table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    out.mkdir(parents=True, exist_ok=True)
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = ["env", "head", "target", "seeds", "step", "final return (mean ± std over seeds)"]
    cells = [
        [
            r["env"],
            r["head"],
            str(r["target"]),
            str(r["seeds"]),
            str(r["step"]),
            f"{r['return_mean']:.1f} ± {r['return_std']:.1f}",
        ]
        for r in rows
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    table = Table(*header[:-1], "final return", title=f"sweep {out}: mean ± std over seeds")
    for c in cells:
        table.add_row(*c)
    Console().print(table)
