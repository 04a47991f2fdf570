"""A short supervised warm start: teach a fresh model the answer format before RL.

GRPO only learns from groups whose rewards differ, so a model that is never right gets no signal.
A few hundred steps of next-token training on (question, answer) pairs give the tiny CPU model a
non-trivial starting accuracy, which RL then sharpens. The loss covers only the answer tokens and
the end-of-sequence token, tokenised exactly as the model will later generate them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from era.runs import check_finite, progress_bar


def _example(tokenizer, problem: dict[str, str]) -> tuple[list[int], list[int]]:
    """Token ids of prompt + answer + eos, and labels that ignore (``-100``) the prompt."""
    prompt_ids = tokenizer(problem["question"], add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(" " + problem["answer"], add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _batch(examples: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input ids, attention mask and labels."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, mask, labels


def warm_start(
    model,
    tokenizer,
    problems: Sequence[dict[str, str]],
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place for ``steps`` AdamW steps on ``problems``; returns the losses.

    Batches are drawn with replacement from ``problems`` (seeded), the learning rate decays
    linearly to zero, and a non-finite loss stops the run with :class:`era.runs.DivergenceError`.
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"need steps >= 1, batch_size >= 1 and lr > 0, got steps={steps}, "
            f"batch_size={batch_size}, lr={lr}"
        )
    if not problems:
        raise ValueError("no problems to train on")
    examples = [_example(tokenizer, p) for p in problems]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    model.train()
    losses = []
    with progress_bar(unit="steps", disable=not progress) as bar:
        task = bar.add_task("warm start", total=steps, info="")
        for step in range(steps):
            pick = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
            ids, mask, labels = _batch([examples[i] for i in pick], tokenizer.pad_token_id)
            ids, mask, labels = ids.to(model.device), mask.to(model.device), labels.to(model.device)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            check_finite(step, loss=loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
    model.eval()
    return losses
