"""Bounded action distributions for continuous control: truncated normal and tanh-normal.

Both are per-dimension distributions (event shape ``()``), like ``torch.distributions.Normal``:
wrap them in ``Independent(..., 1)`` for a multivariate action. ``era.gaussian`` builds its
bounded ERA policies from them (docs/activations.md §1, "Bounded actions").

The truncated normal is written for the regimes a policy actually visits, including the awkward
ones: locations far outside ``[low, high]`` relative to the scale, tiny scales, scales much wider
than the interval, and float32. Where the textbook formulas subtract two nearly equal numbers,
the interval is mirrored so that any cut-off tail lies to the right of the location and the
quantities are rewritten with the scaled complementary error function ``erfcx`` (see
``_Tail``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)  # entropy of N(0, 1)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_LOG_2 = math.log(2.0)
_EMPTY_SHAPE = torch.Size()

# Beyond this standardised distance the Mills-ratio terms come from a continued fraction: the
# direct formula r(t) - t loses ~t^2 ulps there. 30 levels give ~1e-14 relative error at t = 4.
_CONTINUED_FRACTION_FROM = 4.0
_CONTINUED_FRACTION_DEPTH = 30
# Inverse CDF of a location outside the interval: closed form while Phi(-a) is a normal float,
# Newton beyond (monotone, quadratic convergence from a start within a few percent).
_DIRECT_TAIL_ICDF_UNTIL = 4.0
_TAIL_ICDF_STEPS = 4


def _pdf(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * t * t) * _INV_SQRT_2PI


def _mills_excess(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``e(t) = r(t) - t`` and ``h(t) = 1 - t*e(t)`` for ``t >= 0``, r = pdf(t) / Phi(-t).

    Both are small differences of large numbers when t is large (e ~ 1/t, h ~ 2/t^2), so there
    they come from Laplace's continued fraction ``e = 1/(t + 2/(t + 3/(t + ...)))``.
    """
    direct_e = _SQRT_2_OVER_PI / torch.special.erfcx(t / _SQRT_2) - t
    far = t > _CONTINUED_FRACTION_FROM
    tf = torch.where(far, t, torch.full_like(t, 2 * _CONTINUED_FRACTION_FROM))
    tail = torch.zeros_like(tf)
    for k in range(_CONTINUED_FRACTION_DEPTH, 1, -1):
        tail = k / (tf + tail)
    cf_e = 1.0 / (tf + tail)
    e = torch.where(far, cf_e, direct_e)
    h = torch.where(far, tail * cf_e, 1.0 - t * direct_e)
    return e, h


