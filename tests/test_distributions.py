"""Tests for era.distributions: the truncated normal and the tanh-squashed normal.

References: scipy.stats.truncnorm where it is accurate (locations inside or a few scales
outside the interval) and a 50-digit mpmath evaluation of the textbook formulas everywhere,
including the far tails where scipy's entropy is wrong or NaN (e.g. loc=-5, scale=0.5 on
[-1, 1]: scipy -3.88, true -1.80).
"""

import itertools
import math

import pytest
import torch
from torch.autograd import gradcheck

from era.distributions import TanhNormal, TruncatedNormal

mpmath = pytest.importorskip("mpmath")
stats = pytest.importorskip("scipy.stats")

LOW, HIGH = -1.0, 1.0
INSIDE_LOCS = [-1.0, -0.999, -0.5, 0.0, 0.3, 0.99, 1.0]
TAIL_LOCS = [-50.0, -5.0, -1.5, -1.0001, 1.01, 2.0, 5.0, 50.0]
SCALES = [1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, math.exp(2)]


def mp_truncnorm(loc: float, scale: float, low: float = LOW, high: float = HIGH) -> dict:
    """Entropy, mean, variance, log-density and CDF of TN(loc, scale; low, high), 50 digits."""
    with mpmath.workdps(50):
        m, s = mpmath.mpf(loc), mpmath.mpf(scale)
        a, b = (low - m) / s, (high - m) / s
        if a <= 0:
            z = mpmath.ncdf(b) - mpmath.ncdf(a)
        else:  # mass from the upper tails: no cancellation to 1 - 1
            z = mpmath.ncdf(-a) - mpmath.ncdf(-b)
        pa, pb = mpmath.npdf(a), mpmath.npdf(b)
        kappa = (pa - pb) / z
        nu = (a * pa - b * pb) / z

        def log_prob(x):
            with mpmath.workdps(50):
                t = (mpmath.mpf(x) - m) / s
                return float(-t * t / 2 - mpmath.log(mpmath.sqrt(2 * mpmath.pi) * s * z))

        def cdf(x):
            with mpmath.workdps(50):
                t = (mpmath.mpf(x) - m) / s
                if a <= 0:
                    return float((mpmath.ncdf(t) - mpmath.ncdf(a)) / z)
                return float((mpmath.ncdf(-a) - mpmath.ncdf(-t)) / z)

        return {
            "entropy": float(mpmath.log(mpmath.sqrt(2 * mpmath.pi * mpmath.e) * s * z) + nu / 2),
            "mean": float(m + s * kappa),
            "variance": float(s * s * (1 + nu - kappa * kappa)),
            "log_prob": log_prob,
            "cdf": cdf,
        }


def tn(loc, scale, dtype=torch.float64, **kwargs) -> TruncatedNormal:
    return TruncatedNormal(
        torch.tensor(loc, dtype=dtype), torch.tensor(scale, dtype=dtype), **kwargs
    )


# --- TruncatedNormal against references --------------------------------------------------------


def _within_three_scales(loc: float, scale: float) -> bool:
    return (LOW - loc) / scale <= 3 and (loc - HIGH) / scale <= 3


@pytest.mark.parametrize(
    "loc,scale",
    [p for p in itertools.product(INSIDE_LOCS + [-5.0, 2.0], SCALES) if _within_three_scales(*p)],
)
def test_truncated_normal_matches_scipy(loc, scale):
    """Locations inside or up to three scales outside: scipy is accurate there (further out
    its entropy is not; the mpmath test covers those)."""
    ref = stats.truncnorm((LOW - loc) / scale, (HIGH - loc) / scale, loc=loc, scale=scale)
    d = tn(loc, scale)
    assert d.entropy().item() == pytest.approx(ref.entropy(), abs=1e-9)
    assert d.mean.item() == pytest.approx(ref.mean(), abs=1e-9 * scale)
    assert d.variance.item() == pytest.approx(ref.var(), rel=1e-7, abs=1e-14)
    x = torch.linspace(LOW, HIGH, 41, dtype=torch.float64)
    lp_ref = torch.tensor(ref.logpdf(x.numpy()))
    finite = torch.isfinite(lp_ref)
    assert torch.allclose(d.log_prob(x)[finite], lp_ref[finite], rtol=1e-9, atol=1e-9)
    assert torch.allclose(d.cdf(x), torch.tensor(ref.cdf(x.numpy())), atol=1e-10)


