"""Token-level ERA inside TRL's GRPO trainer (ERA paper, arXiv 2510.08549; spec §3).

Switching an existing TRL script to ERA changes three names::

    from era.llm import ERAGRPOConfig, ERAGRPOTrainer  # was: from trl import GRPOConfig, ...
    args = ERAGRPOConfig(output_dir="out", era_low=0.45, era_high=3.0, era_k=2.0)
    trainer = ERAGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data)

Rollouts are TRL's own, sampled from the unmodified policy. ERA acts only inside the update:

* **Loss pass.** TRL's ``_compute_loss`` asks ``_get_per_token_logps_and_entropies`` for the
  log-probs. Ours runs the policy through an ERA LM head (:func:`era_lm_head`) that, in one pass
  over the vocabulary, returns the entropy of the unmodified policy and the log-normaliser of
  ``softmax(s·z)`` for each candidate scale ``s`` in ``(1, k, 1/k)``. The response entropy and the
  sign of the advantage then pick one scale per response, the log-probs are read off for it, and
  the advantages handed on to TRL's loss are rescaled by ``1/s``.
* **Old-log-prob pass**, when TRL runs one (several updates per rollout, or vLLM importance
  sampling): the old log-probs are recomputed under the activation and the decision is frozen for
  that batch, so the PPO ratio compares the same activated distribution before and after.

Memory: like TRL 1.16's fused head, the ERA head never holds the ``[tokens, vocab]`` logits. It
projects hidden states through the LM head one tile of (tokens × vocabulary) at a time, keeps
running log-sum-exp statistics per token, and recomputes each tile in the backward pass. Because
ERA's scale takes only three values, the three log-normalisers cost a few element-wise passes over
each tile, not a second matmul; the scale decision reads the detached entropy computed in the same
pass.
"""

from __future__ import annotations

import functools
import math
import types
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from accelerate.utils import is_peft_model
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import maybe_gather_lm_head_ctx

from era.token import OUTSIDE_TOP_K_LOGPROB, era_scales, response_entropy

TOKEN_TILE = 1024
"""Tokens per LM-head tile."""
VOCAB_TILE = 8192
"""Vocabulary entries per LM-head tile (a float32 tile is then 32 MiB)."""


# ---------------------------------------------------------------------------------------------
# The ERA LM head: log-normalisers at a few scales, the label logit and the entropy, over tiles
# ---------------------------------------------------------------------------------------------


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
        # A label outside the top-k gets a constant log-prob, hence no gradient (spec §3).
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


