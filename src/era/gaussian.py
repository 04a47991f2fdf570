"""Gaussian ERA: continuous-action policies whose entropy is fixed by construction.

The maths and the choices made are in ``docs/activations.md`` §1.

The network outputs a mean and a raw vector ``pre_std`` per action dimension. ``GaussianERA``
turns them into a distribution whose entropy equals a target ``H0`` in every state, so the
training loss needs no entropy term:

* ``bound="none"``: a Gaussian. ``w = softmax(pre_std)`` splits a fixed log-std budget across
  dimensions, ``log sigma_i = max(log_std_max + K * w_i, log_std_min)`` with
  ``K = H0 - D*log(sqrt(2*pi*e)) - D*log_std_max``, so the entropy is exactly ``H0`` (the lower
  clip can only raise it).
* ``bound="truncated"``: a truncated normal on ``[low, high]`` located at the tanh of the mean.
  ``mode="exact"`` (ours) makes its entropy exactly ``H0`` in every state (see
  ``_ExactTruncatedLogStd``); ``mode="delta"`` is the paper's: the underlying Gaussian gets
  the target ``H0 + delta`` with a learned ``delta >= 0`` that holds the floor on average.
* ``bound="tanh"``: SAC's tanh-squashed Gaussian with the paper's delta compensation (its entropy
  has no closed form, so there is no exact mode).

``TruncatedNormal`` and ``TanhNormal`` live in ``era.distributions`` and are re-exported here.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Independent, Normal

from era.distributions import HALF_LOG_2PIE, TanhNormal, TruncatedNormal, inside_entropy

__all__ = [
    "EntropyCompensation",
    "ERADistribution",
    "GaussianERA",
    "TanhNormal",
    "TruncatedNormal",
]

BOUNDS = ("none", "truncated", "tanh")
MODES = ("exact", "delta")
# Newton steps of the per-dimension entropy inversion in exact mode, (float32, float64): from
# the initial guess, the worst error over all locations, targets and interval widths falls
# like 0.08, 1.4e-3, 5e-7, 7e-14 nats; two steps reach float32 precision, three float64's
# (tests/test_gaussian.py checks both).
_NEWTON_STEPS = (2, 3)
# A truncated normal's entropy approaches log(high - low) like ((high - low)/sigma)^4. Beyond
# sigma = e^2 (high - low) that gap is below float32 resolution (the solve then runs in
# float64), beyond e^5 (high - low) below float64's (the solve stops there: the distribution is
# uniform to ~1e-12 nats, and dimensions that get there are given sigma_max).
_FLOAT32_WIDEST_LOG_STD = 2.0
_FLOAT64_WIDEST_LOG_STD = 5.0
_TANH_ENTROPY_SAMPLES = 16


class EntropyCompensation(nn.Module):
    """The paper's delta >= 0: the Gaussian's target becomes ``H0 + delta``.

    See docs/activations.md §1, "Bounded actions".

    Learned like SAC's temperature, by dual descent on ``loss(entropy)`` =
    ``mean_s delta * (H(s) - H0)`` with the entropy detached: delta rises while the measured
    entropy is below ``target_entropy`` and falls (to 0 at most) while it is above.

    delta is the raw parameter itself, projected back onto delta >= 0 at every ``loss`` call (and
    clamped when read). Unlike softplus or exp parametrisations this starts at exactly 0 and
    stays as responsive near 0 as anywhere else, and the projection stops it winding up far
    below 0 during the long early phase when entropy is above target. With
    ``learnable=False`` delta is a constant buffer.
    """

    def __init__(self, target_entropy: float, init_delta: float = 0.0, learnable: bool = True):
        super().__init__()
        if not math.isfinite(target_entropy):
            raise ValueError(f"target_entropy must be finite, got {target_entropy!r}")
        if not (math.isfinite(init_delta) and init_delta >= 0):
            raise ValueError(f"init_delta must be finite and >= 0, got {init_delta!r}")
        self.target_entropy = float(target_entropy)
        self.learnable = bool(learnable)
        raw = torch.tensor(float(init_delta))
        if self.learnable:
            self.raw_delta = nn.Parameter(raw)
        else:
            self.register_buffer("raw_delta", raw)

    @property
    def delta(self) -> torch.Tensor:
        """Current delta (a detached scalar tensor, >= 0)."""
        return self.raw_delta.detach().clamp(min=0)

    def loss(self, entropy: torch.Tensor) -> torch.Tensor:
        """Dual loss for delta from per-state entropies (detached here); a constant if fixed."""
        if self.learnable:
            with torch.no_grad():
                self.raw_delta.clamp_(min=0)
        gap = (entropy.detach() - self.target_entropy).mean()
        return self.raw_delta * gap.to(self.raw_delta.dtype)

    def extra_repr(self) -> str:
        return f"target_entropy={self.target_entropy}, learnable={self.learnable}"


class ERADistribution(Independent):
    """``Independent(base, 1)`` over the action dimensions, plus what ERA knows about it.

    ``unreachable``: boolean ``[...]``, True where the target entropy exceeds what the bounded
    policy can reach in that state (exact mode; it then sits at sigma_max). All False otherwise.
    For a tanh base, ``entropy()`` is a Monte Carlo estimate (``TanhNormal.entropy_estimate``).
    """

    unreachable: torch.Tensor

    # Sums over the action dimension written out: Independent's reshape(..., -1) fails on an
    # empty batch.
    def log_prob(self, value):
        return self.base_dist.log_prob(value).sum(-1)

    def entropy(self):
        if isinstance(self.base_dist, TanhNormal):
            return self.base_dist.entropy_estimate(_TANH_ENTROPY_SAMPLES).sum(-1)
        return self.base_dist.entropy().sum(-1)


class GaussianERA(nn.Module):
    """ERA output activation for continuous actions: ``(mean, pre_std) -> distribution``.

    Args:
        action_dim: D, the number of action dimensions.
        target_entropy: H0 in nats for the whole action; default ``-0.5 * D``, the paper's SAC
            default ``H0 = -D/2`` (the authors' released code sets the Gaussian's
            target to 0.25*D, which with truncation lands elsewhere).
        bound: ``"none"`` (Gaussian), ``"truncated"`` (truncated normal on [low, high]) or
            ``"tanh"`` (tanh-squashed Gaussian scaled to [low, high]).
        mode: ``"exact"`` (entropy = H0 in every state; not for tanh) or ``"delta"`` (the
            Gaussian gets H0 + delta, delta >= 0 learned by ``self.compensation``).
        low, high: action bounds for the truncated and tanh policies.
        log_std_min, log_std_max: range of log sigma. The defaults -5 and 2 give sigma in
            [0.0067, 7.39] in action units. sigma_max = e^2 matters for the truncated policy
            on [-1, 1]: there it is within 1e-4 nats of uniform wherever its location lies,
            so every per-dimension target up to log(high - low) - 0.001 is reachable in exact
            mode; the authors' log_std_max = 0 caps a dimension whose location sits
            at a bound at 0.57 nats. sigma_min = e^-5 allows targets down to
            D*(log(sqrt(2*pi*e)) - 5) = -3.58*D, far below the defaults, while keeping
            1/sigma^2 moderate in float32. For bounds wider than [-1, 1], scale both with
            log((high - low) / 2).
        delta, learn_delta: initial delta and whether it is learned (delta mode only).

    ``forward(mean, pre_std)`` takes two ``[..., D]`` tensors and returns an
    ``ERADistribution`` with event shape ``[D]``: ``rsample``/``sample``, ``log_prob``
    (summed over D), ``entropy()`` per state, ``mode`` (the deterministic action, in
    [low, high] when bounded), ``base_dist.loc/.scale`` and ``unreachable``.
    ``last_unreachable`` counts the unreachable states of the last call.
    ``deterministic_action(mean)`` is that mode from the mean alone, without the entropy solve
    (the mode does not depend on the scale): what deterministic evaluation needs.

    Inputs: ``mean`` and ``pre_std`` must be finite. A NaN or infinite entry raises a
    ``ValueError`` naming the argument (one reduction per argument and call; on a GPU, one
    host synchronisation). Inside ``torch.compile`` that data-dependent check is skipped: the
    state's distribution then has a NaN scale, never a silent sigma_max. Mixed dtypes are
    promoted (float32 at least), so a bfloat16 ``pre_std`` beside a float32 ``mean`` is solved
    in float32 and the target holds to float32 precision. An empty batch (``[0, D]``) gives an
    empty distribution.
    """

    def __init__(
        self,
        action_dim: int,
        target_entropy: float | None = None,
        *,
        bound: str = "truncated",
        mode: str = "exact",
        low: float = -1.0,
        high: float = 1.0,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        delta: float = 0.0,
        learn_delta: bool = True,
    ):
        super().__init__()
        if isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1:
            raise ValueError(f"action_dim must be an integer >= 1, got {action_dim!r}")
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if bound == "tanh" and mode == "exact":
            raise ValueError(
                "mode='exact' is not available for bound='tanh' (its entropy has no closed "
                "form); use mode='delta', or bound='truncated' for an exact per-state floor"
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
        self.action_dim = action_dim
        self.bound = bound
        self.mode = mode
        self.low, self.high = float(low), float(high)
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)
        if target_entropy is None:
            target_entropy = -0.5 * action_dim
        self.target_entropy = float(target_entropy)
        lowest, highest, strict = self.feasible_range()
        if not (
            math.isfinite(self.target_entropy)
            and lowest <= self.target_entropy
            and (self.target_entropy < highest if strict else self.target_entropy <= highest)
        ):
            closing = ")" if strict else "]"
            raise ValueError(
                f"target_entropy={target_entropy!r} is outside the feasible range "
                f"[{lowest:.4f}, {highest:.4f}{closing} for action_dim={action_dim}, "
                f"bound={bound!r}, log_std in [{log_std_min}, {log_std_max}]"
                + ("" if bound == "none" else f", actions in [{low}, {high}]")
            )
        if mode == "delta":
            self.compensation = EntropyCompensation(self.target_entropy, delta, learn_delta)
        else:
            self.compensation = None
        self._last_unreachable: torch.Tensor | None = None

    def feasible_range(self) -> tuple[float, float, bool]:
        """(lowest, highest, highest_is_strict) allowed for the target entropy.

        Lowest: D*(log(sqrt(2*pi*e)) + log_std_min), the Gaussian at sigma_min (below it the
        clip would hold the entropy above the target). Highest: the Gaussian at sigma_max; for
        bounded policies also below D*log(high - low), the uniform distribution's entropy.
        """
        d = self.action_dim
        lowest = d * (HALF_LOG_2PIE + self.log_std_min)
        highest = d * (HALF_LOG_2PIE + self.log_std_max)
        if self.bound != "none":
            uniform = d * math.log(self.high - self.low)
            if uniform <= highest:
                return lowest, uniform, True
        return lowest, highest, False

    @property
    def last_unreachable(self) -> int:
        """Number of states of the last call whose target entropy was unreachable."""
        if self._last_unreachable is None:
            return 0
        return int(self._last_unreachable.sum())

    def forward(self, mean: torch.Tensor, pre_std: torch.Tensor) -> ERADistribution:
        self._check_inputs(mean, pre_std)
        # one dtype for both, float32 at least: entropies need it, and a half-precision
        # pre_std would round the log-std budget and move the target
        dtype = torch.promote_types(torch.promote_types(mean.dtype, pre_std.dtype), torch.float32)
        mean, pre_std = mean.to(dtype), pre_std.to(dtype)
        log_w = torch.log_softmax(pre_std, dim=-1)
        unreachable = torch.zeros(mean.shape[:-1], dtype=torch.bool, device=mean.device)
        if self.bound == "truncated":
            loc = self._truncated_loc(mean)
            if self.mode == "exact":
                log_std, unreachable = _ExactTruncatedLogStd.apply(
                    loc,
                    log_w,
                    self.target_entropy,
                    self.low,
                    self.high,
                    self.log_std_min,
                    self.log_std_max,
                    torch.is_grad_enabled() and (loc.requires_grad or log_w.requires_grad),
                )
            else:
                log_std = self._gaussian_log_std(log_w)
            base = TruncatedNormal(
                loc, log_std.exp(), self.low, self.high, validate_args=False, loc_inside=True
            )
        elif self.bound == "tanh":
            base = TanhNormal(
                mean, self._gaussian_log_std(log_w).exp(), self.low, self.high, validate_args=False
            )
        else:
            base = Normal(mean, self._gaussian_log_std(log_w).exp(), validate_args=False)
        dist = ERADistribution(base, 1, validate_args=False)
        dist.unreachable = unreachable
        self._last_unreachable = unreachable.detach()
        return dist

    def deterministic_action(self, mean: torch.Tensor) -> torch.Tensor:
        """``forward(mean, pre_std).mode`` for any ``pre_std``: the mode does not depend on the
        scale, so deterministic evaluation can skip the entropy solve."""
        self._check_finite("mean", mean)
        mean = mean.to(torch.promote_types(mean.dtype, torch.float32))
        if self.bound == "truncated":
            return self._truncated_loc(mean)  # inside [low, high]: it is its own mode
        if self.bound == "tanh":  # TanhNormal's mode, term for term
            return 0.5 * (self.high + self.low) + 0.5 * (self.high - self.low) * torch.tanh(mean)
        return mean

    def _truncated_loc(self, mean: torch.Tensor) -> torch.Tensor:
        """The truncated normal's location: ``mean`` squashed into [low, high]."""
        half = 0.5 * (self.high - self.low)
        return (self.low + half) + half * torch.tanh(mean)

    def _gaussian_log_std(self, log_w: torch.Tensor) -> torch.Tensor:
        """Split the log-std budget by w so the Gaussian's entropy is the target.

        The identity of docs/activations.md §1.
        """
        target = torch.as_tensor(self.target_entropy, dtype=log_w.dtype, device=log_w.device)
        if self.compensation is not None:
            target = target + self.compensation.delta.to(log_w)
        budget = target - self.action_dim * (HALF_LOG_2PIE + self.log_std_max)
        # delta can push the target past sigma_max; the Gaussian then stops at sigma_max.
        budget = budget.clamp(max=0)
        return (self.log_std_max + budget * log_w.exp()).clamp(min=self.log_std_min)

    def _check_inputs(self, mean: torch.Tensor, pre_std: torch.Tensor) -> None:
        if not (torch.is_tensor(mean) and torch.is_tensor(pre_std)):
            raise TypeError("mean and pre_std must be tensors")
        if not (mean.is_floating_point() and pre_std.is_floating_point()):
            raise TypeError(
                f"mean and pre_std must be floating point, got {mean.dtype}, {pre_std.dtype}"
            )
        if mean.shape != pre_std.shape or mean.ndim == 0 or mean.shape[-1] != self.action_dim:
            raise ValueError(
                f"mean and pre_std must both have shape [..., {self.action_dim}] "
                f"(action_dim={self.action_dim}), got {tuple(mean.shape)} and "
                f"{tuple(pre_std.shape)}"
            )
        self._check_finite("mean", mean)
        self._check_finite("pre_std", pre_std)

    @staticmethod
    def _check_finite(name: str, x: torch.Tensor) -> None:
        if torch.compiler.is_compiling():  # a data-dependent branch would break the graph
            return
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(
                f"{name} has {bad} non-finite entries (NaN or inf) among {x.numel()}; "
                "GaussianERA needs finite network outputs"
            )

    def extra_repr(self) -> str:
        return (
            f"action_dim={self.action_dim}, target_entropy={self.target_entropy}, "
            f"bound={self.bound!r}, mode={self.mode!r}, low={self.low}, high={self.high}, "
            f"log_std=[{self.log_std_min}, {self.log_std_max}]"
        )


