"""Does an ERA head regularise like label smoothing? Fashion-MNIST in three regimes, many seeds.

Regimes (ResNet-20, SGD + Nesterov 0.9, lr 0.1, weight decay 5e-4, batch 128, 1 warmup epoch,
cosine to zero, pad-and-crop + flip):

* ``overfit``: a fixed 10 % of the training set (6,000 images) for ``--overfit-epochs`` epochs
  (with 30, test NLL still falls at the last epoch: milder than its name);
* ``scarce``: a fixed 2 % (1,200 images) for ``--scarce-epochs`` epochs, where cross-entropy
  drives the training loss to ~0 and test NLL back up (CE: lowest at epochs 20-50 of 100);
* ``full``: all 60,000 images for ``--full-epochs`` epochs (to convergence).

Methods: cross-entropy, label smoothing {0.05, 0.1, 0.2}, confidence penalty (beta 0.1), dropout
(0.3 before the classifier), ERA H0 in {0.05, 0.1, 0.3, 0.6} (tight floor, tau 4) and the paper's
own setting, H0 0.6 with its looser floor. Every finished run
is evaluated on the clean test set and on three offline corruptions of it (Gaussian noise, blur,
contrast: see :func:`corrupt`), with top-1, NLL and ECE and 95 % bootstrap intervals over test
images; its result is one small JSON file under ``--results`` (config, learning curve, shift
metrics, reliability bins), committed to the repository.

Resumable: finished runs (their JSON exists) are skipped, interrupted ones resume from their
checkpoint. Runs are ordered so that the most informative finish first: regime by regime
(overfit, scarce, then the costly full), seed 0 first, CE vs LS 0.1 vs ERA 0.1 first within
a seed. ``--report`` only tabulates and draws what has finished.

    nohup nice -n 10 python benchmarks/vision_study.py > runs/vision_study.log 2>&1 &
    python benchmarks/vision_study.py --report

On a machine with a GPU the runs train there (the trainer's ``--device auto``), and
``--workers N`` trains N of them at once, in separate processes sharing the GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from era.runs import exit_on_stop, read_metrics, run_in_parallel
from era.vision.data import _STATS, load_fashion_mnist
from era.vision.head import create_model
from era.vision.metrics import ECE_BINS, confidence_bin, reliability_bins
from era.vision.train import CHECKPOINT, TrainConfig, native_bfloat16, train

METHODS = {  # name -> TrainConfig fields; the first three are run first
    "ce": {},
    "ls0.1": {"label_smoothing": 0.1},
    "era0.1": {"era_min_entropy": 0.1},
    "ls0.05": {"label_smoothing": 0.05},
    "ls0.2": {"label_smoothing": 0.2},
    "cp0.1": {"confidence_penalty": 0.1},
    "dropout0.3": {"drop_rate": 0.3},
    "era0.05": {"era_min_entropy": 0.05},
    "era0.3": {"era_min_entropy": 0.3},
    "era0.6": {"era_min_entropy": 0.6},
    # the paper's CIFAR-10 / ImageNet setting: its looser floor C = exp(H0 - 1), whose real
    # floor on 10 classes is about 0.97 nats (docs/vision.md)
    "era-paper0.6": {"era_min_entropy": 0.6, "era_floor": "paper"},
}
SHIFTS = ("clean", "noise", "blur", "contrast")
REGIMES = ("overfit", "scarce", "full")


@dataclass
class Args:
    """Train the study's runs in priority order (skipping finished ones), or only report."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of every (regime, method)"""
    regimes: tuple[str, ...] = REGIMES
    """overfit (10 % of the training set), scarce (2 %) and/or full (all of it)"""
    methods: tuple[str, ...] = tuple(METHODS)
    """which methods to train (a subset lets two processes share the study)"""
    overfit_epochs: int = 30
    """epochs of the overfitting regime (46 steps each)"""
    scarce_epochs: int = 100
    """epochs of the scarce regime (9 steps each)"""
    full_epochs: int = 30
    """epochs of the full regime (468 steps each)"""
    model: str = "resnet20"
    """timm model name"""
    threads: int = 1
    """torch threads"""
    workers: int = 1
    """runs trained at once, one process each (on a GPU several share it: CUDA is used when
    present)"""
    bootstrap: int = 1000
    """bootstrap resamples of the test set for the 95 % intervals"""
    runs_dir: Path = Path("runs/vision_study")
    """run folders (checkpoints, TensorBoard; not committed)"""
    results: Path = Path("benchmarks/results/vision_study")
    """one JSON per finished run, and the summary"""
    figures: Path = Path("docs/img")
    """where the report's figures go (vision_study_*.png)"""
    report: bool = False
    """train nothing: tabulate and draw the finished runs"""


