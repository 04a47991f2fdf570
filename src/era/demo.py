"""The README's main job: SAC-ERA against SAC on a real MuJoCo task, three seeds each.

Two vectorised runs, one process each, of three seeds each on ``InvertedPendulum-v5``: SAC with
the ERA head (exact per-state entropy floor, no entropy term anywhere) and SAC with the usual
auto-tuned temperature, on the same networks, budget and seeds. The report gives each head's
final evaluation return (mean and spread over the seeds), how many seeds reached the task's
``reward_threshold`` (Gymnasium's "solved" level, 950 for InvertedPendulum-v5), and the entropy
of the policy in every one of 1024 replay states: ERA's policy sits at the target in each state
(min = max = target), SAC's temperature steers only the average. It writes ``curves.png`` and
``report.md`` into ``--out`` and prints the table.

Run again with the same options, the demo reuses its finished runs and resumes interrupted ones;
a folder holding runs of other options is refused (choose another ``--out``).

Run: ``python -m era.demo`` or ``era demo`` (``--help`` for the options).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro

from era.rl.config import SACConfig, TrainConfig
from era.rl.loop import MAY_CHANGE
from era.rl.train import train
from era.runs import CHECKPOINT, RUN_FILES, RunError, check_run, run_in_parallel

HEADS = {"sac-era": "era", "sac": "alpha"}


@dataclass
class DemoConfig:
    """SAC-ERA vs SAC on a MuJoCo task, three seeds each (one vectorised run per head)."""

    out: Path = Path("runs/demo")
    """output directory (OUT/HEAD/seedN run folders, curves.png, report.md)"""
    env: str = "InvertedPendulum-v5"
    """Gymnasium MuJoCo id or dm_control task"""
    steps: int = 6_000
    """environment steps per seed"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds of each head, trained as one vectorised run"""
    hidden: int = 64
    """network width (small, so the demo stays short on a CPU)"""
    learning_starts: int = 1000
    """random steps before learning"""
    updates_per_step: int = 2
    """gradient updates per environment step (as the authors' SAC-ERA)"""
    lr: float = 1e-3
    """Adam learning rate (SAC's usual 3e-4 learns this task too slowly for the budget)"""
    tau: float = 0.02
    """Polyak rate of the target critics (faster than SAC's usual 0.005, for the same reason)"""
    target_entropy: float = -2.5
    """policy entropy target of both heads, in nats (a balancing task wants little noise)"""
    eval_every: int = 1000
    """steps between evaluations"""
    eval_episodes: int = 5
    """episodes per evaluation (the final return is their mean)"""
    workers: int = 2
    """parallel processes (one head each)"""


def run_configs(config: DemoConfig) -> dict[str, TrainConfig]:
    """The vectorised run of each head (its seeds go to OUT/HEAD/seedN)."""
    sac = SACConfig(
        hidden=config.hidden,
        learning_starts=config.learning_starts,
        updates_per_step=config.updates_per_step,
        lr=config.lr,
        tau=config.tau,
    )
    return {
        name: TrainConfig(
            env=config.env,
            algo="sac",
            head=head,
            target_entropy=config.target_entropy,
            total_steps=config.steps,
            seeds=config.seeds,
            out=config.out / name,
            eval_every=config.eval_every,
            eval_episodes=config.eval_episodes,
            checkpoint_every=config.eval_every,
            progress=False,
            sac=sac,
        )  # fmt: skip
        for name, head in HEADS.items()
    }


def _state(config: TrainConfig) -> str:
    """``"new"``, ``"finished"`` or ``"interrupted"`` (resume it); raises ``RunError`` if a
    seed's folder holds a run of another configuration (compared by value, ``era.runs``)."""
    states = set()
    for seed in config.seeds:
        run = config.for_seed(seed)
        if not any((run.out / name).exists() for name in RUN_FILES):
            states.add("new")
            continue
        if not (run.out / CHECKPOINT).is_file():
            raise RunError(
                f"{run.out} holds files of a run but no checkpoint; choose another --out"
            )
        check_run(run.out, run, resume=True, may_change=MAY_CHANGE)  # the same configuration?
        summary = run.out / "summary.json"
        if summary.is_file() and json.loads(summary.read_text())["step"] >= config.total_steps:
            states.add("finished")
        else:
            states.add("interrupted")
    if len(states) > 1:
        raise RunError(f"the seeds in {config.out} are in different states {sorted(states)}")
    return states.pop()


def run(config: DemoConfig) -> dict[str, list[dict]]:
    """Train what is not finished yet, then plot and write the report; returns each head's
    per-seed summaries."""
    configs = run_configs(config)
    todo = []
    for c in configs.values():
        state = _state(c)
        if state != "finished":
            todo.append(dataclasses.replace(c, resume=state == "interrupted"))
    start = time.perf_counter()
    run_in_parallel(train, todo, max_workers=config.workers)
    wall = time.perf_counter() - start
    summaries = {
        name: [json.loads((c.out / f"seed{s}" / "summary.json").read_text()) for s in c.seeds]
        for name, c in configs.items()
    }

    from era.rl.cli import PlotConfig, plot

    png = plot(PlotConfig(runs=[c.out for c in configs.values()], out=config.out / "curves.png",
                          labels=list(configs)))  # fmt: skip
    (config.out / "report.md").write_text(report(config, summaries, png, wall, len(todo)))
    return summaries


