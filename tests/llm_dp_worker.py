"""One GRPO + ERA loss step on a fixed batch, split over the processes of a torchrun job.

Run as ``torchrun --nproc-per-node N tests/llm_dp_worker.py OUT.pt`` (or called in-process with
one process as the reference): each process scores its contiguous share of the same six responses
with ``ERAGRPOTrainer.compute_loss`` through the DDP-wrapped model, backpropagates (DDP averages
the gradients), and the main process saves the mean loss, the gradients and the logged ERA
metrics. Everything is float64, so a data-parallel split changes only summation order.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_trainer import (  # noqa: E402
    PROMPTS,
    band_advantages,
    band_around,
    distinct_chars,
    make_batch,
    make_model,
    make_tokenizer,
)

METRICS = ("frac_below", "frac_in_band", "frac_above", "frac_scaled", "response_entropy",
           "token_entropy")  # fmt: skip


def loss_step(out_dir: str) -> dict:
    from datasets import Dataset

    from era.llm import ERAGRPOConfig, ERAGRPOTrainer

    model, batch = make_model().double(), make_batch()
    low, high, _ = band_around(model, batch)
    advantages = band_advantages(model, batch).double()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = ERAGRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=6 // world,
        num_generations=3,
        max_completion_length=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        temperature=0.8,
        bf16=False,
        era_low=low,
        era_high=high,
    )  # fmt: skip  (loss_type: TRL's default "dapo", normalised by the global token count)
    trainer = ERAGRPOTrainer(
        model=model,
        reward_funcs=distinct_chars,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
        processing_class=make_tokenizer(),
    )
    trainer.current_gradient_accumulation_steps = 1
    wrapped = trainer.accelerator.prepare_model(trainer.model)
    rank, share = args.process_index, 6 // world
    rows = slice(rank * share, (rank + 1) * share)
    inputs = {key: value[rows] for key, value in batch.items() if key != "num_items_in_batch"}
    inputs["advantages"] = advantages[rows]
    inputs["num_items_in_batch"] = batch["completion_mask"].sum()  # what TRL gathers
    loss = trainer.compute_loss(wrapped, inputs)
    loss.backward()
    loss = trainer.accelerator.reduce(loss.detach(), reduction="mean")
    metrics = trainer._metrics["train"]
    return {
        "world": world,
        "loss": loss,
        "grads": {name: p.grad.clone() for name, p in model.named_parameters()},
        "metrics": {name: metrics[f"era/{name}"][-1] for name in METRICS},
        "main": rank == 0,
    }


if __name__ == "__main__":
    result = loss_step(sys.argv[2] if len(sys.argv) > 2 else "unused")
    if result.pop("main"):
        torch.save(result, sys.argv[1])
