"""Softmax ERA for discrete outputs (ERA paper, arXiv 2510.08549; docs/activations.md §2).

A classifier's logits ``z`` become ERA logits ``z'`` whose softmax never has less entropy than
``min_entropy``, whatever ``z`` is. With ``p = softmax(z)`` each class gets an entropy share
``y_i = slope·p_i + offset`` (the shares sum to a constant ``C`` and lie in ``[offset, u_max]``,
``u_max = log(τ)/τ``), and ``z'_i`` is the log of the probability ``q_i ≤ 1/e`` whose own entropy
term ``−q_i·log q_i`` equals ``y_i``: ``z'_i = W₋₁(−y_i)``, the lower branch of Lambert W. For any
such ``q`` with sum ``S``, ``H(q/S) = C/S + log S``; the lowest value over all inputs is reached at
a one-hot ``p``.

Two choices of ``C``:

* ``floor="tight"`` (default): ``C`` is solved once, in float64, so that the entropy at a one-hot
  input *equals* ``min_entropy``; then ``min over z of H(softmax(z')) = min_entropy``.
* ``floor="paper"``: the paper's ``C = exp(min_entropy − 1)``, which guarantees the floor but sits
  well above it (≈0.97 nats instead of 0.6 for 10 classes, τ = 4).

And two inverses of ``−q·log q``: ``inverse="exact"`` (Lambert W to float precision, below) or
``inverse="approx"``, the authors' closed form ``u = −1 − log y; z' = −1 − √(2u) − 0.75u``, kept to
reproduce their numbers; the floor then holds only approximately, so it pairs only with
``floor="paper"``.
"""

from __future__ import annotations

import functools
import math
import numbers
from decimal import Decimal, localcontext

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Lower branch of Lambert W
# ---------------------------------------------------------------------------------------------


def _split_inv_e(dtype: torch.dtype) -> tuple[float, float]:
    """1/e as ``hi + lo`` with ``hi`` representable in ``dtype``: ``x + hi`` is then exact near
    ``x = −1/e`` (Sterbenz), so ``x + 1/e`` keeps its digits where W₋₁ is most sensitive."""
    with localcontext() as ctx:
        ctx.prec = 50
        inv_e = 1 / Decimal(1).exp()
        hi = torch.tensor(float(inv_e), dtype=dtype).item()
        return hi, float(inv_e - Decimal(hi))


_INV_E = {dtype: _split_inv_e(dtype) for dtype in (torch.float32, torch.float64)}
_HALLEY_STEPS = {torch.float32: 1, torch.float64: 2}  # from a 0.16% guess; each step cubes it
_SERIES_UP_TO = 3.0  # below this s the series guess is the closer one (both within 0.16%)


def _lambertw_m1_core(x: Tensor) -> Tensor:
    """W₋₁(x) for ``x ∈ [−1/e, 0)``, float32 or float64, without autograd or domain checks.

    Writing ``W = −1 − v`` and ``s = −log(−e·x) ≥ 0`` turns ``W·e^W = x`` into
    ``v − log(1 + v) = s``, which is well conditioned in ``v`` at both ends: near the branch
    point (``s → 0``, where ``s`` is computed from the exact ``x + 1/e``) and near ``x → 0``
    (no ``e^W`` to underflow). Initial guess within 0.16% everywhere: for small ``s`` the inverse
    series in ``σ = √(2s)`` to fifth order, for large ``s`` the asymptotic
    ``v ≈ s + L + q − q²/2`` (``L = log(1 + s)``, ``q = L/s``); then Halley steps (one for
    float32, two for float64). Everything runs in place in five buffers, each reused (``out=``)
    once dead: on CPU a fresh large tensor costs about as much as an operation on it. Branches
    are blended with ``lerp_`` by a 0/1 float mask, several times cheaper there than ``where``.
    """
    hi, lo = _INV_E[x.dtype]
    tiny = torch.finfo(x.dtype).tiny
    # −s from the exact x + 1/e; the upper clamp keeps it finite where it is not used (x ≥ −1/4)
    near = torch.add(x, hi).add_(lo).clamp_(0, 0.2).mul_(-math.e).log1p_()
    s = torch.neg(x).log_().add_(1)  # −s from log(−x): near the branch point it would cancel
    mask = torch.lt(x, -0.25, out=torch.empty_like(x))
    s.lerp_(near, mask).neg_().clamp_(min=tiny)  # the clamp keeps q finite at the branch point

    sigma = torch.mul(s, 2, out=near).sqrt_()
    series = torch.mul(sigma, 1 / 4320, out=mask).sub_(1 / 270).mul_(sigma).add_(1 / 36)
    series.mul_(sigma).add_(1 / 3).mul_(sigma).add_(1).mul_(sigma)
    v = torch.log1p(s)
    q = torch.div(v, s)
    v.add_(s).add_(q.addcmul_(q, q, value=-0.5))
    v.lerp_(series, torch.lt(s, _SERIES_UP_TO, out=sigma))

    for _ in range(_HALLEY_STEPS[x.dtype]):
        # f = v − log(1 + v) − s, f' = v/(1 + v), f'' = 1/(1 + v)²; Halley's step is
        # f·v·(1 + v) / (v² − f/2). The denominator stays positive near the root; the clamp
        # only turns 0/0 at the branch point (v = f = 0) into a zero step.
        f = torch.sub(v, s, out=q).sub_(torch.log1p(v, out=series))
        step = torch.mul(f, -0.5, out=sigma).addcmul_(v, v).clamp_(min=tiny)
        f.mul_(v)
        v.sub_(f.addcmul_(f, v).div_(step))
    return v.neg_().sub_(1)


