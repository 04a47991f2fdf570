"""Cost of Gaussian ERA heads next to the actor network they sit on.

The paper claims less than 7 % extra compute for ERA across domains.

One SAC actor update's worth of work, forward and backward, at batch 256: a 2 x 256 ELU MLP
maps observations to (mean, pre_std), then a head turns them into a distribution, draws a
reparameterised action and backpropagates a loss through it. Heads:

* ``mlp``: no head (the loss is on the MLP outputs): the network's own cost;
* ``tanh``: SAC's usual tanh-Gaussian (log-std squashed into [-5, 2]), rsample + log_prob;
* ``delta``: ``GaussianERA(bound="truncated", mode="delta")``, rsample;
* ``exact``: ``GaussianERA(bound="truncated", mode="exact")``, rsample (per-state root solve);
* with ``--compiled``, also ``tanh compiled`` and ``exact compiled``: the same step with the
  forward pass under ``torch.compile`` (so its backward is compiled too); compiling happens in
  the warm-up calls, outside the timing.

All variants run in one process, interleaved (a, b, c, d, a, b, ...) so that load from other
processes hits them alike; each figure is the median over ``--repeats`` rounds of the mean time
per call. The table gives milliseconds and each time relative to ``mlp`` and to ``tanh``. On
a CPU these heads cost per tensor operation rather than per element, so compare ratios measured
in one run, and note the machine's load (recorded in the JSON).

    OMP_NUM_THREADS=1 python benchmarks/gaussian_overhead.py
    python benchmarks/gaussian_overhead.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro
from torch import nn
from torch.distributions import Independent

from era.gaussian import GaussianERA, TanhNormal


@dataclass
class Args:
    action_dims: tuple[int, ...] = (6, 21)
    """action dimensions D to time"""
    obs_dim: int = 64
    """observation size fed to the actor"""
    hidden: int = 256
    """hidden width (two hidden layers, ELU)"""
    batch_size: int = 256
    """states per call"""
    calls: int = 50
    """calls per timing round"""
    repeats: int = 7
    """interleaved rounds per variant (the median is reported)"""
    device: str = "cpu"
    """torch device"""
    threads: int = 1
    """torch CPU threads"""
    compiled: bool = False
    """also time the tanh and exact heads under torch.compile"""
    out: Path = Path("benchmarks/results/gaussian_overhead.json")
    """JSON result"""


def actor(obs_dim: int, hidden: int, action_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(obs_dim, hidden),
        nn.ELU(),
        nn.Linear(hidden, hidden),
        nn.ELU(),
        nn.Linear(hidden, 2 * action_dim),
    )


def tanh_head(mean: torch.Tensor, pre_std: torch.Tensor) -> Independent:
    log_std = -5.0 + 3.5 * (torch.tanh(pre_std) + 1)
    return Independent(TanhNormal(mean, log_std.exp()), 1)


def variants(args: Args, action_dim: int) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    net = actor(args.obs_dim, args.hidden, action_dim).to(args.device)
    obs = torch.randn(args.batch_size, args.obs_dim, device=args.device)
    exact = GaussianERA(action_dim, bound="truncated", mode="exact").to(args.device)
    delta = GaussianERA(action_dim, bound="truncated", mode="delta").to(args.device)

    def mlp() -> None:
        net(obs).square().mean().backward()

    def with_head(head, log_prob: bool, compile: bool = False) -> Callable[[], None]:
        def loss() -> torch.Tensor:
            dist = head(*net(obs).chunk(2, dim=-1))
            action = dist.rsample()
            value = action.square().mean()
            if log_prob:
                value = value + dist.log_prob(action).mean()
            return value

        forward = torch.compile(loss, dynamic=False) if compile else loss
        return lambda: forward().backward()

    steps = {
        "mlp": mlp,
        "tanh": with_head(tanh_head, log_prob=True),
        "delta": with_head(delta, log_prob=False),
        "exact": with_head(exact, log_prob=False),
    }
    if args.compiled:
        steps["tanh compiled"] = with_head(tanh_head, log_prob=True, compile=True)
        steps["exact compiled"] = with_head(exact, log_prob=False, compile=True)
    return steps


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "load_average_at_start": os.getloadavg()[0],
        "ms_per_call": {},
    }
    for action_dim in args.action_dims:
        fns = variants(args, action_dim)
        for fn in fns.values():  # warm-up
            for _ in range(5):
                fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                sync(args.device)
                start = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                sync(args.device)
                times[name].append((time.perf_counter() - start) / args.calls * 1e3)
        result["ms_per_call"][str(action_dim)] = {k: statistics.median(v) for k, v in times.items()}

    print(f"forward+backward per call, batch {args.batch_size}, device {result['device_name']}")
    print(f"{'D':>3} {'head':>14} {'ms':>8} {'x mlp':>7} {'x tanh':>7}")
    for action_dim, row in result["ms_per_call"].items():
        for name, ms in row.items():
            print(
                f"{action_dim:>3} {name:>14} {ms:8.3f} "
                f"{ms / row['mlp']:7.2f} {ms / row['tanh']:7.2f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
