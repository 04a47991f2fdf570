"""CPU-scale reproduction of ERA for LLM RL: GRPO vs GRPO + ERA on procedural arithmetic.

The RL runs start from one model: by default a tiny transformer (Llama architecture, tokenizer
trained on the task's text) warm-started once with a short supervised phase; with ``--model
smollm2`` the pretrained SmolLM2-135M-Instruct (no warm start). From that same model and with
the same seeds and budget, GRPO and GRPO + ERA train on reasoning-gym ``chain_sum`` (two terms
of 1-2 digits). We record token entropy, response entropy and reward during training, and greedy
accuracy and pass@k (k = 1…``--final-samples``, unbiased estimator) on held-out problems at the
end.

    OMP_NUM_THREADS=1 python benchmarks/llm_reproduction.py            # the tiny-model run
    python benchmarks/llm_reproduction.py --report-only                # redo figures/JSON only

The SmolLM2 run of docs/benchmarks/llm.md (its command is there) adds ``--model smollm2`` and
smaller batches and evaluations, so that a step takes about a minute on one CPU core.

Resumable: finished runs are skipped, interrupted ones resume from their last checkpoint. Writes
``benchmarks/results/llm_reproduction.json``, ``docs/img/llm_curves.png`` and
``docs/img/llm_pass_at_k.png``, and prints the markdown table of ``docs/benchmarks/llm.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    out: Path = ROOT / "runs" / "llm_repro"
    """Where the runs are written."""
    model: str = "tiny"
    """'tiny' (warm-started here into --init) or a model `era llm train --model` takes, e.g.
    'smollm2', which the runs start from as it is."""
    init: Path = ROOT / "runs" / "llm_repro" / "init"
    """The first warm-start checkpoint of the tiny model (built here if missing)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """One GRPO and one GRPO + ERA run per seed."""
    steps: int = 200
    """GRPO steps per run."""
    prompts_per_step: int = 16
    """Distinct problems per step."""
    num_generations: int = 8
    """Completions per problem (the GRPO group)."""
    max_completion_length: int = 8
    """Longest completion in tokens (also in the evaluations)."""
    eval_every: int = 10
    """Steps between the held-out evaluations during training."""
    eval_problems: int = 100
    """Held-out problems of each evaluation during training."""
    save_every: int = 50
    """Steps between checkpoints."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: half the peak memory of a SmolLM2 run
    (6.4 instead of 13.4 GB), so that two fit beside each other on a 24 GB machine."""
    learning_rate: float = 2e-4
    """AdamW learning rate of the RL phase."""
    era_low: float = 1.8
    """Lower end of ERA's response-entropy band (nats), set just below where it starts."""
    era_high: float = 3.0
    """Upper end of the band."""
    warm_start_steps: int = 1200
    """Supervised steps of the first warm start (lr 3e-3 decaying to 0)."""
    more_sft_steps: int = 0
    """Supervised steps of a second phase on top of it, saved to OUT/init (0: none)."""
    more_sft_lr: float = 2e-3
    """Peak learning rate of the second phase (decays linearly to 0)."""
    workers: int = 2
    """Runs trained at the same time (one process, one thread each)."""
    eval_samples: int = 16
    """Samples per held-out problem in the evaluations every 10 steps."""
    final_samples: int = 16
    """Samples per held-out problem for the final pass@k."""
    report_only: bool = False
    """Skip training; rebuild the JSON, figures and table from the runs on disk."""
    results: Path = ROOT / "benchmarks" / "results" / "llm_reproduction.json"
    """The JSON summary."""
    img_dir: Path = ROOT / "docs" / "img"
    """Where the figures go."""
    figure_prefix: str = "llm"
    """Figures are PREFIX_curves.png and PREFIX_pass_at_k.png."""
    methods: dict[str, bool] = field(default_factory=lambda: {"GRPO": False, "GRPO + ERA": True})
    """Label -> whether ERA is on."""


def _second_phase(args: Args) -> Path:
    """Where the second supervised phase of the tiny model is saved."""
    return args.out / "init"