class _ExactTruncatedLogStd(torch.autograd.Function):
    """Per-state log-stds whose truncated-normal entropies sum exactly to the target.

    The Gaussian identity (docs/activations.md §1) removes entropy from each dimension in
    proportion to ``w = softmax(pre_std)``: for a Gaussian, removing ``w_i * B`` nats from
    dimension i is the same as lowering its log-std by ``w_i * B``. We apply that split to the
    truncated normal's own entropies:

    1. Each dimension's entropy ranges over [h_min_i, h_max_i] (at sigma_min, sigma_max).
    2. The budget ``B = sum_i h_max_i - target`` is split as ``min(w_i * level, cap_i)``,
       ``cap_i = h_max_i - h_min_i``, with the level chosen so the parts sum to B
       (water-filling: what a capped dimension cannot give, the others give in proportion
       to their weights). This is piecewise linear, solved exactly after one sort. For an
       untruncated Gaussian it is exactly the root over K that the clipped identity asks for.
    3. Each dimension then inverts its own entropy, monotone in log sigma, by Newton steps on
       ``phi(H) = -log(expm1(-4*(H - log W)))/4`` (W = high - low), which is close to linear
       in log sigma both where the entropy grows like log sigma and where it saturates
       towards log W (like sigma^-4). No coupling between dimensions, no Python loop over
       states, a fixed number of steps.
    4. Backward is the implicit-function-theorem gradient, in closed form (see ``backward``);
       the forward pass records no graph.

    States whose target exceeds sum_i h_max_i are unreachable: all sigma = sigma_max there.
    The solve runs in the input dtype, or in float64 when sigma_max is so wide that float32
    cannot resolve the entropy's approach to log W (see ``_FLOAT32_WIDEST_LOG_STD``).
    Inputs: loc [..., D] inside [low, high], log_w = log_softmax(pre_std), then the floats
    target, low, high, log_std_min, log_std_max, and ``with_grad``: False skips the derivatives
    only backward needs (a third of the work; a critic target or an action needs none).
    Returns (log_std, unreachable).
    """

    @staticmethod
    def forward(ctx, loc, log_w, target, low, high, l_min, l_max, with_grad):
        log_width = math.log(high - low)
        dtype = loc.dtype
        if l_max - log_width > _FLOAT32_WIDEST_LOG_STD:
            loc, log_w = loc.double(), log_w.double()
        l_top = min(l_max, log_width + _FLOAT64_WIDEST_LOG_STD)
        to_low, to_high = low - loc, high - loc
        extremes = torch.tensor([l_max, l_min], dtype=loc.dtype, device=loc.device)
        h_ext, _, dh_ext = inside_entropy(
            to_low, to_high, extremes.view(2, *[1] * loc.ndim), loc_grad=with_grad
        )
        h_max, h_min = h_ext.unbind(0)
        budget = h_max.sum(-1) - target
        unreachable = budget < 0
        capped, share, rest = _water_fill(log_w, h_max - h_min, budget.clamp(min=0))
        goal = _phi(torch.where(capped, h_min, h_max - rest * share) - log_width)

        log_std = _initial_log_std(to_low, to_high, goal, log_width).clamp(l_min, l_top)
        for _ in range(_NEWTON_STEPS[loc.dtype == torch.float64]):
            entropy, slope, _ = inside_entropy(to_low, to_high, log_std, slope=True)
            unit = (entropy - log_width).clamp(max=-torch.finfo(loc.dtype).tiny)
            e = torch.expm1(-4 * unit)
            step = (-0.25 * torch.log(e) - goal) * e / (slope * (1 + e))  # residual / phi'
            log_std = (log_std - step).clamp(l_min, l_top)

        ctx.mark_non_differentiable(unreachable)
        if not with_grad:
            return torch.where(log_std >= l_top, l_max, log_std).to(dtype), unreachable
        _, slope, d_loc = inside_entropy(to_low, to_high, log_std, slope=True, loc_grad=True)
        interior = (log_std > l_min) & (log_std < l_top)  # elsewhere log_std is constant
        log_std = torch.where(log_std >= l_top, l_max, log_std)  # NaN stays NaN
        inv_slope = torch.where(interior, 1 / slope, torch.zeros_like(slope))
        # d(own entropy goal)/d(loc): h_min for capped dims, h_max for the others
        d_goal = torch.where(capped, dh_ext[1], dh_ext[0])
        coupled = (~unreachable).unsqueeze(-1).to(loc.dtype)  # budget clamped at 0 otherwise
        saved = (inv_slope, d_loc, d_goal, share, rest * coupled, coupled)
        ctx.save_for_backward(*(t.to(dtype) for t in saved))
        return log_std.to(dtype), unreachable

    @staticmethod
    def backward(ctx, grad_log_std, _):
        """Vector-Jacobian product by the implicit function theorem.

        Each log_std_i solves H(loc_i, log_std_i) = h_i with h_i = h_max_i - rest * share_i
        (uncapped) or h_min_i (capped), rest = sum_uncapped h_max + sum_capped h_min - target,
        share = softmax of log_w over the uncapped dims. With v_i = g_i / (dH/dlog_std) and
        v_bar = sum_i share_i v_i (the pull of all dims on ``rest``):
        dL/dloc_i = (v_i - v_bar) * dh_edge_i/dloc - v_i * dH/dloc and
        dL/dlog_w_i = -rest * share_i * (v_i - v_bar).
        """
        inv_slope, d_loc, d_goal, share, rest, coupled = ctx.saved_tensors
        v = grad_log_std * inv_slope
        gap = v - (share * v).sum(-1, keepdim=True) * coupled
        grad_loc = d_goal * gap - v * d_loc
        grad_log_w = -rest * share * gap
        return grad_loc, grad_log_w, None, None, None, None, None, None


