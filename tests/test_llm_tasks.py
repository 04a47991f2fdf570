"""Tests for era.llm.tasks: problem generation, answer extraction and the rewards."""

import json

import pytest

pytest.importorskip("reasoning_gym")

from era.llm.tasks import (  # noqa: E402
    champ_problems,
    completion_text,
    extract_answer,
    grade,
    make_problems,
    prompt,
    reward_function,
)

OPTIONS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}


@pytest.fixture(scope="module")
def problems():
    return make_problems("chain_sum", seed=0, size=20, **OPTIONS)


def test_problems_are_deterministic_and_answers_are_right(problems):
    again = make_problems("chain_sum", seed=0, size=20, **OPTIONS)
    assert problems == again
    for p in problems:
        expression = json.loads(p["metadata"])["expression"]
        assert int(p["answer"]) == eval(expression)  # noqa: S307 - digits and +/- only
        assert set(p) == {"question", "answer", "task", "metadata"}


def test_held_out_problems_exclude_training_questions(problems):
    seen = {p["question"] for p in problems}
    # Seed 1 overlaps seed 0 almost entirely in reasoning-gym (item i uses seed + i).
    held_out = make_problems("chain_sum", seed=1, size=20, exclude=seen, **OPTIONS)
    assert len(held_out) == 20
    assert not seen & {p["question"] for p in held_out}
    assert len({p["question"] for p in held_out}) == 20


def test_bad_task_arguments_are_named():
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'no_such_task'"):
        make_problems("no_such_task", seed=0, size=2)
    with pytest.raises(ValueError, match="size must be >= 1"):
        make_problems("chain_sum", seed=0, size=0)
    with pytest.raises(ValueError, match="bad options"):
        make_problems("chain_sum", seed=0, size=2, min_terms=3, max_terms=2)
    with pytest.raises(ValueError, match="fewer than 300 distinct"):
        make_problems(
            "chain_sum", seed=0, size=300, min_terms=2, max_terms=2, min_digits=1, max_digits=1
        )  # only 200 distinct one-digit sums/differences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" -37", "-37"),
        ("12 + 5 = 17, so the answer is 17.", "17"),
        ("<answer> 42 </answer> and later 7", "42"),
        (r"thus \boxed{\frac{1}{2}} and 3", r"\frac{1}{2}"),
        ("no number here", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_reasoning_gym_grader_right_wrong_and_partial(problems):
    p = problems[0]
    assert grade(" " + p["answer"], p) == 1.0
    assert grade(str(int(p["answer"]) + 1), p) < 1.0
    assert grade("", p) == 0.0


def test_math_verify_grader_accepts_equivalent_forms():
    half = {"question": "?", "answer": "1/2", "task": "champ", "metadata": "{}"}
    assert grade(r"<answer>\frac{1}{2}</answer>", half, "math-verify") == 1.0
    assert grade("<answer>0.5</answer>", half, "math-verify") == 1.0
    assert grade("<answer>1/3</answer>", half, "math-verify") == 0.0
    with pytest.raises(ValueError, match="grader must be one of"):
        grade("1", half, "exact")


def test_reward_function_follows_trl_signature(problems):
    reward = reward_function("reasoning-gym")
    batch = problems[:3]
    right = [" " + p["answer"] for p in batch]
    wrong = [[{"role": "assistant", "content": "<answer>99999</answer>"}] for _ in batch]
    columns = {k: [p[k] for p in batch] for k in ("answer", "task", "metadata")}
    prompts = [p["question"] for p in batch]
    assert reward(prompts=prompts, completions=right, completion_ids=None, **columns) == [1.0] * 3
    assert reward(prompts=prompts, completions=wrong, completion_ids=None, **columns) == [0.0] * 3
    with pytest.raises(ValueError, match="grader must be one of"):
        reward_function("nope")


def test_prompts_and_completion_text():
    assert prompt("1 + 1 =", chat=False) == "1 + 1 ="
    message = prompt("1 + 1 =", chat=True)
    assert message[0]["role"] == "user" and "<answer>" in message[0]["content"]
    assert completion_text([{"role": "assistant", "content": "2"}]) == "2"


def test_champ_has_270_gradable_problems():
    pytest.importorskip("champ_dataset")
    champ = champ_problems()
    assert len(champ) == 270
    first = champ[0]
    assert grade(f"<answer>{first['answer']}</answer>", first, "math-verify") == 1.0
