"""Gaussian ERA in JAX: continuous-action policies whose entropy is fixed by construction.

:mod:`era.gaussian` with ``jax.numpy``; the maths is in docs/activations.md §1. The network
outputs ``mean`` and ``pre_std``; :func:`gaussian_era` turns them into an
:class:`ERADistribution` whose entropy is the target ``H0``:

* ``bound="none"``: a Gaussian whose log-std budget is split by ``softmax(pre_std)``;
* ``bound="truncated"``: a truncated normal on ``[low, high]`` located at the scaled
  ``tanh(mean)``; ``mode="exact"`` solves each state's scales so that its entropy is exactly
  ``H0`` (water-filling over dimensions, then a fixed number of Newton steps per dimension;
  gradients by the implicit function theorem, a ``jax.custom_vjp``); ``mode="delta"`` gives the
  Gaussian ``H0 + delta``;
* ``bound="tanh"``: SAC's squashed Gaussian with the paper's delta (delta mode only).

:class:`GaussianERA` is the ``flax.linen`` module; in delta mode with ``learn_delta`` it owns the
parameter ``raw_delta`` and its dual loss :meth:`GaussianERA.delta_loss`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from era.jax.distributions import HALF_LOG_2PIE, Normal, TanhNormal, TruncatedNormal, inside_entropy

__all__ = ["BOUNDS", "MODES", "ERADistribution", "GaussianERA", "feasible_range", "gaussian_era"]

BOUNDS = ("none", "truncated", "tanh")
MODES = ("exact", "delta")
# Newton steps of the per-dimension entropy inversion (float32, float64), as in era.gaussian:
# the worst error falls like 0.08, 1.4e-3, 5e-7, 7e-14 nats from the initial guess.
_NEWTON_STEPS = {"float32": 2, "float64": 3}
# A truncated normal's entropy approaches log(high - low) like ((high - low)/sigma)^4: beyond
# sigma = e^2 (high - low) the gap is below float32 resolution, beyond e^5 below float64's. The
# solve stops there (the torch version moves to float64 instead; the entropies agree to the
# dtype's resolution) and dimensions that get there are given sigma_max.
_WIDEST_LOG_STD = {"float32": 2.0, "float64": 5.0}


# ---------------------------------------------------------------------------------------------
# The distribution
# ---------------------------------------------------------------------------------------------


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["base", "unreachable"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class ERADistribution:
    """The policy of one call: ``base`` per dimension (``Normal``, ``TruncatedNormal`` or
    ``TanhNormal``), summed over the last (action) axis.

    ``unreachable``: boolean ``[...]``, True where the target exceeds what the bounded policy can
    reach in that state (exact mode; it then sits at sigma_max). For a tanh base, ``entropy``
    needs a ``key`` and is a Monte Carlo estimate.
    """

    base: Normal | TruncatedNormal | TanhNormal
    unreachable: jax.Array

    @property
    def mode(self) -> jax.Array:
        return self.base.mode

    def sample(self, key, sample_shape=()) -> jax.Array:
        return self.base.sample(key, sample_shape)

    def log_prob(self, value) -> jax.Array:
        return self.base.log_prob(value).sum(-1)

    def sample_and_log_prob(self, key, sample_shape=()) -> tuple[jax.Array, jax.Array]:
        """One reparameterised sample and its log-density (for tanh, from the exact
        pre-squash value, so actions at the bounds score finitely)."""
        if isinstance(self.base, TanhNormal):
            action, log_prob = self.base.sample_and_log_prob(key, sample_shape)
            return action, log_prob.sum(-1)
        action = self.sample(key, sample_shape)
        return action, self.base.log_prob(action).sum(-1)

    def entropy(self, key=None, num_samples: int = 16) -> jax.Array:
        if isinstance(self.base, TanhNormal):
            if key is None:
                raise ValueError("a tanh policy's entropy is a Monte Carlo estimate: pass a key")
            return self.base.entropy_estimate(key, num_samples).sum(-1)
        return self.base.entropy().sum(-1)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def feasible_range(
    action_dim: int,
    bound: str = "truncated",
    low: float = -1.0,
    high: float = 1.0,
    log_std_min: float = -5.0,
    log_std_max: float = 2.0,
) -> tuple[float, float, bool]:
    """(lowest, highest, highest_is_strict) allowed for the target entropy, as
    :meth:`era.gaussian.GaussianERA.feasible_range`."""
    lowest = action_dim * (HALF_LOG_2PIE + log_std_min)
    highest = action_dim * (HALF_LOG_2PIE + log_std_max)
    if bound != "none":
        uniform = action_dim * math.log(high - low)
        if uniform <= highest:
            return lowest, uniform, True
    return lowest, highest, False


def _check_config(action_dim, target_entropy, bound, mode, low, high, log_std_min, log_std_max):
    """Raise a ValueError naming the argument; returns the target (default ``-D/2``)."""
    if isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1:
        raise ValueError(f"action_dim must be an integer >= 1, got {action_dim!r}")
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if bound == "tanh" and mode == "exact":
        raise ValueError(
            "mode='exact' is not available for bound='tanh' (its entropy has no closed form); "
            "use mode='delta', or bound='truncated' for an exact per-state floor"
        )
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")
    if not (math.isfinite(log_std_min) and math.isfinite(log_std_max)):
        raise ValueError(
            f"log_std_min and log_std_max must be finite, got {log_std_min!r}, {log_std_max!r}"
        )
    if not log_std_min < log_std_max:
        raise ValueError(
            f"need log_std_min < log_std_max, got log_std_min={log_std_min!r}, "
            f"log_std_max={log_std_max!r}"
        )
    if isinstance(target_entropy, jax.core.Tracer):
        return target_entropy  # a traced target (a schedule): no value to check
    target = -0.5 * action_dim if target_entropy is None else float(target_entropy)
    lowest, highest, strict = feasible_range(action_dim, bound, low, high, log_std_min, log_std_max)
    if not (
        math.isfinite(target)
        and lowest <= target
        and (target < highest if strict else target <= highest)
    ):
        closing = ")" if strict else "]"
        raise ValueError(
            f"target_entropy={target_entropy!r} is outside the feasible range "
            f"[{lowest:.4f}, {highest:.4f}{closing} for action_dim={action_dim}, bound={bound!r}, "
            f"log_std in [{log_std_min}, {log_std_max}]"
            + ("" if bound == "none" else f", actions in [{low}, {high}]")
        )
    return target


def _check_inputs(mean, pre_std, action_dim: int | None):
    """Shapes ``[..., D]`` (``D = action_dim`` unless None), floating dtypes, finite values."""
    mean, pre_std = jnp.asarray(mean), jnp.asarray(pre_std)
    if not (
        jnp.issubdtype(mean.dtype, jnp.floating) and jnp.issubdtype(pre_std.dtype, jnp.floating)
    ):
        raise TypeError(
            f"mean and pre_std must be floating point, got {mean.dtype}, {pre_std.dtype}"
        )
    expected = "D" if action_dim is None else action_dim
    if (
        mean.shape != pre_std.shape
        or mean.ndim == 0
        or (action_dim is not None and mean.shape[-1] != action_dim)
    ):
        raise ValueError(
            f"mean and pre_std must both have shape [..., {expected}], got {tuple(mean.shape)} "
            f"and {tuple(jnp.shape(pre_std))}"
        )
    for name, x in (("mean", mean), ("pre_std", pre_std)):
        # concrete arrays only: inside jit a data-dependent check is impossible (NaN propagates)
        if not isinstance(x, jax.core.Tracer) and not bool(jnp.isfinite(x).all()):
            bad = int((~jnp.isfinite(x)).sum())
            raise ValueError(
                f"{name} has {bad} non-finite entries (NaN or inf) among {x.size}; "
                "GaussianERA needs finite network outputs"
            )
    # one dtype for both, float32 at least, as in era.gaussian
    dtype = jnp.promote_types(jnp.promote_types(mean.dtype, pre_std.dtype), jnp.float32)
    return mean.astype(dtype), pre_std.astype(dtype)


# ---------------------------------------------------------------------------------------------
# The activation
# ---------------------------------------------------------------------------------------------


def gaussian_era(
    mean: jax.Array,
    pre_std: jax.Array,
    target_entropy: float | None = None,
    *,
    bound: str = "truncated",
    mode: str = "exact",
    low: float = -1.0,
    high: float = 1.0,
    log_std_min: float = -5.0,
    log_std_max: float = 2.0,
    delta: float | jax.Array = 0.0,
) -> ERADistribution:
    """``(mean, pre_std)`` → :class:`ERADistribution` with entropy ``target_entropy`` (default
    ``-D/2``): :class:`era.gaussian.GaussianERA`'s forward pass as a function.

    ``mean`` and ``pre_std`` are ``[..., D]``; the other arguments are Python numbers and
    strings, checked on every call, except two that may be traced scalars: ``target_entropy``
    (a schedule; compiled code is reused across values, and a traced value is not
    range-checked) and ``delta`` (delta mode: the Gaussian's target is
    ``target_entropy + max(delta, 0)``). Non-finite inputs raise when the arrays are concrete;
    under ``jit`` they give NaN scales, never a silent sigma_max.
    """
    mean, pre_std = _check_inputs(mean, pre_std, None)
    d = mean.shape[-1]
    target = _check_config(d, target_entropy, bound, mode, low, high, log_std_min, log_std_max)
    config = (bound, mode, float(low), float(high), float(log_std_min), float(log_std_max))
    loc, log_std, unreachable = _policy_parameters(mean, pre_std, target, delta, *config)
    if bound == "truncated":
        base = TruncatedNormal(loc, jnp.exp(log_std), low, high)
    elif bound == "tanh":
        base = TanhNormal(loc, jnp.exp(log_std), low, high)
    else:
        base = Normal(loc, jnp.exp(log_std))
    return ERADistribution(base, unreachable)


@functools.partial(jax.jit, static_argnums=tuple(range(4, 10)))
def _policy_parameters(mean, pre_std, target, delta, bound, mode, low, high, l_min, l_max):
    """(loc, log_std, unreachable); compiled once per shape, dtype and configuration (the
    target is traced: a schedule of targets needs no recompilation)."""
    target = jnp.asarray(target, mean.dtype)
    log_w = jax.nn.log_softmax(pre_std, axis=-1)
    unreachable = jnp.zeros(mean.shape[:-1], bool)
    if mode == "exact":
        delta = 0.0  # delta belongs to delta mode only
    if bound != "truncated":
        return mean, _gaussian_log_std(log_w, target, delta, l_min, l_max), unreachable
    half = 0.5 * (high - low)
    loc = (low + half) + half * jnp.tanh(mean)
    if mode == "delta":
        return loc, _gaussian_log_std(log_w, target, delta, l_min, l_max), unreachable
    log_std = _exact_log_std(loc, log_w, target, low, high, l_min, l_max)
    return loc, log_std, _unreachable(loc, target, low, high, l_max)


def _gaussian_log_std(log_w, target, delta, l_min, l_max):
    """Split the log-std budget by ``w`` so that the Gaussian's entropy is the target (plus
    delta, past sigma_max it stops there); the identity of docs/activations.md §1."""
    d = log_w.shape[-1]
    goal = target + jnp.maximum(jax.lax.stop_gradient(jnp.asarray(delta, log_w.dtype)), 0)
    budget = jnp.minimum(goal - d * (HALF_LOG_2PIE + l_max), 0)
    return jnp.maximum(l_max + budget * jnp.exp(log_w), l_min)


def _top_log_std(dtype, log_width: float, l_max: float) -> float:
    return min(l_max, log_width + _WIDEST_LOG_STD[jnp.dtype(dtype).name])


def _unreachable(loc, target, low, high, l_max):
    """States whose target exceeds the entropy at sigma_max in every dimension."""
    l_top = _top_log_std(loc.dtype, math.log(high - low), l_max)
    h_max = inside_entropy(low - loc, high - loc, l_top)[0]
    return jax.lax.stop_gradient(h_max.sum(-1) < target)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _exact_log_std(loc, log_w, target, low, high, l_min, l_max):
    """Per-state log-stds whose truncated-normal entropies sum exactly to the target.

    As ``era.gaussian._ExactTruncatedLogStd``: split the budget ``sum_i h_max_i - target`` over
    the dimensions as ``min(w_i * level, cap_i)`` (water-filling), then invert each dimension's
    entropy by Newton steps on ``phi(H) = -log(expm1(-4 (H - log W)))/4``, about linear in
    log sigma. The derivative comes from the implicit function theorem (``_exact_bwd``).
    """
    return _exact_solve(loc, log_w, target, low, high, l_min, l_max)[0]


def _exact_solve(loc, log_w, target, low, high, l_min, l_max):
    name = loc.dtype.name
    log_width = math.log(high - low)
    l_top = _top_log_std(loc.dtype, log_width, l_max)
    to_low, to_high = low - loc, high - loc
    h_max, _, dh_max = inside_entropy(to_low, to_high, l_top, loc_grad=True)
    h_min, _, dh_min = inside_entropy(to_low, to_high, l_min, loc_grad=True)
    budget = h_max.sum(-1) - target
    reachable = budget >= 0
    capped, share, rest = _water_fill(log_w, h_max - h_min, jnp.maximum(budget, 0))
    goal = _phi(jnp.where(capped, h_min, h_max - rest * share) - log_width)

    log_std = jnp.clip(_initial_log_std(to_low, to_high, goal, log_width), l_min, l_top)
    for _ in range(_NEWTON_STEPS[name]):
        entropy, slope, _ = inside_entropy(to_low, to_high, log_std, slope=True)
        unit = jnp.minimum(entropy - log_width, -jnp.finfo(loc.dtype).tiny)
        e = jnp.expm1(-4 * unit)
        step = (-0.25 * jnp.log(e) - goal) * e / (slope * (1 + e))  # residual / phi'
        log_std = jnp.clip(log_std - step, l_min, l_top)

    _, slope, d_loc = inside_entropy(to_low, to_high, log_std, slope=True, loc_grad=True)
    interior = (log_std > l_min) & (log_std < l_top)  # elsewhere log_std is constant
    inv_slope = jnp.where(interior, 1 / slope, 0)
    d_goal = jnp.where(capped, dh_min, dh_max)  # d(own entropy goal)/d(loc)
    coupled = reachable[..., None].astype(loc.dtype)  # the budget is clamped at 0 otherwise
    residuals = (inv_slope, d_loc, d_goal, share, rest * coupled, coupled, target)
    return jnp.where(log_std >= l_top, l_max, log_std), residuals


def _exact_fwd(loc, log_w, target, low, high, l_min, l_max):
    return _exact_solve(loc, log_w, target, low, high, l_min, l_max)


def _exact_bwd(low, high, l_min, l_max, residuals, g):
    """Vector-Jacobian product by the implicit function theorem.

    Each log_std_i solves H(loc_i, log_std_i) = h_i, h_i = h_max_i - rest * share_i (uncapped)
    or h_min_i (capped). With v_i = g_i / (dH/dlog_std) and v_bar = sum_i share_i v_i:
    dL/dloc_i = (v_i - v_bar) dh_edge_i/dloc - v_i dH/dloc,
    dL/dlog_w_i = -rest share_i (v_i - v_bar) and, since rest falls by what the target rises,
    dL/dtarget = v_bar (summed over states).
    """
    inv_slope, d_loc, d_goal, share, rest, coupled, target = residuals
    v = g * inv_slope
    v_bar = (share * v).sum(-1, keepdims=True) * coupled
    gap = v - v_bar
    grad_target = jnp.broadcast_to(v_bar.sum(), target.shape).astype(target.dtype)
    return d_goal * gap - v * d_loc, -rest * share * gap, grad_target


_exact_log_std.defvjp(_exact_fwd, _exact_bwd)


def _phi(unit_entropy):
    """-log(expm1(-4 u))/4 for u = entropy - log(high - low) < 0; ~linear in log sigma."""
    unit_entropy = jnp.minimum(unit_entropy, -jnp.finfo(unit_entropy.dtype).tiny)
    return -0.25 * jnp.log(jnp.expm1(-4 * unit_entropy))


def _initial_log_std(to_low, to_high, goal, log_width: float):
    """Invert phi(H) ~ log sigma + log(sqrt(2 pi e)) - log W, plus up to log 2 as sigma grows past
    the distance to the nearest bound (the fitted smooth step of era.gaussian)."""
    guess = goal + (log_width - HALF_LOG_2PIE)
    edge = jnp.maximum(jnp.minimum(-to_low, to_high), jnp.finfo(goal.dtype).tiny)
    return guess + math.log(2.0) * jax.nn.sigmoid(2.5 * (guess - jnp.log(edge)))


def _water_fill(log_w, caps, budget):
    """Split ``budget`` (>= 0, shape [...]) over the last axis as ``min(w_i * level, cap_i)``.

    The total is piecewise linear in ``level`` with a kink where each dimension reaches its cap;
    after one sort of the kinks, the uncapped dimensions share what the capped ones leave
    (``rest``) in proportion to their weights (``share``, 0 for capped dims). If the capped
    dimensions cannot give the whole budget (only when weights underflow), every weighted
    dimension gives its cap. Returns (capped, share, rest[..., None]).
    """
    axis = log_w.ndim - 1
    log_kinks = jnp.log(caps) - log_w
    order = jnp.argsort(log_kinks, axis=-1)
    log_w_sorted = jnp.take_along_axis(log_w, order, axis=-1)
    # log of the total weight strictly after each position (-inf after the last)
    log_w_after = jax.lax.cumlogsumexp(log_w_sorted, axis=axis, reverse=True)
    log_w_after = jnp.concatenate(
        [log_w_after[..., 1:], jnp.full_like(log_w_after[..., :1], -jnp.inf)], axis=-1
    )
    given_at_kink = jnp.cumsum(jnp.take_along_axis(caps, order, axis=-1), axis=-1) + jnp.exp(
        jnp.take_along_axis(log_kinks, order, axis=-1) + log_w_after
    )
    n_capped = (given_at_kink <= budget[..., None]).sum(-1, keepdims=True)
    capped_sorted = jnp.arange(log_w.shape[-1]) < n_capped
    capped = jnp.take_along_axis(capped_sorted, jnp.argsort(order, axis=-1), axis=-1)
    all_capped = capped.all(-1, keepdims=True)
    rest = jnp.maximum(budget[..., None] - (caps * capped).sum(-1, keepdims=True), 0)
    free_log_w = jnp.where(all_capped, 0.0, jnp.where(capped, -jnp.inf, log_w))
    share = jnp.where(all_capped, 0.0, jax.nn.softmax(free_log_w, axis=-1))
    return capped, share, rest


# ---------------------------------------------------------------------------------------------
# Flax module
# ---------------------------------------------------------------------------------------------


class GaussianERA(nn.Module):
    """ERA output activation for continuous actions, ``(mean, pre_std) -> ERADistribution``.

    The fields are :class:`era.gaussian.GaussianERA`'s arguments, checked at construction.
    In delta mode with ``learn_delta`` the module has one parameter, ``raw_delta`` (initialised
    to ``delta``); train it by adding :meth:`delta_loss` of the measured per-state entropies to
    the loss, like SAC's temperature. Otherwise it has no parameters.
    """

    action_dim: int
    target_entropy: float | None = None
    bound: str = "truncated"
    mode: str = "exact"
    low: float = -1.0
    high: float = 1.0
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    delta: float = 0.0
    learn_delta: bool = True

    def __post_init__(self) -> None:
        self._target()
        if not (math.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"delta must be finite and >= 0, got {self.delta!r}")
        super().__post_init__()

    def _target(self) -> float:
        return _check_config(
            self.action_dim,
            self.target_entropy,
            self.bound,
            self.mode,
            self.low,
            self.high,
            self.log_std_min,
            self.log_std_max,
        )

    def setup(self) -> None:
        if self.mode == "delta" and self.learn_delta:
            self.raw_delta = self.param("raw_delta", lambda _: jnp.asarray(self.delta, jnp.float32))

    def _raw_delta(self) -> jax.Array:
        if self.mode == "delta" and self.learn_delta:
            return self.raw_delta
        return jnp.asarray(self.delta, jnp.float32)

    def __call__(self, mean: jax.Array, pre_std: jax.Array) -> ERADistribution:
        if jnp.shape(mean)[-1:] != (self.action_dim,):
            raise ValueError(
                f"mean and pre_std must both have shape [..., {self.action_dim}] "
                f"(action_dim={self.action_dim}), got {tuple(jnp.shape(mean))}"
            )
        return gaussian_era(
            mean,
            pre_std,
            self._target(),
            bound=self.bound,
            mode=self.mode,
            low=self.low,
            high=self.high,
            log_std_min=self.log_std_min,
            log_std_max=self.log_std_max,
            delta=self._raw_delta(),
        )

    def delta_loss(self, entropy: jax.Array) -> jax.Array:
        """Dual loss for delta, ``delta * mean(H(s) - H0)`` with the entropy held constant:
        delta rises while the entropy is below the target and falls while it is above.

        delta is read as ``max(raw_delta, 0)``; below 0 the loss passes no gradient that
        would push it further down, so it cannot wind up during a long phase above target
        (the torch module projects it back to 0 instead). A constant without a learned delta.
        """
        raw = self._raw_delta()
        gap = (jax.lax.stop_gradient(entropy) - self._target()).mean()
        held = jnp.where((raw >= 0) | (gap < 0), raw, jax.lax.stop_gradient(raw))
        return held * gap.astype(raw.dtype)
