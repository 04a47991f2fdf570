"""Softmax ERA in JAX: the exact lower branch of Lambert W and ERA logits (docs/activations.md §2).

The same maths as :mod:`era.softmax`, written with ``jax.numpy`` so that it runs under ``jit``,
``vmap`` and ``grad``. The activation's constants (the entropy budget and the share map) are
plain Python floats solved once per argument set by :mod:`era.softmax` itself, so both
implementations hold the very same floor.

Where the torch version raises on a row without a distribution (a NaN or +inf logit, or every
logit -inf), this one raises too when called on concrete arrays; inside ``jit`` a data-dependent
check is impossible, and such a row comes out NaN.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal, localcontext

import flax.linen as nn
import jax
import jax.numpy as jnp

import era.softmax
from era.softmax import FLOORS, INVERSES, _shares, feasible_min_entropy

__all__ = ["FLOORS", "INVERSES", "SoftmaxERA", "feasible_min_entropy", "lambertw_m1", "softmax_era"]

# ---------------------------------------------------------------------------------------------
# Lower branch of Lambert W
# ---------------------------------------------------------------------------------------------


def _split_inv_e(dtype) -> tuple[float, float]:
    """1/e as ``hi + lo`` with ``hi`` representable in ``dtype``: ``x + hi`` is then exact near
    ``x = −1/e`` (Sterbenz), so ``x + 1/e`` keeps its digits where W₋₁ is most sensitive."""
    with localcontext() as ctx:
        ctx.prec = 50
        inv_e = 1 / Decimal(1).exp()
        hi = float(jnp.finfo(dtype).dtype.type(float(inv_e)))
        return hi, float(inv_e - Decimal(hi))


_INV_E = {name: _split_inv_e(name) for name in ("float32", "float64")}
_HALLEY_STEPS = {"float32": 1, "float64": 2}  # from a 0.16% guess; each step cubes the error
_SERIES_UP_TO = 3.0  # below this s the series guess is the closer one (both within 0.16%)


def _plus_inv_e(x: jax.Array) -> jax.Array:
    """``x + 1/e`` as ``(x + hi) + lo``; the barrier stops XLA from folding the two constants
    into one (``x + (hi + lo)``), which would lose the digits the split is there to keep."""
    hi, lo = _INV_E[x.dtype.name]
    return jax.lax.optimization_barrier(x + hi) + lo


def _compute_dtype(dtype) -> jnp.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def _lambertw_m1_core(x: jax.Array) -> jax.Array:
    """W₋₁(x) for ``x ∈ [−1/e, 0)`` (float32 or float64), without domain policy.

    The algorithm of :mod:`era.softmax`: with ``W = −1 − v`` and ``s = −log(−e·x)``, solve
    ``v − log(1 + v) = s``, well conditioned at both ends; start from the inverse series in
    ``σ = √(2s)`` (small s) or the asymptotic ``v ≈ s + L + q − q²/2`` (large s), within 0.16%,
    then a fixed number of Halley steps (one for float32, two for float64).
    """
    name = x.dtype.name
    tiny = jnp.finfo(x.dtype).tiny
    near = jnp.log1p(-math.e * jnp.clip(_plus_inv_e(x), 0, 0.2))  # −s from the exact x + 1/e
    far = 1 + jnp.log(-x)  # −s from log(−x): near the branch point it would cancel
    s = jnp.maximum(-jnp.where(x < -0.25, near, far), tiny)  # tiny keeps q finite at s = 0

    sigma = jnp.sqrt(2 * s)
    series = ((((sigma / 4320 - 1 / 270) * sigma + 1 / 36) * sigma + 1 / 3) * sigma + 1) * sigma
    log_1s = jnp.log1p(s)
    q = log_1s / s
    asymptotic = s + log_1s + q - 0.5 * q * q
    v = jnp.where(s < _SERIES_UP_TO, series, asymptotic)

    for _ in range(_HALLEY_STEPS[name]):
        # f = v − log(1 + v) − s; Halley's step f·v·(1 + v) / (v² − f/2). The clamp only turns
        # 0/0 at the branch point (v = f = 0) into a zero step.
        f = v - s - jnp.log1p(v)
        denominator = jnp.maximum(v * v - 0.5 * f, tiny)
        v = v - f * v * (1 + v) / denominator
    return -1 - v


def _lambertw_m1_slope(x: jax.Array, w: jax.Array) -> jax.Array:
    """dW/dx = W / (x (1 + W)), with −(1 + W) capped below at eps: the true slope is −∞ at the
    branch point and a large finite number serves better."""
    return w / (x * jnp.minimum(w + 1, -jnp.finfo(w.dtype).eps))


@jax.custom_jvp
def _lambertw_m1(x: jax.Array) -> jax.Array:
    tolerance = jnp.finfo(x.dtype).eps  # the rounded −1/e may fall just below −1/e
    in_domain = (_plus_inv_e(x) >= -tolerance * _INV_E[x.dtype.name][0]) & (x <= 0)
    w = jnp.where(x == 0, -jnp.inf, _lambertw_m1_core(x))
    return jnp.where(in_domain | jnp.isnan(x), w, jnp.nan)


@_lambertw_m1.defjvp
def _lambertw_m1_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    w = _lambertw_m1(x)
    return w, dx * _lambertw_m1_slope(x, w)


def lambertw_m1(x: jax.Array) -> jax.Array:
    """Lower branch of the Lambert W function, ``W₋₁(x)`` for ``x ∈ [−1/e, 0)``.

    ``W₋₁(x)`` is the solution ``w ≤ −1`` of ``w·e^w = x``; a few ulps accurate in float32 and
    float64 over the whole branch. float16/bfloat16 inputs are computed in float32 and rounded
    back. Its derivative is the exact ``W / (x·(1 + W))`` (a custom JVP, so ``grad``, ``jvp`` and
    ``vmap`` all use it), capped to a large finite value at ``x = −1/e``.

    Out of the domain, like ``jnp.log``: ``x = 0`` gives ``−inf``; ``x < −1/e`` or ``x > 0`` gives
    NaN (``x`` within an ulp of its dtype below ``−1/e`` counts as ``−1/e``).
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"lambertw_m1 needs a floating-point array, got dtype {x.dtype}")
    return _lambertw_m1_cast(x)


