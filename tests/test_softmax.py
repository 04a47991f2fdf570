"""Tests for era.softmax: the exact W₋₁, the entropy floor, and argument checks."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era.softmax import SoftmaxERA, feasible_min_entropy, lambertw_m1, softmax_era

scipy_special = pytest.importorskip("scipy.special")
mpmath = pytest.importorskip("mpmath")

INV_E = math.exp(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) in float64, so the check adds no error of its own."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def mp_lambertw_m1(x: float) -> float:
    with mpmath.workdps(40):
        return float(mpmath.lambertw(mpmath.mpf(x), -1).real)


def random_logits(n: int, rows: int, max_scale: float, seed: int) -> torch.Tensor:
    """Gaussian logits at log-spaced scales up to max_scale; row 0 constant, row 1 one-hot."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, math.log10(max_scale), rows)[:, None]
    z = torch.randn(rows, n, generator=g, dtype=torch.float64) * scales
    z[0] = 0
    z[1] = 0
    z[1, n // 2] = 1e4
    return z


# ---------------------------------------------------------------------------------------------
# lambertw_m1
# ---------------------------------------------------------------------------------------------


def test_lambertw_m1_float64_matches_scipy_away_from_branch_point():
    x = -torch.logspace(math.log10(INV_E - 1e-3), -300, 4000, dtype=torch.float64)
    ref = torch.from_numpy(scipy_special.lambertw(x.numpy(), -1).real)
    rel = ((lambertw_m1(x) - ref) / ref).abs()
    assert rel.max() < 1e-12


def test_lambertw_m1_float64_near_branch_point():
    # scipy loses up to 1e-4 relative accuracy here, so the reference is mpmath.
    x = -INV_E + torch.logspace(-16, -3, 300, dtype=torch.float64)
    ref = torch.tensor([mp_lambertw_m1(v) for v in x.tolist()], dtype=torch.float64)
    rel = ((lambertw_m1(x) - ref) / ref).abs()
    assert rel.max() < 1e-12


def test_lambertw_m1_float32_whole_branch():
    near = -INV_E + torch.logspace(-8, -1, 300, dtype=torch.float64)
    far = -torch.logspace(math.log10(0.26), -30, 700, dtype=torch.float64)
    x = torch.cat([near, far]).float()
    x = x[x >= -INV_E]  # the float32 rounding of −1/e + tiny can fall just outside the domain
    ref = torch.tensor([mp_lambertw_m1(v) for v in x.double().tolist()], dtype=torch.float64)
    w = lambertw_m1(x)
    assert w.dtype == torch.float32
    rel = ((w.double() - ref) / ref).abs()
    assert rel.max() < 4 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lambertw_m1_inverts_w_exp_w(dtype):
    x = -torch.logspace(math.log10(INV_E), -30, 2000, dtype=dtype)
    w = lambertw_m1(x).double()
    assert (w <= -1).all()
    rel = ((w * w.exp() - x.double()) / x.double()).abs()
    assert rel.max() < 100 * torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lambertw_m1_half_inputs_computed_in_float32(dtype):
    x = -torch.linspace(0.36, 1e-3, 200).to(dtype)
    w = lambertw_m1(x)
    assert w.dtype == dtype
    assert torch.equal(w, lambertw_m1(x.float()).to(dtype))


def test_lambertw_m1_domain_policy():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.tensor([-INV_E, 0.0, -0.0, 1e-3, -0.38, -0.5, math.nan], dtype=dtype)
        w = lambertw_m1(x)
        # −1/e rounds outward (counts as the branch point) except in bfloat16 (to −0.3672).
        if dtype == torch.bfloat16:
            assert -1.1 < w[0] < -1
        else:
            assert w[0] == -1
        assert w[1] == -math.inf and w[2] == -math.inf
        assert w[3:].isnan().all()
    # The bfloat16 neighbour of −1/e on the outside still counts as the branch point ...
    assert lambertw_m1(torch.tensor([-0.369140625], dtype=torch.bfloat16)).item() == -1
    # ... but points outside by more than the rounding of −1/e do not.
    assert lambertw_m1(torch.tensor([-0.367881, -0.3679])).isnan().all()
    assert lambertw_m1(torch.tensor([-INV_E * (1 + 1e-15)], dtype=torch.float64)).isnan().all()


def test_lambertw_m1_rejects_integer_tensors():
    with pytest.raises(TypeError, match="floating-point"):
        lambertw_m1(torch.tensor([-1]))


def test_lambertw_m1_gradcheck():
    x = torch.tensor([-0.36, -0.3, -0.1, -1e-2, -1e-3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambertw_m1, (x,))


def test_lambertw_m1_gradient_finite_at_branch_point():
    x = torch.tensor([-INV_E], dtype=torch.float64, requires_grad=True)
    lambertw_m1(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.item() < -1e6


# ---------------------------------------------------------------------------------------------
# The floor
# ---------------------------------------------------------------------------------------------

LOW_PRECISION = [torch.float16, torch.bfloat16]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 5000),
    fraction=st.floats(0.01, 0.98),
    tau=st.floats(2.8, 20.0),
    max_scale=st.floats(1e-3, 1e4),
    dtype=st.sampled_from([torch.float32, torch.float64, *LOW_PRECISION]),
    seed=st.integers(0, 2**31 - 1),
)
def test_tight_floor_holds_for_any_input(n, fraction, tau, max_scale, dtype, seed):
    min_entropy = fraction * math.log(n)
    z = random_logits(n, 32, max_scale, seed).to(dtype)
    if dtype in LOW_PRECISION:
        z = z.float()  # low-precision inputs, float32 compute (output rounding: see below)
    out = softmax_era(z, min_entropy, tau=tau)
    assert out.dtype == z.dtype and out.shape == z.shape and out.isfinite().all()
    h = entropy(out)
    assert h.min() >= min_entropy - 1e-4
    # The one-hot row attains the floor: it is tight, not merely valid.
    assert h[1] == pytest.approx(min_entropy, abs=1e-4)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_output_is_float32_result_rounded(dtype):
    z = random_logits(100, 64, 1e4, seed=0).to(dtype)
    out = softmax_era(z, 0.6)
    assert out.dtype == dtype and out.isfinite().all()
    assert torch.equal(out, softmax_era(z.float(), 0.6).to(dtype))


def test_extreme_inputs_stay_finite():
    for n in (2, 10, 1000):
        z = torch.zeros(5, n)
        z[0, 0], z[1, 0], z[2] = 1e4, -1e4, torch.linspace(-1e4, 1e4, n)
        z[3, :] = 3e38
        z[4] = torch.finfo(torch.float32).min
        for floor, inverse in (("tight", "exact"), ("paper", "exact"), ("paper", "approx")):
            out = softmax_era(z, 0.5, floor=floor, inverse=inverse)
            assert out.isfinite().all()
    # Lowest feasible targets: the shares of unlikely classes underflow to zero.
    for floor in ("tight", "paper"):
        low, _ = feasible_min_entropy(10, 4.0, floor)
        out = softmax_era(random_logits(10, 16, 1e4, seed=1), low, floor=floor)
        assert out.isfinite().all()


def test_adversary_cannot_push_entropy_below_floor():
    """Adam on the input logits, minimising the output entropy, gets close to but never below."""
    min_entropy = 0.6
    era = SoftmaxERA(10, min_entropy)
    z = random_logits(10, 16, 3.0, seed=2).float().requires_grad_()
    opt = torch.optim.Adam([z], lr=0.1)
    lowest = math.inf
    for _ in range(400):
        h = entropy(era(z))
        lowest = min(lowest, h.min().item())
        opt.zero_grad()
        h.sum().backward()
        opt.step()
    assert z.grad.isfinite().all()
    assert min_entropy - 1e-4 <= lowest < min_entropy + 0.02


def test_output_grad_finite_for_saturated_logits():
    z = torch.zeros(3, 1000)
    z[0, 0], z[1, 0], z[2] = 1e4, -1e4, torch.linspace(-1e4, 1e4, 1000)
    z.requires_grad_()
    entropy(softmax_era(z, 0.6)).sum().backward()
    assert z.grad.isfinite().all()


# ---------------------------------------------------------------------------------------------
# The paper's variant, order, gradients
# ---------------------------------------------------------------------------------------------


def paper_formula(z: torch.Tensor, min_entropy: float, tau: float, exact: bool) -> torch.Tensor:
    """The formula of docs/activations.md §2 written out directly, in float64."""
    n = z.shape[-1]
    p = torch.softmax(z.double(), -1)
    c = math.exp(min_entropy - 1)
    u_max = math.log(tau) / tau
    slope = (u_max - c / n) / (1 - 1 / n)
    y = slope * p + (c - slope) / n
    if exact:
        return torch.from_numpy(scipy_special.lambertw(-y.numpy(), -1).real)
    u = -1 - torch.log(y)
    return -1 - torch.sqrt(2 * u) - 0.75 * u


@pytest.mark.parametrize("inverse", ["exact", "approx"])
def test_paper_floor_matches_formula(inverse):
    z = random_logits(37, 64, 30.0, seed=3)
    out = softmax_era(z, 0.6, tau=5.0, floor="paper", inverse=inverse)
    ref = paper_formula(z, 0.6, 5.0, exact=inverse == "exact")
    assert torch.allclose(out, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("n", "inverse", "expected_min", "expected_top"),
    [(10, "exact", 0.97, 0.79), (1000, "exact", 1.12, 0.89), (1000, "approx", 1.46, 0.85)],
)
def test_paper_floor_is_loose(n, inverse, expected_min, expected_top):
    """docs/activations.md §2: with τ = 4, H0 = 0.6 the paper's floor sits far above 0.6."""
    era = SoftmaxERA(n, 0.6, floor="paper", inverse=inverse)
    h = entropy(era(random_logits(n, 2000, 1e3, seed=4)))
    assert h.min() == pytest.approx(expected_min, abs=0.01)
    assert h.min() > 0.6 + 0.35
    assert era.max_probability == pytest.approx(expected_top, abs=0.01)
    # The tight floor with the same target reaches 0.6 and allows more confident outputs.
    tight = SoftmaxERA(n, 0.6)
    assert entropy(tight(random_logits(n, 2000, 1e3, seed=4))).min() == pytest.approx(0.6, abs=1e-4)
    assert tight.max_probability > era.max_probability


def test_max_probability_is_the_top_probability_cap():
    era = SoftmaxERA(50, 1.0)
    probs = torch.softmax(era(random_logits(50, 500, 1e4, seed=5)).double(), -1)
    assert probs.max() <= era.max_probability + 1e-6
    assert probs.max() == pytest.approx(era.max_probability, abs=1e-6)  # the one-hot row


@pytest.mark.parametrize(("floor", "inverse"), [("tight", "exact"), ("paper", "approx")])
def test_order_of_logits_is_preserved(floor, inverse):
    z = random_logits(200, 64, 1e4, seed=6)
    out = softmax_era(z, 1.0, floor=floor, inverse=inverse)
    order = z.argsort(-1)
    assert (out.gather(-1, order).diff(dim=-1) >= 0).all()
    # Where the probabilities do not underflow, strictly.
    z = random_logits(200, 64, 5.0, seed=7)
    out = softmax_era(z, 1.0, floor=floor, inverse=inverse)
    assert (out.gather(-1, z.argsort(-1)).diff(dim=-1)[2:] > 0).all()


@pytest.mark.parametrize(
    ("floor", "inverse"), [("tight", "exact"), ("paper", "exact"), ("paper", "approx")]
)
def test_softmax_era_gradcheck(floor, inverse):
    z = random_logits(6, 5, 4.0, seed=8)[2:].requires_grad_()
    f = lambda x: softmax_era(x, 0.8, floor=floor, inverse=inverse, dim=0)
    assert torch.autograd.gradcheck(f, (z,))


def test_module_matches_function_and_dim_argument():
    era = SoftmaxERA(7, 0.9, tau=6.0)
    z = random_logits(7, 8, 10.0, seed=9).float()
    assert torch.equal(era(z), softmax_era(z, 0.9, tau=6.0))
    assert torch.allclose(softmax_era(z.T, 0.9, tau=6.0, dim=0), softmax_era(z, 0.9, tau=6.0).T)
    assert "floor='tight'" in repr(era) and "num_classes=7" in repr(era)
    assert list(era.state_dict()) == []  # nothing for model.half() to round


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "tau", "floor", "bad", "interval"),
    [
        (10, 4.0, "tight", 2.31, "[0, 2.30259)"),
        (10, 4.0, "tight", -0.1, "[0, 2.30259)"),
        (1000, 4.0, "tight", math.log(1000), "[0, 6.90776)"),
        (10, 4.0, "paper", -0.1, "[-0.0596601, 2.24292)"),
        (10, 8.0, "paper", 2.0, "[-0.347342, 1.95524)"),
        (10, 4.0, "tight", math.nan, "[0, 2.30259)"),
    ],
)
def test_infeasible_min_entropy_names_the_interval(n, tau, floor, bad, interval):
    u_max = math.log(tau) / tau  # the interval in the message, recomputed (activations.md §2)
    low, high = (
        (0, math.log(n)) if floor == "tight" else (1 + math.log(u_max), 1 + math.log(n * u_max))
    )
    assert interval == f"[{low:.6g}, {high:.6g})"
    with pytest.raises(ValueError, match=re.escape(interval)):
        SoftmaxERA(n, bad, tau=tau, floor=floor)
    with pytest.raises(ValueError, match="min_entropy"):
        softmax_era(torch.zeros(3, n), bad, tau=tau, floor=floor)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"num_classes": 10.0}, "num_classes"),
        ({"tau": math.e}, "tau must be a finite number > e"),
        ({"tau": 2.0}, "tau"),
        ({"floor": "loose"}, "floor must be one of"),
        ({"inverse": "newton"}, "inverse must be one of"),
        ({"inverse": "approx"}, 'floor="tight" needs inverse="exact"'),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"num_classes": 10, "min_entropy": 0.5, **kwargs}
    with pytest.raises(ValueError, match=re.escape(match)):
        SoftmaxERA(**args)


