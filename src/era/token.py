"""Token-level ERA for RL fine-tuning of language models (arXiv 2510.08549; docs/activations.md §3).

Rollouts come from the unmodified policy ``softmax(z)``. Inside the update, every token of a
response with a positive advantage is scored under ``softmax(k·z)`` when the response's entropy is
below a band and under ``softmax(z/k)`` when it is above; the advantage is divided or multiplied
by ``k`` to match. Everything here is a pure tensor function:

* :func:`token_entropy` — entropy of each position's next-token distribution;
* :func:`response_entropy` — a response's entropy: the mean of its top 20% token entropies;
* :func:`band_side` — where a response's entropy lies against the band (below, inside, above);
* :func:`era_scales` — the per-response (or per-token) logit and advantage scales;
* :func:`token_logprobs` / :func:`token_logprobs_and_entropy` — log-probs of the sampled tokens
  under a per-row temperature, optionally renormalised over the top-k logits.

Vocabulary-sized work is done in float32 over chunks of rows, and the backward pass recomputes each
chunk instead of keeping float32 copies alive, so only the input logits, their gradient (both in the
logits' dtype) and one chunk's float32 intermediates are ever resident. Rows are the flattened
leading dimensions; logits that cannot be flattened as a view (a slice such as
``logits[:, :-1]``) are copied once per pass in their own dtype, so pass contiguous logits when
memory is tight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

OUTSIDE_TOP_K_LOGPROB = -1e4
"""Log-prob given to a label outside the top-k logits (a constant, so it carries no gradient)."""

BAND_LOW, BAND_HIGH, BAND_K = 0.45, 3.0, 2.0
"""The paper's response-entropy band (nats) and logit scale: the one home of these defaults."""

BELOW, INSIDE, ABOVE = -1, 0, 1
"""Values of :func:`band_side`."""


def check_band(low: float, high: float, k: float, prefix: str = "") -> None:
    """The one validator of ERA's band: ``low < high`` (infinities allowed) and finite ``k > 1``.

    ``prefix`` names the arguments as the caller spells them (e.g. ``"era_"``).
    """
    if math.isnan(low) or math.isnan(high) or low >= high:
        raise ValueError(
            f"need {prefix}low < {prefix}high (infinities allowed), got {prefix}low={low!r}, "
            f"{prefix}high={high!r}"
        )
    if not (math.isfinite(k) and k > 1):
        raise ValueError(f"{prefix}k must be finite and > 1, got {k!r}")


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise TypeError("logits must be a floating-point tensor [..., vocab]")
    if logits.shape[-1] < 1:
        raise ValueError(f"logits must have a non-empty vocabulary dimension, got {logits.shape}")


def _check_rows(values: Tensor, what: str) -> None:
    """Raise if a per-row result is NaN: that row's logits have no distribution.

    Checked on the small per-row results rather than on the logits, so it costs no extra pass
    over the vocabulary; skipped inside ``torch.compile`` (a data-dependent branch)."""
    if torch.compiler.is_compiling() or not bool(torch.isnan(values).any()):
        return
    rows = int(torch.isnan(values).sum())
    raise ValueError(
        f"logits has {rows} row(s) without a distribution (a NaN or +inf entry, or every entry "
        f"-inf), so their {what} is undefined; -inf is allowed for masked tokens"
    )


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")