def _start(args: Args) -> str:
    """The model RL starts from: the first warm start, the second phase on top of it, or the
    pretrained model."""
    if args.model != "tiny":
        return args.model
    return str(_second_phase(args) if args.more_sft_steps else args.init)


def _start_eval_cache(args: Args) -> Path:
    """Where the starting model's final evaluation is cached."""
    return Path(_start(args)) if args.model == "tiny" else args.out / "start"


def _more_sft(args: Args) -> None:
    """A second supervised phase (fresh linear decay, batch order seed 1) on the first warm start.

    The first warm start leaves a model whose greedy answer is right on ~17% of held-out problems
    and whose sampled answers spread over many values; RL needs a model that already solves a fair
    share, so we train it further before RL.
    """
    import torch

    from era.llm.config import TaskArgs
    from era.llm.models import load_model
    from era.llm.sft import warm_start

    torch.set_num_threads(1)
    train, _ = TaskArgs().problems()
    model, tokenizer = load_model(str(args.init))
    warm_start(model, tokenizer, train, steps=args.more_sft_steps, lr=args.more_sft_lr, seed=1)
    model.save_pretrained(_second_phase(args))
    tokenizer.save_pretrained(_second_phase(args))


def _run_dir(args: Args, era: bool, seed: int) -> Path:
    return args.out / ("era" if era else "grpo") / f"seed{seed}"


def _train_one(job: tuple[Args, bool, int]) -> str:
    import torch

    from era.llm.config import TrainConfig
    from era.llm.runner import train

    args, era, seed = job
    torch.set_num_threads(1)
    out = _run_dir(args, era, seed)
    if (out / "final" / "config.json").is_file():
        return f"{out}: done before"
    resume = any(out.glob("checkpoint-*"))
    cfg = TrainConfig(
        out=out,
        model=_start(args),
        seed=seed,
        steps=args.steps,
        learning_rate=args.learning_rate,
        prompts_per_step=args.prompts_per_step,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        era=era,
        era_low=args.era_low,
        era_high=args.era_high,
        eval_every=args.eval_every,
        eval_problems=args.eval_problems,
        eval_samples=args.eval_samples,
        save_every=args.save_every,
        gradient_checkpointing=args.gradient_checkpointing,
        resume=resume,
    )
    train(cfg)
    return str(out)


def _final_eval(args: Args, model: str, cache_dir: Path, held_out) -> dict[str, float]:
    """Greedy accuracy and pass@1..n of one model on all held-out problems (cached in
    ``cache_dir``, one file per n: a cache of fewer samples has no pass@n)."""
    from era.llm.evaluate import evaluate
    from era.llm.models import load_model

    cache = cache_dir / f"final_eval_{args.final_samples}_samples.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    loaded, tokenizer = load_model(model)
    ks = list(range(1, args.final_samples + 1))
    result = evaluate(
        loaded, tokenizer, held_out, samples=args.final_samples, ks=ks,
        max_new_tokens=args.max_completion_length, seed=1234,
    )  # fmt: skip
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _report(args: Args) -> dict:
    from era.llm.config import TaskArgs
    from era.plotting import plot_curves

    _, held_out = TaskArgs().problems()
    summary: dict = {
        "task": "reasoning-gym chain_sum, 2 terms of 1-2 digits",
        "held_out_problems": len(held_out),
        "model": _model_name(args),
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(args).items()
        },
        "warm_start": _final_eval(args, _start(args), _start_eval_cache(args), held_out),
        "methods": {},
    }
    groups = {}
    for label, era in args.methods.items():
        finished = {s: _run_dir(args, era, s) for s in args.seeds}
        finished = {s: r for s, r in finished.items() if (r / "final" / "config.json").is_file()}
        runs = list(finished.values())
        if not runs:
            continue
        windows = [_window_csv(r, args.eval_every) for r in runs]
        groups[label] = windows if all(windows) else [r / "metrics.csv" for r in runs]
        finals = [_final_eval(args, str(r / "final"), r / "final", held_out) for r in runs]
        summary["methods"][label] = {
            "seeds": len(runs),
            **{k: _mean_std([f[k] for f in finals]) for k in finals[0]},
            "final_training": _last_rows(runs),
            "training_windows": _windows_mean_std(windows) if all(windows) else {},
            "per_seed": dict(zip(map(str, finished), finals, strict=True)),
        }
    args.img_dir.mkdir(parents=True, exist_ok=True)
    if groups:
        plot_curves(
            groups,
            x="step",
            panels=[
                ("entropy", "token entropy (nats)"),
                ("response_entropy", "response entropy, top 20% (nats)"),
                ("reward", "training reward"),
                ("eval_pass@1", "held-out pass@1"),
            ],
            out_png=args.img_dir / f"{args.figure_prefix}_curves.png",
            hlines={"response_entropy": args.era_low},
            title=f"chain_sum, {_model_name(args)}, lr {args.learning_rate:g}: GRPO vs GRPO + ERA "
            "(mean ± std over seeds)",
        )
        _plot_pass_at_k(
            summary, args.img_dir / f"{args.figure_prefix}_pass_at_k.png", args.final_samples
        )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(summary, indent=2) + "\n")
    print(_table(summary, args.final_samples))
    return summary


