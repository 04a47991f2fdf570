"""Metrics of era.vision against values computed by hand on a five-image example."""

import math

import pytest
import torch

from era.vision.losses import classification_loss
from era.vision.metrics import (
    EvalAccumulator,
    expected_calibration_error,
    nll,
    predictive_entropy,
    reliability_bins,
    topk_accuracy,
)

# Probabilities chosen away from the 15-bin edges (multiples of 1/15).
PROBS = [
    [0.70, 0.20, 0.10],  # label 0: right, confidence 0.70 (bin 10)
    [0.30, 0.62, 0.08],  # label 0: wrong, confidence 0.62 (bin 9)
    [0.25, 0.25, 0.50],  # label 2: right, confidence 0.50 (bin 7)
    [0.10, 0.05, 0.85],  # label 1: wrong, confidence 0.85 (bin 12)
    [0.72, 0.18, 0.10],  # label 1: wrong, confidence 0.72 (bin 10, with the first)
]
LABELS = [0, 0, 2, 1, 1]


@pytest.fixture
def example():
    return torch.tensor(PROBS, dtype=torch.float64).log(), torch.tensor(LABELS)


def test_nll_and_accuracy_by_hand(example):
    logits, labels = example
    assert nll(logits, labels) == pytest.approx(
        -(math.log(0.7) + math.log(0.3) + math.log(0.5) + math.log(0.05) + math.log(0.18)) / 5
    )
    assert topk_accuracy(logits, labels, 1) == pytest.approx(2 / 5)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(4 / 5)
    assert topk_accuracy(logits, labels, 5) == 1.0  # k larger than the number of classes


def test_ece_by_hand(example):
    logits, labels = example
    # bin 10 holds 0.70 (right) and 0.72 (wrong): accuracy 0.5, mean confidence 0.71.
    expected = (2 * abs(0.5 - 0.71) + 0.62 + abs(1 - 0.5) + 0.85) / 5
    assert expected_calibration_error(logits, labels) == pytest.approx(expected)
    count, confidence, correct = reliability_bins(logits, labels)
    assert count.tolist() == [0] * 7 + [1, 0, 1, 2, 0, 1, 0, 0]
    assert confidence[10].item() == pytest.approx(1.42)
    assert correct.sum().item() == 2
    # One bin: ECE is |accuracy - mean confidence|.
    assert expected_calibration_error(logits, labels, n_bins=1) == pytest.approx(
        abs(2 / 5 - (0.70 + 0.62 + 0.50 + 0.85 + 0.72) / 5)
    )


def test_entropy_by_hand(example):
    logits, _ = example
    expected = [-sum(p * math.log(p) for p in row) for row in PROBS]
    assert predictive_entropy(logits).tolist() == pytest.approx(expected)


def test_accumulator_over_batches_equals_one_pass(example):
    logits, labels = example
    stats = EvalAccumulator()
    stats.update(logits[:2], labels[:2])
    stats.update(logits[2:], labels[2:])
    got = stats.compute()
    assert got["top1"] == pytest.approx(topk_accuracy(logits, labels, 1))
    assert got["top5"] == 1.0
    assert got["nll"] == pytest.approx(nll(logits, labels))
    assert got["ece"] == pytest.approx(expected_calibration_error(logits, labels))
    entropy = predictive_entropy(logits)
    assert got["entropy_mean"] == pytest.approx(entropy.mean().item())
    assert got["entropy_min"] == pytest.approx(entropy.min().item())
    bins = stats.reliability()
    assert bins["accuracy"][10] == pytest.approx(0.5)
    assert bins["confidence"][0] is None


def test_empty_accumulator_and_bad_bins_raise():
    with pytest.raises(ValueError, match="no samples"):
        EvalAccumulator().compute()
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), n_bins=0)


def test_losses_by_hand(example):
    """The loss works in float32 whatever the input; rel=1e-6 is ~8 float32 ulps, room for the
    different summation order of a 3-class log-softmax and a 5-row mean on any CPU."""
    logits, labels = example
    logp = logits.log_softmax(-1)
    ce = -logp.gather(1, labels[:, None]).mean()
    assert classification_loss(logits, labels).item() == pytest.approx(ce.item(), rel=1e-6)
    # Label smoothing eps: target (1 - eps) on the label plus eps / C everywhere.
    eps = 0.2
    soft = torch.full_like(logp, eps / 3).scatter_add(
        1, labels[:, None], torch.full((5, 1), 1 - eps, dtype=logp.dtype)
    )
    smoothed = -(soft * logp).sum(-1).mean()
    assert classification_loss(logits, labels, label_smoothing=eps).item() == pytest.approx(
        smoothed.item(), rel=1e-6
    )
    assert classification_loss(logits, soft).item() == pytest.approx(smoothed.item(), rel=1e-6)
    # Confidence penalty: CE - beta * mean entropy.
    entropy = predictive_entropy(logits).mean().item()
    assert classification_loss(logits, labels, confidence_penalty=0.5).item() == pytest.approx(
        ce.item() - 0.5 * entropy, rel=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"label_smoothing": 1.0}, "label_smoothing"), ({"confidence_penalty": -0.1}, "penalty")],
)
def test_loss_rejects_bad_arguments(example, kwargs, match):
    logits, labels = example
    with pytest.raises(ValueError, match=match):
        classification_loss(logits, labels, **kwargs)