@pytest.mark.parametrize("loc,scale", list(itertools.product(INSIDE_LOCS + TAIL_LOCS, SCALES)))
def test_truncated_normal_matches_mpmath_including_far_tails(loc, scale):
    ref = mp_truncnorm(loc, scale)
    d = tn(loc, scale)
    assert d.entropy().item() == pytest.approx(ref["entropy"], abs=1e-9)
    assert d.mean.item() == pytest.approx(ref["mean"], abs=1e-9 * scale)
    assert d.variance.item() == pytest.approx(ref["variance"], rel=1e-6)
    for frac in [0.0, 1e-6, 1e-3, 0.25, 0.5, 0.75, 0.999, 1.0]:
        x = LOW + (HIGH - LOW) * frac
        lp = d.log_prob(torch.tensor(x, dtype=torch.float64)).item()
        expected = ref["log_prob"](x)
        assert lp == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert d.cdf(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(
            ref["cdf"](x), abs=1e-9
        )


@pytest.mark.parametrize(
    "loc,scale", [(0.3, 0.2), (1.0, 0.05), (-5.0, 1.0), (2.0, 0.3), (-50.0, 1e-3)]
)
def test_icdf_inverts_cdf(loc, scale):
    d = tn(loc, scale)
    u = torch.tensor([1e-6, 1e-3, 0.1, 0.5, 0.9, 0.999, 1 - 1e-6], dtype=torch.float64)
    x = d.icdf(u)
    assert ((x >= LOW) & (x <= HIGH)).all()
    # up to the CDF's change over the rounding of x itself (2 ulps)
    resolution = d.log_prob(x).exp() * x.abs() * 4 * torch.finfo(torch.float64).eps
    assert ((d.cdf(x) - u).abs() <= 1e-9 * u + resolution).all()


def test_batch_mixes_inside_and_tail_locations():
    """One batch holding both kinds takes both code paths and matches elementwise results."""
    locs = [0.2, -5.0, 1.0, 3.0, -1.2]
    scales = [0.5, 1.0, 0.1, 0.01, 2.0]
    batch = TruncatedNormal(
        torch.tensor(locs, dtype=torch.float64), torch.tensor(scales, dtype=torch.float64)
    )
    x = torch.tensor(0.4, dtype=torch.float64)
    for i, (loc, scale) in enumerate(zip(locs, scales, strict=True)):
        single = tn(loc, scale)
        assert batch.entropy()[i].item() == pytest.approx(single.entropy().item(), abs=1e-12)
        assert batch.log_prob(x)[i].item() == pytest.approx(single.log_prob(x).item(), rel=1e-12)
        assert batch.cdf(x)[i].item() == pytest.approx(single.cdf(x).item(), abs=1e-12)


@pytest.mark.parametrize(
    "loc,scale",
    [
        (0.0, 0.3),
        (0.9, 0.05),
        (-2.0, 0.5),
        (1.5, 2.0),
        (0.0, math.exp(2)),
        (-5.0, 1e-3),
        (0.999, 1e-3),
    ],
)
def test_density_integrates_to_one(loc, scale):
    d = tn(loc, scale)
    # dense near both bounds (tail cases put all mass within a few scale^2/distance of one)
    offsets = torch.logspace(-14, math.log10(HIGH - LOW), 200_001, dtype=torch.float64)
    ends = torch.tensor([LOW, HIGH], dtype=torch.float64)
    grid = torch.unique(torch.cat([ends, LOW + offsets, HIGH - offsets]).clamp(LOW, HIGH))
    assert torch.trapezoid(d.log_prob(grid).exp(), grid).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("loc,scale", [(0.3, 0.4), (1.0, 0.2), (-1.5, 0.5), (3.0, 1.0)])
def test_samples_in_bounds_and_follow_the_cdf(loc, scale):
    """Kolmogorov-Smirnov distance of 20k samples from the analytic CDF (fixed seed)."""
    torch.manual_seed(0)
    d = tn(loc, scale)
    x = d.sample((20_000,))
    assert x.shape == (20_000,)
    assert ((x >= LOW) & (x <= HIGH)).all()
    xs, _ = x.sort()
    cdf = d.cdf(xs)
    n = xs.numel()
    ks = torch.maximum(
        torch.arange(1, n + 1, dtype=torch.float64) / n - cdf, cdf - torch.arange(n) / n
    ).max()
    assert ks.item() < 1.63 / math.sqrt(n)  # the 1% critical value


def test_sample_mean_and_variance_match_the_moments():
    torch.manual_seed(1)
    d = TruncatedNormal(
        torch.tensor([0.5, -3.0], dtype=torch.float64),
        torch.tensor([0.7, 1.0], dtype=torch.float64),
    )
    x = d.sample((200_000,))
    assert torch.allclose(x.mean(0), d.mean, atol=4 * (d.variance / 200_000).sqrt().max().item())
    assert torch.allclose(x.var(0), d.variance, rtol=0.02)


def test_mode_is_the_clamped_location_and_support():
    # validate_args explicit: importing TorchRL turns torch's default validation off process-wide
    d = TruncatedNormal(
        torch.tensor([-3.0, 0.2, 7.0]), torch.tensor(1.0), low=-0.5, high=2.0, validate_args=True
    )
    assert torch.equal(d.mode, torch.tensor([-0.5, 0.2, 2.0]))
    assert d.support.check(torch.tensor([-0.5, 0.0, 2.0])).all()
    assert d.support.check(torch.tensor([-0.6, 0.0, 2.1])).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor(2.5))
    unchecked = TruncatedNormal(d.loc, d.scale, low=-0.5, high=2.0, validate_args=False)
    assert unchecked.log_prob(torch.tensor(2.5)).isneginf().all()
    assert d.batch_shape == (3,) and d.event_shape == ()