def _lambertw_m1_solve(x: Tensor, tolerance: float) -> Tensor:
    """W₋₁(x) with the domain policy of :func:`lambertw_m1`; ``x`` down to
    ``−(1 + tolerance)/e`` counts as the branch point ``−1/e``."""
    hi, lo = _INV_E[x.dtype]
    in_domain = ((x + hi).add_(lo) >= -tolerance * hi) & (x <= 0)
    w = _lambertw_m1_core(x)
    w.masked_fill_(x == 0, -math.inf)  # the limit
    return w.masked_fill_(~(in_domain | torch.isnan(x)), math.nan)


class _LambertWm1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, tolerance: float) -> Tensor:
        w = _lambertw_m1_solve(x, tolerance)
        ctx.save_for_backward(x, w)
        return w

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, w = ctx.saved_tensors
        return grad * _lambertw_m1_slope(x, w), None


def _lambertw_m1_slope(x: Tensor, w: Tensor) -> Tensor:
    """dW/dx = W / (x (1 + W)); −(1 + W) is capped below at eps because the true slope is −∞ at
    the branch point x = −1/e and we would rather return a large finite number."""
    return (w + 1).clamp_(max=-torch.finfo(w.dtype).eps).mul_(x).reciprocal_().mul_(w)


def lambertw_m1(x: Tensor) -> Tensor:
    """Lower branch of the Lambert W function, ``W₋₁(x)`` for ``x ∈ [−1/e, 0)``.

    ``W₋₁(x)`` is the solution ``w ≤ −1`` of ``w·e^w = x``. Accurate to a few ulps in float64 and
    float32 across the whole branch, including next to the branch point and for tiny ``|x|``;
    float16/bfloat16 inputs are computed in float32 and rounded back. The gradient is the exact
    ``W / (x·(1 + W))`` (capped to a large finite value at ``x = −1/e`` itself).

    Out of the domain, like ``torch.log``: ``x = 0`` gives ``−inf``, ``x < −1/e`` or ``x > 0``
    gives NaN (``x`` within about an ulp of its dtype below ``−1/e`` counts as ``−1/e``, so the
    rounded ``−1/e`` gives ``−1``). No error is raised: a check would force a device
    synchronisation on every call.
    """
    if not x.is_floating_point():
        raise TypeError(f"lambertw_m1 needs a floating-point tensor, got dtype {x.dtype}")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    tolerance = torch.finfo(x.dtype).eps  # x's own rounding of −1/e may fall outside
    return _LambertWm1.apply(x.to(compute), tolerance).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# The activation's constants, solved once per (num_classes, min_entropy, tau, floor, inverse)
# ---------------------------------------------------------------------------------------------

FLOORS = ("tight", "paper")
INVERSES = ("exact", "approx")


def feasible_min_entropy(
    num_classes: int, tau: float = 4.0, floor: str = "tight"
) -> tuple[float, float]:
    """The interval ``[low, high)`` of ``min_entropy`` values this activation can guarantee.

    The entropy budget ``C`` must satisfy ``u_max ≤ C < n·u_max`` (``u_max = log(τ)/τ``): below,
    some shares would be negative; at the top, every class gets ``u_max`` and the logits' order is
    lost. ``floor="paper"`` maps ``C = exp(H0 − 1)``, so ``H0 ∈ [1 + log u_max, 1 + log(n·u_max))``;
    ``floor="tight"`` maps ``C`` to the one-hot entropy, which runs over ``[0, log n)`` whatever τ.
    """
    if floor == "tight":
        return 0.0, math.log(num_classes)
    u_max = math.log(tau) / tau
    return 1 + math.log(u_max), 1 + math.log(num_classes * u_max)


