"""ERA's cost in the GRPO loss step: time and peak memory of the log-prob path, with or without it.

The workload is the part of a GRPO update that ERA touches: final hidden states
``[batch, seq, hidden]`` (default 4 x 512 x 128, float32) projected through an LM head of a 32,000
token vocabulary, the sampled tokens' log-probs and the entropies, and the backward pass of a
token-mean policy-gradient loss down to the hidden states and the head's weight. The transformer
body is left out on purpose: it is the same with and without ERA, so leaving it out makes the
measured ratio ERA's worst case. Variants:

* ``trl``: TRL 1.16's fused LM head (``trl.kernels.ChunkedLogProbFunction``, log-probs and
  entropy), which is what ``GRPOTrainer`` runs in its loss; on CPU it uses its torch tiles.
* ``ours``: the ERA head of ``era.llm`` with one scale (ERA off): the same path without ERA.
* ``ours_era``: the ERA head with scales (1, k, 1/k), the extra two only for the tokens of
  responses with A > 0, then what ``ERAGRPOTrainer`` does per step: response entropies, their band
  sides (``band_side``), the per-token column of the log-normaliser, rescaled advantages.
* ``ours_era_all_rows``: the same with the extra normalisers computed for every token (what the
  head did before it skipped the rows that cannot be rescaled), for a side-by-side comparison.
* ``naive``: full-vocabulary float32 logits, ``log_softmax``, gather, entropy, with ERA's per-row
  scale applied to the logits.

Memory method (as in ``benchmarks/token_memory.py``): each variant runs in a fresh spawned process;
on CUDA the peak is ``torch.cuda.max_memory_allocated`` minus what was allocated before the step; on
CPU it is the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
resident size before the step, with glibc's ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB so freed buffers
leave the resident set. Timing interleaves the variants in one process after a warm-up step each
and reports the median of ``--repeats`` steps: wall time on CUDA, process CPU time on CPU (steadier
on a shared machine; with one thread it matches wall time on an idle one).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llm_overhead.py

writes ``benchmarks/results/llm_overhead.json`` and prints the table of
``docs/benchmarks/llm_trainer.md``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import tyro
from _measure import SMALL_MMAP_ENV, environment, peak_extra_bytes
from trl.kernels import ChunkedLogProbFunction

from era.llm.head import era_lm_head
from era.token import ABOVE, BELOW, band_side, era_scales, response_entropy

RESULTS = Path(__file__).parent / "results" / "llm_overhead.json"
VARIANTS = ("trl", "ours", "ours_era", "ours_era_all_rows", "naive")
TRL_VOCAB_CHUNK = 32768  # what add_fused_lm_head passes in trl 1.16


@dataclass
class Args:
    batch: int = 4
    """Responses per step."""
    seq: int = 512
    """Response tokens per response."""
    vocab: int = 32000
    """Vocabulary size."""
    hidden: int = 128
    """Hidden size (small, so the step runs on a CPU)."""
    k: float = 2.0
    """ERA's logit scale factor."""
    temperature: float = 1.0
    """Sampling temperature the logits are divided by."""
    repeats: int = 5
    """Timed steps per variant (the median is reported)."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Where to run."""
    out: Path = RESULTS
    """JSON file for the results."""