def test_wrong_shape_or_dtype_at_call():
    with pytest.raises(ValueError, match=re.escape("expected logits [..., 10]")):
        SoftmaxERA(10, 0.5)(torch.zeros(4, 9))
    with pytest.raises(TypeError, match="floating-point"):
        softmax_era(torch.zeros(4, 10, dtype=torch.long), 0.5)


# --- inputs outside the domain ----------------------------------------------------------------


@pytest.mark.parametrize("inverse,floor", [("exact", "tight"), ("approx", "paper")])
@pytest.mark.parametrize(
    "row", [[math.nan, 0.0, 1.0, 2.0], [math.inf, 0.0, 1.0, 2.0], [-math.inf] * 4]
)
def test_rows_without_a_distribution_raise(row, inverse, floor):
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], row, row])
    with pytest.raises(ValueError, match=r"^logits has 2 row\(s\) without a distribution"):
        SoftmaxERA(4, 0.5, floor=floor, inverse=inverse)(logits)
    with pytest.raises(ValueError, match="logits has 2 row"):
        softmax_era(logits.T, 0.5, floor=floor, inverse=inverse, dim=0)


def test_minus_inf_logits_are_classes_with_probability_zero():
    """-inf is a legitimate logit (a masked class): it gets the smallest share, the floor holds."""
    era = SoftmaxERA(5, 0.8)
    logits = torch.tensor([[-math.inf, 0.0, 1.0, 2.0, 30.0], [-math.inf] * 4 + [0.0]])
    out = era(logits)
    assert torch.isfinite(out).all()
    assert (entropy(out) >= 0.8 - 1e-4).all()  # the float32 guarantee of docs/activations.md
    assert torch.equal(out[1, :4], out[1, :1].expand(4))  # all four masked classes alike


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_empty_batch_gives_an_empty_result(dtype):
    logits = torch.zeros(0, 7, dtype=dtype, requires_grad=True)
    out = SoftmaxERA(7, 1.0)(logits)
    assert out.shape == (0, 7) and out.dtype == dtype
    out.sum().backward()
    assert logits.grad.shape == (0, 7)