def inside_entropy(
    to_low: torch.Tensor,
    to_high: torch.Tensor,
    log_scale: torch.Tensor,
    *,
    slope: bool = False,
    loc_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Entropy of a truncated normal whose location lies inside its interval, and optionally
    its derivatives in ``log_scale`` and in the location.

    ``to_low = low - loc <= 0 <= to_high = high - loc``; the arguments broadcast. Returns
    ``(entropy, d entropy / d log_scale or None, d entropy / d loc or None)``.

    With alpha, beta the standardised bounds, Z their mass, N = (a*pdf(a) - b*pdf(b))/Z and
    M = (a^3*pdf(a) - b^3*pdf(b))/Z: H = log(sqrt(2*pi*e)*scale*Z) + N/2,
    dH/dlog(scale) = 1 + (N + M)/2 - N^2/2 and dH/dloc = -(dH/dalpha + dH/dbeta)/scale with
    dH/dalpha = pdf(a)/(2Z)*(N - 1 - a^2), dH/dbeta = pdf(b)/(2Z)*(1 + b^2 - N). Every term
    has one sign inside the interval, so nothing cancels. Written with few tensor operations:
    the root solve in ``era.gaussian`` calls it several times per forward pass, and
    ``TruncatedNormal.entropy`` uses it for locations inside the interval.
    """
    inv = torch.exp(-log_scale) * _INV_SQRT_2
    x, y = to_low * inv, to_high * inv  # alpha/sqrt2, beta/sqrt2
    x2, y2 = x * x, y * y
    ex, ey = torch.exp(-x2), torch.exp(-y2)
    xa, yb = x * ex, y * ey  # sqrt(pi) * alpha * pdf(alpha), ...
    mass2 = torch.erf(y) - torch.erf(x)  # 2Z
    r = (xa - yb) / mass2  # N * sqrt(pi) / 2
    entropy = torch.add(torch.log(mass2), r, alpha=_INV_SQRT_PI) + log_scale
    entropy = entropy + (HALF_LOG_2PIE - _LOG_2)
    d_log_scale = d_loc = None
    if slope:
        s = (x2 * xa - y2 * yb) / mass2  # M * sqrt(pi) / 4
        d_log_scale = 1 + torch.add(
            torch.add(r, s, alpha=2.0) * _INV_SQRT_PI, r * r, alpha=-2 / math.pi
        )
    if loc_grad:
        n = r * (2 * _INV_SQRT_PI)
        d_loc = (ex * (n - 1 - 2 * x2) + ey * (1 + 2 * y2 - n)) * (inv * -_INV_SQRT_PI) / mass2
    return entropy, d_log_scale, d_loc


class _Tail(NamedTuple):
    """Geometry of locations outside ``[low, high]``, mirrored so the interval is on the right.

    ``flip`` marks elements whose whole interval lies left of the location; they are mirrored
    (x -> -x), after which ``0 < a < a + w`` are the standardised distances to the near and far
    bounds. ``near`` is the bound closest to the location and ``sign`` maps distances back:
    ``x = near + sign * scale * d``. Everything is relative to Phi(-a) = erfcx(a/sqrt2)/2 *
    exp(-a^2/2), which never underflows in this form: ``rho = Phi(-a-w)/Phi(-a)``,
    ``q = 1 - rho`` (so the mass Z = Phi(-a) * q) and ``log_mass = log Z + a^2/2``.
    Elements whose location is inside hold harmless placeholders (a = w = 1).
    """

    flip: torch.Tensor
    near: torch.Tensor
    sign: torch.Tensor
    a: torch.Tensor
    w: torch.Tensor
    rho: torch.Tensor
    q: torch.Tensor
    log_erfcx_a: torch.Tensor
    log_mass: torch.Tensor


class _Frame(NamedTuple):
    alpha: torch.Tensor  # (low - loc) / scale; placeholder -1 where the location is outside
    beta: torch.Tensor  # (high - loc) / scale; placeholder +1 where the location is outside
    inside: torch.Tensor | None  # low <= loc <= high; None when promised (loc_inside)
    tail: _Tail | None  # None when every location is inside (the fast path)


def _tail_log_ratio(a: torch.Tensor, d: torch.Tensor, log_erfcx_a: torch.Tensor) -> torch.Tensor:
    """log(Phi(-(a + d)) / Phi(-a)) for a > 0, d >= 0, without underflow."""
    return torch.log(torch.special.erfcx((a + d) / _SQRT_2)) - log_erfcx_a - 0.5 * d * (2 * a + d)


class TruncatedNormal(Distribution):
    """Normal(loc, scale) restricted to ``[low, high]`` and renormalised.

    Differentiable sampling by the inverse CDF. ``mode`` is ``loc`` clamped into the interval;
    ``entropy`` is analytic (docs/activations.md §1). Batch shape: the broadcast of all four
    arguments. ``low`` and ``high`` must be finite with ``low < high``.

    Locations outside the interval take a slower, cancellation-free path (see ``_Tail``); when
    every location is inside only the short formulas run. ``loc_inside=True`` promises that
    (as ``era.gaussian`` guarantees by its tanh): it skips the check, a data-dependent branch
    that costs a reduction per call and stops ``torch.compile`` from tracing through.
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "low": constraints.dependent(is_discrete=False, event_dim=0),
        "high": constraints.dependent(is_discrete=False, event_dim=0),
    }
    has_rsample = True

    def __init__(
        self, loc, scale, low=-1.0, high=1.0, validate_args=None, *, loc_inside: bool = False
    ):
        _check_bounds(low, high)
        self.loc, self.scale, self.low, self.high = broadcast_all(loc, scale, low, high)
        self.loc_inside = loc_inside
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("loc", "scale", "low", "high"):
            setattr(new, name, getattr(self, name).expand(batch_shape))
        new.loc_inside = self.loc_inside
        super(TruncatedNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    # -- geometry shared by all methods -------------------------------------------------------

    def _frame(self) -> _Frame:
        alpha = (self.low - self.loc) / self.scale
        beta = (self.high - self.loc) / self.scale
        if self.loc_inside:
            return _Frame(alpha, beta, None, None)
        inside = (alpha <= 0) & (beta >= 0)
        if bool(inside.all()):
            return _Frame(alpha, beta, inside, None)
        one = torch.ones_like(alpha)
        flip = beta < 0
        a = torch.where(inside, one, torch.where(flip, -beta, alpha))
        w = torch.where(inside, one, (self.high - self.low) / self.scale)
        log_erfcx_a = torch.log(torch.special.erfcx(a / _SQRT_2))
        log_rho = _tail_log_ratio(a, w, log_erfcx_a)
        q = -torch.expm1(log_rho)
        tail = _Tail(
            flip=flip,
            near=torch.where(flip, self.high, self.low),
            sign=torch.where(flip, -one, one),
            a=a,
            w=w,
            rho=torch.exp(log_rho),
            q=q,
            log_erfcx_a=log_erfcx_a,
            log_mass=log_erfcx_a - _LOG_2 + torch.log(q),
        )
        return _Frame(
            torch.where(inside, alpha, -one), torch.where(inside, beta, one), inside, tail
        )

    def _tail_distance(self, t: _Tail, value: torch.Tensor) -> torch.Tensor:
        """Standardised distance of ``value`` from the near bound, clamped into [0, w]."""
        return torch.minimum((t.sign * (value - t.near) / self.scale).clamp(min=0), t.w)

    @staticmethod
    def _tail_shift(t: _Tail) -> torch.Tensor:
        """(mean - near) * sign / scale for a location outside the interval."""
        e_a, _ = _mills_excess(t.a)
        e_b, _ = _mills_excess(t.a + t.w)
        return (e_a - t.rho * (t.w + e_b)) / t.q

    # -- moments --------------------------------------------------------------------------------

    @property
    def mode(self):
        return torch.minimum(torch.maximum(self.loc, self.low), self.high)

    @property
    def mean(self):
        f = self._frame()
        z = 0.5 * (torch.erf(f.beta / _SQRT_2) - torch.erf(f.alpha / _SQRT_2))
        mean = self.loc + self.scale * _pdf_gap(f.alpha, f.beta) / z
        if f.tail is not None:
            t = f.tail
            mean = torch.where(f.inside, mean, t.near + t.sign * self.scale * self._tail_shift(t))
        return mean

    @property
    def variance(self):
        f = self._frame()
        z = 0.5 * (torch.erf(f.beta / _SQRT_2) - torch.erf(f.alpha / _SQRT_2))
        n = (f.alpha * _pdf(f.alpha) - f.beta * _pdf(f.beta)) / z
        var = 1 + n - (_pdf_gap(f.alpha, f.beta) / z) ** 2
        if f.tail is not None:
            t = f.tail
            b = t.a + t.w
            _, h_a = _mills_excess(t.a)
            e_b, _ = _mills_excess(b)
            tail_var = (h_a - t.rho * (1 + t.w**2 + (b - 2 * t.a) * e_b)) / t.q
            var = torch.where(f.inside, var, tail_var - self._tail_shift(t) ** 2)
        return self.scale**2 * var.clamp(min=0)

    def entropy(self):
        f = self._frame()
        h, _, _ = inside_entropy(f.alpha, f.beta, torch.zeros_like(f.alpha))
        if f.tail is not None:
            t = f.tail
            b = t.a + t.w
            e_a, _ = _mills_excess(t.a)
            e_b, _ = _mills_excess(b)
            bracket = t.a * e_a - t.rho * (t.w * (t.a + b) + b * e_b)
            h = torch.where(f.inside, h, HALF_LOG_2PIE + t.log_mass + bracket / (2 * t.q))
        return torch.log(self.scale) + h

    # -- density, CDF and sampling ------------------------------------------------------------

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        f = self._frame()
        z = (value - self.loc) / self.scale
        log_z = torch.log(0.5 * (torch.erf(f.beta / _SQRT_2) - torch.erf(f.alpha / _SQRT_2)))
        lp = -0.5 * z * z - log_z
        if f.tail is not None:
            t = f.tail
            d = self._tail_distance(t, value)
            z = torch.where(f.inside, z, torch.zeros_like(z))  # keep unused branches finite
            lp = torch.where(f.inside, -0.5 * z * z - log_z, -0.5 * d * (2 * t.a + d) - t.log_mass)
        lp = lp - _LOG_SQRT_2PI - torch.log(self.scale)
        in_support = (value >= self.low) & (value <= self.high)
        return torch.where(in_support, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value):
        if self._validate_args:
            self._validate_sample(value)
        f = self._frame()
        x = torch.minimum(torch.maximum(value, self.low), self.high)
        erf_a = torch.erf(f.alpha / _SQRT_2)
        z = (x - self.loc) / self.scale
        if f.tail is not None:
            z = torch.where(f.inside, z, torch.zeros_like(z))
        cdf = (torch.erf(z / _SQRT_2) - erf_a) / (torch.erf(f.beta / _SQRT_2) - erf_a)
        if f.tail is not None:
            t = f.tail
            ratio = torch.exp(_tail_log_ratio(t.a, self._tail_distance(t, x), t.log_erfcx_a))
            # Mirrored, P(X <= x) = (1 - ratio)/q; the mirror swaps the two sides.
            tail_cdf = torch.where(t.flip, ratio - t.rho, 1 - ratio) / t.q
            cdf = torch.where(f.inside, cdf, tail_cdf)
        return cdf.clamp(0, 1)

    def icdf(self, value):
        f = self._frame()
        u = value
        # Invert on the side where the normal CDF is below 1/2: more significant digits.
        mass = 0.5 * (torch.erf(f.beta / _SQRT_2) - torch.erf(f.alpha / _SQRT_2))
        lower = torch.special.ndtr(f.alpha) + u * mass
        upper = torch.special.ndtr(-f.beta) + (1 - u) * mass
        use_lower = lower <= 0.5
        z = torch.special.ndtri(torch.where(use_lower, lower, upper))
        x = self.loc + self.scale * torch.where(use_lower, z, -z)
        if f.tail is not None:
            x = torch.where(f.inside, x, self._tail_icdf(f.tail, u))
        return torch.minimum(torch.maximum(x, self.low), self.high)

    def _tail_icdf(self, t: _Tail, u: torch.Tensor) -> torch.Tensor:
        """Solve Phi(-(a+d)) = Phi(-a) * (1 - u'q) for the distance d from the near bound.

        Near the location (a <= 4) Phi(-a) is a normal number and ndtri inverts it directly.
        Further out, Newton on log(Phi(-(a+d))/Phi(-a)), concave in d, from the root of its
        quadratic part: that start is on the far side of the root (the erfcx ratio only
        lowers the function) and the steps approach the root monotonically.
        """
        u = torch.where(t.flip, 1 - u, u)
        goal = torch.log1p(-u * t.q)
        near = t.a <= _DIRECT_TAIL_ICDF_UNTIL
        a_near = torch.where(near, t.a, torch.zeros_like(t.a))
        d_direct = -torch.special.ndtri(torch.special.ndtr(-a_near) * torch.exp(goal)) - a_near
        a = torch.where(near, torch.full_like(t.a, 2 * _DIRECT_TAIL_ICDF_UNTIL), t.a)
        d = -2 * goal / (a + torch.sqrt(a * a - 2 * goal))
        for _ in range(_TAIL_ICDF_STEPS):
            erfcx = torch.special.erfcx((a + d) / _SQRT_2)
            residual = torch.log(erfcx) - t.log_erfcx_a - 0.5 * d * (2 * a + d) - goal
            d = d + residual * erfcx / _SQRT_2_OVER_PI  # residual / r(a + d)
        d = torch.where(near, d_direct, d)
        return t.near + t.sign * self.scale * torch.minimum(d.clamp(min=0), t.w)

    def rsample(self, sample_shape=_EMPTY_SHAPE):
        shape = self._extended_shape(sample_shape)
        eps = torch.finfo(self.loc.dtype).eps
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.icdf(u.clamp(eps, 1 - eps))


def _pdf_gap(alpha, beta):
    """pdf(alpha) - pdf(beta) without cancellation: factor out the larger of the two."""
    pa, pb = _pdf(alpha), _pdf(beta)
    log_ratio = 0.5 * (beta - alpha) * (beta + alpha)  # log(pdf(alpha)/pdf(beta))
    return torch.where(
        log_ratio >= 0,
        -pa * torch.expm1(-log_ratio.clamp(min=0)),
        pb * torch.expm1(log_ratio.clamp(max=0)),
    )


def _check_bounds(low, high) -> None:
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        ok = math.isfinite(low) and math.isfinite(high) and low < high
    else:
        lo, hi = torch.as_tensor(low), torch.as_tensor(high)
        ok = bool(torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo < hi).all())
    if not ok:
        raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")


