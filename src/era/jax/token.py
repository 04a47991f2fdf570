"""Token-level ERA in JAX, for RL fine-tuning of language models (docs/activations.md §3).

The pure functions of :mod:`era.token` with ``jax.numpy``: :func:`token_entropy`,
:func:`response_entropy`, :func:`era_scales`, :func:`token_logprobs` and
:func:`token_logprobs_and_entropy`. Vocabulary-sized work runs in float32 (float64 for float64
logits). The torch version walks the rows in chunks with a hand-written backward pass to bound
memory; here XLA plans the memory and ``grad`` derives the backward pass, so there is no
``chunk_size`` (wrap a call in ``jax.checkpoint`` or ``jax.lax.map`` to trade time for memory).

Checks on values (NaN entropies, label ranges, positive scales) raise on concrete arrays only;
inside ``jit`` they are skipped and a bad row comes out NaN.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

__all__ = [
    "OUTSIDE_TOP_K_LOGPROB",
    "era_scales",
    "response_entropy",
    "token_entropy",
    "token_logprobs",
    "token_logprobs_and_entropy",
]

OUTSIDE_TOP_K_LOGPROB = -1e4
"""Log-prob given to a label outside the top-k logits (a constant, so it carries no gradient)."""


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _compute(logits) -> jax.Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating) or logits.ndim < 1:
        raise TypeError("logits must be a floating-point array [..., vocab]")
    if logits.shape[-1] < 1:
        raise ValueError(f"logits must have a non-empty vocabulary axis, got {logits.shape}")
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _check_rows(values, what: str) -> None:
    """Raise if a per-row result is NaN: that row's logits have no distribution."""
    if _concrete(values) and bool(jnp.isnan(values).any()):
        rows = int(jnp.isnan(values).sum())
        raise ValueError(
            f"logits has {rows} row(s) without a distribution (a NaN or +inf entry, or every "
            f"entry -inf), so their {what} is undefined; -inf is allowed for masked tokens"
        )


@jax.jit
def _entropy(z) -> jax.Array:
    """Entropy of softmax(z) over the last axis; log-probs are clamped to the dtype's most
    negative finite value so that a masked (-inf) token contributes 0·finite = 0, not NaN."""
    logp = jnp.maximum(jax.nn.log_softmax(z, axis=-1), jnp.finfo(z.dtype).min)
    return -(jnp.exp(logp) * logp).sum(-1)


def token_entropy(logits: jax.Array) -> jax.Array:
    """Entropy (nats) of ``softmax(logits)`` at every position: ``[..., vocab] -> [...]``."""
    entropy = _entropy(_compute(logits))
    _check_rows(entropy, "entropy")
    return entropy


