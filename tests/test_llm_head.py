"""The ERA LM head's row restriction: only the rows that may be rescaled pay for extra scales."""

import math

import pytest
import torch

from era.llm.head import era_lm_head


def random_head(n=13, hidden=5, vocab=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(vocab, hidden, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(vocab, dtype=torch.float64, generator=g).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=g)
    scaled = torch.rand(n, generator=g) < 0.5
    scaled[0], scaled[1] = True, False  # both kinds, interleaved
    return h, w, b, labels, scaled


def test_scaled_rows_match_the_full_head_and_leave_the_rest_uncomputed():
    h, w, b, labels, scaled = random_head()
    scales = (1.0, 2.0, 0.5)
    column = torch.randint(0, 3, scaled.shape, generator=torch.Generator().manual_seed(1))
    column = column.masked_fill(~scaled, 0)  # unscaled rows read scale 1 only
    weights = torch.randn(scaled.shape, dtype=torch.float64)
    results = []
    for rows in (None, scaled):
        out = era_lm_head(h, w, b, labels, scales=scales, temperature=0.9, token_tile=4,
                          vocab_tile=8, scaled_rows=rows)  # fmt: skip
        logps = out.logprobs(scales, column)
        grads = torch.autograd.grad((logps * weights).sum(), (h, w, b))
        results.append((out, logps.detach(), grads))
    (full, full_logps, full_grads), (part, part_logps, part_grads) = results
    torch.testing.assert_close(part_logps, full_logps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(part.entropy, full.entropy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(part.log_norm[scaled], full.log_norm[scaled], rtol=1e-12, atol=0)
    torch.testing.assert_close(part.log_norm[:, 0], full.log_norm[:, 0], rtol=1e-12, atol=0)
    assert part.log_norm[~scaled, 1:].isnan().all()  # never computed, loudly so
    for got, want in zip(part_grads, full_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_scaled_rows_gradcheck():
    h, w, b, labels, scaled = random_head(n=7, hidden=3, vocab=11, seed=2)
    scales = (1.0, 3.0, 1 / 3)
    column = torch.tensor([1, 0, 2, 1, 0, 2, 1]).masked_fill(~scaled, 0)

    def f(h, w, b):
        out = era_lm_head(h, w, b, labels, scales=scales, token_tile=3, vocab_tile=4,
                          scaled_rows=scaled)  # fmt: skip
        return out.logprobs(scales, column)

    assert torch.autograd.gradcheck(f, (h, w, b))


def test_scaled_rows_and_scales_are_checked():
    h, w, b, labels, scaled = random_head()
    with pytest.raises(ValueError, match="scaled_rows"):
        era_lm_head(h, w, b, labels, scales=(1.0, 2.0), scaled_rows=scaled[:3])
    with pytest.raises(ValueError, match="starting with 1.0"):
        era_lm_head(h, w, b, labels, scales=(2.0, 1.0))
    with pytest.raises(ValueError, match="starting with 1.0"):
        era_lm_head(h, w, b, labels, scales=(1.0, math.inf))