def reward_threshold(env: str) -> float | None:
    """Gymnasium's ``reward_threshold`` of the task ("solved"), None where it defines none."""
    import gymnasium as gym

    try:
        return gym.spec(env).reward_threshold
    except gym.error.Error:
        return None


# (label, summary key, format): mean +- spread over seeds, then the extreme over seeds
ROWS = [
    ("final return (mean ± std over seeds)", "return_mean", "{:.1f}"),
    ("target entropy", "target_entropy", "{:.2f}"),
    ("mean policy entropy", "entropy", "{:.3f}"),
]
EXTREMES = [
    ("lowest per-state entropy (any seed)", "entropy_min", min, "{:.3f}"),
    ("highest per-state entropy (any seed)", "entropy_max", max, "{:.3f}"),
]


def table_rows(summaries: dict[str, list[dict]], threshold: float | None) -> list[list[str]]:
    """The report's table as rows of cells: label, then one cell per head."""
    rows = []
    for label, key, fmt in ROWS:
        cells = []
        for seeds in summaries.values():
            values = np.array([s[key] for s in seeds])
            cell = fmt.format(values.mean())
            if key == "return_mean":
                cell += " ± " + fmt.format(values.std())
            cells.append(cell)
        rows.append([label, *cells])
    if threshold is not None:
        solved = [sum(s["return_mean"] >= threshold for s in seeds) for seeds in summaries.values()]
        n = [len(seeds) for seeds in summaries.values()]
        rows.append([f"seeds solving it (return ≥ {threshold:g})",
                     *(f"{k} of {m}" for k, m in zip(solved, n, strict=True))])  # fmt: skip
    for label, key, pick, fmt in EXTREMES:
        rows.append(
            [label, *(fmt.format(pick(s[key] for s in seeds)) for seeds in summaries.values())]
        )
    seconds = [max(s["seconds"] for s in seeds) for seeds in summaries.values()]
    rows.append(["training time per run (s)", *(f"{t:.0f}" for t in seconds)])
    return rows


def verdict(summaries: dict[str, list[dict]], threshold: float | None) -> str:
    """One sentence computed from the results: which head solved the task with how many seeds."""
    if threshold is None:
        return "The task defines no reward threshold; compare the returns above."
    parts = []
    for name, seeds in summaries.items():
        solved = sum(s["return_mean"] >= threshold for s in seeds)
        parts.append(f"{name} solved the task with {solved} of {len(seeds)} seeds")
    return "At the final evaluation " + " and ".join(parts) + f" (threshold {threshold:g})."


def report(
    config: DemoConfig, summaries: dict[str, list[dict]], png: Path, wall: float, trained: int
) -> str:
    names = list(summaries)
    threshold = reward_threshold(config.env)
    lines = [
        f"# ERA demo: SAC-ERA vs SAC on {config.env}",
        "",
        f"{config.steps} environment steps per seed, seeds {config.seeds} per head (one "
        f"vectorised run each), networks 2x{config.hidden}, {config.learning_starts} random "
        f"steps, {config.updates_per_step} update(s) per step, learning rate {config.lr:g}, "
        f"target-critic rate {config.tau:g}, target entropy {config.target_entropy:g} nats "
        "for both heads. The final return is the mean of "
        f"{config.eval_episodes} deterministic episodes. Per-state entropies are measured on "
        "1024 replay states at the final evaluation (exact for ERA's truncated normal, a "
        "16-sample estimate for SAC's tanh-Gaussian).",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summaries, threshold)]
    when = (
        f"this invocation trained {trained} of {len(names)} runs in {wall:.0f} s wall"
        if trained
        else "this invocation reused finished runs"
    )
    seeds = " ".join(map(str, config.seeds))
    lines += [
        "",
        verdict(summaries, threshold),
        "",
        f"![curves]({png.name})",
        "",
        f"Reproduce: `python -m era.demo --out {config.out} --env {config.env} --steps "
        f"{config.steps} --seeds {seeds} --hidden {config.hidden} --learning-starts "
        f"{config.learning_starts} --updates-per-step {config.updates_per_step} --lr {config.lr:g} "
        f"--tau {config.tau:g} --target-entropy {config.target_entropy:g}` ({when}).",
        "",
    ]
    return "\n".join(lines)


def print_table(summaries: dict[str, list[dict]], config: DemoConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    threshold = reward_threshold(config.env)
    table = Table(
        title=f"SAC-ERA vs SAC on {config.env}, {config.steps} steps, seeds {config.seeds}"
    )
    table.add_column("")
    for name in summaries:
        table.add_column(name, justify="right")
    for row in table_rows(summaries, threshold):
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(verdict(summaries, threshold))
    console.print(f"report: {config.out / 'report.md'}   plot: {config.out / 'curves.png'}")


def main(argv: list[str] | None = None) -> None:
    config = tyro.cli(DemoConfig, args=argv, prog="era demo")
    print_table(run(config), config)


if __name__ == "__main__":
    main()
