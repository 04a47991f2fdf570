"""The ERA LM head: label log-probs at a few logit scales, and the entropy, without the logits.

GRPO's loss needs, per response token, ``log softmax(s·z)[label]`` for ERA's scale ``s`` of that
response (1, ``k`` or ``1/k``; ``docs/activations.md``, section 3) and the entropy of the
unmodified ``softmax(z)`` (which decides ``s``). Like TRL 1.16's fused head, :func:`era_lm_head`
never holds the ``[tokens, vocab]`` logits: it projects hidden states through the LM head one tile
of (tokens × vocabulary) at a time, keeps running log-sum-exp statistics per token, and recomputes
each tile in the backward pass. Because ERA's scale takes only three values, the extra
log-normalisers cost a few element-wise passes over each tile, not a second matmul, and only for
the rows that may be rescaled (``scaled_rows``: in GRPO, the tokens of responses with A > 0).

Pure torch; the TRL glue is :mod:`era.llm.trl`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from era.token import OUTSIDE_TOP_K_LOGPROB

TOKEN_TILE = 1024
"""Tokens per LM-head tile."""
VOCAB_TILE = 8192
"""Vocabulary entries per LM-head tile (a float32 tile is then 32 MiB)."""


class HeadOutput(NamedTuple):
    """Per-token statistics of ``z = (hidden @ weight.T + bias) / temperature``.

    In float32 (float64 for float64 inputs), whatever the model's dtype.

    ``log_norm[..., c]`` is ``logsumexp(scales[c] · z)`` (over the top-k logits when ``top_k`` is
    set), so the log-prob of the label under ``softmax(s·z)`` is ``s·label_logit − log_norm``.
    ``entropy`` (of ``softmax(z)``) and ``kth_logit`` (the k-th largest ``z``; ``-inf`` without
    top-k) carry no gradient.
    """

    label_logit: Tensor
    log_norm: Tensor
    entropy: Tensor
    kth_logit: Tensor

    def logprobs(self, scales: tuple[float, ...], column: Tensor) -> Tensor:
        """Log-prob of the label under ``softmax(scales[column] · z)``, token by token."""
        scale = torch.tensor(scales, device=column.device, dtype=self.label_logit.dtype)[column]
        logprob = scale * self.label_logit - self.log_norm.gather(-1, column[..., None]).squeeze(-1)
        # A label outside the top-k gets a constant log-prob, hence no gradient.
        return logprob.masked_fill(self.label_logit < self.kth_logit, OUTSIDE_TOP_K_LOGPROB)


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on (as in the model's own head), else the input's."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def _tiles(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _matmul_into(out: Tensor, a: Tensor, b: Tensor) -> None:
    """``out += a @ b`` with ``out`` in the accumulation dtype; half-precision products are not
    rounded before they are added where the hardware allows it (CUDA)."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    elif a.is_cuda:
        out += torch.mm(a, b, out_dtype=out.dtype)
    else:
        out += torch.mm(a, b).to(out.dtype)


def _scaled_exp_sum(d: Tensor, e: Tensor, s: float, buffer: Tensor) -> Tensor:
    """``Σ exp(s·d)`` per row, given ``e = exp(d)`` (``buffer``: scratch of ``d``'s shape).

    For the default k = 2 this needs no exponential: ``Σ e²`` is a fused sum of squares (no tile is
    written) and ``Σ √e`` one square root per entry; terms they round to zero are below 1e-22 of a
    sum that is at least 1.
    """
    if s == 2.0:
        return torch.linalg.vector_norm(e, dim=1).square()
    if s == 0.5:
        return torch.sqrt(e, out=buffer).sum(dim=1)
    return torch.mul(d, s, out=buffer).exp_().sum(dim=1)


