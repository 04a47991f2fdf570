"""Per-dimension action distributions in JAX: Normal, truncated normal, tanh-squashed normal.

The JAX counterparts of :mod:`era.distributions` that ``era.jax.gaussian`` builds its policies
from (docs/activations.md §1, "Bounded actions"). Each is a small pytree (it passes through
``jit`` and ``vmap``) with ``log_prob``, ``sample(key)``, ``mode`` and an entropy; sampling takes
an explicit PRNG key, as everything in JAX does, and is reparameterised (``grad`` flows through
the sample to ``loc`` and ``scale``).

:class:`TruncatedNormal` covers locations *inside* ``[low, high]``, which is what a policy with
the location ``tanh(mean)`` scaled into the box produces; the torch class also handles locations
far outside the interval, a path this port does not have.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf, ndtr, ndtri

from era.distributions import HALF_LOG_2PIE

__all__ = ["HALF_LOG_2PIE", "Normal", "TanhNormal", "TruncatedNormal", "inside_entropy"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_LOG_2 = math.log(2.0)


def _pytree(cls, data: tuple[str, ...], meta: tuple[str, ...]):
    """A frozen dataclass registered as a pytree: arrays in ``data``, Python constants in
    ``meta`` (static under ``jit``)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))


def inside_entropy(to_low, to_high, log_scale, *, slope: bool = False, loc_grad: bool = False):
    """Entropy of a truncated normal whose location lies inside its interval, and optionally its
    derivatives in ``log_scale`` and in the location: :func:`era.distributions.inside_entropy`.

    ``to_low = low - loc <= 0 <= to_high = high - loc``; the arguments broadcast. Returns
    ``(entropy, dH/dlog_scale or None, dH/dloc or None)``; every term has one sign inside the
    interval, so nothing cancels.
    """
    inv = jnp.exp(-log_scale) * _INV_SQRT_2
    x, y = to_low * inv, to_high * inv  # alpha/sqrt2, beta/sqrt2
    x2, y2 = x * x, y * y
    ex, ey = jnp.exp(-x2), jnp.exp(-y2)
    xa, yb = x * ex, y * ey  # sqrt(pi) * alpha * pdf(alpha), ...
    mass2 = erf(y) - erf(x)  # 2Z
    r = (xa - yb) / mass2  # N * sqrt(pi) / 2
    entropy = jnp.log(mass2) + _INV_SQRT_PI * r + log_scale + (HALF_LOG_2PIE - _LOG_2)
    d_log_scale = d_loc = None
    if slope:
        s = (x2 * xa - y2 * yb) / mass2  # M * sqrt(pi) / 4
        d_log_scale = 1 + (r + 2 * s) * _INV_SQRT_PI - (2 / math.pi) * r * r
    if loc_grad:
        n = r * (2 * _INV_SQRT_PI)
        d_loc = (ex * (n - 1 - 2 * x2) + ey * (1 + 2 * y2 - n)) * (inv * -_INV_SQRT_PI) / mass2
    return entropy, d_log_scale, d_loc


def _compiled(method):
    """A method compiled as one program (the instance is a pytree argument): called eagerly,
    it then runs as one program instead of dozens of separately dispatched operations."""
    return jax.jit(method)


def _compiled_sampler(method):
    """As :func:`_compiled`, for ``method(self, key, sample_shape)`` with a static shape."""
    compiled = jax.jit(method, static_argnums=2)
    return lambda self, key, sample_shape=(): compiled(self, key, tuple(sample_shape))


def _uniform(key, shape, dtype) -> jax.Array:
    """Uniform in ``[eps, 1 - eps]``: the inverse CDF stays finite at both ends."""
    eps = jnp.finfo(dtype).eps
    return jnp.clip(jax.random.uniform(key, shape, dtype), eps, 1 - eps)


class Normal:
    """``Normal(loc, scale)``, per dimension."""

    loc: jax.Array
    scale: jax.Array

    @property
    def mode(self) -> jax.Array:
        return self.loc

    @_compiled
    def entropy(self) -> jax.Array:
        return HALF_LOG_2PIE + jnp.log(self.scale)

    @_compiled
    def log_prob(self, value) -> jax.Array:
        return _normal_log_prob(value, self.loc, self.scale)

    @_compiled_sampler
    def sample(self, key, sample_shape=()) -> jax.Array:
        shape = (*sample_shape, *jnp.shape(self.loc))
        return self.loc + self.scale * jax.random.normal(key, shape, jnp.result_type(self.loc))


Normal = _pytree(Normal, ("loc", "scale"), ())


