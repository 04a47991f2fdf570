"""Sample efficiency: SAC-ERA (exact per-state floor) against SAC with auto-tuned temperature
(and, with ``--heads``, PPO-ERA against PPO).

Each (task, head) is one vectorised run of all ``--seeds`` (``era.rl.train`` with ``seeds``:
the seeds stacked in one process for SAC, one process per seed for PPO, all at once) into
``RUNS/TASK/HEAD/seedN``. Finished runs (every seed's ``summary.json``, or the copy of its
``metrics.csv`` in RESULTS, at the full step count, for PPO at its last whole rollout) are
skipped and interrupted ones resumed, so the script can be killed and restarted at any time, and
a fresh clone trains only what its committed results lack.
Afterwards (or with ``--aggregate-only``) it writes, per task and head, the final evaluation
return and the return averaged over all evaluations (a learning-curve area), as mean and std over
seeds; copies each run's ``metrics.csv`` beside the JSON (so everything can be rebuilt without
the run directories) as soon as a (task, head) run ends; aggregates over the tasks where every
seed of both heads finished with rliable's statistics (interquartile mean with 95%
stratified-bootstrap confidence intervals, probability of improvement, performance profiles) and
draws the learning curves with ``era rl plot``.

Scores are normalised per task before aggregating: dm_control returns by their maximum 1000,
Gymnasium returns by the best final return of any run of any head on that task in this benchmark
(Gymnasium MuJoCo tasks have no fixed maximum). So an aggregate says how close each head comes to
the best run seen here, not to a published level.

The issue's full scale (6 tasks x 5 seeds x 100k steps, SAC-ERA vs SAC, compiled updates)::

    OMP_NUM_THREADS=1 python benchmarks/rl_sample_efficiency.py \\
        --tasks Hopper-v5 Walker2d-v5 HalfCheetah-v5 Ant-v5 dm_control/cheetah-run \\
        dm_control/walker-walk --seeds 0 1 2 3 4 --total-steps 100000 --hidden 256 \\
        --learning-starts 5000 --eval-every 10000 --runs runs/rl_se_100k --compile \\
        --results benchmarks/results/rl_sample_efficiency_100k \\
        --figure docs/img/rl_sample_efficiency_100k.png

and PPO-ERA vs PPO (three seeds, one process each, 1M steps)::

    OMP_NUM_THREADS=1 python benchmarks/rl_sample_efficiency.py --heads PPO-ERA PPO \\
        --tasks Hopper-v5 Walker2d-v5 HalfCheetah-v5 Ant-v5 --seeds 0 1 2 \\
        --total-steps 1000000 --eval-every 50000 --runs runs/rl_se_ppo \\
        --results benchmarks/results/rl_sample_efficiency_ppo

and what bf16 autocast does to learning (SAC-ERA in float32 against the same under bf16)::

    OMP_NUM_THREADS=1 python benchmarks/rl_sample_efficiency.py --heads SAC-ERA SAC-ERA-bf16 \\
        --tasks Hopper-v5 --seeds 0 1 2 --total-steps 30000 --eval-every 3000 \\
        --runs runs/rl_se_bf16 --results benchmarks/results/rl_bf16_hopper_30k \\
        --figure docs/img/rl_bf16_hopper_30k.png

and the ablation that tells the mechanism from the target: SAC(auto-alpha) aiming at SAC-ERA's
target, -0.5*dim(A), against SAC-ERA, on the tasks whose SAC-ERA runs are already in RESULTS
(their committed metrics.csv copies count as finished, so only the new head trains)::

    OMP_NUM_THREADS=1 python benchmarks/rl_sample_efficiency.py --heads SAC-ERA SAC-target-0.5 \\
        --tasks Ant-v5 Hopper-v5 Walker2d-v5 --seeds 0 1 2 3 4 --total-steps 100000 --hidden 256 \\
        --learning-starts 5000 --eval-every 10000 --runs runs/rl_se_100k --compile \\
        --workers 2 --results benchmarks/results/rl_sample_efficiency_100k \\
        --comparison SAC-ERA_vs_SAC-target-0.5 --figure docs/img/rl_target_ablation_100k.png

On a machine with a GPU, ``--device cuda --compile --workers 12`` trains all twelve (task, head)
runs of the full scale at once, sharing the GPU (start CUDA MPS first,
``nvidia-cuda-mps-control -d``, so that their small kernels run side by side). Runs stopped
early compare at a common step with ``--aggregate-only --at-step N``.

What was run for docs/benchmarks/rl.md is in that file.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import tyro
from _rl_common import args_json, copy_metrics, is_finished, mean_std, seed_summary, write_results

from era.rl.config import SACConfig, TrainConfig
from era.runs import exit_on_stop


class Head(NamedTuple):
    algo: str
    policy: str
    era_mode: str = "exact"
    amp: str = "none"
    target_per_action_dim: float | None = None
    """entropy target as a multiple of dim(A); None: the head's default"""