class _Tiles:
    """Tile-sized buffers, allocated once per pass: allocating a fresh tile for every step costs
    more (page faults) than the arithmetic done on it."""

    def __init__(
        self, rows: int, cols: int, dtype: torch.dtype, acc: torch.dtype, device, extra: bool
    ):
        self.dtype = dtype
        self.z = torch.empty(rows, cols, dtype=acc, device=device)
        self.e = torch.empty_like(self.z)
        self.x = torch.empty_like(self.z) if extra else None
        self.low = None if dtype == acc else torch.empty(rows, cols, dtype=dtype, device=device)

    def logits(self, h: Tensor, weight: Tensor, bias, cols: slice, inv_temp: float) -> Tensor:
        """``(h @ weight[cols].T + bias[cols]) · inv_temp`` as a view of the ``z`` buffer."""
        n, w = h.shape[0], cols.stop - cols.start
        z = self.z[:n, :w]
        if self.low is None:
            torch.mm(h, weight[cols].to(self.dtype).t(), out=z)
        else:
            z.copy_(torch.mm(h, weight[cols].to(self.dtype).t(), out=self.low[:n, :w]))
        if bias is not None:
            z.add_(bias[cols])
        return z.mul_(inv_temp) if inv_temp != 1.0 else z

    def in_dtype(self, grad: Tensor) -> Tensor:
        """``grad`` in the matmul dtype (a view of a reused buffer when a cast is needed)."""
        if self.low is None:
            return grad
        return self.low[: grad.shape[0], : grad.shape[1]].copy_(grad)