def _phi(unit_entropy: torch.Tensor) -> torch.Tensor:
    """-log(expm1(-4 u))/4 for u = entropy - log(high - low) < 0; ~linear in log sigma."""
    unit_entropy = unit_entropy.clamp(max=-torch.finfo(unit_entropy.dtype).tiny)
    return -0.25 * torch.log(torch.expm1(-4 * unit_entropy))


def _initial_log_std(to_low, to_high, goal, log_width: float) -> torch.Tensor:
    """Invert phi(H) ~ log sigma + log(sqrt(2*pi*e)) - log W, plus up to log 2 as sigma grows
    past the distance d to the nearest bound (the density is then cut about in half). The
    smooth step sigmoid(2.5 * log(sigma/d)) was fitted once for the smallest worst-case error
    (0.08 nats); the geometry is scale-free, so it holds for every interval and sigma range."""
    guess = goal + (log_width - HALF_LOG_2PIE)
    edge = torch.minimum(-to_low, to_high).clamp(min=torch.finfo(goal.dtype).tiny)
    return guess + math.log(2.0) * torch.sigmoid(2.5 * (guess - torch.log(edge)))


def _water_fill(
    log_w: torch.Tensor, caps: torch.Tensor, budget: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``budget`` (>= 0, shape [...]) over the last dim as ``min(w_i * level, cap_i)``.

    The total is increasing and piecewise linear in ``level``, with a kink where each dimension
    reaches its cap (level = cap_i / w_i). Sorting the kinks finds the segment that holds the
    budget; there the uncapped dimensions share what the capped ones leave (``rest``) in
    proportion to their weights (``share``, 0 for capped dims). Weights enter as logs, so tiny
    or zero weights (pre_std spread over hundreds) cause no overflow or NaN. If the capped
    dimensions cannot give the whole budget (only when some weights underflow to 0), every
    weighted dimension gives its cap. Returns (capped, share, rest[..., None]).
    """
    log_kinks, order = (torch.log(caps) - log_w).sort(dim=-1)
    log_w_sorted = log_w.gather(-1, order)
    # log of the total weight strictly after each position (-inf after the last)
    log_w_after = torch.logcumsumexp(log_w_sorted.flip(-1), dim=-1).flip(-1)
    log_w_after = torch.cat(
        [log_w_after[..., 1:], torch.full_like(log_w_after[..., :1], -math.inf)], dim=-1
    )
    given_at_kink = caps.gather(-1, order).cumsum(-1) + torch.exp(log_kinks + log_w_after)
    n_capped = (given_at_kink <= budget.unsqueeze(-1)).sum(-1, keepdim=True)
    ranks = torch.arange(log_w.shape[-1], device=log_w.device)
    capped = torch.zeros_like(log_w, dtype=torch.bool).scatter(-1, order, ranks < n_capped)
    all_capped = capped.all(-1, keepdim=True)
    rest = (budget.unsqueeze(-1) - (caps * capped).sum(-1, keepdim=True)).clamp(min=0)
    free_log_w = log_w.masked_fill(capped, -math.inf).masked_fill(all_capped, 0.0)
    share = torch.softmax(free_log_w, dim=-1).masked_fill(all_capped, 0.0)
    return capped, share, rest