class TanhNormal(Distribution):
    """``a = mid + half * tanh(x)``, x ~ Normal(loc, scale): SAC's squashed Gaussian.

    Actions lie in ``(low, high)`` (default (-1, 1)); ``loc`` and ``scale`` are those of the
    pre-squash Gaussian and ``mode = mid + half * tanh(loc)``.

    ``log_prob`` needs the pre-squash value x. The last ``rsample``/``sample`` result is
    remembered, so ``log_prob`` of that very tensor uses its exact x (like torch's
    ``TanhTransform`` cache); for any other action x = atanh(y) with y clamped to
    ``[-1 + eps, 1 - eps]`` (eps = the dtype's machine epsilon), so actions at the bounds get a
    finite log-density. Its log-Jacobian uses the stable form
    ``log(1 - tanh(x)^2) = 2 * (log 2 - x - softplus(-2x))``.

    There is no closed-form entropy: ``entropy()`` raises, ``entropy_estimate()`` gives a
    Monte Carlo estimate.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(self, loc, scale, low=-1.0, high=1.0, validate_args=None):
        _check_bounds(low, high)
        self.loc, self.scale = broadcast_all(loc, scale)
        self.low, self.high = float(low), float(high)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TanhNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.low, new.high, new._cache = self.low, self.high, None
        super(TanhNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    @property
    def _mid(self) -> float:
        return 0.5 * (self.high + self.low)

    @property
    def _half(self) -> float:
        return 0.5 * (self.high - self.low)

    @property
    def mode(self):
        return self._mid + self._half * torch.tanh(self.loc)

    def rsample(self, sample_shape=_EMPTY_SHAPE):
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        x = self.loc + self.scale * noise
        action = self._mid + self._half * torch.tanh(x)
        self._cache = (action, x)
        return action

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        if self._cache is not None and value is self._cache[0]:
            x = self._cache[1]
        else:
            eps = torch.finfo(value.dtype).eps
            y = ((value - self._mid) / self._half).clamp(-1 + eps, 1 - eps)
            x = torch.atanh(y)
        return (
            _normal_log_prob(x, self.loc, self.scale) - _log_tanh_jacobian(x) - math.log(self._half)
        )

    def entropy(self):
        raise NotImplementedError(
            "a tanh-squashed Gaussian has no closed-form entropy; use entropy_estimate()"
        )

    def entropy_estimate(self, num_samples: int = 16) -> torch.Tensor:
        """Monte Carlo entropy, shape ``batch_shape``; differentiable (reparameterised).

        H = H(Normal) + log(half) + E[log(1 - tanh(x)^2)]: only the squashing term is sampled,
        the Gaussian part is exact, which keeps the variance low.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        noise = torch.randn(
            (num_samples, *self.batch_shape), dtype=self.loc.dtype, device=self.loc.device
        )
        x = self.loc + self.scale * noise
        gaussian = HALF_LOG_2PIE + torch.log(self.scale)
        return gaussian + math.log(self._half) + _log_tanh_jacobian(x).mean(0)


def _normal_log_prob(x, loc, scale):
    z = (x - loc) / scale
    return -0.5 * z * z - torch.log(scale) - _LOG_SQRT_2PI


def _log_tanh_jacobian(x):
    """log(1 - tanh(x)^2), stable for any x."""
    return 2.0 * (_LOG_2 - x - torch.nn.functional.softplus(-2.0 * x))
