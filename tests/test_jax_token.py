"""Tests for era.jax.token: equal to era.token (values and gradients, float32 and float64),
masked tokens, jit/grad, and argument checks.

Tolerances: a log-softmax or entropy over V tokens is a sum of V terms, about ``log2(V)``
roundings of the largest term each; so values agree to ``~log2(V)·ε·(1 + |value|)`` and
gradients (``softmax − one_hot`` and the like, entries at most 1 in size) to ``~log2(V)·ε``.
"""

import math
import re

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import era.token as torch_token  # noqa: E402
from era.jax import (  # noqa: E402
    era_scales,
    response_entropy,
    token_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
)

VOCAB = 300


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run the test in both precisions; float64 needs JAX's x64 mode, restored afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param == "float64")
    yield np.dtype(request.param)
    jax.config.update("jax_enable_x64", previous)


def inputs(dtype, seed=0):
    """Logits [3, 5, VOCAB] at several scales with a masked (-inf) block, labels, scales."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, 5, VOCAB)) * np.array([0.3, 3.0, 30.0])[:, None, None]
    logits[0, 0, :100] = -np.inf
    labels = rng.integers(100, VOCAB, size=(3, 5))
    scale = rng.uniform(0.5, 2.0, size=(3, 1))
    return logits.astype(dtype), labels, scale.astype(dtype)


@pytest.mark.parametrize("top_k", [None, 20])
def test_logprobs_and_entropy_match_torch(dtype, top_k):
    eps = np.finfo(dtype).eps
    tolerance = 8 * math.log2(VOCAB) * eps
    logits, labels, scale = inputs(dtype)
    weights = np.random.default_rng(1).normal(size=labels.shape).astype(dtype)

    def weighted(z):
        logprobs, entropy = token_logprobs_and_entropy(z, labels, scale=scale, top_k=top_k)
        return (logprobs * weights).sum(), (logprobs, entropy)

    grad, (logprobs, entropy) = jax.jit(jax.grad(weighted, has_aux=True))(logits)

    z = torch.tensor(logits, requires_grad=True)
    logprobs_t, entropy_t = torch_token.token_logprobs_and_entropy(
        z, torch.tensor(labels), scale=torch.tensor(scale), top_k=top_k
    )
    (logprobs_t * torch.tensor(weights)).sum().backward()
    for ours, theirs in ((logprobs, logprobs_t), (entropy, entropy_t)):
        theirs = theirs.detach().numpy()
        assert np.asarray(ours).dtype == dtype
        assert (np.abs(np.asarray(ours) - theirs) <= tolerance * (1 + np.abs(theirs))).all()
    # a scale s multiplies the gradient by s
    assert (
        np.abs(np.asarray(grad) - z.grad.numpy()) <= 2 * tolerance * np.abs(weights).max()
    ).all()
    assert np.isfinite(np.asarray(grad)).all()  # masked tokens included
    alone = np.asarray(token_logprobs(logits, labels, scale=scale, top_k=top_k))
    assert (np.abs(alone - np.asarray(logprobs)) <= tolerance * (1 + np.abs(alone))).all()


def test_token_entropy_and_its_gradient_match_torch(dtype):
    eps = np.finfo(dtype).eps
    logits, _, _ = inputs(dtype, seed=2)
    entropy, grad = jax.jit(jax.value_and_grad(lambda z: token_entropy(z).sum()))(logits)
    z = torch.tensor(logits, requires_grad=True)
    entropy_t = torch_token.token_entropy(z).sum()
    entropy_t.backward()
    tolerance = 8 * math.log2(VOCAB) * eps
    assert abs(float(entropy) - entropy_t.item()) <= tolerance * 15 * (1 + math.log(VOCAB))
    # dH/dz_v = -p_v (log p_v + H): at most (1 + log V) in size
    assert (np.abs(np.asarray(grad) - z.grad.numpy()) <= tolerance * (1 + math.log(VOCAB))).all()


def test_top_k_outside_label_gets_the_constant_without_gradient():
    logits = jnp.asarray([[0.0, 1.0, 2.0, 3.0]])
    value, grad = jax.value_and_grad(lambda z: token_logprobs(z, jnp.asarray([0]), top_k=2)[0])(
        logits
    )
    assert float(value) == -1e4 and (np.asarray(grad) == 0).all()


def test_response_entropy_and_scales_match_torch():
    rng = np.random.default_rng(3)
    entropy = rng.uniform(0, 4, size=(6, 11)).astype(np.float32)
    mask = rng.integers(0, 2, size=(6, 11))
    mask[0] = 0  # a response without tokens
    mask[1] = 1
    for fraction in (0.2, 0.3, 0.7, 1.0):  # 0.7·10 = 6.999… in float64: counts must agree
        ours = np.asarray(response_entropy(entropy, mask, fraction))
        theirs = torch_token.response_entropy(torch.tensor(entropy), torch.tensor(mask), fraction)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=4 * np.finfo(np.float32).eps)
    advantages = rng.normal(size=(6, 11)).astype(np.float32)
    h = response_entropy(entropy, mask)
    for adv in (advantages, advantages[:, 0]):
        ours = era_scales(h, adv, low=1.5, high=2.5, k=3.0)
        theirs = torch_token.era_scales(
            torch.tensor(np.asarray(h)), torch.tensor(adv), low=1.5, high=2.5, k=3.0
        )
        for a, b in zip(ours, theirs, strict=True):
            assert (np.asarray(a) == b.numpy()).all()


def test_bad_arguments_raise():
    logits, labels = jnp.zeros((2, 5)), jnp.asarray([1, 2])
    with pytest.raises(ValueError, match=re.escape("top_k must be None or an integer in [1, 5]")):
        token_logprobs(logits, labels, top_k=6)
    with pytest.raises(ValueError, match=re.escape("labels must be token ids in [0, 4]")):
        token_logprobs(logits, jnp.asarray([1, 5]))
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        token_logprobs(logits, labels, scale=jnp.asarray([1.0, 0.0]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        token_logprobs(logits, jnp.asarray([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"logits has 1 row\(s\) without a distribution"):
        token_entropy(jnp.asarray([[0.0, 1.0], [math.nan, 0.0]]))
    with pytest.raises(ValueError, match="top_fraction must be in"):
        response_entropy(jnp.zeros((2, 3)), jnp.ones((2, 3)), 0.0)
    with pytest.raises(ValueError, match="k must be finite and >= 1"):
        era_scales(jnp.zeros(2), jnp.zeros(2), k=0.5)
    with pytest.raises(ValueError, match="advantages contains NaN"):
        era_scales(jnp.zeros(2), jnp.asarray([0.0, math.nan]))
