"""Peak memory and time of ERA's token log-probs: chunked (era.token) vs the naive float32 path.

The workload is one policy-gradient step's scoring: bf16 logits [batch, seq, vocab] (default
4 x 512 x 32000, a Llama-2-sized vocabulary), log-probs of the sampled tokens, and the backward
pass of ``sum(logprob · advantage)`` down to the logits. "ERA" means a per-response logit scale
drawn from {2, 1, 0.5}; without ERA the scale is None.

Memory method. Each variant runs in a fresh spawned process. On CUDA the peak is
``torch.cuda.max_memory_allocated`` minus the memory allocated before the step. On CPU PyTorch
takes memory straight from malloc, so the process's peak resident set size is the honest
measure: after building the inputs we reset the kernel's high-water mark (``VmHWM``, by writing
5 to ``/proc/self/clear_refs``, Linux >= 4.0), run the step, and report ``VmHWM`` minus the
resident size before it. The worker starts with glibc's ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB, so
every large buffer gets its own mapping and goes back to the kernel when freed: the resident
size then follows the live tensors instead of freed heap that malloc keeps.
Both numbers include the logits' gradient (bf16, same size as the logits), which any method needs.

Timing also runs each variant in a fresh process (so no variant inherits another's allocator
state) and reports the fastest of ``--repeats`` forward+backward steps after a warm-up step, the
least disturbed one: wall time on CUDA, and on CPU the process's CPU time
(``time.process_time``), steadier than wall time on a machine shared with other jobs; with one
thread (``OMP_NUM_THREADS=1``) the two agree on an idle machine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/token_memory.py

writes ``benchmarks/results/token_memory.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import tyro
from _measure import SMALL_MMAP_ENV, environment, peak_extra_bytes

from era.token import token_logprobs, token_logprobs_and_entropy

RESULTS = Path(__file__).parent / "results" / "token_memory.json"
VARIANTS = ("naive", "naive_era", "chunked", "chunked_era", "chunked_era_with_entropy")


@dataclass
class Args:
    batch: int = 4
    """Sequences per step."""
    seq: int = 512
    """Tokens per sequence."""
    vocab: int = 32000
    """Vocabulary size."""
    chunk_size: int = 256
    """Rows per chunk for era.token (256 x 32000 float32 = 33 MB per intermediate)."""
    repeats: int = 7
    """Timed steps per variant (the fastest is reported)."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Where to run."""
    out: Path = RESULTS
    """JSON file for the results."""


def make_inputs(args: Args, seed: int = 0):
    g = torch.Generator(device=args.device).manual_seed(seed)
    shape = (args.batch, args.seq)
    logits = torch.randn(
        (*shape, args.vocab), generator=g, device=args.device, dtype=torch.bfloat16
    )
    labels = torch.randint(0, args.vocab, shape, generator=g, device=args.device)
    advantages = torch.randn(shape, generator=g, device=args.device)
    choices = torch.tensor([2.0, 1.0, 0.5], device=args.device)
    scale = choices[torch.arange(args.batch, device=args.device) % 3][:, None]  # per response
    return logits.requires_grad_(True), labels, advantages, scale


def step(variant: str, logits, labels, advantages, scale, chunk_size: int) -> None:
    """One forward+backward of sum(logprob · advantage) for ``variant``."""
    era_scale = scale if variant.endswith(("era", "with_entropy")) else None
    if variant.startswith("naive"):
        z = logits.float() if era_scale is None else logits.float() * era_scale[..., None]
        logprobs = torch.log_softmax(z, -1).gather(-1, labels[..., None]).squeeze(-1)
    elif variant == "chunked_era_with_entropy":
        logprobs, _ = token_logprobs_and_entropy(
            logits, labels, scale=era_scale, chunk_size=chunk_size
        )
    else:
        logprobs = token_logprobs(logits, labels, scale=era_scale, chunk_size=chunk_size)
    (logprobs * advantages).sum().backward()
    logits.grad = None


def peak_memory_bytes(variant: str, args: Args) -> int:
    """Peak extra memory of one step; meant to run in a fresh process."""
    # A tiny step first, so one-time costs (lazy library loading, thread pools) are not counted.
    step(variant, *make_inputs(replace(args, batch=1, seq=4, vocab=64)), args.chunk_size)
    inputs = make_inputs(args)
    return peak_extra_bytes(lambda: step(variant, *inputs, args.chunk_size), args.device)


def seconds_per_step(variant: str, args: Args) -> float:
    """Fastest of ``args.repeats`` steps after a warm-up step; meant to run in a fresh process."""
    cuda = args.device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    inputs = make_inputs(args)
    times = []
    for _ in range(args.repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        step(variant, *inputs, args.chunk_size)
        if cuda:
            torch.cuda.synchronize()
        times.append(clock() - start)
    return min(times[1:])


def in_fresh_process(fn, variant: str, args: Args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (variant, args))


def main(args: Args) -> dict:
    cuda = args.device.startswith("cuda")
    seconds = {v: in_fresh_process(seconds_per_step, v, args) for v in VARIANTS}
    # Only the memory workers, spawned from here on, get the small mmap threshold.
    os.environ.update(SMALL_MMAP_ENV)
    memory = {v: in_fresh_process(peak_memory_bytes, v, args) for v in VARIANTS}
    logits_bytes = args.batch * args.seq * args.vocab * 2
    ratios = {
        "memory_chunked_era / naive_era": memory["chunked_era"] / memory["naive_era"],
        "memory_chunked / naive": memory["chunked"] / memory["naive"],
        "time_chunked_era / chunked": seconds["chunked_era"] / seconds["chunked"],
        "time_naive_era / naive": seconds["naive_era"] / seconds["naive"],
        "time_chunked_era / naive_era": seconds["chunked_era"] / seconds["naive_era"],
        "time_chunked_era_with_entropy / chunked_era": (
            seconds["chunked_era_with_entropy"] / seconds["chunked_era"]
        ),
    }
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "memory_method": "cuda max_memory_allocated" if cuda else "peak RSS",
        "time_method": "wall" if cuda else "process CPU time",
        "logits_bytes": logits_bytes,
        "peak_extra_bytes": memory,
        "peak_extra_in_logits": {v: b / logits_bytes for v, b in memory.items()},
        "seconds_per_step": seconds,
        "ratios": ratios,
        "env": environment(args.device),
    }
    print(f"{'variant':26s} {'peak extra MB':>14s} {'x logits':>9s} {'s/step':>8s}")
    for v in VARIANTS:
        mb, rel = memory[v] / 2**20, memory[v] / logits_bytes
        print(f"{v:26s} {mb:14.1f} {rel:9.2f} {seconds[v]:8.3f}")
    for name, value in ratios.items():
        print(f"{name:45s} {value:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
