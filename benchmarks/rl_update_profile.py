"""Where the time of our vectorised SAC update goes, and whether an inductor option helps.

Builds our agent as ``rl_throughput.py`` does (Hopper-v5, 2 x 256 networks, batch 256, one
thread, buffer filled by random steps), profiles ``--updates`` updates with ``torch.profiler``
(inductor's kernel profiling on, so each fused kernel is an event of its own; it records
nothing while no profiler runs) and splits this process's CPU time into matrix products,
inductor's fused kernels, optimiser steps and the rest.
Then, with ``--inductor KEY=VALUE ...``, it builds a second agent compiled with those
``torch._inductor.config`` options and times SB3, the default agent and the overridden one
side by side (``rl_throughput.time_updates``: interleaved, process CPU time).

    OMP_NUM_THREADS=1 python benchmarks/rl_update_profile.py --inductor max_autotune=True \\
        --out benchmarks/results/rl_update_profile.json
"""

from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import rl_throughput
import torch
import torch._inductor.config as inductor_config
import tyro
from _measure import environment
from torch.profiler import ProfilerActivity, profile

MISSING = object()
MATMULS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm")


@dataclass
class Args:
    head: Literal["alpha", "era"] = "alpha"
    """alpha (SAC auto-alpha) or era (SAC-ERA exact)"""
    amp: Literal["none", "bf16"] = "bf16"
    """none or bf16"""
    compile: bool = True
    """profile the compiled update (--sac.compile)"""
    seeds: int = 5
    """seeds vectorised in the agent"""
    updates: int = 20
    """updates profiled"""
    inductor: tuple[str, ...] = ()
    """torch._inductor.config overrides (KEY=VALUE) to time against the default"""
    blocks: int = 20
    """timing: rounds of interleaving"""
    per_block: int = 5
    """timing: consecutive updates of one agent per round"""
    out: Path = Path("benchmarks/results/rl_update_profile.json")
    """JSON result"""


def category(name: str) -> str:
    if name in MATMULS:
        return "matrix products"
    if "cpp_fused" in name:
        return "inductor fused kernels"
    if "Optimizer" in name or "adam" in name.lower():
        return "optimiser steps"
    return "rest"


def profile_update(update, n: int) -> dict[str, float]:
    """Self CPU milliseconds per update of each :func:`category`."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            update()
    split = {}
    for event in prof.key_averages():
        key = category(event.key)
        split[key] = split.get(key, 0.0) + event.self_cpu_time_total / 1e3 / n
    return split


def parse_overrides(overrides: tuple[str, ...]) -> dict[str, object]:
    """``("max_autotune=True",)`` -> ``{"max_autotune": True}``, keys checked against the config."""
    options = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        target = inductor_config
        for part in key.split("."):
            target = getattr(target, part, MISSING)
        if not sep or target is MISSING:
            raise ValueError(
                f"--inductor {item!r}: expected KEY=VALUE with KEY in torch._inductor.config, "
                "e.g. max_autotune=True"
            )
        options[key] = ast.literal_eval(value)
    return options


def build_with_options(bench, ours, options: dict[str, object]):
    """``run_ours`` with every ``torch.compile`` call given ``options``.

    Passing them to ``torch.compile`` (not setting the global config) gives dynamo a different
    backend, so this agent's methods compile again instead of reusing the default agent's graphs.
    """
    compile_ = torch.compile
    torch.compile = functools.partial(compile_, options=options)
    try:
        return rl_throughput.run_ours(bench, ours)[1]
    finally:
        torch.compile = compile_


def main(args: Args) -> dict:
    options = parse_overrides(args.inductor)  # a bad key fails now, not after the profile
    torch.set_num_threads(1)
    # Each fused kernel records itself (a no-op while no profiler runs); set before compiling.
    inductor_config.cpp.enable_kernel_profile = True
    bench = rl_throughput.Args(steps=0, train_loops=False)
    ours = rl_throughput.Ours(args.head, "exact", seeds=args.seeds, amp=args.amp,
                              compile=args.compile)  # fmt: skip
    _, update, _ = rl_throughput.run_ours(bench, ours)
    for _ in range(5):
        update()
    split = profile_update(update, args.updates)
    total = sum(split.values())
    print(f"{ours.name}: {total:.1f} ms per update (profiled)")
    for key, ms in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {key}: {ms:.1f} ms ({100 * ms / total:.0f} %)")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "environment": environment("cpu"),
              "agent": ours.name, "ms_per_update": split}  # fmt: skip
    if args.inductor:
        updates = {"Stable-Baselines3 SAC": rl_throughput.run_sb3(bench)[1], "default": update}
        updates[" ".join(args.inductor)] = build_with_options(bench, ours, options)
        rates = rl_throughput.time_updates(
            updates, dict.fromkeys(updates, rl_throughput.cpu_clock), args.blocks, args.per_block
        )
        sb3 = rates.pop("Stable-Baselines3 SAC")
        result["seed_updates_per_s"] = {"Stable-Baselines3 SAC": sb3}
        for name, rate in rates.items():
            rate *= args.seeds
            result["seed_updates_per_s"][name] = rate
            print(f"{name}: {rate:.0f} seed-updates/s, x{rate / sb3:.2f} SB3")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
