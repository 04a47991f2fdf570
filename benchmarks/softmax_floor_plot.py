"""How low can softmax ERA push the entropy? The paper's floor against the tight one.

For ``n`` classes, τ = 4 and a target of 0.6 nats, random logits at many scales (Gaussian, scale
1e-2 to 1e3, plus peaked rows: one large logit over small noise, plus an exact one-hot) go through
the three variants of :mod:`era.softmax` in float32:

* ``paper + approx``: ``C = exp(H0 − 1)`` and the authors' closed-form inverse;
* ``paper + exact``: the same ``C`` with the exact W₋₁;
* ``tight``: ``C`` solved so the one-hot input lands exactly on the target.

It plots each output's entropy against its input's entropy (docs/img/softmax_floor.png) and prints
the lowest output entropy and the largest top-1 probability seen per variant, then the entropy
deficit that rounding the ERA logits to bfloat16 / float16 adds (tight floor)::

    OMP_NUM_THREADS=1 python benchmarks/softmax_floor_plot.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import tyro  # noqa: E402

from era.plotting import save_figure  # noqa: E402
from era.softmax import softmax_era  # noqa: E402

VARIANTS = {  # label → (floor, inverse)
    "paper + approx": ("paper", "approx"),
    "paper + exact": ("paper", "exact"),
    "tight": ("tight", "exact"),
}


@dataclass
class Args:
    classes: list[int] = field(default_factory=lambda: [10, 1000])
    """numbers of classes, one panel each"""
    min_entropy: float = 0.6
    """target H0 in nats (the authors' image-classification default)"""
    tau: float = 4.0
    """ERA's tau (the authors' default)"""
    rows: int = 20_000
    """random inputs per number of classes"""
    seed: int = 0
    """seed of the random logits"""
    figure: Path = Path("docs/img/softmax_floor.png")
    """where the plot goes"""


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def inputs(n: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """Half Gaussian logits at log-spaced scales, half one large logit over unit noise."""
    half = rows // 2
    scales = torch.logspace(-2, 3, half)[:, None]
    gaussian = torch.randn(half, n, generator=generator) * scales
    peaked = torch.randn(rows - half, n, generator=generator)
    peaked[:, 0] += torch.logspace(0, 2, rows - half)
    one_hot = torch.zeros(1, n)
    one_hot[0, 0] = 1e4
    return torch.cat([gaussian, peaked, one_hot])


def binned_min(x: torch.Tensor, y: torch.Tensor, bins: int = 40) -> tuple[list, list]:
    edges = torch.linspace(0, float(x.max()), bins + 1)
    centres, lows = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (x >= lo) & (x <= hi)
        if inside.any():
            centres.append(float((lo + hi) / 2))
            lows.append(float(y[inside].min()))
    return centres, lows


def main(args: Args) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    fig, axes = plt.subplots(1, len(args.classes), figsize=(5.5 * len(args.classes), 4.2))
    print(f"tau = {args.tau}, min_entropy = {args.min_entropy}, float32 compute\n")
    print("| classes | variant | lowest output entropy (nats) | highest top-1 probability |")
    print("|---:|---|---:|---:|")
    rounding = []
    for ax, n in zip(axes, args.classes, strict=True):
        z = inputs(n, args.rows, generator)
        h_in = entropy(z)
        for label, (floor, inverse) in VARIANTS.items():
            out = softmax_era(z, args.min_entropy, tau=args.tau, floor=floor, inverse=inverse)
            h_out = entropy(out)
            top = torch.softmax(out.double(), -1).max()
            print(f"| {n} | {label} | {h_out.min():.4f} | {top:.4f} |")
            dots = ax.scatter(h_in, h_out, s=2, alpha=0.15, rasterized=True)
            ax.plot(*binned_min(h_in, h_out), color=dots.get_facecolor()[0][:3], label=label)
        for dtype in (torch.bfloat16, torch.float16):
            out = softmax_era(z.to(dtype), args.min_entropy, tau=args.tau)
            rounding.append((n, dtype, float(entropy(out).min()) - args.min_entropy))
        ax.axhline(
            args.min_entropy, color="black", linestyle="--", label=f"H0 = {args.min_entropy}"
        )
        ax.set(
            title=f"{n} classes, τ = {args.tau}",
            xlabel="entropy of softmax(z) (nats)",
            ylabel="entropy of softmax(ERA(z)) (nats)",
            ylim=(0, math.log(n) * 1.05),
        )
        ax.legend(loc="lower right", fontsize=8, title="line: lowest per bin", title_fontsize=8)
    print("\nTight floor, ERA logits returned in a low-precision dtype (lowest entropy - H0):")
    for n, dtype, deficit in rounding:
        print(f"  {n} classes, {str(dtype).removeprefix('torch.')}: {deficit:+.2e} nats")
    save_figure(fig, args.figure, dpi=130)
    print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main(tyro.cli(Args))