def _flat_scale(scale: Tensor | float | None, labels: Tensor, like: Tensor) -> Tensor | None:
    """Broadcast ``scale`` to ``labels.shape`` and flatten it to one value per row."""
    if scale is None:
        return None
    scale = torch.as_tensor(scale, device=like.device)
    if scale.requires_grad:
        raise ValueError("scale must not require grad: it is a fixed temperature per row")
    try:
        scale = torch.broadcast_to(scale, labels.shape)
    except RuntimeError:
        raise ValueError(
            f"scale of shape {tuple(scale.shape)} does not broadcast to labels' shape "
            f"{tuple(labels.shape)}"
        ) from None
    scale = scale.reshape(-1).to(_compute_dtype(like.dtype))
    if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scale must be finite and > 0 everywhere")
    return scale


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bf16/float32 logits; float64 stays float64 (for gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _chunks(n_rows: int, chunk_size: int | None):
    step = n_rows if chunk_size is None else chunk_size
    for start in range(0, n_rows, max(step, 1)):
        yield slice(start, min(start + step, n_rows))


# ---------------------------------------------------------------------------------------------
# Per-chunk maths: each helper takes one chunk of rows [n, vocab] in the logits' dtype, so its
# float32 intermediates die when it returns.
# ---------------------------------------------------------------------------------------------


def _log_softmax(z: Tensor) -> Tensor:
    """log_softmax clamped to the dtype's most negative finite value.

    A logit of -inf (a masked token) then contributes p·log p = 0·(finite) = 0 to sums instead of
    0·(-inf) = NaN; NaN logits still give NaN.
    """
    return torch.log_softmax(z, dim=-1).clamp_(min=torch.finfo(z.dtype).min)


def _scaled(x: Tensor, scale: Tensor | None) -> Tensor:
    """A fresh compute-dtype copy of ``scale · x`` (of ``x`` when ``scale`` is None)."""
    z = x.to(_compute_dtype(x.dtype), copy=True)
    # In place, after the cast: a mixed bf16·float32 product is several times slower on CPU.
    return z if scale is None else z.mul_(scale[:, None])


def _entropy_rows(x: Tensor) -> Tensor:
    logp = _log_softmax(x.to(_compute_dtype(x.dtype)))
    return -logp.exp().mul_(logp).sum(-1)


def _entropy_grad_rows(x: Tensor, entropy: Tensor, weight: Tensor) -> Tensor:
    """weight · dH/dx per row; dH/dx_v = -p_v (log p_v + H)."""
    logp = _log_softmax(x.to(_compute_dtype(x.dtype)))
    p = logp.exp()
    return logp.add_(entropy[:, None]).mul_(p).mul_(-weight[:, None])


def _logprob_rows(
    x: Tensor, labels: Tensor, scale: Tensor | None, top_k: int | None, with_entropy: bool
) -> tuple[Tensor, Tensor | None]:
    """log softmax(scale·x)[label] per row (or its top-k version), and the entropy of softmax(x)."""
    entropy = _entropy_rows(x) if with_entropy else None
    z = _scaled(x, scale)
    if top_k is None:  # log_softmax, not logsumexp: the fused kernel is much faster on CPU
        return torch.log_softmax(z, dim=-1).gather(1, labels[:, None]).squeeze(1), entropy
    z_label = z.gather(1, labels[:, None]).squeeze(1)
    top = z.topk(top_k, dim=-1).values
    logprob = z_label - torch.logsumexp(top, dim=-1)
    outside = z_label < top[:, -1]
    logprob = logprob.masked_fill(outside, OUTSIDE_TOP_K_LOGPROB)
    # a row whose largest logit is NaN, +inf or -inf has no distribution, whatever its label
    return logprob.masked_fill(~torch.isfinite(top[:, 0]), math.nan), entropy


def _logprob_grad_rows(
    x: Tensor, labels: Tensor, scale: Tensor | None, top_k: int | None, weight: Tensor
) -> Tensor:
    """weight · d logprob / dx per row, recomputed from the chunk ``x``."""
    z = _scaled(x, scale)
    weight = weight.to(z.dtype)
    if scale is not None:
        weight = weight * scale  # z = s·x, so d/dx = s · d/dz
    if top_k is None:
        grad = torch.softmax(z, dim=-1).mul_(-weight[:, None])
    else:
        top, index = z.topk(top_k, dim=-1)
        weight = weight.masked_fill(z.gather(1, labels[:, None]).squeeze(1) < top[:, -1], 0)
        grad = z.zero_()  # reuse the chunk's buffer
        grad.scatter_(1, index, torch.softmax(top, dim=-1).mul_(-weight[:, None]))
    return grad.scatter_add_(1, labels[:, None], weight[:, None])


# ---------------------------------------------------------------------------------------------
# Autograd functions: forward and backward both walk the rows chunk by chunk
# ---------------------------------------------------------------------------------------------


class _ChunkedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, chunk_size: int | None) -> Tensor:
        rows = logits.reshape(-1, logits.shape[-1])
        out = torch.empty(rows.shape[0], dtype=_compute_dtype(logits.dtype), device=logits.device)
        for part in _chunks(rows.shape[0], chunk_size):
            out[part] = _entropy_rows(rows[part])
        ctx.save_for_backward(logits, out)
        ctx.chunk_size = chunk_size
        return out.reshape(logits.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, entropy = ctx.saved_tensors
        rows = logits.reshape(-1, logits.shape[-1])
        grad_out = grad_out.reshape(-1)
        grad = torch.empty_like(rows)
        for part in _chunks(rows.shape[0], ctx.chunk_size):
            grad[part] = _entropy_grad_rows(rows[part], entropy[part], grad_out[part])
        return grad.reshape(logits.shape), None


class _ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        labels: Tensor,
        scale: Tensor | None,
        top_k: int | None,
        chunk_size: int | None,
        with_entropy: bool,
    ) -> Tensor | tuple[Tensor, Tensor]:
        rows = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1)
        dtype = _compute_dtype(logits.dtype)
        logprobs = torch.empty(rows.shape[0], dtype=dtype, device=logits.device)
        entropy = torch.empty_like(logprobs) if with_entropy else None
        for part in _chunks(rows.shape[0], chunk_size):
            chunk_scale = None if scale is None else scale[part]
            logprob, chunk_entropy = _logprob_rows(
                rows[part], flat_labels[part], chunk_scale, top_k, with_entropy
            )
            logprobs[part] = logprob
            if with_entropy:
                entropy[part] = chunk_entropy
        ctx.save_for_backward(logits, flat_labels, scale)
        ctx.top_k, ctx.chunk_size = top_k, chunk_size
        if not with_entropy:
            return logprobs.reshape(labels.shape)
        entropy = entropy.reshape(labels.shape)
        ctx.mark_non_differentiable(entropy)
        return logprobs.reshape(labels.shape), entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs: Tensor, _grad_entropy: Tensor | None = None):
        logits, labels, scale = ctx.saved_tensors
        rows = logits.reshape(-1, logits.shape[-1])
        weight = grad_logprobs.reshape(-1)
        grad = torch.empty_like(rows)
        for part in _chunks(rows.shape[0], ctx.chunk_size):
            chunk_scale = None if scale is None else scale[part]
            grad[part] = _logprob_grad_rows(
                rows[part], labels[part], chunk_scale, ctx.top_k, weight[part]
            )
        return grad.reshape(logits.shape), None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def token_entropy(logits: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` at every position: ``[..., vocab] -> [...]``.

    Computed in float32 (float64 for float64 logits) whatever the input dtype. With
    ``chunk_size``, rows (the flattened leading dimensions) are processed ``chunk_size`` at a time,
    so only one chunk's float32 vocab-sized intermediates exist at once. Usually called under
    ``torch.no_grad()`` (ERA needs the entropy only to decide the scales), but it is
    differentiable: if ``logits`` require grad, the backward pass recomputes each chunk, keeping
    the same memory bound.
    """
    _check_logits(logits)
    _check_chunk_size(chunk_size)
    entropy = _ChunkedEntropy.apply(logits, chunk_size)
    _check_rows(entropy, "entropy")
    return entropy


def response_entropy(entropy: Tensor, mask: Tensor, top_fraction: float = 0.2) -> Tensor:
    """A response's entropy: the mean of its top ``max(1, floor(top_fraction·L))`` token entropies.

    ``entropy`` and ``mask`` are ``[B, T]``; ``L`` is the number of masked-in (non-zero ``mask``)
    tokens of a row, and the floor is Python's ``math.floor(top_fraction * L)`` (float64). The top
    fraction follows the paper: it tracks the few high-entropy tokens where a response branches,
    which a plain mean over many near-deterministic tokens would hide. A row with no tokens
    (L = 0) gets 0: finite, and harmless to the loss since the row has no token to scale, but it
    lies below a positive band, so leave such rows out of band statistics.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    if entropy.dim() != 2 or entropy.shape != mask.shape:
        raise ValueError(
            f"entropy and mask must both be [B, T] with equal shapes, got entropy "
            f"{tuple(entropy.shape)} and mask {tuple(mask.shape)}"
        )
    mask = mask.bool()
    if not torch.compiler.is_compiling() and bool((torch.isnan(entropy) & mask).any()):
        raise ValueError("entropy contains NaN at masked-in tokens")
    length = mask.sum(-1)
    n_top = torch.floor(length.double() * top_fraction).long().clamp(min=1)
    ranked = entropy.masked_fill(~mask, -math.inf).sort(dim=-1, descending=True).values
    # Ranks below n_top <= L are all real entropies, so no -inf enters the sum when L >= 1.
    keep = torch.arange(entropy.shape[-1], device=entropy.device) < n_top[:, None]
    mean = ranked.masked_fill(~keep, 0).sum(-1) / n_top
    return torch.where(length > 0, mean, torch.zeros_like(mean))


def band_side(response_entropy: Tensor, low: float, high: float) -> Tensor:
    """int8 per response: :data:`BELOW` (entropy < ``low``), :data:`ABOVE` (> ``high``) or
    :data:`INSIDE`. ``low = -inf`` / ``high = inf`` disables a side."""
    side = torch.zeros(response_entropy.shape, dtype=torch.int8, device=response_entropy.device)
    side = side.masked_fill(response_entropy < low, BELOW)
    return side.masked_fill(response_entropy > high, ABOVE)


def era_scales(
    response_entropy: Tensor,
    advantages: Tensor,
    *,
    low: float = BAND_LOW,
    high: float = BAND_HIGH,
    k: float = BAND_K,
) -> tuple[Tensor, Tensor]:
    """ERA's logit and advantage scales, each shaped like ``advantages``.

    ``response_entropy`` is ``[B]``; ``advantages`` is ``[B]`` (per response) or ``[B, T]`` (per
    token). Where ``A > 0`` the logits are multiplied by ``k`` if the response entropy is below
    ``low`` (the update then pushes entropy up) and by ``1/k`` if it is above ``high`` (pushes it
    down); elsewhere, and wherever ``A <= 0``, the scale is 1. The advantage scale is the inverse,
    ``A' = A / logit_scale``, which keeps the update's size comparable. ``low = -inf`` and
    ``high = inf`` turn ERA off (one of them disables one side of the band).
    """
    check_band(low, high, k)
    if response_entropy.dim() != 1 or advantages.dim() not in (1, 2):
        raise ValueError(
            f"response_entropy must be [B] and advantages [B] or [B, T], got "
            f"{tuple(response_entropy.shape)} and {tuple(advantages.shape)}"
        )
    if advantages.shape[0] != response_entropy.shape[0]:
        raise ValueError(
            f"batch sizes differ: response_entropy has {response_entropy.shape[0]}, advantages "
            f"{advantages.shape[0]}"
        )
    # NaN would compare False on both sides and silently leave the response unscaled
    for name, x in (("response_entropy", response_entropy), ("advantages", advantages)):
        if not torch.compiler.is_compiling() and bool(torch.isnan(x).any()):
            raise ValueError(f"{name} contains NaN; ERA's band decision needs numbers")
    side = band_side(response_entropy, low, high)
    side = side if advantages.dim() == 1 else side[:, None]
    dtype = advantages.dtype if advantages.is_floating_point() else torch.float32
    logit_scale = torch.ones(advantages.shape, dtype=dtype, device=advantages.device)
    positive = advantages > 0
    logit_scale = logit_scale.masked_fill(positive & (side == BELOW), k)
    logit_scale = logit_scale.masked_fill(positive & (side == ABOVE), 1.0 / k)
    return logit_scale, 1.0 / logit_scale


def _prepare_logprobs(logits, labels, scale, top_k, chunk_size):
    _check_logits(logits)
    _check_chunk_size(chunk_size)
    if not isinstance(labels, Tensor) or labels.dtype != torch.long:
        raise TypeError("labels must be an int64 tensor of token ids")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal logits' leading shape "
            f"{tuple(logits.shape[:-1])}"
        )
    vocab = logits.shape[-1]
    if top_k is not None and (isinstance(top_k, bool) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be None or an integer in [1, {vocab}], got {top_k!r}")
    if labels.numel() and not bool(((labels >= 0) & (labels < vocab)).all()):
        raise ValueError(f"labels must be token ids in [0, {vocab - 1}]")
    return _flat_scale(scale, labels, logits)


def token_logprobs(
    logits: Tensor,
    labels: Tensor,
    *,
    scale: Tensor | float | None = None,
    top_k: int | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``log softmax(scale·logits)[label]`` at every position: ``[..., vocab], [...] -> [...]``.

    ``scale`` (ERA's logit scale, a per-row temperature; positive, no gradient) broadcasts to
    ``labels``' shape, e.g. ``[B, T]`` per token or ``[B, 1]`` per response. With ``top_k``, the
    softmax is renormalised over the ``top_k`` largest scaled logits of the row, and a label
    outside them (strictly below the k-th largest) gets the constant
    :data:`OUTSIDE_TOP_K_LOGPROB` with zero gradient. Computed in float32 over chunks of
    ``chunk_size`` rows; the gradient flows to ``logits`` (in their dtype) and is recomputed chunk
    by chunk in the backward pass.
    """
    scale = _prepare_logprobs(logits, labels, scale, top_k, chunk_size)
    logprobs = _ChunkedLogProbs.apply(logits, labels, scale, top_k, chunk_size, False)
    _check_rows(logprobs, "log-prob")
    return logprobs


def token_logprobs_and_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    scale: Tensor | float | None = None,
    top_k: int | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`token_logprobs` and the detached :func:`token_entropy` of the *unscaled* logits.

    One pass over the logits instead of two: the entropy (which ERA's scale decision and the
    entropy metrics need) is computed from the same float32 chunk as the log-probs.
    """
    scale = _prepare_logprobs(logits, labels, scale, top_k, chunk_size)
    logprobs, entropy = _ChunkedLogProbs.apply(logits, labels, scale, top_k, chunk_size, True)
    _check_rows(logprobs, "log-prob")
    return logprobs, entropy