def _model_name(args: Args) -> str:
    return "tiny transformer" if args.model == "tiny" else args.model


def _last_rows(runs: list[Path]) -> dict[str, tuple[float, float]]:
    """Mean ± std over seeds of the training metrics averaged over each run's last 3 rows."""
    from era.runs import read_metrics

    per_run = [read_metrics(r / "metrics.csv") for r in runs]
    columns = ["entropy", "response_entropy", "reward", "frac_below", "frac_scaled"]
    columns += [c for c in ("frac_zero_std",) if all(c in m for m in per_run)]  # newer runs only
    return {c: _mean_std([float(m[c][-3:].mean()) for m in per_run]) for c in columns}


WINDOW_TAGS = ("reward", "entropy", "response_entropy", "frac_scaled")


def _window_csv(run: Path, width: int) -> Path | None:
    """``run/training_windows.csv``: each training metric's mean over steps 1..width,
    width+1..2*width, ..., beside the held-out pass@1 evaluated at the window's last step.

    Read step by step from the run's TensorBoard files, where a resumed run's repeated steps
    count once, as last logged (a metrics.csv row after a resume covers only the steps since
    it). None if the run has no TensorBoard scalars.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from era.runs import read_metrics

    steps = {tag: {} for tag in WINDOW_TAGS}
    for events in sorted((run / "tb").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        logged = accumulator.Tags()["scalars"]
        for tag in WINDOW_TAGS:
            if f"train/{tag}" in logged:
                steps[tag].update((e.step, e.value) for e in accumulator.Scalars(f"train/{tag}"))
    if not steps["reward"]:
        return None
    evaluations = read_metrics(run / "metrics.csv")
    pass_at_1 = dict(
        zip(evaluations["step"].tolist(), evaluations["eval_pass@1"].tolist(), strict=True)
    )
    rows = [("step", *WINDOW_TAGS, "eval_pass@1")]
    for end in range(width, max(steps["reward"]) + 1, width):
        means = [
            statistics.fmean(v for k, v in steps[tag].items() if end - width < k <= end)
            for tag in WINDOW_TAGS
        ]
        rows.append((end, *means, pass_at_1.get(end, math.nan)))
    out = run / "training_windows.csv"
    out.write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    return out


def _windows_mean_std(csvs: list[Path]) -> dict[str, list[tuple[float, float]]]:
    """Per training metric, mean ± std over seeds of each window (:func:`_window_csv`)."""
    from era.runs import read_metrics

    per_run = [read_metrics(path) for path in csvs]
    count = min(len(r["step"]) for r in per_run)
    return {
        tag: [_mean_std([float(r[tag][i]) for r in per_run]) for i in range(count)]
        for tag in WINDOW_TAGS
    }


def _plot_pass_at_k(summary: dict, out_png: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from era.plotting import save_figure

    ks = list(range(1, n + 1))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(ks, [summary["warm_start"][f"pass@{k}"] for k in ks], "k--", label="start")
    for label, result in summary["methods"].items():
        mean = [result[f"pass@{k}"][0] for k in ks]
        std = [result[f"pass@{k}"][1] for k in ks]
        ax.errorbar(ks, mean, yerr=std, capsize=2, label=f"{label} (n={result['seeds']})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("held-out pass@k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out_png)


def _table(summary: dict, n: int) -> str:
    """Final evaluation (mean ± std over seeds) with the training entropies at the end of
    training, then each seed's final evaluation and the training metrics per window of steps."""
    ks = [k for k in (1, 2, 4, 8, 16) if k <= n]
    windows = all(r["training_windows"] for r in summary["methods"].values())
    end = f"last {summary['config']['eval_every']} steps" if windows else "last 3 rows"
    head = "| model | greedy acc. | " + " | ".join(f"pass@{k}" for k in ks)
    head += f" | token entropy ({end}) | response entropy ({end}) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ws = summary["warm_start"]
    lines.append(
        f"| start ({summary['model']}) | {ws['accuracy']:.3f} | "
        + " | ".join(f"{ws[f'pass@{k}']:.3f}" for k in ks)
        + " | – | – |"
    )
    for label, r in summary["methods"].items():
        cells = [f"{r['accuracy'][0]:.3f} ± {r['accuracy'][1]:.3f}"]
        cells += [f"{r[f'pass@{k}'][0]:.3f} ± {r[f'pass@{k}'][1]:.3f}" for k in ks]
        # The windows count a resumed run's steps once; metrics.csv rows after a resume do not.
        t = r["final_training"]
        for tag in ("entropy", "response_entropy"):
            mean, std = r["training_windows"][tag][-1] if windows else t[tag]
            cells.append(f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {label} (n={r['seeds']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines + _seeds_table(summary, ks) + _windows_table(summary))


def _seeds_table(summary: dict, ks: list[int]) -> list[str]:
    """Each seed's final evaluation: with a few seeds, the spread is the finding."""
    head = "| method | seed | greedy acc. | " + " | ".join(f"pass@{k}" for k in ks) + " |"
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in summary["methods"].items():
        for seed, final in r["per_seed"].items():
            cells = [f"{final['accuracy']:.3f}"] + [f"{final[f'pass@{k}']:.3f}" for k in ks]
            lines.append(f"| {label} | {seed} | " + " | ".join(cells) + " |")
    return lines


def _windows_table(summary: dict) -> list[str]:
    """Training metrics per window of steps (``training_windows``), a row per method and metric."""
    rows = {label: r["training_windows"] for label, r in summary["methods"].items()}
    if not rows or not all(rows.values()):
        return []
    width = summary["config"]["eval_every"]
    spans = [
        f"{a + 1}–{a + width}"
        for a in range(0, width * len(next(iter(rows.values()))["reward"]), width)
    ]
    lines = ["", "| method | training metric (mean over steps) | " + " | ".join(spans) + " |"]
    lines.append("|" + "---|" * (len(spans) + 2))
    for label, windows in rows.items():
        for tag, values in windows.items():
            cells = [f"{mean:.3f} ± {std:.3f}" for mean, std in values]
            lines.append(f"| {label} | {tag} | " + " | ".join(cells) + " |")
    return lines


def _prepare_tiny_start(args: Args) -> None:
    """Build the tiny model's warm start (and its second phase) unless they exist."""
    from era.llm.config import WarmStartConfig
    from era.llm.runner import warm_start

    if not (args.init / "config.json").is_file():
        warm_start(WarmStartConfig(out=args.init, steps=args.warm_start_steps))
    if args.more_sft_steps and not (_second_phase(args) / "config.json").is_file():
        _more_sft(args)


def main(args: Args) -> None:
    from era.runs import exit_on_stop, run_in_parallel

    if not args.report_only:
        if args.model == "tiny":
            _prepare_tiny_start(args)
        jobs = [(args, era, seed) for seed in args.seeds for era in args.methods.values()]
        with exit_on_stop():  # the trainers saved their checkpoints: a rerun resumes them
            for line in run_in_parallel(_train_one, jobs, max_workers=args.workers):
                print(line)
    _report(args)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