# The bf16 heads test what bf16 does to learning; SAC-target-0.5 is SAC(auto-alpha) aiming at
# SAC-ERA's target, -0.5*dim(A), to tell the mechanism (a per-state floor) from the target.
HEADS = {
    "SAC-ERA": Head("sac", "era"),
    "SAC": Head("sac", "alpha"),
    "SAC-target-0.5": Head("sac", "alpha", target_per_action_dim=-0.5),
    "SAC-ERA-bf16": Head("sac", "era", amp="bf16"),
    "SAC-bf16": Head("sac", "alpha", amp="bf16"),
    "PPO-ERA": Head("ppo", "era"),
    "PPO": Head("ppo", "std"),
}


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["Hopper-v5", "dm_control/cartpole-swingup"])
    """Gymnasium or dm_control task ids"""
    heads: list[str] = field(default_factory=lambda: ["SAC-ERA", "SAC"])
    """heads to compare, first against second (of SAC-ERA, SAC, SAC-target-0.5, SAC-ERA-bf16,
    SAC-bf16, PPO-ERA, PPO; the bf16 ones run the SAC update under bf16 autocast;
    SAC-target-0.5 is SAC(auto-alpha) with SAC-ERA's target, -0.5*dim(A))"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """seeds of every (task, head), trained together"""
    total_steps: int = 100_000
    """environment steps per run"""
    hidden: int = 256
    """hidden width of actor and critics (SAC; PPO keeps its 64)"""
    batch_size: int = 256
    """transitions per gradient update"""
    learning_starts: int = 5000
    """random steps before learning"""
    eval_every: int = 10_000
    """steps between evaluations"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    runs: Path = Path("runs/rl_sample_efficiency")
    """run directories (checkpoints, TensorBoard)"""
    results: Path = Path("benchmarks/results/rl_sample_efficiency")
    """JSON, markdown table and the runs' metrics.csv copies"""
    figure: Path = Path("docs/img/rl_sample_efficiency.png")
    """learning curves"""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """SAC runs' networks, replay and updates: cpu, cuda or auto (environments stay on the CPU)"""
    compile: bool = False
    """torch.compile the SAC losses (--sac.compile)"""
    workers: int = 1
    """(task, head) runs trained at once, one process each (several share one GPU well; a PPO
    run starts one more process per seed)"""
    aggregate_only: bool = False
    """skip training; rebuild the tables and figure from the copied CSVs"""
    comparison: str | None = None
    """write the aggregate (summary.json, table.md) into RESULTS/COMPARISON/ instead of RESULTS/:
    a second comparison over the same runs, e.g. --heads SAC-ERA SAC-target-0.5"""
    at_step: int | None = None
    """aggregate the curves up to this step (runs cut short; default --total-steps), into
    RESULTS/at_step_N/"""
    bootstrap: int = 2000
    """bootstrap resamples of the confidence intervals"""


def run_dir(args: Args, task: str, head: str) -> Path:
    return args.runs / task.replace("/", "_") / head


def csv_copy(args: Args, task: str, head: str, seed: int) -> Path:
    return args.results / task.replace("/", "_") / head / f"seed{seed}" / "metrics.csv"