def _one_hot_entropy(num_classes: int, t: float) -> float:
    """Entropy of the normalised vector ``(1, t, …, t)`` (one class at 1, the others at ``t``)."""
    mass = 1 + (num_classes - 1) * t
    spread = 0.0 if t == 0 else (num_classes - 1) * t * math.log(t)
    return math.log(mass) - spread / mass


def _tight_offset(num_classes: int, min_entropy: float, tau: float) -> float:
    """The smallest share ``b`` such that a one-hot input's ERA output has entropy min_entropy.

    At a one-hot input the top class gets ``q = 1/τ`` and the others ``q = t/τ``; the entropy of
    the normalised output depends on ``t`` alone and grows with it, so bisect on ``log t`` (the
    root can be tiny) in float64, then ``b = h(t/τ)`` with ``h(q) = −q·log q``.
    """
    low, high = math.log(1e-300), 0.0
    if _one_hot_entropy(num_classes, math.exp(low)) >= min_entropy:
        return 0.0
    for _ in range(100):
        mid = (low + high) / 2
        if _one_hot_entropy(num_classes, math.exp(mid)) < min_entropy:
            low = mid
        else:
            high = mid
    q = math.exp(high) / tau
    return -q * math.log(q)


def _check_args(num_classes, min_entropy, tau, floor, inverse) -> None:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not (math.isfinite(tau) and tau > math.e):
        raise ValueError(f"tau must be a finite number > e ≈ 2.71828, got {tau!r}")
    if floor not in FLOORS:
        raise ValueError(f"floor must be one of {FLOORS}, got {floor!r}")
    if inverse not in INVERSES:
        raise ValueError(f"inverse must be one of {INVERSES}, got {inverse!r}")
    if floor == "tight" and inverse != "exact":
        raise ValueError(
            f'floor="tight" needs inverse="exact" (got inverse={inverse!r}): the tight floor is '
            'solved for the exact inverse; use floor="paper" to reproduce the approximation'
        )
    low, high = feasible_min_entropy(num_classes, tau, floor)
    if not low <= min_entropy < high:
        raise ValueError(
            f"min_entropy must lie in [{low:.6g}, {high:.6g}) for num_classes={num_classes}, "
            f"tau={tau}, floor={floor!r}; got {min_entropy!r}"
        )


def _shares(num_classes, min_entropy, tau, floor, inverse) -> tuple[float, float, float]:
    """``(C, slope, offset)`` of the share map ``y = slope·p + offset``, in float64."""
    _check_args(num_classes, min_entropy, tau, floor, inverse)
    return _solve_shares(int(num_classes), float(min_entropy), float(tau), floor, inverse)


@functools.lru_cache(maxsize=64)
def _solve_shares(n: int, min_entropy: float, tau: float, floor: str, inverse: str) -> tuple:
    u_max = math.log(tau) / tau
    if floor == "tight":
        offset = _tight_offset(n, min_entropy, tau)
        budget = u_max + (n - 1) * offset
    else:
        budget = math.exp(min_entropy - 1)
        offset = max((budget - u_max) / (n - 1), 0.0)
    slope = (n * u_max - budget) / (n - 1)
    return budget, slope, offset


class _ExactShares(torch.autograd.Function):
    """``p ↦ W₋₁(−y)`` with ``y = slope·p + offset`` as one autograd node: no autograd
    intermediates in the forward, and a backward that needs only ``x = −y`` and ``W``."""

    @staticmethod
    def forward(ctx, p: Tensor, slope: float, offset: float) -> Tensor:
        tiny = torch.finfo(p.dtype).tiny
        # The clamp only bites when offset is 0 (or underflows) and p_i underflows: it keeps W
        # finite; there, as for a clamp, the gradient is zero.
        x = p.mul(-slope).sub_(offset).clamp_(max=-tiny)  # −y ∈ [−u_max, 0): inside the domain
        w = _lambertw_m1_core(x)
        ctx.slope, ctx.clamped = slope, offset < tiny
        ctx.save_for_backward(x, w)
        return w

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        x, w = ctx.saved_tensors
        slope = _lambertw_m1_slope(x, w).mul_(grad).mul_(-ctx.slope)
        if ctx.clamped:
            slope.masked_fill_(x == -torch.finfo(x.dtype).tiny, 0)
        return slope, None, None