class TruncatedNormal:
    """``Normal(loc, scale)`` restricted to ``[low, high]`` and renormalised, ``loc`` inside.

    ``entropy`` is analytic; ``sample`` inverts the CDF on the side where the normal CDF is below
    1/2 (more significant digits); ``log_prob`` is ``-inf`` outside the interval. ``low`` and
    ``high`` are Python floats.
    """

    loc: jax.Array
    scale: jax.Array
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"need finite low < high, got low={self.low!r}, high={self.high!r}")

    @property
    def mode(self) -> jax.Array:
        return jnp.clip(self.loc, self.low, self.high)

    def _standard_bounds(self) -> tuple[jax.Array, jax.Array]:
        return (self.low - self.loc) / self.scale, (self.high - self.loc) / self.scale

    @_compiled
    def entropy(self) -> jax.Array:
        alpha, beta = self._standard_bounds()
        return jnp.log(self.scale) + inside_entropy(alpha, beta, jnp.zeros_like(alpha))[0]

    @_compiled
    def log_prob(self, value) -> jax.Array:
        alpha, beta = self._standard_bounds()
        z = (value - self.loc) / self.scale
        log_mass = jnp.log(0.5 * (erf(beta * _INV_SQRT_2) - erf(alpha * _INV_SQRT_2)))
        lp = -0.5 * z * z - log_mass - _LOG_SQRT_2PI - jnp.log(self.scale)
        return jnp.where((value >= self.low) & (value <= self.high), lp, -jnp.inf)

    @_compiled
    def icdf(self, u) -> jax.Array:
        alpha, beta = self._standard_bounds()
        mass = 0.5 * (erf(beta * _INV_SQRT_2) - erf(alpha * _INV_SQRT_2))
        lower = ndtr(alpha) + u * mass
        upper = ndtr(-beta) + (1 - u) * mass
        use_lower = lower <= 0.5
        z = ndtri(jnp.where(use_lower, lower, upper))
        return jnp.clip(self.loc + self.scale * jnp.where(use_lower, z, -z), self.low, self.high)

    @_compiled_sampler
    def sample(self, key, sample_shape=()) -> jax.Array:
        shape = (*sample_shape, *jnp.shape(self.loc))
        return self.icdf(_uniform(key, shape, jnp.result_type(self.loc)))


TruncatedNormal = _pytree(TruncatedNormal, ("loc", "scale"), ("low", "high"))


class TanhNormal:
    """``a = mid + half·tanh(x)``, ``x ~ Normal(loc, scale)``: SAC's squashed Gaussian on
    ``(low, high)``.

    ``sample_and_log_prob`` scores a sample with its exact pre-squash ``x``; ``log_prob`` of any
    other action inverts the squash with the action clamped to ``eps`` inside the bounds. There
    is no closed-form entropy: ``entropy_estimate(key)`` is a Monte Carlo estimate in which only
    the squashing term is sampled.
    """

    loc: jax.Array
    scale: jax.Array
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"need finite low < high, got low={self.low!r}, high={self.high!r}")

    @property
    def _mid(self) -> float:
        return 0.5 * (self.high + self.low)

    @property
    def _half(self) -> float:
        return 0.5 * (self.high - self.low)

    @property
    def mode(self) -> jax.Array:
        return self._mid + self._half * jnp.tanh(self.loc)

    def _log_prob_of_x(self, x) -> jax.Array:
        log_jacobian = _log_tanh_jacobian(x) + math.log(self._half)
        return _normal_log_prob(x, self.loc, self.scale) - log_jacobian

    @_compiled
    def log_prob(self, value) -> jax.Array:
        eps = jnp.finfo(jnp.result_type(value)).eps
        x = jnp.arctanh(jnp.clip((value - self._mid) / self._half, -1 + eps, 1 - eps))
        return self._log_prob_of_x(x)

    @_compiled_sampler
    def sample_and_log_prob(self, key, sample_shape=()) -> tuple[jax.Array, jax.Array]:
        shape = (*sample_shape, *jnp.shape(self.loc))
        x = self.loc + self.scale * jax.random.normal(key, shape, jnp.result_type(self.loc))
        return self._mid + self._half * jnp.tanh(x), self._log_prob_of_x(x)

    def sample(self, key, sample_shape=()) -> jax.Array:
        return self.sample_and_log_prob(key, sample_shape)[0]

    def entropy(self):
        raise NotImplementedError(
            "a tanh-squashed Gaussian has no closed-form entropy; use entropy_estimate(key)"
        )

    @functools.partial(jax.jit, static_argnums=2)
    def entropy_estimate(self, key, num_samples: int = 16) -> jax.Array:
        """H = H(Normal) + log(half) + E[log(1 - tanh(x)^2)]; differentiable."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        shape = (num_samples, *jnp.shape(self.loc))
        x = self.loc + self.scale * jax.random.normal(key, shape, jnp.result_type(self.loc))
        gaussian = HALF_LOG_2PIE + jnp.log(self.scale)
        return gaussian + math.log(self._half) + _log_tanh_jacobian(x).mean(0)


TanhNormal = _pytree(TanhNormal, ("loc", "scale"), ("low", "high"))


def _normal_log_prob(x, loc, scale):
    z = (x - loc) / scale
    return -0.5 * z * z - jnp.log(scale) - _LOG_SQRT_2PI


def _log_tanh_jacobian(x):
    """log(1 - tanh(x)^2), stable for any x."""
    return 2.0 * (_LOG_2 - x - jax.nn.softplus(-2.0 * x))