def _scaled_exp(d: Tensor, e: Tensor, s: float, out: Tensor) -> Tensor:
    """``exp(s·d)`` into ``out``, given ``e = exp(d)``.

    For the default k = 2 this is a square or a square root of ``e``, several times cheaper than an
    exponential; terms they round to zero are below 1e-22 of a sum that is at least 1.
    """
    if s == 2.0:
        return torch.mul(e, e, out=out)
    if s == 0.5:
        return torch.sqrt(e, out=out)
    return torch.mul(d, s, out=out).exp_()


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
    def forward(ctx, hidden, weight, bias, labels, scales, inv_temp, top_k, token_tile, vocab_tile):
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
        # Without top-k, every scale needs its own sum over the vocabulary; with it, only s = 1
        # (for the entropy): the normalisers come from the kept top-k logits at the end.
        sum_scales = scales if top_k is None else (1.0,)
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
                        sums = [torch.zeros_like(m) for _ in sum_scales]
                        sum_ed = torch.zeros_like(m)
                    new_m = torch.maximum(m, tile_max)
                    shift = m - new_m  # <= 0: rescales the sums taken against the old max
                    d = z.sub_(new_m[:, None])
                    e = torch.exp(d, out=tiles.e[: d.shape[0], : d.shape[1]])
                    for c, s in enumerate(sum_scales[1:], start=1):
                        x = _scaled_exp(d, e, s, tiles.x[: d.shape[0], : d.shape[1]])
                        sums[c] = sums[c] * (s * shift).exp() + x.sum(dim=1)
                    rescale = shift.exp()
                    sum_ed = rescale * (sum_ed + shift * sums[0])
                    sums[0] = sums[0] * rescale + e.sum(dim=1)
                    sum_ed += e.mul_(d).sum(dim=1)
                    m = new_m
                entropy[rows] = sums[0].log() - sum_ed / sums[0]
                if top_k is None:
                    for c, s in enumerate(scales):
                        log_norm[rows, c] = s * m + sums[c].log()
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
            *([None] * 6),
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
    return [(grad[:, c], ones * s, log_norm[:, c]) for c, s in enumerate(scales)]


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
) -> HeadOutput:
    """Label log-probs at several logit scales, and the entropy, without materialising the logits.

    ``hidden`` is ``[N, H]``, ``weight`` ``[V, H]`` (an LM head), ``labels`` ``[N]`` token ids.
    Works over tiles of ``token_tile × vocab_tile`` float32 logits in the forward and again in the
    backward pass, so peak memory is a few tiles plus the float32 gradient accumulators of
    ``hidden`` and ``weight``. Gradients flow to ``hidden``, ``weight`` and ``bias``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [N] = {hidden.shape[0]}, got {tuple(labels.shape)}")
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(
            f"scales must be a non-empty tuple of finite positive floats, got {scales}"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    if top_k is not None and not 1 <= top_k <= weight.shape[0]:
        raise ValueError(f"top_k must be None or in [1, {weight.shape[0]}], got {top_k!r}")
    if token_tile < 1 or vocab_tile < 1:
        raise ValueError(
            f"tiles must be >= 1, got token_tile={token_tile}, vocab_tile={vocab_tile}"
        )
    return HeadOutput(
        *_ERAHead.apply(
            hidden,
            weight,
            bias,
            labels,
            tuple(float(s) for s in scales),
            1.0 / temperature,
            top_k,
            token_tile,
            vocab_tile,
        )
    )


@dataclass(frozen=True)
class _HeadRequest:
    """What the patched forward should compute; passed as ``model(..., era_head=request)``."""

    scales: tuple[float, ...]
    temperature: float
    top_k: int | None
    fp32: bool  # TRL's cast_lm_head_to_fp32

    def __call__(self, hidden: Tensor, labels: Tensor, lm_head: torch.nn.Module) -> HeadOutput:
        """Score the positions whose label is not -100; the others read as zeros."""
        mask = labels != -100
        weight, bias = lm_head.weight, lm_head.bias
        if hasattr(weight, "full_tensor"):  # FSDP2 DTensor shards
            weight = weight.full_tensor()
            bias = None if bias is None else bias.full_tensor()
        h = hidden[mask].to(weight.device)
        # TRL's cast_lm_head_to_fp32 runs the head in float32, outside autocast.
        autocast = torch.autocast(h.device.type, enabled=False) if self.fp32 else nullcontext()
        with autocast, maybe_gather_lm_head_ctx(lm_head.weight, lm_head.bias):
            out = era_lm_head(
                h.float() if self.fp32 else h,
                weight,
                bias,
                labels[mask].to(weight.device),
                scales=self.scales,
                temperature=self.temperature,
                top_k=self.top_k,
            )
        full = []
        for x in out:
            # kth_logit is -inf without top-k; 0 marks "not scored" like the other fields.
            grid = x.new_zeros(mask.shape + x.shape[1:])
            grid[mask.to(x.device)] = x
            full.append(grid)
        return HeadOutput(*full)


def _add_era_head(model) -> None:
    """Let ``model(..., labels=..., era_head=request)`` return the ERA head's :class:`HeadOutput`.

    Wraps the forward TRL already patched, so every other call (generation, TRL's fused head, the
    reference model) is unchanged. Going through ``model(...)`` rather than the backbone directly
    keeps DDP, PEFT and gradient checkpointing in the loop.
    """
    inner = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, era_head: _HeadRequest | None = None, **kwargs):
        if era_head is None:
            return inner(*args, **kwargs)
        labels = kwargs.pop("labels")
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        # The hidden state at position t scores the token at t + 1.
        return era_head(hidden[:, :-1], labels[:, 1:], self.get_output_embeddings())

    model.forward = types.MethodType(forward, model)


# ---------------------------------------------------------------------------------------------
# Config and trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class ERAGRPOConfig(GRPOConfig):
    r"""[`~trl.GRPOConfig`] plus the parameters of token-level ERA (spec §3).

    Where a response with a positive advantage has a response entropy (mean of its top
    `era_top_fraction` token entropies) below `era_low`, its logits are scored as `era_k · z` in
    the loss (pushing entropy up); above `era_high`, as `z / era_k` (pushing it down). Everything
    else of GRPOConfig keeps its meaning. ERA replaces the entropy bonus, so `entropy_coef` must
    stay 0.
    """

    era_low: float = field(
        default=0.45,
        metadata={
            "help": "Lower edge of the response-entropy band (nats): below it, positive-advantage "
            "responses are scored with sharpened logits `era_k * z`. `-inf` disables this side."
        },
    )
    era_high: float = field(
        default=3.0,
        metadata={
            "help": "Upper edge of the response-entropy band (nats): above it, positive-advantage "
            "responses are scored with flattened logits `z / era_k`. `inf` disables this side."
        },
    )
    era_k: float = field(
        default=2.0,
        metadata={"help": "Logit scale factor `k > 1` applied outside the band."},
    )
    era_top_fraction: float = field(
        default=0.2,
        metadata={
            "help": "A response's entropy is the mean of its top `max(1, floor(fraction * L))` "
            "token entropies, L its length. In (0, 1]."
        },
    )
    era_advantage_scaling: bool = field(
        default=True,
        metadata={
            "help": "Divide the advantage by the logit scale (A/k where logits were multiplied by "
            "k, k*A where divided), as in the paper."
        },
    )
    era_top_k_logprobs: int | None = field(
        default=None,
        metadata={
            "help": "If set (the authors used 20), log-probs are renormalised over the top-k "
            "activated logits; a token outside them gets a constant -1e4 (no gradient)."
        },
    )

    def __post_init__(self):
        if math.isnan(self.era_low) or math.isnan(self.era_high) or self.era_low >= self.era_high:
            raise ValueError(
                f"need era_low < era_high (infinities allowed), got era_low={self.era_low!r}, "
                f"era_high={self.era_high!r}"
            )
        if not (math.isfinite(self.era_k) and self.era_k > 1):
            raise ValueError(f"era_k must be finite and > 1, got {self.era_k!r}")
        if not 0 < self.era_top_fraction <= 1:
            raise ValueError(f"era_top_fraction must be in (0, 1], got {self.era_top_fraction!r}")
        top_k = self.era_top_k_logprobs
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"era_top_k_logprobs must be None or an integer >= 1, got {top_k!r}")
        if self.entropy_coef != 0 or self.use_adaptive_entropy:
            raise ValueError(
                "ERA replaces the entropy bonus: set entropy_coef=0 and use_adaptive_entropy=False "
                f"(got entropy_coef={self.entropy_coef!r}, "
                f"use_adaptive_entropy={self.use_adaptive_entropy!r})"
            )
        super().__post_init__()


class ERAGRPOTrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] with token-level ERA in the loss; a drop-in replacement.

    Takes an :class:`ERAGRPOConfig`. Logs, next to TRL's metrics: ``era/frac_below``,
    ``era/frac_in_band``, ``era/frac_above`` (responses by response entropy against the band),
    ``era/frac_scaled`` (responses whose logits were rescaled: positive advantage, out of band),
    ``era/response_entropy`` (mean response entropy) and ``era/token_entropy`` (token-mean entropy
    of the unmodified policy, which is also TRL's ``entropy``).
    """

    def __init__(self, model, reward_funcs, args: ERAGRPOConfig | None = None, **kwargs):
        if args is None:  # TRL's default, with ERA's defaults
            name = model if isinstance(model, str) else model.config._name_or_path
            args = ERAGRPOConfig(f"{name.split('/')[-1]}-ERA-GRPO")
        if not isinstance(args, ERAGRPOConfig):
            raise TypeError(
                f"ERAGRPOTrainer needs args=ERAGRPOConfig(...), got {type(args).__name__}"
            )
        super().__init__(model, reward_funcs, args, **kwargs)
        a = self.args
        # Only the scales a response can actually receive get a log-normaliser.
        scales = (1.0,)
        scales += (a.era_k,) if a.era_low > -math.inf else ()
        scales += (1.0 / a.era_k,) if a.era_high < math.inf else ()
        self._era_head = _HeadRequest(
            scales, self.temperature, a.era_top_k_logprobs, a.cast_lm_head_to_fp32
        )
        base = self.model.get_base_model() if is_peft_model(self.model) else self.model
        _check_plain_head(base.config.get_text_config())
        _add_era_head(base)
        self._era_batch = None

    # -- the decision ---------------------------------------------------------------------------

    def _era_decide(self, head: HeadOutput, mask: Tensor, advantages: Tensor, resp_entropy=None):
        """Response entropies, the per-token log-probs under ERA and the advantage scale."""
        a = self.args
        if resp_entropy is None:
            resp_entropy = response_entropy(head.entropy, mask, a.era_top_fraction)
        logit_scale, adv_scale = era_scales(
            resp_entropy, advantages, low=a.era_low, high=a.era_high, k=a.era_k
        )
        per_token = logit_scale[:, None] if logit_scale.dim() == 1 else logit_scale
        per_token = per_token.expand(mask.shape).float()
        candidates = torch.tensor(self._era_head.scales, device=mask.device).log()
        column = (per_token.log()[..., None] - candidates).abs().argmin(dim=-1)
        logps = head.logprobs(self._era_head.scales, column)
        return resp_entropy, logit_scale, adv_scale, logps

    def _era_head_pass(self, model, input_ids, attention_mask, logits_to_keep) -> HeadOutput:
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, :-logits_to_keep] = -100
        with self.accelerator.autocast():
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                era_head=self._era_head,
            )
        return HeadOutput(*(x[:, -logits_to_keep:] for x in out))

    # -- TRL hooks --------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if "old_per_token_logps" not in output:
            return output
        # TRL scored the old policy without ERA (that is what vLLM's importance ratio needs). The
        # PPO ratio needs the old log-probs under the activation: decide the scales now, from the
        # policy that sampled, and keep the decision for every update on this batch.
        mask = _loss_mask(output)
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        mode = "train" if self.model.training else "eval"
        size = (
            self.args.per_device_train_batch_size
            if mode == "train"
            else self.args.per_device_eval_batch_size
        )
        entropies, logps = [], []
        with torch.no_grad():
            for rows in _tiles(input_ids.shape[0], size):
                head = self._era_head_pass(
                    self.model,
                    input_ids[rows],
                    attention_mask[rows],
                    output["completion_ids"].shape[1],
                )
                h, _, _, lp = self._era_decide(head, mask[rows], output["advantages"][rows])
                entropies.append(h)
                logps.append(lp)
        output["era_response_entropy"] = torch.cat(entropies)
        output["old_per_token_logps"] = torch.cat(logps)
        return output

    def _compute_loss(self, model, inputs):
        # TRL reads the advantages after asking for the log-probs, and ERA can only rescale them
        # once the log-prob pass has measured the entropies: hand TRL a copy that the pass below
        # updates (a copy, so that a batch reused for several updates is never rescaled twice).
        self._era_batch = dict(inputs)
        try:
            return super()._compute_loss(model, self._era_batch)
        finally:
            self._era_batch = None

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        batch = self._era_batch
        if batch is None:  # rollout-side passes (old, reference) are plain TRL
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **multimodal,
            )
        if compute_aux_loss or any(v is not None for v in multimodal.values()):
            raise NotImplementedError(
                "ERAGRPOTrainer supports text-only models without a MoE load-balancing loss"
            )
        head = self._era_head_pass(model, input_ids, attention_mask, logits_to_keep)
        mask = _loss_mask(batch)
        resp_entropy, logit_scale, adv_scale, logps = self._era_decide(
            head, mask, batch["advantages"], batch.get("era_response_entropy")
        )
        if self.args.era_advantage_scaling:
            batch["advantages"] = batch["advantages"] * adv_scale
        self._era_log(resp_entropy, logit_scale, head.entropy, mask)
        return logps, head.entropy, None

    def _era_log(self, resp_entropy: Tensor, logit_scale: Tensor, entropy: Tensor, mask: Tensor):
        a = self.args
        scored = mask.sum(dim=1) > 0  # a response with no tokens has no entropy to classify
        scaled = (logit_scale != 1).reshape(len(scored), -1).any(dim=1)
        counts = torch.stack(
            [
                (scored & (resp_entropy < a.era_low)).sum(),
                (scored & (resp_entropy >= a.era_low) & (resp_entropy <= a.era_high)).sum(),
                (scored & (resp_entropy > a.era_high)).sum(),
                (scored & scaled).sum(),
                scored.sum(),
            ]
        ).float()
        sums = torch.stack(
            [(resp_entropy * scored).sum(), (entropy * mask).sum(), mask.sum()]
        ).float()
        counts, sums = self.accelerator.reduce(torch.cat([counts, sums]), reduction="sum").split(5)
        n = counts[-1].clamp(min=1)
        metrics = self._metrics["train" if self.model.training else "eval"]
        names = ("frac_below", "frac_in_band", "frac_above", "frac_scaled")
        for name, value in zip(names, counts[:-1], strict=True):
            metrics[f"era/{name}"].append((value / n).item())
        metrics["era/response_entropy"].append((sums[0] / n).item())
        metrics["era/token_entropy"].append((sums[1] / sums[2].clamp(min=1)).item())


def _check_plain_head(config) -> None:
    """The ERA head computes ``hidden @ W.T + b``; refuse models whose logits are transformed."""
    transforms = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                  "lm_head_multiplier", "logits_scaling")  # fmt: skip
    found = {name: getattr(config, name) for name in transforms if getattr(config, name, None)}
    if any(v != 1.0 or name == "final_logit_softcapping" for name, v in found.items()):
        raise NotImplementedError(
            f"ERAGRPOTrainer supports LM heads without logit soft-capping or scaling; this model "
            f"has {found}"
        )


def _loss_mask(batch) -> Tensor:
    """The tokens TRL's loss counts: completion tokens, minus tool output when there is any."""
    mask = batch["completion_mask"]
    return mask if "tool_mask" not in batch else mask * batch["tool_mask"]