def last_step(config: TrainConfig) -> int:
    """The step a finished run ends at: ``total_steps``, or for PPO the end of its last whole
    rollout (1M steps in rollouts of 2,048 end at 999,424)."""
    if config.algo != "ppo":
        return config.total_steps
    rollout = config.ppo.num_envs * config.ppo.num_steps
    return config.total_steps // rollout * rollout


@functools.cache
def action_dim(task: str) -> int:
    """dim(A) of ``task``; cached, since ``run_config`` is built several times per (task, head)
    and making a MuJoCo or dm_control environment is not free."""
    from era.rl.envs import make_env

    env = make_env(task, seed=0)
    try:
        return int(env.action_space.shape[0])
    finally:
        env.close()


def run_config(args: Args, task: str, head: str) -> TrainConfig:
    """The vectorised run of every seed of one (task, head)."""
    spec = HEADS[head]
    out = run_dir(args, task, head)
    target = None
    if spec.target_per_action_dim is not None:
        target = spec.target_per_action_dim * action_dim(task)
    return TrainConfig(
        env=task,
        algo=spec.algo,
        head=spec.policy,
        era_mode=spec.era_mode,
        target_entropy=target,
        total_steps=args.total_steps,
        seeds=args.seeds,
        workers=len(args.seeds),  # PPO: every seed in its own process at once (SAC: one process)
        device=args.device if spec.algo == "sac" else "cpu",
        out=out,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=args.eval_every,
        resume=any((out / f"seed{seed}" / "checkpoint.pt").exists() for seed in args.seeds),
        progress=False,
        sac=SACConfig(
            hidden=args.hidden,
            batch_size=args.batch_size,
            learning_starts=args.learning_starts,
            amp=spec.amp,
            compile=args.compile,
        ),
    )


def copy_run_metrics(args: Args, task: str, head: str) -> None:
    """Copy the metrics.csv of every seed of one (task, head) run beside the results."""
    for seed in args.seeds:
        source = run_dir(args, task, head) / f"seed{seed}" / "metrics.csv"
        if source.exists():
            copy_metrics(source, csv_copy(args, task, head, seed))


def train_one(job: tuple[Args, str, str]) -> None:
    """One (task, head) run, in its own process when ``--workers`` > 1; its CSVs are copied as
    soon as it ends, so a finished run's results can be committed while the others train."""
    from era.rl.train import train

    args, task, head = job
    start = time.perf_counter()
    train(run_config(args, task, head))
    copy_run_metrics(args, task, head)
    print(f"trained {run_dir(args, task, head)} in {time.perf_counter() - start:.0f} s", flush=True)


def train_all(args: Args) -> None:
    """Train the unfinished (task, head) runs, ``--workers`` at a time; copy every metrics.csv."""
    from era.runs import run_in_parallel

    todo = []
    for task in args.tasks:
        for head in args.heads:
            config = run_config(args, task, head)
            end = last_step(config)
            copies = {s: csv_copy(args, task, head, s) for s in args.seeds}
            if all(is_finished(config.out / f"seed{s}", end, copies[s]) for s in args.seeds):
                print(f"done already: {config.out}", flush=True)
            else:
                todo.append((args, task, head))
    try:
        run_in_parallel(train_one, todo, max_workers=args.workers)
    finally:  # after Ctrl-C too: the curves of stopped runs are results up to their last step
        for task in args.tasks:
            for head in args.heads:
                copy_run_metrics(args, task, head)


def aggregate(args: Args) -> dict:
    """Final return per task and head over the seeds whose runs finished (or reached
    ``--at-step``: then "final" is the evaluation at that step)."""
    table = {}
    for task in args.tasks:
        row = {}
        for head in args.heads:
            csvs = [csv_copy(args, task, head, seed) for seed in args.seeds]
            summary = seed_summary(csvs, args.at_step or last_step(run_config(args, task, head)))
            if summary is not None:
                row[head] = summary
        if len(row) == len(args.heads):  # ratios of mean returns, meaningful where both are > 0
            for key in ("final", "curve"):
                era, sac = (row[h][f"{key}_return_mean"] for h in args.heads[:2])
                row[f"{key}_ratio_era_over_sac"] = era / sac if era > 0 and sac > 0 else None
        table[task] = row
    result = {
        "args": args_json(args),
        "tasks": table,
        "aggregate": rliable_aggregate(args, table),
    }
    # a second comparison, or a cut-short one, goes beside the first full one, not over it
    folder = args.results / args.comparison if args.comparison else args.results
    folder = folder / f"at_step_{args.at_step}" if args.at_step else folder
    write_results(folder, result, markdown(result))
    plot(args)
    return result