def make_inputs(args: Args, seed: int = 0):
    g = torch.Generator(device=args.device).manual_seed(seed)
    dev = {"device": args.device}
    hidden = torch.randn(args.batch, args.seq, args.hidden, generator=g, **dev)
    weight = torch.randn(args.vocab, args.hidden, generator=g, **dev) / args.hidden**0.5
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g, **dev)
    mask = torch.ones(args.batch, args.seq, **dev)
    mask[0, args.seq // 2 :] = 0  # one shorter response
    # Alternate signs, so half the responses can be rescaled; one band edge per half.
    advantages = torch.tensor([1.0, -1.0] * (args.batch // 2) + [1.0] * (args.batch % 2), **dev)
    return hidden.requires_grad_(), weight.requires_grad_(), labels, mask, advantages


def step(variant: str, args: Args, hidden, weight, labels, mask, advantages) -> None:
    """One forward+backward of the token-mean loss -Σ A'·log π'(label) / Σ mask."""
    flat_h, flat_labels = hidden.reshape(-1, args.hidden), labels.reshape(-1)
    adv = advantages
    if variant == "trl":
        logps, _entropy, *_ = ChunkedLogProbFunction.apply(
            flat_h, weight, None, flat_labels, args.temperature, TRL_VOCAB_CHUNK, None, 1.0,
            ("log_probs", "entropy"),
        )  # fmt: skip
        logps = logps.view_as(labels)
    elif variant == "ours":
        out = era_lm_head(flat_h, weight, None, flat_labels, temperature=args.temperature)
        logps = out.logprobs((1.0,), torch.zeros_like(flat_labels)).view_as(labels)
    elif variant.startswith("ours_era"):
        scales = (1.0, args.k, 1 / args.k)
        positive = advantages > 0
        rows = None if variant == "ours_era_all_rows" else positive[:, None].expand_as(labels)
        out = era_lm_head(flat_h, weight, None, flat_labels, scales=scales,
                          temperature=args.temperature,
                          scaled_rows=None if rows is None else rows.reshape(-1))  # fmt: skip
        entropy = out.entropy.view_as(labels)
        h = response_entropy(entropy, mask)
        # The band is set at this batch's median response entropy, so both branches fire.
        mid = float(h.median())
        side = band_side(h, mid, mid + 1e-6)
        column_of_side = torch.zeros(3, dtype=torch.long, device=hidden.device)
        column_of_side[BELOW + 1], column_of_side[ABOVE + 1] = 1, 2
        column = column_of_side[side.long() + 1].masked_fill(~positive, 0)
        logps = out.logprobs(scales, column[:, None].expand_as(labels).reshape(-1))
        logps = logps.view_as(labels)
        adv = advantages / torch.tensor(scales, device=hidden.device)[column]
    else:  # naive
        z = (flat_h @ weight.T).float() / args.temperature
        with torch.no_grad():
            logp_plain = torch.log_softmax(z, -1)
            entropy = -(logp_plain.exp() * logp_plain).sum(-1).view_as(labels)
            del logp_plain
        h = response_entropy(entropy, mask)
        mid = float(h.median())
        logit_scale, adv_scale = era_scales(h, advantages, low=mid, high=mid + 1e-6, k=args.k)
        row_scale = logit_scale[:, None].expand_as(labels).reshape(-1, 1)
        logps = torch.log_softmax(z * row_scale, -1).gather(1, flat_labels[:, None])
        logps = logps.view_as(labels)
        adv = advantages * adv_scale
    loss = -(logps * adv[:, None] * mask).sum() / mask.sum()
    loss.backward()
    hidden.grad = weight.grad = None


def peak_memory_bytes(variant: str, args: Args) -> int:
    """Peak extra memory of one step; meant to run in a fresh process."""
    torch.set_num_threads(1)
    tiny = replace(args, batch=2, seq=4, vocab=64, hidden=8)
    step(variant, tiny, *make_inputs(tiny))  # one-time costs (lazy loading) are not counted
    inputs = make_inputs(args)
    return peak_extra_bytes(lambda: step(variant, args, *inputs), args.device)


def seconds_per_step(args: Args) -> dict[str, float]:
    cuda = args.device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    inputs = make_inputs(args)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(args.repeats + 1):
        for variant in VARIANTS:
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            step(variant, args, *inputs)
            if cuda:
                torch.cuda.synchronize()
            if rep > 0:  # rep 0 is the warm-up
                times[variant].append(clock() - start)
    return {v: statistics.median(t) for v, t in times.items()}


def main(args: Args) -> dict:
    cuda = args.device.startswith("cuda")
    os.environ.update(SMALL_MMAP_ENV)  # read by the spawned workers' glibc
    spawn = multiprocessing.get_context("spawn")
    memory = {}
    for variant in VARIANTS:
        with spawn.Pool(1) as pool:
            memory[variant] = pool.apply(peak_memory_bytes, (variant, args))
    seconds = seconds_per_step(args)
    logits_f32_bytes = args.batch * args.seq * args.vocab * 4
    ratios = {
        "time ours_era / trl": seconds["ours_era"] / seconds["trl"],
        "time ours_era / ours": seconds["ours_era"] / seconds["ours"],
        "time ours_era / naive": seconds["ours_era"] / seconds["naive"],
        "time ours_era_all_rows / ours": seconds["ours_era_all_rows"] / seconds["ours"],
        "memory ours_era / naive": memory["ours_era"] / memory["naive"],
        "memory ours_era / trl": memory["ours_era"] / memory["trl"],
        "memory ours_era / ours": memory["ours_era"] / memory["ours"],
    }
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "memory_method": "cuda max_memory_allocated" if cuda else "peak RSS",
        "time_method": "wall" if cuda else "process CPU time",
        "logits_f32_bytes": logits_f32_bytes,
        "peak_extra_bytes": memory,
        "seconds_per_step": seconds,
        "ratios": ratios,
        "env": {**environment(args.device), "trl": __import__("trl").__version__},
    }
    print("| variant | peak extra memory (MiB) | x fp32 logits | s / step |\n|---|---|---|---|")
    for v in VARIANTS:
        mib, rel = memory[v] / 2**20, memory[v] / logits_f32_bytes
        print(f"| {v} | {mib:.0f} | {rel:.2f} | {seconds[v]:.3f} |")
    for name, value in ratios.items():
        print(f"{name:28s} {value:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