class _ERAHead(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, labels, scales, inv_temp, top_k, token_tile, vocab_tile, n_scaled
    ):
        ctx.set_materialize_grads(False)
        n, vocab = hidden.shape[0], weight.shape[0]
        dtype = _compute_dtype(hidden)
        acc = torch.promote_types(dtype, torch.float32)
        f32 = {"device": hidden.device, "dtype": acc}
        label_logit = torch.zeros(n, **f32)
        log_norm = torch.zeros(n, len(scales), **f32)
        entropy = torch.zeros(n, **f32)
        kth_logit = torch.full((n,), -math.inf, **f32)
        top = torch.full((n, top_k or 0), -math.inf, **f32)
        top_index = torch.zeros((n, top_k or 0), dtype=torch.long, device=hidden.device)
        # Without top-k, every scale needs its own sum over the vocabulary, but only the first
        # n_scaled rows need the scales other than 1; with top-k only s = 1 needs one (for the
        # entropy): the normalisers come from the kept top-k logits at the end.
        sum_scales = scales if top_k is None else (1.0,)
        if top_k is None and n_scaled < n:
            log_norm[n_scaled:, 1:] = math.nan  # not computed: never to be read
        tiles = _Tiles(
            min(n, token_tile),
            min(vocab, vocab_tile),
            dtype,
            acc,
            hidden.device,
            len(sum_scales) > 1,
        )

        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are handled here
            for rows in _tiles(n, token_tile):
                h, lab = hidden[rows].to(dtype), labels[rows]
                # Running statistics against the running max m: sums[c] = Σ exp(s_c (z − m)),
                # sum_ed = Σ exp(z − m)·(z − m), whence logsumexp(s_c z) = s_c m + log sums[c]
                # and H = log sums[0] − sum_ed / sums[0].
                m = sums = sum_ed = None
                extra = max(0, min(n_scaled - rows.start, rows.stop - rows.start))
                for cols in _tiles(vocab, vocab_tile):
                    z = tiles.logits(h, weight, bias, cols, inv_temp)
                    inside = (lab >= cols.start) & (lab < cols.stop)
                    local = (lab - cols.start).clamp(0, z.shape[1] - 1)
                    label_logit[rows] += torch.where(inside, z.gather(1, local[:, None])[:, 0], 0.0)
                    if top_k is not None:
                        values, index = z.topk(min(top_k, z.shape[1]), dim=1)
                        merged = torch.cat([top[rows], values], dim=1)
                        merged_index = torch.cat([top_index[rows], index + cols.start], dim=1)
                        top[rows], keep = merged.topk(top_k, dim=1)
                        top_index[rows] = merged_index.gather(1, keep)
                    tile_max = z.amax(dim=1)
                    if m is None:
                        m = tile_max
                        sums = [torch.zeros_like(m)] + [m.new_zeros(extra) for _ in sum_scales[1:]]
                        sum_ed = torch.zeros_like(m)
                    new_m = torch.maximum(m, tile_max)
                    shift = m - new_m  # <= 0: rescales the sums taken against the old max
                    d = z.sub_(new_m[:, None])
                    e = torch.exp(d, out=tiles.e[: d.shape[0], : d.shape[1]])
                    for c, s in enumerate(sum_scales[1:] if extra else (), start=1):
                        buffer = tiles.x[:extra, : d.shape[1]]
                        x_sum = _scaled_exp_sum(d[:extra], e[:extra], s, buffer)
                        sums[c] = sums[c] * (s * shift[:extra]).exp() + x_sum
                    rescale = shift.exp()
                    sum_ed = rescale * (sum_ed + shift * sums[0])
                    sums[0] = sums[0] * rescale + e.sum(dim=1)
                    sum_ed += e.mul_(d).sum(dim=1)
                    m = new_m
                entropy[rows] = sums[0].log() - sum_ed / sums[0]
                if top_k is None:
                    log_norm[rows, 0] = m + sums[0].log()
                    for c, s in enumerate(scales[1:] if extra else (), start=1):
                        log_norm[rows.start : rows.start + extra, c] = s * m[:extra] + sums[c].log()
        if top_k is not None:
            kth_logit = top[:, -1].clone()
            for c, s in enumerate(scales):
                log_norm[:, c] = torch.logsumexp(s * top, dim=1)

        ctx.save_for_backward(hidden, weight, bias, labels, log_norm, top, top_index)
        ctx.scales, ctx.inv_temp, ctx.top_k = scales, inv_temp, top_k
        ctx.token_tile, ctx.vocab_tile, ctx.dtype, ctx.acc = token_tile, vocab_tile, dtype, acc
        ctx.mark_non_differentiable(entropy, kth_logit)
        return label_logit, log_norm, entropy, kth_logit

    @staticmethod
    def backward(ctx, grad_label, grad_log_norm, _grad_entropy, _grad_kth):
        hidden, weight, bias, labels, log_norm, top, top_index = ctx.saved_tensors
        n, vocab = hidden.shape[0], weight.shape[0]
        acc = ctx.acc
        f32 = {"device": hidden.device, "dtype": acc}
        grad_label = torch.zeros(n, **f32) if grad_label is None else grad_label.to(acc)
        terms = _normaliser_terms(grad_log_norm, ctx.scales, log_norm)
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros(hidden.shape, **f32) if want_h else None
        grad_w = torch.zeros(weight.shape, **f32) if want_w else None
        grad_b = torch.zeros(bias.shape, **f32) if want_b else None
        tiles = _Tiles(
            min(n, ctx.token_tile), min(vocab, ctx.vocab_tile), ctx.dtype, acc, hidden.device,
            len(terms) > 1,
        )  # fmt: skip

        if ctx.top_k is not None:
            # d/dz_j of logsumexp_top(s z) is s·softmax_top(s z)_j on the kept logits only, so
            # the logits' gradient is sparse: no tile needs recomputing.
            top_grad = torch.zeros_like(top)
            for g, s, ln in terms:
                top_grad += (g * s)[:, None] * torch.exp(s[:, None] * top - ln[:, None])

        with torch.autocast(hidden.device.type, enabled=False):
            for rows in _tiles(n, ctx.token_tile):
                h, lab = hidden[rows].to(ctx.dtype), labels[rows]
                for cols in _tiles(vocab, ctx.vocab_tile):
                    w = cols.stop - cols.start
                    if ctx.top_k is None and terms:
                        # d/dz of logsumexp(s z) = s·softmax(s z) = s·exp(s z − log_norm),
                        # computed in place in the logits tile when there is one term.
                        z = tiles.logits(h, weight, bias, cols, ctx.inv_temp)
                        if len(terms) == 1:
                            g, s, ln = terms[0]
                            grad = z.mul_(s[rows, None]).sub_(ln[rows, None]).exp_()
                            grad.mul_((g * s)[rows, None])
                        else:
                            grad = tiles.x[: z.shape[0], :w].zero_()
                            for g, s, ln in terms:
                                p = torch.mul(z, s[rows, None], out=tiles.e[: z.shape[0], :w])
                                grad.add_(p.sub_(ln[rows, None]).exp_().mul_((g * s)[rows, None]))
                    else:  # sparse: the label logits, and the kept top-k logits if any
                        grad = tiles.z[: lab.shape[0], :w].zero_()
                        if ctx.top_k is not None:
                            index = top_index[rows] - cols.start
                            inside = (index >= 0) & (index < w)
                            grad.scatter_add_(1, index.clamp(0, w - 1), top_grad[rows] * inside)
                    local = lab - cols.start
                    inside = (local >= 0) & (local < w)
                    grad.scatter_add_(
                        1, local.clamp(0, w - 1)[:, None], (grad_label[rows] * inside)[:, None]
                    )
                    if ctx.inv_temp != 1.0:
                        grad.mul_(ctx.inv_temp)  # through z = logits / T
                    low = tiles.in_dtype(grad)
                    if grad_h is not None:
                        _matmul_into(grad_h[rows], low, weight[cols].to(ctx.dtype))
                    if grad_w is not None:
                        _matmul_into(grad_w[cols], low.t(), h)
                    if grad_b is not None:
                        grad_b[cols] += grad.sum(dim=0)

        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            *([None] * 7),
        )