def markdown(result: dict) -> str:
    first, second = result["args"]["heads"][:2]
    lines = [
        f"| task | seeds | final return {first} | final return {second} | ratio "
        f"| mean over evaluations {first} | {second} | ratio | wall steps/s per seed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(value):
        return "–" if value is None else f"{value:.2f}"

    for task, row in result["tasks"].items():
        if first not in row or second not in row:
            lines.append(f"| {task} | unfinished |" + " |" * 7)
            continue
        era, sac = row[first], row[second]
        lines.append(
            f"| {task} | {era['seeds']}, {sac['seeds']} "
            f"| {mean_std(era, 'final')} | {mean_std(sac, 'final')} "
            f"| {ratio(row['final_ratio_era_over_sac'])} "
            f"| {mean_std(era, 'curve')} | {mean_std(sac, 'curve')} "
            f"| {ratio(row['curve_ratio_era_over_sac'])} "
            f"| {era['steps_per_s']:.0f}, {sac['steps_per_s']:.0f} |"
        )
    agg = result.get("aggregate")
    if agg:
        tasks = agg["tasks"]
        lines += ["", f"Aggregate over {len(tasks)} of {len(result['tasks'])} tasks "
                  f"({', '.join(tasks)}) x {agg['runs']} seeds (normalised scores, 95% "
                  "stratified-bootstrap CIs; a task counts once every seed of both heads "
                  "finished):", ""]  # fmt: skip
        lines += ["| head | IQM final | mean final |", "|---|---:|---:|"]
        for head in (first, second):
            iqm, mean = agg["iqm"][head], agg["mean"][head]
            lines.append(f"| {head} | {iqm[0]:.3f} [{iqm[1]:.3f}, {iqm[2]:.3f}] "
                         f"| {mean[0]:.3f} [{mean[1]:.3f}, {mean[2]:.3f}] |")  # fmt: skip
        p = agg["probability_of_improvement"]
        lines += ["", f"P({first} > {second}) = {p[0]:.3f} [{p[1]:.3f}, {p[2]:.3f}]"]
    return "\n".join(lines)


def normalised_scores(args: Args, table: dict) -> tuple[list[str], dict[str, np.ndarray]] | None:
    """The tasks where every seed of both heads finished, and ``{head: [seeds, tasks]}`` their
    final returns, normalised per task (see the module docstring); None if no task has."""
    heads = args.heads[:2]
    tasks, columns = [], {h: [] for h in heads}
    for task in args.tasks:
        row = table.get(task, {})
        if not all(h in row and row[h]["seeds"] == len(args.seeds) for h in heads):
            continue
        finals = {h: np.array(row[h]["final_returns"]) for h in heads}
        best = max(float(v.max()) for v in finals.values())
        scale = 1000.0 if task.startswith("dm_control/") else max(best, 1e-9)
        tasks.append(task)
        for h in heads:
            columns[h].append(finals[h] / scale)
    if not tasks:
        return None
    return tasks, {h: np.stack(c, axis=1) for h, c in columns.items()}


# rliable (Agarwal et al., 2021) is the field's tool for these statistics, but its bootstrap
# dependency (arch 7.x, the last rliable allows) does not import with pandas 3 (this project's
# environment). The same statistics in numpy, following the paper's definitions: IQM = mean of
# the middle 50% of all (run, task) scores; 95% percentile intervals of a bootstrap that resamples
# runs with replacement within each task (stratified); P(X > Y) = mean over tasks of the
# Mann-Whitney probability that a run of X beats a run of Y on that task (ties count half).


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores (the middle 50%, by rank, as scipy's trim_mean)."""
    flat = np.sort(scores.ravel())
    cut = int(len(flat) * 0.25)
    return float(flat[cut : len(flat) - cut].mean())


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """``[runs, tasks]`` scores of two heads: mean over tasks of P(run of x > run of y)."""
    per_task = [
        np.mean((x[:, t, None] > y[None, :, t]) + 0.5 * (x[:, t, None] == y[None, :, t]))
        for t in range(x.shape[1])
    ]
    return float(np.mean(per_task))


def stratified_bootstrap(statistic, arrays: list[np.ndarray], reps: int, seed: int = 0):
    """Point estimate and 95% percentile interval of ``statistic(*arrays)``; each array
    ``[runs, tasks]`` has its runs resampled with replacement within every task."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(reps):
        resampled = []
        for a in arrays:
            index = rng.integers(0, a.shape[0], size=a.shape)
            resampled.append(np.take_along_axis(a, index, axis=0))
        samples.append(statistic(*resampled))
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(statistic(*arrays)), float(low), float(high)]


def rliable_aggregate(args: Args, table: dict) -> dict | None:
    """IQM and mean with stratified-bootstrap CIs, probability of improvement and performance
    profiles of the first head against the second; the profile figure beside ``--figure``."""
    complete = normalised_scores(args, table)
    if complete is None:
        return None
    tasks, scores = complete
    first, second = args.heads[:2]
    mean = lambda x: float(x.mean())
    thresholds = np.linspace(0.0, 1.0, 41)
    profile = lambda x: np.array([(x > t).mean() for t in thresholds])
    profiles = {}
    for head, x in scores.items():
        rng = np.random.default_rng(0)
        boot = [
            profile(np.take_along_axis(x, rng.integers(0, x.shape[0], size=x.shape), axis=0))
            for _ in range(args.bootstrap)
        ]
        profiles[head] = (profile(x), *np.percentile(boot, [2.5, 97.5], axis=0))
    plot_profiles(args, thresholds, profiles)
    return {
        "tasks": tasks,
        "runs": len(args.seeds),
        "iqm": {h: stratified_bootstrap(iqm, [x], args.bootstrap) for h, x in scores.items()},
        "mean": {h: stratified_bootstrap(mean, [x], args.bootstrap) for h, x in scores.items()},
        "probability_of_improvement": stratified_bootstrap(
            probability_of_improvement, [scores[first], scores[second]], args.bootstrap
        ),
        "normalised_final_scores": {h: x.tolist() for h, x in scores.items()},
    }


def plot_profiles(args: Args, thresholds, profiles: dict) -> None:
    """Performance profiles: fraction of runs above each normalised score, with CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from era.plotting import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for head, (profile, low, high) in profiles.items():
        ax.plot(thresholds, profile, label=head)
        ax.fill_between(thresholds, low, high, alpha=0.2)
    ax.set_xlabel("normalised final score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.legend()
    save_figure(fig, args.figure.with_name(f"{args.figure.stem}_profile.png"))


def plot(args: Args) -> None:
    """Learning curves per task with ``era rl plot``, written as ``--figure`` + ``_<task>``."""
    from era.rl.cli import PlotConfig, plot

    for task in args.tasks:
        runs = [args.results / task.replace("/", "_") / head for head in args.heads]
        if all(any(r.glob("seed*/metrics.csv")) for r in runs):
            name = task.replace("/", "_")
            out = args.figure.with_name(f"{args.figure.stem}_{name}.png")
            plot(PlotConfig(runs=runs, out=out, labels=list(args.heads)))


def main(args: Args) -> dict:
    unknown = sorted(set(args.heads) - set(HEADS))
    if unknown or len(args.heads) < 2:
        raise SystemExit(f"--heads {args.heads}: give two or more of {list(HEADS)}")
    if not args.aggregate_only:
        with exit_on_stop():  # the runs saved their checkpoints: a rerun resumes them
            train_all(args)
    result = aggregate(args)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