@jax.jit
def _lambertw_m1_cast(x: jax.Array) -> jax.Array:
    return _lambertw_m1(x.astype(_compute_dtype(x.dtype))).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# ERA logits
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _exact_era(p: jax.Array, slope: float, offset: float) -> jax.Array:
    """``W₋₁(−y)`` with ``y = slope·p + offset``. The clamp only bites when ``offset`` is 0 (or
    underflows) and ``p_i`` underflows: it keeps W finite, and its derivative is zero there."""
    return _lambertw_m1_core(jnp.minimum(-slope * p - offset, -jnp.finfo(p.dtype).tiny))


@_exact_era.defjvp
def _exact_era_jvp(slope, offset, primals, tangents):
    (p,), (dp,) = primals, tangents
    tiny = jnp.finfo(p.dtype).tiny
    raw = -slope * p - offset
    x = jnp.minimum(raw, -tiny)
    w = _lambertw_m1_core(x)
    return w, dp * jnp.where(raw < -tiny, -slope * _lambertw_m1_slope(x, w), 0)


def _era_from_probs(p: jax.Array, slope: float, offset: float, inverse: str) -> jax.Array:
    """ERA logits from probabilities ``p`` (float32 or float64)."""
    if inverse == "exact":
        return _exact_era(p, slope, offset)
    y = jnp.maximum(slope * p + offset, jnp.finfo(p.dtype).tiny)
    u = -1 - jnp.log(y)
    return -1 - jnp.sqrt(2 * u) - 0.75 * u


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _era_logits(logits, slope: float, offset: float, inverse: str, axis: int) -> jax.Array:
    """Compiled once per shape, dtype and constants, so that eager calls run as one program."""
    p = jax.nn.softmax(logits.astype(_compute_dtype(logits.dtype)), axis=axis)
    return _era_from_probs(p, slope, offset, inverse).astype(logits.dtype)


def _softmax_era(logits, shares: tuple, inverse: str, axis: int) -> jax.Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be a floating-point array, got dtype {logits.dtype}")
    _, slope, offset = shares
    out = _era_logits(logits, slope, offset, inverse, axis % logits.ndim)
    # NaN marks a row with a NaN or +inf logit, or with every logit -inf: no distribution (ERA
    # logits of a distribution are finite). Only checkable on concrete arrays, not under jit.
    if not isinstance(out, jax.core.Tracer) and bool(jnp.isnan(out).any()):
        rows = int(jnp.isnan(out).any(axis).sum())
        raise ValueError(
            f"logits has {rows} row(s) without a distribution: a NaN or +inf entry, or every "
            "entry -inf; ERA needs finite logits (-inf is allowed: a class with probability 0)"
        )
    return out


def softmax_era(
    logits: jax.Array,
    min_entropy: float,
    *,
    tau: float = 4.0,
    floor: str = "tight",
    inverse: str = "exact",
    axis: int = -1,
) -> jax.Array:
    """ERA logits ``z'`` with ``H(softmax(z')) ≥ min_entropy`` for every input ``logits``.

    :func:`era.softmax.softmax_era` in JAX (``axis`` in place of torch's ``dim``): same shape
    and dtype as ``logits``, computed in float32 (float64 for float64 input); ``min_entropy``,
    ``tau``, ``floor`` and ``inverse`` are Python numbers and strings, checked when called
    (under ``jit`` pass them as static arguments or close over them).
    """
    logits = jnp.asarray(logits)
    if logits.ndim == 0:
        raise ValueError("logits must have a class axis, got a scalar")
    n = logits.shape[axis]
    return _softmax_era(
        logits, _shares(n, float(min_entropy), float(tau), floor, inverse), inverse, axis
    )


class SoftmaxERA(nn.Module):
    """ERA as a classifier's last activation (a ``flax.linen`` module, no parameters):
    logits ``[..., num_classes]`` → ERA logits.

    Train with plain cross-entropy on the output; see :class:`era.softmax.SoftmaxERA`. Bad
    arguments raise at construction. ``budget`` and ``max_probability`` are the entropy budget
    ``C`` and the highest probability any class can get.
    """

    num_classes: int
    min_entropy: float
    tau: float = 4.0
    floor: str = "tight"
    inverse: str = "exact"

    def __post_init__(self) -> None:
        _shares(
            self.num_classes, float(self.min_entropy), float(self.tau), self.floor, self.inverse
        )
        super().__post_init__()

    @property
    def _constants(self) -> tuple:
        return _shares(
            self.num_classes, float(self.min_entropy), float(self.tau), self.floor, self.inverse
        )

    @property
    def budget(self) -> float:
        return self._constants[0]

    @property
    def max_probability(self) -> float:
        """Reached at a one-hot input; computed in float64 by the torch module."""
        return era.softmax.SoftmaxERA(
            self.num_classes, self.min_entropy, tau=self.tau, floor=self.floor, inverse=self.inverse
        ).max_probability

    def __call__(self, logits: jax.Array) -> jax.Array:
        logits = jnp.asarray(logits)
        if logits.ndim == 0 or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"expected logits [..., {self.num_classes}], got shape {tuple(logits.shape)}"
            )
        return _softmax_era(logits, self._constants, self.inverse, axis=-1)