def _normaliser_terms(grad: Tensor | None, scales, log_norm: Tensor):
    """The log-normaliser gradient as a list of ``(g, s, log_norm)`` per-token triples.

    In training each token reads exactly one column (its ERA scale), so the list collapses to one
    triple with a per-token scale, and the backward pass costs one exponential per logit however
    many scales were on offer. Any other use falls back to one triple per column.
    """
    if grad is None:
        return []
    grad = grad.to(log_norm.dtype)
    nonzero = grad != 0
    if grad.shape[0] == 0 or int(nonzero.sum(dim=1).max()) <= 1:
        column = nonzero.int().argmax(dim=1)
        scale = torch.tensor(scales, device=grad.device, dtype=grad.dtype)[column]
        return [(grad.sum(dim=1), scale, log_norm.gather(1, column[:, None])[:, 0])]
    ones = torch.ones_like(grad[:, 0])
    # A column left uncomputed (NaN) for a row that does not read it contributes nothing.
    return [
        (grad[:, c], ones * s, torch.where(grad[:, c] != 0, log_norm[:, c], math.inf))
        for c, s in enumerate(scales)
    ]


def era_lm_head(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    *,
    scales: tuple[float, ...] = (1.0,),
    temperature: float = 1.0,
    top_k: int | None = None,
    token_tile: int = TOKEN_TILE,
    vocab_tile: int = VOCAB_TILE,
    scaled_rows: Tensor | None = None,
) -> HeadOutput:
    """Label log-probs at several logit scales, and the entropy, without materialising the logits.

    ``hidden`` is ``[N, H]``, ``weight`` ``[V, H]`` (an LM head), ``labels`` ``[N]`` token ids.
    Works over tiles of ``token_tile × vocab_tile`` float32 logits in the forward and again in the
    backward pass, so peak memory is a few tiles plus the float32 gradient accumulators of
    ``hidden`` and ``weight``. Gradients flow to ``hidden``, ``weight`` and ``bias``.

    ``scaled_rows`` (bool ``[N]``) marks the rows that may read a scale other than ``scales[0]``;
    the other rows' extra log-normalisers are not computed (they read as NaN), which saves their
    element-wise work. Default: every row.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [N] = {hidden.shape[0]}, got {tuple(labels.shape)}")
    if not scales or scales[0] != 1 or not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(
            f"scales must be a tuple of finite positive floats starting with 1.0, got {scales}"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    if top_k is not None and not 1 <= top_k <= weight.shape[0]:
        raise ValueError(f"top_k must be None or in [1, {weight.shape[0]}], got {top_k!r}")
    if token_tile < 1 or vocab_tile < 1:
        raise ValueError(
            f"tiles must be >= 1, got token_tile={token_tile}, vocab_tile={vocab_tile}"
        )
    if scaled_rows is not None and scaled_rows.shape != labels.shape:
        raise ValueError(
            f"scaled_rows must be [N] = {hidden.shape[0]}, got {tuple(scaled_rows.shape)}"
        )
    order = None
    n_scaled = hidden.shape[0]
    if scaled_rows is not None and len(scales) > 1 and top_k is None:
        # The rows to scale first, so that each tile's are a leading slice (a view, no copy).
        order = torch.argsort((~scaled_rows.bool()).to(torch.int8), stable=True)
        n_scaled = int(scaled_rows.sum())
        hidden, labels = hidden[order], labels[order]
    out = _ERAHead.apply(
        hidden,
        weight,
        bias,
        labels,
        tuple(float(s) for s in scales),
        1.0 / temperature,
        top_k,
        token_tile,
        vocab_tile,
        n_scaled,
    )
    if order is not None:
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        out = [x[inverse] for x in out]
    return HeadOutput(*out)