def _era_from_probs(p: Tensor, slope: float, offset: float, inverse: str) -> Tensor:
    """ERA logits from probabilities ``p`` (float32 or float64)."""
    if inverse == "exact":
        return _ExactShares.apply(p, slope, offset)
    y = (slope * p + offset).clamp(min=torch.finfo(p.dtype).tiny)
    u = -1 - torch.log(y)
    return -1 - torch.sqrt(2 * u) - 0.75 * u


def _softmax_era(logits: Tensor, shares: tuple, inverse: str, dim: int) -> Tensor:
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    _, slope, offset = shares
    p = torch.softmax(logits.to(compute), dim=dim)
    # NaN in p marks a row with a NaN or +inf logit, or with every logit -inf: no distribution.
    if not torch.compiler.is_compiling() and bool(torch.isnan(p).any()):
        rows = int(torch.isnan(p).any(dim).sum())
        raise ValueError(
            f"logits has {rows} row(s) without a distribution: a NaN or +inf entry, or every "
            "entry -inf; ERA needs finite logits (-inf is allowed: a class with probability 0)"
        )
    return _era_from_probs(p, slope, offset, inverse).to(logits.dtype)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def softmax_era(
    logits: Tensor,
    min_entropy: float,
    *,
    tau: float = 4.0,
    floor: str = "tight",
    inverse: str = "exact",
    dim: int = -1,
) -> Tensor:
    """ERA logits ``z'`` with ``H(softmax(z')) ≥ min_entropy`` for every input ``logits``.

    Same shape and dtype as ``logits``; the work is done in float32 (float64 for float64 input).
    ``tau > e`` caps each class's probability before normalisation at ``1/tau``; ``min_entropy``
    must lie in :func:`feasible_min_entropy`. The constants are solved once per argument set and
    cached. With half/bfloat16 logits the returned logits are rounded to that dtype, which can move
    the entropy by about 1e-3 nats; pass float32 logits where the floor must hold to 1e-4.

    A logit of -inf is a class with probability 0 before ERA (it gets the smallest share after).
    A row with a NaN or +inf logit, or with every logit -inf, raises a ``ValueError`` (one
    reduction per call, a host synchronisation on a GPU; skipped inside ``torch.compile``, where
    such a row comes out NaN). An empty batch gives an empty result.
    """
    n = logits.shape[dim]
    return _softmax_era(
        logits, _shares(n, float(min_entropy), float(tau), floor, inverse), inverse, dim
    )


class SoftmaxERA(nn.Module):
    """ERA as a classifier's last activation: logits ``[..., num_classes]`` → ERA logits.

    Train with plain cross-entropy on the output (no entropy term); the model's probabilities are
    ``softmax`` of the output. See :func:`softmax_era`, also for non-finite logits.

    Attributes (plain floats, not buffers: they follow from the arguments, and ``model.half()``
    would otherwise round them and move the floor):
        budget: ``C``, the sum of the per-class entropy shares.
        max_probability: the highest probability any class can get (reached at a one-hot input).
    """

    def __init__(
        self,
        num_classes: int,
        min_entropy: float,
        *,
        tau: float = 4.0,
        floor: str = "tight",
        inverse: str = "exact",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.min_entropy = float(min_entropy)
        self.tau = float(tau)
        self.floor = floor
        self.inverse = inverse
        self._shares = _shares(num_classes, self.min_entropy, self.tau, floor, inverse)
        self.budget = self._shares[0]
        one_hot = torch.zeros(num_classes, dtype=torch.float64)
        one_hot[0] = 1
        top = torch.softmax(_era_from_probs(one_hot, *self._shares[1:], inverse), dim=0)[0]
        self.max_probability = top.item()

    def forward(self, logits: Tensor) -> Tensor:
        if logits.dim() == 0 or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"expected logits [..., {self.num_classes}], got shape {tuple(logits.shape)}"
            )
        return _softmax_era(logits, self._shares, self.inverse, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, min_entropy={self.min_entropy}, tau={self.tau}, "
            f"floor={self.floor!r}, inverse={self.inverse!r}, C={self.budget:.6g}, "
            f"max_probability={self.max_probability:.4f}"
        )