def response_entropy(entropy: jax.Array, mask: jax.Array, top_fraction: float = 0.2) -> jax.Array:
    """A response's entropy: the mean of its top ``max(1, floor(top_fraction·L))`` token entropies.

    ``entropy`` and ``mask`` are ``[B, T]``; ``L`` counts a row's non-zero ``mask`` entries. A
    row with no tokens gets 0 (see :func:`era.token.response_entropy`).
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    entropy, mask = jnp.asarray(entropy), jnp.asarray(mask).astype(bool)
    if entropy.ndim != 2 or entropy.shape != mask.shape:
        raise ValueError(
            f"entropy and mask must both be [B, T] with equal shapes, got entropy "
            f"{tuple(entropy.shape)} and mask {tuple(mask.shape)}"
        )
    if _concrete(entropy) and _concrete(mask) and bool((jnp.isnan(entropy) & mask).any()):
        raise ValueError("entropy contains NaN at masked-in tokens")
    length = mask.sum(-1)
    # floor(top_fraction * L) in Python's float64 for every possible L, looked up: the same
    # counts as the torch version whether or not JAX has float64 enabled
    counts = [max(1, math.floor(top_fraction * n)) for n in range(entropy.shape[-1] + 1)]
    n_top = jnp.asarray(counts)[length]
    ranked = -jnp.sort(-jnp.where(mask, entropy, -jnp.inf), axis=-1)
    keep = jnp.arange(entropy.shape[-1]) < n_top[:, None]
    mean = jnp.where(keep, ranked, 0).sum(-1) / n_top
    return jnp.where(length > 0, mean, 0)


def era_scales(
    response_entropy: jax.Array,
    advantages: jax.Array,
    *,
    low: float = 0.45,
    high: float = 3.0,
    k: float = 2.0,
) -> tuple[jax.Array, jax.Array]:
    """ERA's logit and advantage scales, each shaped like ``advantages`` ([B] or [B, T]).

    Where ``A > 0`` the logits are multiplied by ``k`` if the response entropy is below ``low``
    and by ``1/k`` if above ``high``; elsewhere 1. The advantage scale is the inverse.
    """
    if not (math.isfinite(k) and k >= 1.0):
        raise ValueError(f"k must be finite and >= 1, got {k!r}")
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"need low <= high (infinities allowed), got low={low!r}, high={high!r}")
    response_entropy, advantages = jnp.asarray(response_entropy), jnp.asarray(advantages)
    if response_entropy.ndim != 1 or advantages.ndim not in (1, 2):
        raise ValueError(
            f"response_entropy must be [B] and advantages [B] or [B, T], got "
            f"{tuple(response_entropy.shape)} and {tuple(advantages.shape)}"
        )
    if advantages.shape[0] != response_entropy.shape[0]:
        raise ValueError(
            f"batch sizes differ: response_entropy has {response_entropy.shape[0]}, advantages "
            f"{advantages.shape[0]}"
        )
    for name, x in (("response_entropy", response_entropy), ("advantages", advantages)):
        if _concrete(x) and bool(jnp.isnan(x).any()):
            raise ValueError(f"{name} contains NaN; ERA's band decision needs numbers")
    h = response_entropy if advantages.ndim == 1 else response_entropy[:, None]
    dtype = advantages.dtype if jnp.issubdtype(advantages.dtype, jnp.floating) else jnp.float32
    positive = advantages > 0
    logit_scale = jnp.ones(advantages.shape, dtype)
    logit_scale = jnp.where(positive & (h < low), jnp.asarray(k, dtype), logit_scale)
    logit_scale = jnp.where(positive & (h > high), jnp.asarray(1.0 / k, dtype), logit_scale)
    return logit_scale, 1.0 / logit_scale


def _logprobs(logits, labels, scale, top_k):
    """log softmax(scale·logits)[label] (or its top-k version), checked arguments."""
    z = _compute(logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be an integer array of token ids, got dtype {labels.dtype}")
    if labels.shape != z.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal logits' leading shape "
            f"{tuple(z.shape[:-1])}"
        )
    vocab = z.shape[-1]
    if top_k is not None and (isinstance(top_k, bool) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be None or an integer in [1, {vocab}], got {top_k!r}")
    if _concrete(labels) and labels.size and not bool(((labels >= 0) & (labels < vocab)).all()):
        raise ValueError(f"labels must be token ids in [0, {vocab - 1}]")
    if scale is not None:
        scale = jnp.asarray(scale, z.dtype)
        try:
            scale = jnp.broadcast_to(scale, labels.shape)
        except ValueError:
            raise ValueError(
                f"scale of shape {tuple(scale.shape)} does not broadcast to labels' shape "
                f"{tuple(labels.shape)}"
            ) from None
        if _concrete(scale) and not bool((jnp.isfinite(scale) & (scale > 0)).all()):
            raise ValueError("scale must be finite and > 0 everywhere")
    return _scaled_logprobs(z, labels, scale, top_k)


@functools.partial(jax.jit, static_argnums=3)
def _scaled_logprobs(z, labels, scale, top_k):
    if scale is not None:
        # a fixed temperature per row: no gradient, as in the torch version
        z = z * jax.lax.stop_gradient(scale)[..., None]
    z_label = jnp.take_along_axis(z, labels[..., None], axis=-1)[..., 0]
    if top_k is None:
        return z_label - jax.nn.logsumexp(z, axis=-1)
    top = jax.lax.top_k(z, top_k)[0]
    logprob = z_label - jax.nn.logsumexp(top, axis=-1)
    logprob = jnp.where(z_label < top[..., -1], OUTSIDE_TOP_K_LOGPROB, logprob)
    # a row whose largest logit is NaN, +inf or -inf has no distribution, whatever its label
    return jnp.where(jnp.isfinite(top[..., 0]), logprob, jnp.nan)


def token_logprobs(
    logits: jax.Array,
    labels: jax.Array,
    *,
    scale: jax.Array | float | None = None,
    top_k: int | None = None,
) -> jax.Array:
    """``log softmax(scale·logits)[label]`` at every position: ``[..., vocab], [...] -> [...]``.

    ``scale`` (a per-row temperature, positive, no gradient) broadcasts to ``labels``' shape. With
    ``top_k`` the softmax is renormalised over the ``top_k`` largest scaled logits, and a label
    outside them gets :data:`OUTSIDE_TOP_K_LOGPROB` with zero gradient.
    """
    logprobs = _logprobs(logits, labels, scale, top_k)
    _check_rows(logprobs, "log-prob")
    return logprobs


def token_logprobs_and_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    scale: jax.Array | float | None = None,
    top_k: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`token_logprobs` and the entropy of the *unscaled* logits (held constant, like the
    torch version's detached entropy)."""
    logprobs = _logprobs(logits, labels, scale, top_k)
    _check_rows(logprobs, "log-prob")
    return logprobs, jax.lax.stop_gradient(_entropy(_compute(logits)))
