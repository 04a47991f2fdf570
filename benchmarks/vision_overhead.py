"""Cost of the ERA head per training step, measured side by side in one process.

Two identical models, one with ERA on its logits, take training steps in alternation (the order
flips every round, ABBA), so that load from other processes hits both alike; we report the median
step time of each and the median of the per-round ratios. Cases:

* ``resnet``: the Fashion-MNIST benchmark's network (timm ``resnet10t``, 1×28×28 input), batch
  128, SGD step: the realistic case, where ERA's work (over 10 classes) is negligible;
* ``linear-N``: a linear classifier on 512 precomputed features with N classes (1,000; 32,000),
  batch 128: the worst case, where the step is one matrix product and ERA's elementwise work over
  the 128×N logits (a softmax and a Lambert-W inverse) is a large share.

    OMP_NUM_THREADS=1 python benchmarks/vision_overhead.py
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro
from torch import nn

from era.vision.head import create_model, with_era


@dataclass
class Args:
    """Time training steps with and without ERA."""

    rounds: int = 30
    """measured rounds per case (each round: one step of each model, twice, ABBA)"""
    warmup: int = 3
    """unmeasured rounds first"""
    batch_size: int = 128
    """images (rows) per step"""
    classes: tuple[int, ...] = (1_000, 32_000)
    """class counts of the linear-head cases"""
    feature_dim: int = 512
    """input features of the linear-head cases"""
    min_entropy: float = 0.6
    """ERA's floor (nats)"""
    threads: int = 1
    """torch threads"""
    out: Path = Path("benchmarks/results/vision_overhead.json")
    """JSON results"""


def _step(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    started = time.perf_counter()
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def compare(plain: nn.Module, x: torch.Tensor, y: torch.Tensor, args: Args) -> dict:
    """Median step times of ``plain`` and of the same weights with ERA, and their ratio."""
    era = with_era(copy.deepcopy(plain), args.min_entropy, num_classes=int(y.max()) + 1)
    models = {"plain": plain, "era": era}
    optimizers = {
        k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()
    }
    times = {"plain": [], "era": []}
    ratios = []
    for round_ in range(args.warmup + args.rounds):
        order = ("plain", "era", "era", "plain") if round_ % 2 else ("era", "plain", "plain", "era")
        took = {"plain": 0.0, "era": 0.0}
        for name in order:
            took[name] += _step(models[name], optimizers[name], x, y) / 2
        if round_ >= args.warmup:
            for name in took:
                times[name].append(took[name])
            ratios.append(took["era"] / took["plain"])
    return {
        "plain_ms": 1e3 * statistics.median(times["plain"]),
        "era_ms": 1e3 * statistics.median(times["era"]),
        "ratio_median": statistics.median(ratios),
        "ratio_q25_q75": statistics.quantiles(ratios, n=4)[::2],
    }


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    resnet = create_model("resnet10t", num_classes=10, in_chans=1)
    x = torch.randn(args.batch_size, 1, 28, 28)
    y = torch.arange(args.batch_size) % 10
    results["resnet10t 1x28x28, 10 classes"] = compare(resnet, x, y, args)
    for n in args.classes:
        linear = nn.Linear(args.feature_dim, n)
        x = torch.randn(args.batch_size, args.feature_dim)
        y = torch.arange(args.batch_size) * 7919 % n
        y[0] = n - 1  # so that the largest label gives the class count
        results[f"linear {args.feature_dim}->{n}"] = compare(linear, x, y, args)
    print(f"| case (batch {args.batch_size}) | plain ms/step | ERA ms/step | ratio (median) |")
    print("|---|---|---|---|")
    for case, r in results.items():
        print(f"| {case} | {r['plain_ms']:.2f} | {r['era_ms']:.2f} | {r['ratio_median']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python " + " ".join(sys.argv),
                "args": json.loads(json.dumps(asdict(args), default=str)),
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
