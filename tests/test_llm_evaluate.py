"""Tests for era.llm.evaluate: the unbiased pass@k estimator and the evaluation loop."""

import itertools
import math

import pytest
import torch

from era.llm import evaluate as ev
from era.llm.evaluate import pass_at_k


def _brute_force(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c of them correct) holding a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force_combinatorics(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12)


def test_pass_at_k_closed_form_for_large_n():
    n, c, k = 200, 7, 16
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # pass@1 is the fraction correct


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


class _Stub(torch.nn.Module):
    """Stands in for a model: evaluate() only toggles its mode and reads its device."""

    device = torch.device("cpu")


def _problem(answer):
    return {
        "question": f"what is {answer}?",
        "answer": str(answer),
        "task": "chain_sum",
        "metadata": "{}",
    }


def test_evaluate_aggregates_greedy_accuracy_and_pass_at_k(monkeypatch):
    pytest.importorskip("reasoning_gym")
    problems = [_problem(a) for a in (3, 5, 7)]
    correct_counts = {"3": 4, "5": 1, "7": 0}  # out of 4 samples

    def fake_generate(model, tokenizer, questions, *, chat, samples, **kw):
        out = []
        for q in questions:
            answer = q.split()[-1].rstrip("?")
            if samples == 1:  # greedy: right only for 3
                out.append([answer if answer == "3" else "0"])
            else:
                c = correct_counts[answer]
                out.append([answer] * c + ["-1"] * (samples - c))
        return out

    monkeypatch.setattr(ev, "_generate", fake_generate)
    model = _Stub().train()
    result = ev.evaluate(model, None, problems, samples=4, ks=(1, 2, 4), chat=False, batch_size=8)
    assert model.training  # mode restored
    assert result["accuracy"] == pytest.approx(1 / 3)
    for k in (1, 2, 4):
        expected = sum(pass_at_k(4, c, k) for c in correct_counts.values()) / 3
        assert result[f"pass@{k}"] == pytest.approx(expected)
    assert result["pass@1"] < result["pass@2"] < result["pass@4"]


def test_evaluate_rejects_bad_arguments():
    problems = [_problem(1)]
    with pytest.raises(ValueError, match="every k must be in"):
        ev.evaluate(_Stub(), None, problems, samples=4, ks=(1, 8))
    with pytest.raises(ValueError, match="samples must be >= 1"):
        ev.evaluate(_Stub(), None, problems, samples=0, ks=(1,))
    with pytest.raises(ValueError, match="no problems"):
        ev.evaluate(_Stub(), None, [], samples=4, ks=(1,))
