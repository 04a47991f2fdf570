"""Does one vectorised atanh make ELU faster? (``era.rl.networks.wake_sleef_expm1``)

On this project's machine the vectorised ``expm1`` behind ELU ran about 7x slower in a process
until a vectorised Sleef ``atanh`` or ``tanh`` had run once; nothing else we tried (MXCSR flags,
touching the constants' pages, single AVX-512 instructions) changed it, and the cause is not
known. This script measures the effect where it matters, each measurement in a fresh process
(the effect is process-wide and cannot be undone), with and without the wake-up, interleaved:

* ``eager``: ``torch.expm1`` and ``F.elu`` on 327,680 floats (one ``[5, 256, 256]`` activation);
* ``sac-era`` / ``sac``: one compiled update of 5 vectorised seeds, 2 x 256 networks, batch 256,
  Hopper-v5's sizes, SAC-ERA exact and SAC(auto-alpha) (whose tanh graphs wake it themselves).

Times are process CPU milliseconds, one torch thread, medians of the repetitions.

    OMP_NUM_THREADS=1 python benchmarks/expm1_warmup.py --out benchmarks/results/expm1_warmup.json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from _measure import environment

KINDS = ("eager", "sac-era", "sac")


@dataclass
class Args:
    repeats: int = 2
    """fresh processes per (measurement, wake-up or not), interleaved"""
    out: Path = Path("benchmarks/results/expm1_warmup.json")
    """JSON of every measurement and the medians"""
    child: str = ""
    """internal: measure this kind in this process and print JSON"""
    wake: bool = True
    """internal: run the wake-up before measuring (--child only)"""


def cpu_ms(call, n: int) -> float:
    call()
    start = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - start) / n * 1e3


def measure(kind: str, wake: bool) -> dict[str, float]:
    """Milliseconds per call of ``kind``'s operations, in this (fresh) process."""
    from era.rl import networks

    torch.set_num_threads(1)
    if wake:
        networks.wake_sleef_expm1()
    else:  # the networks call it on construction: make that a no-op here
        networks.wake_sleef_expm1 = lambda: None
    if kind == "eager":
        x = torch.randn(5 * 256 * 256)
        out = torch.empty_like(x)
        return {
            "expm1_ms": cpu_ms(lambda: torch.expm1(x, out=out), 200),
            "elu_ms": cpu_ms(lambda: torch.nn.functional.elu(x), 200),
        }
    from era.rl.config import SACConfig, TrainConfig
    from era.rl.sac import build

    config = TrainConfig(env="Hopper-v5", head="era" if kind == "sac-era" else "alpha",
                         sac=SACConfig(compile=True), progress=False)  # fmt: skip
    envs, agent = build(config, [0, 1, 2, 3, 4])
    for env in envs:
        env.close()
    s, b, o, a = 5, agent.config.batch_size, envs[0].observation_space.shape[0], agent.act_dim
    noise = torch.rand if agent.noise == "uniform" else torch.randn
    batch = (torch.randn(s, b, o), torch.rand(s, b, a) * 2 - 1, torch.randn(s, b),
             torch.randn(s, b, o), torch.zeros(s, b), noise(s, b, a), noise(s, b, a))  # fmt: skip
    agent.update(*batch)  # compiles (or loads the compiled graphs)
    return {"update_ms": cpu_ms(lambda: agent.update(*batch), 30)}


def main(args: Args) -> None:
    if args.child:
        print(json.dumps(measure(args.child, args.wake)))
        return
    runs = []
    for repeat in range(args.repeats):
        for kind in KINDS:
            for wake in (False, True):
                flag = "--wake" if wake else "--no-wake"
                cmd = [sys.executable, __file__, "--child", kind, flag]
                line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                result = json.loads(line.strip().splitlines()[-1])
                runs.append({"repeat": repeat, "kind": kind, "wake": wake, **result})
                print(runs[-1], flush=True)
    medians = {}
    for kind in KINDS:
        for wake in (False, True):
            rows = [r for r in runs if r["kind"] == kind and r["wake"] == wake]
            for key in (k for k in rows[0] if k.endswith("_ms")):
                medians[f"{kind} {key} {'woken' if wake else 'not woken'}"] = statistics.median(
                    r[key] for r in rows
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"environment": environment("cpu"), "medians": medians, "runs": runs}, indent=1)
        + "\n"
    )
    for key, value in medians.items():
        print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
