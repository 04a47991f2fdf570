"""Accuracy and calibration metrics for a classifier, as plain functions of logits and labels.

All functions take the logits the model outputs (ERA logits when the model has an ERA head) and
integer labels; probabilities are ``softmax(logits)`` computed in float32 or float64. The
:class:`EvalAccumulator` adds the same quantities up over batches (and over DDP processes, since
every quantity is a sum, a count or a minimum), so that a sharded evaluation gives exactly the
numbers of a single pass over the whole test set.
"""

from __future__ import annotations

import torch
from torch import Tensor

ECE_BINS = 15


def _log_probs(logits: Tensor) -> Tensor:
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.log_softmax(logits.to(dtype), dim=-1)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits."""
    topk = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (topk == labels[:, None]).any(-1).double().mean().item()


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood ``−log p(label)`` in nats."""
    return -_log_probs(logits).gather(-1, labels[:, None]).double().mean().item()


def predictive_entropy(logits: Tensor) -> Tensor:
    """Per-row entropy ``H(softmax(logits))`` in nats, shape ``logits.shape[:-1]``."""
    logp = _log_probs(logits)
    return -(logp.exp() * logp).sum(-1)


def confidence_bin(confidence: Tensor, n_bins: int = ECE_BINS) -> Tensor:
    """Index of each confidence's equal-width bin: bin ``b`` holds ``(b/n, (b+1)/n]``, and a
    confidence of 0 falls in bin 0."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
    edges = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
    return (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, n_bins - 1)


def reliability_bins(
    logits: Tensor, labels: Tensor, n_bins: int = ECE_BINS
) -> tuple[Tensor, Tensor, Tensor]:
    """Per confidence bin: ``(count, sum of confidences, number correct)`` as float64 tensors.

    The confidence is the top-1 probability; bin ``b`` holds confidences in ``(b/n, (b+1)/n]``
    (the usual equal-width bins of Guo et al., 2017).
    """
    conf, pred = _log_probs(logits).exp().max(-1)
    conf = conf.double()
    index = confidence_bin(conf, n_bins)
    correct = (pred == labels).double()
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    return (
        zeros.index_add(0, index, torch.ones_like(conf)),
        zeros.index_add(0, index, conf),
        zeros.index_add(0, index, correct),
    )


def ece_from_bins(count: Tensor, confidence: Tensor, correct: Tensor) -> float:
    """``Σ_b |correct_b − confidence_b| / N``: the gap between accuracy and confidence per bin,
    weighted by the bin's share of the samples."""
    return ((correct - confidence).abs().sum() / count.sum()).item()


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins (15 by default)."""
    return ece_from_bins(*reliability_bins(logits, labels, n_bins))


class EvalAccumulator:
    """Sums the evaluation statistics over batches; :meth:`all_reduce` combines DDP processes."""

    def __init__(self, n_bins: int = ECE_BINS, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)  # n, top1, top5, nll, H
        self.min_entropy = torch.full((), float("inf"), dtype=torch.float64, device=device)
        self.bins = torch.zeros(3, n_bins, dtype=torch.float64, device=device)
        self.n_bins = n_bins

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        logp = _log_probs(logits)
        top = logp.topk(min(5, logp.shape[-1]), dim=-1).indices == labels[:, None]
        entropy = -(logp.exp() * logp).sum(-1).double()
        self.sums += torch.stack(
            [
                torch.tensor(float(len(labels)), dtype=torch.float64, device=self.sums.device),
                top[:, 0].double().sum(),
                top.any(-1).double().sum(),
                -logp.gather(-1, labels[:, None]).double().sum(),
                entropy.sum(),
            ]
        )
        self.min_entropy = torch.minimum(self.min_entropy, entropy.min())
        self.bins += torch.stack(reliability_bins(logits, labels, self.n_bins))

    def all_reduce(self) -> None:
        """Combine the statistics of every process (a no-op without torch.distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
            dist.all_reduce(self.bins)
            dist.all_reduce(self.min_entropy, op=dist.ReduceOp.MIN)

    def compute(self) -> dict[str, float]:
        """``top1``, ``top5``, ``nll``, ``ece``, ``entropy_mean``, ``entropy_min``."""
        n, top1, top5, nll_sum, entropy_sum = self.sums.tolist()
        if n == 0:
            raise ValueError("no samples were evaluated")
        return {
            "top1": top1 / n,
            "top5": top5 / n,
            "nll": nll_sum / n,
            "ece": ece_from_bins(*self.bins),
            "entropy_mean": entropy_sum / n,
            "entropy_min": self.min_entropy.item(),
        }

    def reliability(self) -> dict[str, list[float | None]]:
        """Per bin: count, mean confidence and accuracy (None for an empty bin)."""
        count, confidence, correct = self.bins.tolist()
        return {
            "count": count,
            "confidence": [c / k if k else None for c, k in zip(confidence, count, strict=True)],
            "accuracy": [a / k if k else None for a, k in zip(correct, count, strict=True)],
        }
