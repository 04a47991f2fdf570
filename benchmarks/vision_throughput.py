"""Training throughput of ``era vision train``: the previous path vs the fast path vs a plain loop.

Images per second of one training epoch (the second of two, so start-up and any compilation are
excluded) on Fashion-MNIST, batch 128, the same model, for four variants measured side by side:

* ``before``: the trainer as it was at commit ``--before`` (per-image collate with a Python crop
  loop, contiguous NCHW tensors, float32 on CPU), run from a ``git archive`` of that commit;
* ``fast-fp32``: today's trainer with ``--amp false``: batched augmentation + channels_last;
* ``fast``: today's trainer with its defaults (adds bfloat16 autocast where the CPU has native
  bf16 — AVX512-BF16 / AMX — or on CUDA);
* ``plain``: a hand-written timm + torch loop at the fast path's settings (same model, in-memory
  uint8 tensors, crop + flip on whole batches, channels_last, bf16 autocast, SGD), the floor of
  what a training loop costs: the trainer's extra work (seeded augmentation, logging, checks) is
  the gap between ``fast`` and ``plain``;
* ``fast-compile`` (only when asked: ``--variants fast fast-compile``): ``fast`` with
  ``--compile``; its compilation falls in the first epoch, not the measured one.

Each measurement is a fresh process with one torch thread; repetitions are interleaved
(before, fast-fp32, fast, plain, before, ...) so that a change of machine load hits every variant
alike. The per-variant median and the ratios to ``before`` go to ``--results``.

    nice -n 10 python benchmarks/vision_throughput.py --model resnet20 --images 1280 --repeats 3
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("before", "fast-fp32", "fast", "plain", "fast-compile")


@dataclass
class Args:
    """Measure every variant ``repeats`` times, interleaved; write the medians and ratios."""

    model: str = "resnet20"
    """timm model name (resnet20 is era.vision.resnet's)"""
    images: int = 1280
    """training images per epoch (a fixed subset of Fashion-MNIST)"""
    batch_size: int = 128
    """batch size"""
    repeats: int = 3
    """measurements per variant"""
    threads: int = 1
    """torch threads per measurement"""
    before: str = "9267763"
    """the commit whose trainer is the 'before' variant"""
    variants: tuple[str, ...] = VARIANTS[:4]
    """which variants to measure"""
    results: Path = Path("benchmarks/results/vision_throughput.json")
    """the JSON summary"""
    child: str = ""
    """(internal) measure this one variant in this process and print images/s"""
    source: str = ""
    """(internal) the source tree of the 'before' variant"""


def _trainer_epoch(args: Args, amp: bool, fast: bool, compile: bool = False) -> float:
    """Images/s of the 2nd epoch of ``era.vision.train`` (its metrics.csv ``time_s`` column)."""
    from era.runs import read_metrics
    from era.vision.train import TrainConfig, train

    options = dict(amp=amp) | (dict(channels_last=True, compile=compile) if fast else {})
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            **{"out" if fast else "out_dir": Path(out)},  # the 'before' trainer's spelling
            model=args.model,
            train_subset=args.images,
            eval_subset=128,
            batch_size=args.batch_size,
            epochs=2,
            threads=args.threads,
            progress=False,
            **options,
        )
        train(config)
        seconds = read_metrics(Path(out) / "metrics.csv")["time_s"]
    return (args.images // args.batch_size) * args.batch_size / (seconds[1] - seconds[0])


def _plain_epoch(args: Args) -> float:
    """Images/s of the 2nd epoch of a minimal timm + torch loop at the fast path's settings."""
    import timm
    import torch
    import torch.nn.functional as F

    import era.vision.resnet  # noqa: F401
    from era.vision.data import load_fashion_mnist
    from era.vision.train import native_bfloat16

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, labels = load_fashion_mnist(train=True)
    images, labels = images[: args.images], labels[: args.images]
    model = timm.create_model(args.model, num_classes=10, in_chans=1)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    amp = native_bfloat16(torch.device("cpu"))
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        order = torch.randperm(len(labels))
        for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
            index = order[first : first + args.batch_size]
            x = F.pad(images[index], (3, 3, 3, 3))
            dy, dx = torch.randint(0, 7, (2,)).tolist()  # one crop offset per batch: cheapest
            x = x[:, :, dy : dy + 28, dx : dx + 28]
            x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
            x = ((x.float() / 255 - 0.286) / 0.353).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return (args.images // args.batch_size) * args.batch_size / seconds[1]


def _measure_in_child(args: Args) -> float:
    if args.child == "before":
        sys.path.insert(0, args.source)
        # That tree has no ResNet-20: register today's with timm under the same name.
        spec = importlib.util.spec_from_file_location(
            "era_resnet20", REPO / "src" / "era" / "vision" / "resnet.py"
        )
        sys.modules["era_resnet20"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["era_resnet20"])
        return _trainer_epoch(args, amp=False, fast=False)
    if args.child == "plain":
        return _plain_epoch(args)
    if args.child == "fast-compile":
        return _trainer_epoch(args, amp=True, fast=True, compile=True)
    return _trainer_epoch(args, amp=args.child == "fast", fast=True)


def _export(commit: str, into: Path) -> str:
    """The ``src`` tree of ``commit``, extracted with git archive; its path."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into / "src")


def main(args: Args) -> None:
    if args.child:
        print(json.dumps({"images_per_s": _measure_in_child(args)}))
        return
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"variants must be among {VARIANTS}, got {sorted(unknown)}")
    # Resumable: measurements already in --results (same settings) are kept, not repeated.
    settings = {k: getattr(args, k) for k in ("model", "images", "batch_size", "threads", "before")}
    measured: dict[str, list[float]] = {v: [] for v in args.variants}
    if args.results.exists():
        previous = json.loads(args.results.read_text())
        if previous.get("settings") == settings:
            measured |= {v: r for v, r in previous["images_per_s"].items() if v in measured}
    with tempfile.TemporaryDirectory() as tmp:
        source = _export(args.before, Path(tmp))
        for repeat in range(args.repeats):
            for variant in args.variants:
                if len(measured[variant]) > repeat:
                    continue
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--source",
                    source,
                    "--model",
                    args.model,
                    "--images",
                    str(args.images),
                    "--batch-size",
                    str(args.batch_size),
                    "--threads",
                    str(args.threads),
                ]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                rate = json.loads(out.strip().splitlines()[-1])["images_per_s"]
                measured[variant].append(rate)
                print(f"repeat {repeat} {variant:>9}: {rate:7.1f} images/s", flush=True)
                _write(args, settings, measured)
    _write(args, settings, measured)


def _write(args: Args, settings: dict, measured: dict[str, list[float]]) -> None:
    """The summary of what has been measured so far (medians over the repetitions done)."""
    measured = {v: r for v, r in measured.items() if r}
    medians = {v: statistics.median(r) for v, r in measured.items()}
    base = medians.get("before")
    summary = {
        "command": "python " + " ".join(sys.argv),
        "settings": settings,
        "images_per_s": measured,
        "median_images_per_s": medians,
        "ratio_to_before": {v: m / base for v, m in medians.items()} if base else None,
        # Within one repetition the variants ran back to back, under about the same load.
        "ratio_to_before_per_repeat": [
            {v: r[i] / measured["before"][i] for v, r in measured.items() if len(r) > i}
            for i in range(len(measured.get("before", [])))
        ],
        "note": "shared 2-core machine under load from other jobs; ratios of interleaved "
        "repetitions are the comparable quantity, not the absolute rates",
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["median_images_per_s"]), json.dumps(summary["ratio_to_before"]))


if __name__ == "__main__":
    main(tyro.cli(Args))
