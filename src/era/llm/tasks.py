"""Tasks and rewards for ``era llm``: procedural problems from reasoning-gym, graded offline.

A problem is a plain dict ``{"question", "answer", "task", "metadata"}`` (metadata as a JSON string
so that a ``datasets.Dataset`` column holds it). Training and held-out problems come from different
seeds and the held-out ones are filtered to questions never seen in training, so pass@k measures
generalisation, not recall. Two graders:

* ``"reasoning-gym"``: the task's own scorer (``1.0`` right; some tasks give partial credit);
* ``"math-verify"``: symbolic equality of the extracted answer with the reference, for free-form
  mathematical answers (fractions, expressions, LaTeX), as used for the CHAMP problems.

Rewards follow TRL's reward-function signature, so they plug into any ``GRPOTrainer``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

Grader = Literal["reasoning-gym", "math-verify"]
GRADERS = ("reasoning-gym", "math-verify")

ANSWER_INSTRUCTION = " Give only the final answer inside <answer></answer>."
"""Appended to chat prompts so that an instruction-tuned model states a gradable answer."""

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def make_problems(
    task: str, *, seed: int, size: int, exclude: set[str] | None = None, **options: Any
) -> list[dict[str, str]]:
    """``size`` problems of the reasoning-gym task ``task`` (e.g. ``"chain_sum"``).

    ``options`` are the task's own config fields (for ``chain_sum``: ``min_terms``, ``max_terms``,
    ``min_digits``, ``max_digits``). Questions in ``exclude`` are skipped (and replaced), which is
    how held-out sets stay disjoint from training sets.
    """
    import reasoning_gym

    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if task not in reasoning_gym.factory.DATASETS:
        known = ", ".join(sorted(reasoning_gym.factory.DATASETS)[:12])
        raise ValueError(f"unknown reasoning-gym task {task!r}; some available: {known}, ...")
    seen = set(exclude or ())
    problems: list[dict[str, str]] = []
    # Draw in rounds from fresh seeds until enough unseen questions are found.
    for round_ in range(100):
        try:
            dataset = reasoning_gym.create_dataset(
                task, seed=seed + round_ * 1_000_003, size=2 * size, **options
            )
        except (TypeError, AssertionError) as e:
            raise ValueError(f"bad options {options} for task {task!r}: {e}") from None
        for entry in dataset:
            if entry["question"] in seen:
                continue
            seen.add(entry["question"])
            problems.append(
                {
                    "question": entry["question"],
                    "answer": str(entry["answer"]),
                    "task": task,
                    "metadata": json.dumps(entry["metadata"], default=str),
                }
            )
            if len(problems) == size:
                return problems
    raise ValueError(
        f"task {task!r} with options {options} has fewer than {size} distinct questions outside "
        "the excluded set; use easier-to-vary options or a smaller size"
    )


def champ_problems() -> list[dict[str, str]]:
    """The 270 competition problems of CHAMP (``champ-dataset`` package), for math-verify."""
    try:
        import champ_dataset
    except ImportError:
        raise ImportError("the CHAMP problems need: pip install champ-dataset") from None
    dataset = champ_dataset.load("v0")
    return [
        {"question": p.text, "answer": p.answer, "task": "champ", "metadata": "{}"}
        for p in dataset.problems.values()
    ]


def prompt(question: str, *, chat: bool) -> str | list[dict[str, str]]:
    """The model's input: the bare question for a base model, a user message for a chat model."""
    if chat:
        return [{"role": "user", "content": question + ANSWER_INSTRUCTION}]
    return question


def completion_text(completion: str | list[dict[str, str]]) -> str:
    """The text of a TRL completion, which is a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")


def extract_answer(text: str) -> str | None:
    """The stated answer: the last ``<answer>…</answer>``, else the last ``\\boxed{…}``, else the
    last number in the text; ``None`` when there is none."""
    tagged = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    if tagged:
        return tagged[-1].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}``, with nested braces (``\\frac{1}{2}``) kept."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            return text[begin:i].strip()
    return None


def grade(text: str, problem: dict[str, str], grader: Grader = "reasoning-gym") -> float:
    """The reward of one completion ``text`` for ``problem``, in [0, 1]."""
    answer = extract_answer(text)
    if answer is None:
        return 0.0
    if grader == "reasoning-gym":
        import reasoning_gym

        entry = {"answer": problem["answer"], "metadata": json.loads(problem["metadata"])}
        return float(reasoning_gym.get_score_answer_fn(problem["task"])(answer, entry))
    if grader == "math-verify":
        from math_verify import parse, verify

        gold = parse(problem["answer"]) or parse(f"${problem['answer']}$")
        return float(bool(verify(gold, parse(answer) or parse(f"${answer}$"))))
    raise ValueError(f"grader must be one of {GRADERS}, got {grader!r}")


def reward_function(grader: Grader = "reasoning-gym"):
    """A TRL reward function ``f(completions, answer, task, metadata, **kw) -> list[float]``.

    TRL passes the dataset's extra columns as keyword lists, one value per completion.
    """
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {GRADERS}, got {grader!r}")

    def reward(completions, answer, task, metadata, **_) -> list[float]:
        return [
            grade(completion_text(c), {"answer": a, "task": t, "metadata": m}, grader)
            for c, a, t, m in zip(completions, answer, task, metadata, strict=True)
        ]

    reward.__name__ = f"{grader.replace('-', '_')}_reward"
    return reward