@pytest.mark.parametrize(
    "locs,scales",
    [
        ([0.3, -0.9, 0.99, 1.0], [0.2, 1.5, 0.05, 0.7]),
        ([-5.0, 3.0, 1.5, -1.2], [1.0, 0.5, 0.3, 2.0]),
    ],
    ids=["inside", "tails"],
)
def test_gradcheck_entropy_log_prob_cdf_and_rsample(locs, scales):
    loc = torch.tensor(locs, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(scales, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([0.1, -0.5, 0.9, 0.95], dtype=torch.float64)

    def rsample(m, s):
        torch.manual_seed(3)  # the same uniform draws at every evaluation
        return TruncatedNormal(m, s).rsample((2,))

    for fn in [
        lambda m, s: TruncatedNormal(m, s).entropy(),
        lambda m, s: TruncatedNormal(m, s).log_prob(x),
        lambda m, s: TruncatedNormal(m, s).cdf(x),
        lambda m, s: TruncatedNormal(m, s).mean,
        lambda m, s: TruncatedNormal(m, s).variance,
        rsample,
    ]:
        assert gradcheck(fn, (loc, scale))


@pytest.mark.parametrize("loc", [5.0, -5.0, 0.0, 1.0])
@pytest.mark.parametrize("scale", [1e-3, math.exp(2)])
def test_float32_tails_are_finite_and_accurate(loc, scale):
    """float32 at a location far out with a tiny scale, and with the widest scale."""
    torch.manual_seed(0)
    loc32 = torch.tensor(loc, requires_grad=True)
    scale32 = torch.tensor(scale, requires_grad=True)
    d = TruncatedNormal(loc32, scale32)
    ref = mp_truncnorm(loc32.item(), scale32.item())
    assert d.entropy().item() == pytest.approx(ref["entropy"], abs=1e-4)
    assert d.mean.item() == pytest.approx(ref["mean"], abs=1e-4 * scale)
    assert d.variance.item() == pytest.approx(ref["variance"], rel=1e-3)
    x = d.rsample((1000,))
    assert ((x >= LOW) & (x <= HIGH)).all()
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all()
    (x.sum() + lp.sum() + d.entropy()).backward()
    assert torch.isfinite(loc32.grad) and torch.isfinite(scale32.grad)


# --- TanhNormal --------------------------------------------------------------------------------


def mp_tanh_log_prob(action: float, loc: float, scale: float) -> float:
    """log N(atanh(a); loc, scale) - log(1 - a^2), 50 digits."""
    with mpmath.workdps(50):
        a = mpmath.mpf(action)
        x = mpmath.atanh(a)
        log_normal = -(((x - loc) / scale) ** 2) / 2 - mpmath.log(
            mpmath.sqrt(2 * mpmath.pi) * scale
        )
        return float(log_normal - mpmath.log((1 - a) * (1 + a)))


@pytest.mark.parametrize("action", [-1 + 1e-12, -0.999999, -0.5, 0.0, 0.7, 0.999999, 1 - 1e-12])
def test_tanh_normal_log_prob_matches_change_of_variables(action):
    d = TanhNormal(torch.tensor(0.4, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64))
    lp = d.log_prob(torch.tensor(action, dtype=torch.float64)).item()
    assert lp == pytest.approx(mp_tanh_log_prob(action, 0.4, 1.7), rel=1e-9)


def test_tanh_normal_log_prob_of_its_own_sample_uses_the_pre_squash_value():
    """float32 tanh saturates to exactly 1 for x > 9; the cached x keeps log_prob exact."""
    torch.manual_seed(0)
    d = TanhNormal(torch.full((1000,), 12.0), torch.tensor(1.0))
    a = d.rsample()
    assert (a == 1.0).any()
    lp = d.log_prob(a)
    assert torch.isfinite(lp).all()
    pre = d._cache[1].double()
    expected = torch.distributions.Normal(12.0, 1.0).log_prob(pre) - 2 * (
        math.log(2) - pre - torch.nn.functional.softplus(-2 * pre)
    )
    assert torch.allclose(lp.double(), expected, atol=1e-4)
    # the same values passed as a fresh tensor are clamped instead: finite, not exact
    assert torch.isfinite(d.log_prob(a.clone())).all()


def test_tanh_normal_bounds_mode_and_entropy():
    torch.manual_seed(0)
    d = TanhNormal(torch.tensor([0.0, 3.0]), torch.tensor([0.5, 0.1]), low=0.0, high=4.0)
    assert torch.allclose(d.mode, 2.0 + 2.0 * torch.tanh(torch.tensor([0.0, 3.0])))
    a = d.sample((5000,))
    assert ((a >= 0) & (a <= 4)).all()
    with pytest.raises(NotImplementedError, match="entropy_estimate"):
        d.entropy()
    # Monte Carlo entropy against -E[log_prob] on many independent samples
    reference = -d.log_prob(d.sample((200_000,))).mean(0)
    assert torch.allclose(d.entropy_estimate(num_samples=20_000), reference, atol=0.02)
    with pytest.raises(ValueError, match="num_samples"):
        d.entropy_estimate(num_samples=0)


def test_tanh_normal_density_integrates_to_one_on_its_interval():
    d = TanhNormal(
        torch.tensor(0.3, dtype=torch.float64),
        torch.tensor(0.8, dtype=torch.float64),
        low=-2.0,
        high=1.0,
    )
    grid = torch.linspace(-2.0, 1.0, 400_001, dtype=torch.float64)[1:-1]
    assert torch.trapezoid(d.log_prob(grid).exp(), grid).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("cls", [TruncatedNormal, TanhNormal])
def test_bad_bounds_raise(cls):
    with pytest.raises(ValueError, match=r"low < high.*low=1\.0, high=1\.0"):
        cls(torch.tensor(0.0), torch.tensor(1.0), low=1.0, high=1.0)
    with pytest.raises(ValueError, match="low < high"):
        cls(torch.tensor(0.0), torch.tensor(1.0), low=-math.inf, high=1.0)