def configs(args: Args) -> list[tuple[str, TrainConfig]]:
    """``(result name, config)`` of every run, most informative first."""
    regime_fields = {
        "overfit": dict(train_subset=6000, epochs=args.overfit_epochs, eval_every=46 * 3),
        "scarce": dict(train_subset=1200, epochs=args.scarce_epochs, eval_every=9 * 5),
        "full": dict(train_subset=0, epochs=args.full_epochs, eval_every=0),
    }
    jobs = []
    for regime in args.regimes:
        for seed in args.seeds:
            for method, fields in METHODS.items():
                if method not in args.methods:
                    continue
                name = f"{regime}/{method}/seed{seed}"
                config = TrainConfig(
                    out=args.runs_dir / name,
                    model=args.model,
                    seed=seed,
                    threads=args.threads,
                    progress=False,
                    **regime_fields[regime],
                    **fields,
                )
                jobs.append((name, config))
    return jobs


def corrupt(images: torch.Tensor, kind: str) -> torch.Tensor:
    """A corrupted copy of uint8 test images (fixed, seed 0), in the spirit of CIFAR-10-C.

    noise: additive Gaussian, sigma 0.2 of the pixel range; blur: 3x3 box filter twice;
    contrast: pixels pulled halfway to the image's mean.
    """
    x = images.float() / 255
    if kind == "noise":
        generator = torch.Generator().manual_seed(0)
        x = x + 0.2 * torch.randn(x.shape, generator=generator)
    elif kind == "blur":
        kernel = torch.full((1, 1, 3, 3), 1 / 9).repeat(x.shape[1], 1, 1, 1)
        for _ in range(2):
            x = torch.nn.functional.conv2d(x, kernel, padding=1, groups=x.shape[1])
    elif kind == "contrast":
        mean = x.mean((1, 2, 3), keepdim=True)
        x = mean + 0.5 * (x - mean)
    elif kind != "clean":
        raise ValueError(f"kind must be one of {SHIFTS}, got {kind!r}")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def predict(config: TrainConfig, images: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (float64) of the trained model on uint8 images, computed as the
    trainer evaluates (channels_last, bf16 autocast where native)."""
    model = create_model(
        config.model,
        num_classes=10,
        in_chans=1,
        era_min_entropy=config.era_min_entropy,
        tau=config.era_tau,
        floor=config.era_floor,
        drop_rate=config.drop_rate,
    )
    state = torch.load(Path(config.out) / CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.eval().to(memory_format=torch.channels_last)
    amp = config.amp and native_bfloat16(torch.device("cpu"))
    mean, std = (torch.tensor(s).view(-1, 1, 1) for s in _STATS["fashion-mnist"])
    out = []
    for batch in images.split(500):
        x = ((batch.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        out.append(torch.log_softmax(logits.double(), -1))
    return torch.cat(out)


def scores(logp: torch.Tensor, labels: torch.Tensor, resamples: int) -> dict:
    """Top-1, NLL and ECE with 95 % bootstrap intervals over test images; reliability bins."""
    correct = (logp.argmax(-1) == labels).double()
    loss = -logp.gather(-1, labels[:, None])[:, 0]
    count, confidence, hits = reliability_bins(logp, labels)
    conf = logp.exp().max(-1).values
    bins = confidence_bin(conf)

    def ece(index: torch.Tensor) -> torch.Tensor:
        # |sum(correct - confidence)| per bin, summed, per resample: one scatter-add.
        gap = torch.zeros(index.shape[0], ECE_BINS, dtype=torch.float64)
        gap.scatter_add_(1, bins[index], correct[index] - conf[index])
        return gap.abs().sum(1) / index.shape[1]

    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(labels), (resamples, len(labels)), generator=generator)
    samples = {
        "top1": correct[index].mean(1),
        "nll": loss[index].mean(1),
        "ece": torch.cat([ece(chunk) for chunk in index.split(100)]),
    }
    point = {
        "top1": correct.mean(),
        "nll": loss.mean(),
        "ece": ece(torch.arange(len(labels))[None]),
    }
    out = {}
    for key, values in samples.items():
        low, high = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64))
        out[key] = {"value": float(point[key]), "ci95": [float(low), float(high)]}
    out["reliability"] = {
        "count": count.tolist(),
        "confidence": confidence.tolist(),
        "correct": hits.tolist(),
    }
    return out


def run_one(job: tuple[str, TrainConfig, Args]) -> None:
    """Train (or resume) one run, evaluate it under every shift, write its JSON."""
    name, config, args = job
    result = args.results / f"{name}.json"
    if result.exists():
        done = json.loads(result.read_text())["config"]
        changed = [
            k
            for k in ("model", "epochs", "train_subset", "eval_every")
            if done[k] != getattr(config, k)
        ]
        if changed:
            raise ValueError(
                f"{result} was trained with other settings ({', '.join(changed)}); "
                "pass another --results (and --runs-dir) for this study"
            )
        return
    folder = Path(config.out)
    if folder.exists() and not (folder / CHECKPOINT).exists():
        shutil.rmtree(folder)  # stopped before its first checkpoint: nothing to continue
    train(dataclasses.replace(config, resume=(folder / CHECKPOINT).exists()))
    if not (folder / "final.json").exists():
        raise KeyboardInterrupt  # stopped early (Ctrl-C): resumed on the next invocation
    images, labels = load_fashion_mnist(train=False)
    shifts = {
        kind: scores(predict(config, corrupt(images, kind)), labels, args.bootstrap)
        for kind in SHIFTS
    }
    curve = {k: v.tolist() for k, v in read_metrics(folder / "metrics.csv").items()}
    result.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "config": json.loads((folder / "config.json").read_text()),
        "train_seconds": curve["time_s"][-1],  # summed over a resumed run's invocations
        "learning_curve": curve,
        "shifts": shifts,
    }
    result.write_text(json.dumps(payload, indent=1) + "\n")
    clean = shifts["clean"]
    print(
        f"{name}: top1 {clean['top1']['value']:.4f} nll {clean['nll']['value']:.4f} "
        f"ece {clean['ece']['value']:.4f} ({payload['train_seconds']:.0f} s)",
        flush=True,
    )


def _load_results(folder: Path) -> dict[str, dict[str, list[dict]]]:
    """``{regime: {method: [result of each finished seed]}}`` in METHODS order."""
    found: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(folder.glob("*/*/seed*.json")):
        regime, method = path.parts[-3], path.parts[-2]
        found.setdefault(regime, {}).setdefault(method, []).append(json.loads(path.read_text()))
    return {r: {m: found[r][m] for m in METHODS if m in found[r]} for r in found}


def _shift_mean(result: dict, metric: str) -> float:
    return float(np.mean([result["shifts"][k][metric]["value"] for k in SHIFTS[1:]]))


def _seed_sd(values: list[float]) -> float:
    """Sample standard deviation over seeds (n - 1); 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _color(method: str) -> str:
    """One colour per method in every figure and regime (ten of tab10, then black)."""
    index = list(METHODS).index(method)
    return f"C{index}" if index < 10 else "black"


def _cell(values: list[float], scale: float, digits: int, ci: list[float] | None) -> str:
    """mean ± sample sd over seeds, or with one seed its value and bootstrap interval."""
    if len(values) == 1:
        low, high = (c * scale for c in ci) if ci else (math.nan, math.nan)
        return f"{values[0] * scale:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{np.mean(values) * scale:.{digits}f} ± {_seed_sd(values) * scale:.{digits}f}"


def summarise(results: dict) -> tuple[dict, str]:
    """Per regime and method: clean and shifted metrics over seeds; and a markdown table."""
    summary: dict = {}
    lines = []
    for regime, methods in results.items():
        lines += [
            f"**{regime}**",
            "",
            "| method | seeds | top-1 (%) | NLL | ECE (%) | top-1 shifted (%) | NLL shifted | "
            "ECE shifted (%) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, runs in methods.items():
            row = {"seeds": [r["config"]["seed"] for r in runs]}
            cells = []
            for metric, scale, digits in (("top1", 100, 2), ("nll", 1, 3), ("ece", 100, 2)):
                clean = [r["shifts"]["clean"][metric]["value"] for r in runs]
                shifted = [_shift_mean(r, metric) for r in runs]
                row[metric] = clean
                row[f"{metric}_shifted"] = shifted
                ci = runs[0]["shifts"]["clean"][metric]["ci95"]
                cells.append(_cell(clean, scale, digits, ci))
                row[f"{metric}_ci95_first_seed"] = ci
            for metric, scale, digits in (("top1", 100, 2), ("nll", 1, 3), ("ece", 100, 2)):
                cells.append(
                    _cell(row[f"{metric}_shifted"], scale, digits, None)
                    if len(runs) > 1
                    else f"{row[f'{metric}_shifted'][0] * scale:.{digits}f}"
                )
            summary.setdefault(regime, {})[method] = row
            lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return summary, "\n".join(lines)


def plot_plane(results: dict, out_png: Path) -> Path:
    """Top-1 against ECE per method (mean and sample sd over seeds), clean (filled) and
    shifted (open)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from era.plotting import save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (regime, methods) in zip(axes[0], results.items(), strict=True):
        for method, runs in methods.items():
            color = _color(method)
            for shifted, marker in ((False, "o"), (True, "s")):
                if shifted:
                    ece = [_shift_mean(r, "ece") for r in runs]
                    top1 = [_shift_mean(r, "top1") for r in runs]
                else:
                    ece = [r["shifts"]["clean"]["ece"]["value"] for r in runs]
                    top1 = [r["shifts"]["clean"]["top1"]["value"] for r in runs]
                ax.errorbar(
                    100 * np.mean(ece),
                    100 * np.mean(top1),
                    xerr=100 * _seed_sd(ece),
                    yerr=100 * _seed_sd(top1),
                    fmt=marker,
                    color=color,
                    mfc="none" if shifted else color,
                    capsize=3,
                    label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})"
                    if not shifted
                    else None,
                )
        ax.set_xlabel("ECE, 15 bins (%)  — lower is better")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(
            f"{regime}: clean (filled), corrupted (open, mean of 3 corruptions); ± 1 sd over seeds",
            fontsize=8,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out_png)


def plot_reliability_grid(results: dict, regime: str, out_png: Path) -> Path:
    """Accuracy against confidence per method (clean test set, seeds pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from era.plotting import save_figure

    methods = results[regime]
    columns = min(3, len(methods))
    rows = math.ceil(len(methods) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.1 * rows), squeeze=False)
    centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    for ax, (method, runs) in zip(axes.flat, methods.items(), strict=False):  # spare: empty
        bins = np.sum(
            [
                [r["shifts"]["clean"]["reliability"][k] for k in ("count", "confidence", "correct")]
                for r in runs
            ],
            axis=0,
        )
        count, confidence, correct = bins
        seen = count > 0
        ax.bar(
            centres[seen],
            correct[seen] / count[seen],
            width=1 / ECE_BINS,
            alpha=0.6,
            edgecolor="k",
            label="accuracy",
        )
        ax.plot(
            confidence[seen] / count[seen],
            correct[seen] / count[seen],
            "r.",
            ms=4,
            label="(mean confidence, accuracy)",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("confidence (top-1 probability)")
    fig.supylabel("accuracy")
    return save_figure(fig, out_png)


def plot_learning_curves(results: dict, out_png: Path) -> Path:
    """Test NLL and top-1 against epochs, per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from era.plotting import save_figure

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.8 * len(results)), squeeze=False)
    for row, (regime, methods) in zip(axes, results.items(), strict=True):
        for method, runs in methods.items():
            epochs = np.array(runs[0]["learning_curve"]["epoch"])
            for ax, metric, scale in ((row[0], "nll", 1), (row[1], "top1", 100)):
                curves = [
                    r["learning_curve"][metric]
                    for r in runs
                    if len(r["learning_curve"][metric]) == len(epochs)
                ]
                ax.plot(epochs, scale * np.mean(curves, axis=0), color=_color(method), label=method)
        row[0].set_ylabel(f"{regime}: test NLL")
        row[1].set_ylabel(f"{regime}: test top-1 (%)")
        for ax in row:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7)
    return save_figure(fig, out_png)


def report(args: Args) -> None:
    """Summary JSON + markdown table of the finished runs, and the three figures."""
    results = _load_results(args.results)
    if not results:
        print(f"no finished runs under {args.results}")
        return
    summary, table = summarise(results)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.results / "summary.md").write_text(table + "\n")
    print(table)
    written = [
        plot_plane(results, args.figures / "vision_study_plane.png"),
        plot_learning_curves(results, args.figures / "vision_study_curves.png"),
    ]
    for regime in results:
        written.append(
            plot_reliability_grid(
                results, regime, args.figures / f"vision_study_reliability_{regime}.png"
            )
        )
    print("wrote", ", ".join(str(p) for p in written))


def main(args: Args) -> None:
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods {' '.join(unknown)}: unknown; choose from {' '.join(METHODS)}")
    unknown = sorted(set(args.regimes) - set(REGIMES))
    if unknown:
        raise SystemExit(f"--regimes {' '.join(unknown)}: unknown; choose from {' '.join(REGIMES)}")
    if not args.report:
        jobs = [(name, config, args) for name, config in configs(args)]
        print(f"{len(jobs)} runs; results in {args.results}", flush=True)
        with exit_on_stop():  # the trainers saved their checkpoints: a rerun resumes them
            run_in_parallel(run_one, jobs, max_workers=args.workers)
    else:
        report(args)


if __name__ == "__main__":
    main(tyro.cli(Args))
