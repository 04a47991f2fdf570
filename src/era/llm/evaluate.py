"""Held-out evaluation: greedy accuracy and pass@k with the unbiased estimator.

pass@k is the probability that at least one of k samples is correct. Drawing exactly k samples per
problem gives a high-variance estimate; instead we draw n ≥ k samples, count the c correct ones and
use ``1 − C(n−c, k) / C(n, k)`` (Chen et al., 2021), the unbiased estimate of pass@k from n samples,
so one set of 16 samples gives every k from 1 to 16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from era.llm.tasks import Grader, grade, prompt


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct.

    Computed as ``1 − Π_{i=n−c+1}^{n} (1 − k/i)``, which equals ``1 − C(n−c,k)/C(n,k)`` without
    forming the (huge) binomial coefficients.
    """
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _encode(tokenizer, questions: Sequence[str], chat: bool) -> dict[str, torch.Tensor]:
    if chat:
        texts = [
            tokenizer.apply_chat_template(
                prompt(q, chat=True), add_generation_prompt=True, tokenize=False
            )
            for q in questions
        ]
    else:
        texts = list(questions)
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@torch.no_grad()
def _generate(model, tokenizer, questions, *, chat, samples, temperature, max_new_tokens):
    """``samples`` completions per question (greedy when ``temperature == 0``), as texts."""
    batch = _encode(tokenizer, questions, chat).to(model.device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        num_return_sequences=samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [texts[i * samples : (i + 1) * samples] for i in range(len(questions))]


def evaluate(
    model,
    tokenizer,
    problems: Sequence[dict[str, str]],
    *,
    samples: int = 16,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    temperature: float = 1.0,
    max_new_tokens: int = 16,
    grader: Grader = "reasoning-gym",
    chat: bool | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Greedy ``accuracy``, mean sampled ``reward`` and ``pass@k`` for each k on ``problems``.

    A completion is correct when its grade is 1. ``chat`` defaults to whether the tokenizer has a
    chat template. Sampling is seeded (``seed``) so that two checkpoints are compared on the same
    random numbers; the model's train/eval mode is restored afterwards.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if any(not 1 <= k <= samples for k in ks):
        raise ValueError(f"every k must be in [1, samples={samples}], got {list(ks)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not problems:
        raise ValueError("no problems to evaluate")
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    was_training = model.training
    model.eval()
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    per_batch = max(1, batch_size // samples)
    greedy, rewards, pass_k = [], [], {k: [] for k in ks}
    try:
        for start in range(0, len(problems), per_batch):
            chunk = problems[start : start + per_batch]
            questions = [p["question"] for p in chunk]
            best = _generate(
                model,
                tokenizer,
                questions,
                chat=chat,
                samples=1,
                temperature=0.0,
                max_new_tokens=max_new_tokens,
            )
            sampled = _generate(
                model,
                tokenizer,
                questions,
                chat=chat,
                samples=samples,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
            )
            for problem, (g,), texts in zip(chunk, best, sampled, strict=True):
                greedy.append(grade(g, problem, grader) == 1.0)
                scores = [grade(t, problem, grader) for t in texts]
                rewards.append(sum(scores) / samples)
                correct = sum(s == 1.0 for s in scores)
                for k in ks:
                    pass_k[k].append(pass_at_k(samples, correct, k))
    finally:
        torch.random.set_rng_state(rng_state)
        model.train(was_training)
    result = {"accuracy": sum(greedy) / len(greedy), "reward": sum(rewards) / len(rewards)}
    result.update({f"pass@{k}": sum(v) / len(v) for k, v in pass_k.items()})
    return result
