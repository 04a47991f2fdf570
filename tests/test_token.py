"""Tests for era.token: chunked entropy / log-probs, response entropy and ERA's scales."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era.token import (
    OUTSIDE_TOP_K_LOGPROB,
    era_scales,
    response_entropy,
    token_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
)

B, T, V = 3, 5, 13  # 15 rows: chunk sizes 1, 4, 7 leave a ragged last chunk


def _logits(dtype=torch.float32, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(B, T, V, generator=g, dtype=torch.float64)).to(dtype)


def _labels(seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _entropy_reference(logits):
    logp = torch.log_softmax(logits.double(), -1)
    return -(logp.exp() * logp).sum(-1)


def _logprob_reference(logits, labels, scale=1.0):
    z = logits.double() * torch.as_tensor(scale, dtype=torch.float64)[..., None]
    return torch.log_softmax(z, -1).gather(-1, labels[..., None]).squeeze(-1)


def _value_and_grad(fn, logits):
    logits = logits.detach().clone().requires_grad_(True)
    out = fn(logits)
    weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), logits)
    return out.detach(), grad


# --- token_entropy ---------------------------------------------------------------------------


def test_entropy_matches_float64_reference():
    logits = _logits()
    h = token_entropy(logits)
    assert h.shape == (B, T) and h.dtype == torch.float32
    torch.testing.assert_close(h.double(), _entropy_reference(logits), atol=1e-5, rtol=1e-5)
    assert (h > 0).all() and (h <= math.log(V) + 1e-6).all()


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 15, 100])
def test_entropy_chunked_equals_unchunked(chunk_size):
    logits = _logits(torch.float64)
    h_full, g_full = _value_and_grad(token_entropy, logits)
    h_chunk, g_chunk = _value_and_grad(lambda x: token_entropy(x, chunk_size=chunk_size), logits)
    torch.testing.assert_close(h_chunk, h_full, atol=0, rtol=0)
    torch.testing.assert_close(g_chunk, g_full, atol=1e-14, rtol=0)
    # ... and the gradient is the true one.
    _, g_ref = _value_and_grad(_entropy_reference, logits)
    torch.testing.assert_close(g_chunk, g_ref)


def test_entropy_bf16_is_computed_in_float32():
    logits = _logits(torch.bfloat16)
    h, grad = _value_and_grad(lambda x: token_entropy(x, chunk_size=4), logits)
    assert h.dtype == torch.float32 and grad.dtype == torch.bfloat16
    # Exact entropy of the bf16 values: float32 arithmetic, not bf16 rounding (~1e-2).
    torch.testing.assert_close(h.double(), _entropy_reference(logits), atol=1e-5, rtol=1e-5)
    _, g_ref = _value_and_grad(_entropy_reference, logits.double())
    torch.testing.assert_close(grad.double(), g_ref, atol=1e-2, rtol=1e-2)


def test_entropy_masked_vocabulary_gives_no_nan():
    logits = _logits(torch.float64)
    logits[..., : V // 2] = -math.inf
    h, grad = _value_and_grad(lambda x: token_entropy(x, chunk_size=4), logits)
    finite = logits[..., V // 2 :]
    torch.testing.assert_close(h, _entropy_reference(finite))
    assert torch.isfinite(grad).all()
    assert (grad[..., : V // 2] == 0).all()


def test_entropy_gradcheck():
    logits = _logits(torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: token_entropy(x, chunk_size=4), (logits,))


def test_entropy_non_contiguous_input():
    logits = _logits(torch.float64, spread=1.0).transpose(0, 1)  # [T, B, V], not viewable as rows
    torch.testing.assert_close(token_entropy(logits, chunk_size=4), _entropy_reference(logits))


# --- response_entropy ------------------------------------------------------------------------


def _response_entropy_loop(entropy, mask, top_fraction):
    out = []
    for h, m in zip(entropy.tolist(), mask.tolist(), strict=True):
        kept = sorted((e for e, keep in zip(h, m, strict=True) if keep), reverse=True)
        n = max(1, math.floor(top_fraction * len(kept)))
        out.append(sum(kept[:n]) / n if kept else 0.0)
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 6),
    length=st.integers(1, 40),
    top_fraction=st.sampled_from([0.05, 0.2, 0.25, 0.5, 1.0]),
    seed=st.integers(0, 2**31 - 1),
    density=st.floats(0.0, 1.0),
)
def test_response_entropy_matches_loop(batch, length, top_fraction, seed, density):
    g = torch.Generator().manual_seed(seed)
    entropy = 3.0 * torch.rand(batch, length, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, length, generator=g) < density
    got = response_entropy(entropy, mask, top_fraction)
    assert got.shape == (batch,)
    torch.testing.assert_close(got, _response_entropy_loop(entropy, mask, top_fraction))


def test_response_entropy_hand_example():
    entropy = torch.tensor([[0.1, 2.0, 0.5, 9.0, 1.0, 0.3, 0.2, 0.4, 0.6, 0.7, 0.8]])
    mask = torch.ones_like(entropy, dtype=torch.bool)
    mask[0, 3] = False  # the 9.0 is padding: must not be picked
    # L = 10 -> top 2 -> (2.0 + 1.0) / 2
    torch.testing.assert_close(response_entropy(entropy, mask), torch.tensor([1.5]))
    # float masks are accepted; an empty response gets 0.
    empty = response_entropy(entropy, torch.zeros_like(entropy))
    assert empty.tolist() == [0.0]


# --- era_scales ------------------------------------------------------------------------------


def test_era_scales_all_branches_per_sequence():
    h = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 5.0, 5.0, 5.0])
    adv = torch.tensor([1.0, 0.0, -1.0, 1.0, -1.0, 2.0, 0.0, -2.0])
    logit_scale, adv_scale = era_scales(h, adv, low=0.45, high=3.0, k=2.0)
    assert logit_scale.tolist() == [2.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0]
    assert adv_scale.tolist() == [0.5, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0]


def test_era_scales_per_token_advantages():
    h = torch.tensor([0.1, 1.0, 5.0])
    adv = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, -1.0], [-1.0, 3.0, 0.5]])
    logit_scale, adv_scale = era_scales(h, adv, k=3.0)
    assert logit_scale.shape == adv.shape
    expected = torch.tensor([[3.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1 / 3, 1 / 3]])
    torch.testing.assert_close(logit_scale, expected)
    torch.testing.assert_close(adv_scale * logit_scale, torch.ones_like(adv))


def test_era_scales_band_edges_and_disabling():
    h = torch.tensor([0.45, 3.0, -10.0, 100.0])
    adv = torch.ones(4)
    # The band is closed: entropies exactly at low or high are in band.
    assert era_scales(h[:2], adv[:2])[0].tolist() == [1.0, 1.0]
    assert era_scales(h, adv, low=-math.inf, high=math.inf)[0].tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="k must be finite and > 1"):  # off is an infinite band
        era_scales(h, adv, k=1.0)
    assert era_scales(h, adv, low=-math.inf)[0].tolist() == [1.0, 1.0, 1.0, 0.5]


# --- token_logprobs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale",
    [
        None,
        1.7,
        torch.tensor([[2.0], [1.0], [0.5]]),  # per response, ERA's usual case
        torch.rand(B, T, generator=torch.Generator().manual_seed(1)) + 0.25,  # per token
    ],
    ids=["none", "float", "per-row", "per-token"],
)
def test_logprobs_match_float64_reference(scale):
    logits, labels = _logits(), _labels()
    got = token_logprobs(logits, labels, scale=scale, chunk_size=4)
    assert got.shape == (B, T) and got.dtype == torch.float32
    expected = _logprob_reference(logits, labels, 1.0 if scale is None else scale)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k", [None, 4])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 15, 100])
def test_logprobs_chunked_equals_unchunked(chunk_size, top_k):
    logits, labels = _logits(torch.float64), _labels()
    scale = torch.tensor([[2.0], [1.0], [0.5]], dtype=torch.float64)

    def run(chunk):
        return lambda x: token_logprobs(x, labels, scale=scale, top_k=top_k, chunk_size=chunk)

    lp_full, g_full = _value_and_grad(run(None), logits)
    lp_chunk, g_chunk = _value_and_grad(run(chunk_size), logits)
    torch.testing.assert_close(lp_chunk, lp_full, atol=0, rtol=0)
    torch.testing.assert_close(g_chunk, g_full, atol=1e-14, rtol=0)
    if top_k is None:
        _, g_ref = _value_and_grad(lambda x: _logprob_reference(x, labels, scale), logits)
        torch.testing.assert_close(g_chunk, g_ref)


def test_logprobs_bf16_gradient_dtype_and_value():
    logits, labels = _logits(torch.bfloat16), _labels()
    scale = torch.tensor([[2.0], [1.0], [0.5]])
    lp, grad = _value_and_grad(lambda x: token_logprobs(x, labels, scale=scale), logits)
    assert lp.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(lp.double(), _logprob_reference(logits, labels, scale))
    _, g_ref = _value_and_grad(lambda x: _logprob_reference(x, labels, scale), logits.double())
    torch.testing.assert_close(grad.double(), g_ref, atol=1e-2, rtol=1e-2)


def test_top_k_renormalises_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([2, 4])[:1]
    # scale 2: activated logits [6, 2, 4, -2, 0]; top-3 = {6, 4, 2}; label 2 has logit 4.
    lp = token_logprobs(logits, labels, scale=2.0, top_k=3)
    expected = 4.0 - math.log(math.exp(6.0) + math.exp(4.0) + math.exp(2.0))
    assert lp.item() == pytest.approx(expected, rel=1e-12)
    # Gradient: d/dx = s·(onehot - softmax over the top-3), zero outside them.
    x = logits.clone().requires_grad_(True)
    token_logprobs(x, labels, scale=2.0, top_k=3).sum().backward()
    q = torch.softmax(torch.tensor([6.0, 2.0, 4.0], dtype=torch.float64), 0)
    expected_grad = 2.0 * torch.tensor([-q[0], -q[1], 1 - q[2], 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(x.grad[0], expected_grad)


def test_top_k_outside_label_is_constant_without_gradient():
    logits, labels = _logits(torch.float64), _labels()
    top3 = logits.topk(3, dim=-1).values[..., -1]
    outside = logits.gather(-1, labels[..., None]).squeeze(-1) < top3
    assert outside.any() and (~outside).any()  # the fixture exercises both cases
    lp, grad = _value_and_grad(lambda x: token_logprobs(x, labels, top_k=3, chunk_size=4), logits)
    assert (lp[outside] == OUTSIDE_TOP_K_LOGPROB).all()
    assert (grad[outside] == 0).all()
    assert (grad[~outside].abs().sum(-1) > 0).all()
    assert (lp[~outside] > _logprob_reference(logits, labels)[~outside]).all()  # renormalised up


def test_top_k_equal_to_vocab_is_the_full_softmax():
    logits, labels = _logits(torch.float64), _labels()
    torch.testing.assert_close(
        token_logprobs(logits, labels, scale=0.5, top_k=V), _logprob_reference(logits, labels, 0.5)
    )


@pytest.mark.parametrize("top_k", [None, 3])
def test_logprobs_gradcheck(top_k):
    logits, labels = _logits(torch.float64, spread=1.0).requires_grad_(True), _labels()
    scale = torch.tensor([[2.0], [1.0], [0.5]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x, labels, scale=scale, top_k=top_k, chunk_size=4), (logits,)
    )


def test_logprobs_and_entropy_in_one_pass():
    logits, labels = _logits(), _labels()
    scale = torch.tensor([[2.0], [1.0], [0.5]])
    x = logits.clone().requires_grad_(True)
    lp, h = token_logprobs_and_entropy(x, labels, scale=scale, top_k=5, chunk_size=4)
    assert not h.requires_grad and lp.requires_grad
    torch.testing.assert_close(lp, token_logprobs(logits, labels, scale=scale, top_k=5))
    torch.testing.assert_close(h, token_entropy(logits))  # entropy of the unscaled policy
    lp.sum().backward()
    x_ref = logits.clone().requires_grad_(True)
    token_logprobs(x_ref, labels, scale=scale, top_k=5).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_backward_keeps_no_float32_copy():
    """The graph saves the logits themselves (bf16) and nothing vocab-sized besides."""
    logits = _logits(torch.bfloat16).requires_grad_(True)
    labels, scale = _labels(), torch.tensor([[2.0], [1.0], [0.5]])
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(logits, labels, scale=scale, chunk_size=4)
        token_entropy(logits, chunk_size=4)
    vocab_sized = [t for t in saved if t.numel() >= logits.numel()]
    assert vocab_sized and all(t.data_ptr() == logits.data_ptr() for t in vocab_sized)
    # The naive path, by contrast, saves a float32 [B, T, V] tensor.
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.log_softmax(logits.float() * scale[..., None], -1).gather(-1, labels[..., None])
    assert any(t.dtype == torch.float32 and t.numel() == logits.numel() for t in saved)


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, y: token_entropy(x, chunk_size=0), "chunk_size"),
        (lambda x, y: token_logprobs(x, y, chunk_size=-3), "chunk_size"),
        (lambda x, y: token_logprobs(x, y, top_k=0), "top_k"),
        (lambda x, y: token_logprobs(x, y, top_k=V + 1), "top_k"),
        (lambda x, y: token_logprobs(x, y[:, :-1]), "labels shape"),
        (lambda x, y: token_logprobs(x, y + V), "labels"),
        (lambda x, y: token_logprobs(x, y, scale=torch.ones(B, 2)), "scale"),
        (lambda x, y: token_logprobs(x, y, scale=0.0), "scale"),
        (lambda x, y: token_logprobs(x, y, scale=torch.ones(B, 1, requires_grad=True)), "scale"),
        (lambda x, y: token_logprobs_and_entropy(x, y, scale=-1.0), "scale"),
        (lambda x, y: response_entropy(x[..., 0], y != 0, top_fraction=0.0), "top_fraction"),
        (lambda x, y: response_entropy(x[..., 0], y != 0, top_fraction=1.5), "top_fraction"),
        (lambda x, y: response_entropy(x[..., 0], y[:, 1:] != 0), "mask"),
        (lambda x, y: era_scales(torch.ones(B), torch.ones(B), k=0.5), "k"),
        (lambda x, y: era_scales(torch.ones(B), torch.ones(B), low=3.0, high=1.0), "low"),
        (lambda x, y: era_scales(torch.ones(B), torch.ones(B + 1)), "batch"),
        (lambda x, y: era_scales(torch.ones(B, 2), torch.ones(B)), "response_entropy"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(_logits(), _labels())


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="labels"):
        token_logprobs(_logits(), _labels().int())
    with pytest.raises(TypeError, match="logits"):
        token_entropy(torch.ones(3, 4, dtype=torch.long))


# --- inputs outside the domain ----------------------------------------------------------------

TOKEN_CALLS = {
    "entropy": lambda x, labels, top_k: token_entropy(x, chunk_size=4),
    "logprobs": lambda x, labels, top_k: token_logprobs(x, labels, top_k=top_k, chunk_size=4),
    "both": lambda x, labels, top_k: token_logprobs_and_entropy(x, labels, top_k=top_k),
}


@pytest.mark.parametrize("call", TOKEN_CALLS)
@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize("bad", ["nan", "+inf", "all -inf"])
def test_rows_without_a_distribution_raise(call, top_k, bad):
    """Whatever the label: with +inf the top-k path used to give a finite log-prob."""
    logits = _logits()
    labels = torch.zeros(B, T, dtype=torch.long)  # label 0, which the bad entry avoids
    if bad == "all -inf":
        logits[1, 2] = -math.inf
    else:
        logits[1, 2, 5] = math.nan if bad == "nan" else math.inf
    with pytest.raises(ValueError, match=r"^logits has 1 row\(s\) without a distribution"):
        TOKEN_CALLS[call](logits, labels, top_k)


@pytest.mark.parametrize("call", TOKEN_CALLS)
@pytest.mark.parametrize("top_k", [None, 3])
def test_empty_batch_gives_empty_results(call, top_k):
    logits = torch.zeros(0, T, V, requires_grad=True)
    out = TOKEN_CALLS[call](logits, torch.zeros(0, T, dtype=torch.long), top_k)
    first = out[0] if isinstance(out, tuple) else out
    assert first.shape == (0, T)
    first.sum().backward()
    assert logits.grad.shape == (0, T, V)
    h = response_entropy(torch.zeros(0, T), torch.zeros(0, T))
    logit_scale, adv_scale = era_scales(h, torch.zeros(0))
    assert h.shape == logit_scale.shape == adv_scale.shape == (0,)


def test_mixed_dtypes_compute_in_float32():
    """bfloat16 logits with a float64 scale: float32 work, same as a float32 scale."""
    logits, labels = _logits(torch.bfloat16), _labels()
    scale = torch.tensor([[2.0], [1.0], [0.5]], dtype=torch.float64)
    got = token_logprobs(logits, labels, scale=scale)
    assert got.dtype == torch.float32
    assert torch.equal(got, token_logprobs(logits, labels, scale=scale.float()))
    logit_scale, _ = era_scales(torch.tensor([0.1, 1.0, 9.0]), torch.ones(3, dtype=torch.bfloat16))
    assert logit_scale.dtype == torch.bfloat16 and logit_scale.tolist() == [2.0, 1.0, 0.5]


def test_nan_in_the_band_decision_raises():
    """NaN compares False on both sides of the band: it would silently leave a row unscaled."""
    with pytest.raises(ValueError, match="response_entropy contains NaN"):
        era_scales(torch.tensor([0.1, math.nan]), torch.ones(2))
    with pytest.raises(ValueError, match="advantages contains NaN"):
        era_scales(torch.tensor([0.1, 1.0]), torch.tensor([1.0, math.nan]))
    entropy, mask = torch.ones(2, 3), torch.tensor([[1, 1, 0], [1, 0, 0]])
    entropy[0, 2] = math.nan  # masked out: ignored
    assert torch.equal(response_entropy(entropy, mask), torch.ones(2))
    entropy[1, 0] = math.nan
    with pytest.raises(ValueError, match="entropy contains NaN at masked-in tokens"):
        response_entropy(entropy, mask)
