"""Tests for era.jax.gaussian and era.jax.distributions: equal to the torch implementation
(values and gradients, float32 and float64), the exact per-state floor on adversarial inputs,
jit/vmap/grad, the Flax module and argument checks.

Tolerances follow from the operations. The exact mode solves each dimension's entropy to the
dtype's resolution (a few ulps of a sum over D dimensions), so two correct solvers agree on a
log-std to ``~D·ε / (dH/dlog σ)``: the entropy's slope is tiny where σ is far wider than the
interval. Gradients are trusted to ``ε·κ`` of their row's size, κ the conditioning of the map:
``1/(dH/dlog σ)`` from the implicit function theorem, times ``1/(1 − tanh²(mean))`` from the
location's tanh.
"""

import math
import re

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

import era.gaussian as torch_gaussian  # noqa: E402
from era.distributions import TanhNormal as TorchTanhNormal  # noqa: E402
from era.distributions import TruncatedNormal as TorchTruncatedNormal  # noqa: E402
from era.distributions import inside_entropy as torch_inside_entropy  # noqa: E402
from era.jax import GaussianERA, TanhNormal, TruncatedNormal, gaussian_era  # noqa: E402

CASES = [("truncated", "exact"), ("truncated", "delta"), ("none", "exact"), ("tanh", "delta")]


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run the test in both precisions; float64 needs JAX's x64 mode, restored afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param == "float64")
    yield np.dtype(request.param)
    jax.config.update("jax_enable_x64", previous)


def adversarial_inputs(dim: int, seed: int = 0, dtype=np.float32):
    """Means up to ±50 (locations at the bounds), pre_std up to ±1e3 and one-hot-like rows."""
    rng = np.random.default_rng(seed)
    means, pres = [], []
    for mean_scale in [0.0, 1.0, 5.0, 50.0]:
        for pre_scale in [0.0, 1.0, 30.0, 1e3]:
            means.append(rng.normal(size=(8, dim)) * mean_scale)
            pres.append(rng.normal(size=(8, dim)) * pre_scale)
    means += [np.full((4, dim), 50.0), np.full((4, dim), -50.0)]
    one_hot = np.zeros((8, dim))
    one_hot[:, 0] = [10.0, 30.0, 100.0, 1e3, -10.0, -30.0, -100.0, -1e3]
    pres.append(one_hot)
    return np.concatenate(means).astype(dtype), np.concatenate(pres).astype(dtype)


def true_entropy(dist) -> np.ndarray:
    """Entropy of the distribution the parameters define, in float64 by the torch class."""
    base = dist.base
    loc = torch.tensor(np.asarray(base.loc, np.float64))
    scale = torch.tensor(np.asarray(base.scale, np.float64))
    return TorchTruncatedNormal(loc, scale, base.low, base.high).entropy().sum(-1).numpy()


def _log_std_loc_vjp(mean, pre_std, w_log_std, w_loc, target, bound, mode):
    def outputs(mean, pre_std):
        dist = gaussian_era(mean, pre_std, target, bound=bound, mode=mode, delta=0.25)
        return jnp.log(dist.base.scale), dist.base.loc

    out, vjp = jax.vjp(outputs, mean, pre_std)
    return out, vjp((w_log_std, w_loc))


_log_std_loc_vjp = jax.jit(_log_std_loc_vjp, static_argnums=(4, 5, 6))


# ---------------------------------------------------------------------------------------------
# Against the torch implementation
# ---------------------------------------------------------------------------------------------


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("bound", "mode", "dim", "target"),
    [
        ("truncated", "exact", 6, -3.0),
        ("truncated", "delta", 6, -3.0),
        ("none", "exact", 6, -3.0),
        ("tanh", "delta", 6, -3.0),
        pytest.param("truncated", "exact", 1, -0.5, marks=SLOW),
        pytest.param("truncated", "exact", 6, 3.6, marks=SLOW),
        pytest.param("truncated", "delta", 6, 3.6, marks=SLOW),
        pytest.param("none", "exact", 1, -0.5, marks=SLOW),
        pytest.param("tanh", "delta", 1, -0.5, marks=SLOW),
    ],
)
def test_gaussian_era_matches_torch(dtype, bound, mode, dim, target):
    eps = np.finfo(dtype).eps
    mean, pre_std = adversarial_inputs(dim, dtype=dtype)
    rng = np.random.default_rng(1)
    w_log_std, w_loc = (rng.normal(size=mean.shape).astype(dtype) for _ in range(2))
    (log_std, loc), (grad_mean, grad_pre) = (
        tuple(np.asarray(a) for a in pair)
        for pair in _log_std_loc_vjp(mean, pre_std, w_log_std, w_loc, target, bound, mode)
    )
    assert log_std.dtype == dtype and grad_pre.dtype == dtype

    mean_t, pre_t = (
        torch.tensor(mean, requires_grad=True),
        torch.tensor(pre_std, requires_grad=True),
    )
    era = torch_gaussian.GaussianERA(dim, target, bound=bound, mode=mode, delta=0.25)
    base = era(mean_t, pre_t).base_dist
    (base.scale.log() * torch.tensor(w_log_std) + base.loc * torch.tensor(w_loc)).sum().backward()
    log_std_t = base.scale.log().detach().double()

    # conditioning of the log-std and of the gradient (module docstring)
    inv_slope = np.ones_like(log_std, np.float64)
    if mode == "exact" and bound == "truncated":
        loc_t = base.loc.detach().double()
        slope = torch_inside_entropy(-1 - loc_t, 1 - loc_t, log_std_t, slope=True)[1].numpy()
        inv_slope = 1 / slope
    kappa = inv_slope.max(-1)
    if bound == "truncated":
        kappa = kappa / np.maximum(1 - np.tanh(mean.astype(np.float64)) ** 2, 1e-300).min(-1)

    log_std_t = log_std_t.numpy()
    size = np.maximum(1, np.abs(log_std_t))
    assert (np.abs(log_std - log_std_t) <= 64 * dim * eps * size * inv_slope).all()
    assert (np.abs(loc - base.loc.detach().numpy()) <= 4 * eps).all()
    # a row's size by either implementation: where tanh saturates, one may round to exactly 0
    grads = [mean_t.grad.numpy(), pre_t.grad.numpy(), grad_mean, grad_pre]
    row_size = np.abs(np.concatenate(grads, -1)).max(-1)
    tolerance = (64 * eps * kappa * row_size)[:, None]
    assert (np.abs(grad_mean - mean_t.grad.numpy()) <= tolerance).all()
    assert (np.abs(grad_pre - pre_t.grad.numpy()) <= tolerance).all()


def test_distributions_match_torch(dtype):
    """Entropy and log-density are sums of a few well-conditioned terms (tens of ulps); the
    inverse CDF goes through ndtri, whose error grows like 1/pdf towards the tails, so the
    sample is compared where the density is not tiny."""
    eps = np.finfo(dtype).eps
    rng = np.random.default_rng(2)
    loc = rng.uniform(-1, 1, size=200).astype(dtype)
    scale = np.exp(rng.uniform(-5, 2, size=200)).astype(dtype)
    u = rng.uniform(0.01, 0.99, size=200).astype(dtype)
    ours = TruncatedNormal(jnp.asarray(loc), jnp.asarray(scale))
    theirs = TorchTruncatedNormal(torch.tensor(loc), torch.tensor(scale), loc_inside=True)
    value = theirs.icdf(torch.tensor(u))
    close = lambda a, b, ulps: (np.abs(np.asarray(a) - b) <= ulps * eps * (1 + np.abs(b))).all()
    assert close(ours.entropy(), theirs.entropy().numpy(), 64)
    assert close(ours.log_prob(jnp.asarray(value.numpy())), theirs.log_prob(value).numpy(), 256)
    density = np.exp(theirs.log_prob(value).numpy())
    assert (
        np.abs(np.asarray(ours.icdf(jnp.asarray(u))) - value.numpy()) * density <= 64 * eps
    ).all()

    tanh_ours = TanhNormal(jnp.asarray(loc), jnp.asarray(scale))
    tanh_theirs = TorchTanhNormal(torch.tensor(loc), torch.tensor(scale))
    action = (np.tanh(rng.normal(size=200)) * 0.99).astype(dtype)
    expected = tanh_theirs.log_prob(torch.tensor(action)).numpy()
    # atanh near ±1 is conditioned like 1/(1 - a²) ≤ 51 here
    assert close(tanh_ours.log_prob(jnp.asarray(action)), expected, 64 * 51)


# ---------------------------------------------------------------------------------------------
# The exact floor
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dim", "per_dim"),
    [
        (6, -3.5),
        (6, math.log(2) - 1e-3),
        pytest.param(6, -0.5, marks=SLOW),
        pytest.param(1, -3.5, marks=SLOW),
        pytest.param(1, math.log(2) - 1e-3, marks=SLOW),
        pytest.param(21, -0.5, marks=SLOW),
        pytest.param(21, math.log(2) - 1e-3, marks=SLOW),
    ],
)
def test_exact_entropy_is_the_target_on_adversarial_inputs(dtype, dim, per_dim):
    target = per_dim * dim
    mean, pre_std = adversarial_inputs(dim, dtype=dtype)
    dist = gaussian_era(mean, pre_std, target)
    entropy = true_entropy(dist)
    assert np.isfinite(entropy).all() and not np.asarray(dist.unreachable).any()
    tolerance = 1e-4 if dtype == np.float32 else 1e-9
    # Equal wherever every dimension takes part; above (never below) where weights underflow.
    all_weighted = (np.asarray(jax.nn.softmax(pre_std, -1)) > 0).all(-1)
    assert all_weighted.sum() > len(pre_std) // 2
    assert (np.abs(entropy - target) <= tolerance)[all_weighted].all()
    assert (entropy >= target - tolerance).all()
    np.testing.assert_allclose(dist.entropy(), entropy, atol=tolerance)


def test_entropy_follows_a_traced_target_with_unit_slope():
    """The target is traced (a schedule needs no recompilation) and differentiable: a state at
    the target moves one for one with it; one that cannot reach it (unreachable, or above it
    because some weights underflow to 0) does not move."""
    mean, pre_std = adversarial_inputs(3, seed=5)
    mean[0] = 50.0  # every location at a bound: 1.8 nats are out of reach with sigma_max = 1
    weights = jnp.asarray(np.random.default_rng(0).normal(size=len(mean)), jnp.float32)

    def weighted_entropy(target):
        dist = gaussian_era(mean, pre_std, target, log_std_max=0.0)
        return (dist.base.entropy().sum(-1) * weights).sum(), dist

    slope, dist = jax.jit(jax.grad(weighted_entropy, has_aux=True))(jnp.float32(1.8))
    at_target = np.abs(true_entropy(dist) - 1.8) <= 1e-4
    assert bool(dist.unreachable[0]) and at_target.sum() >= 10
    assert float(slope) == pytest.approx(float(weights[at_target].sum()), abs=1e-3)


def test_unreachable_states_sit_at_sigma_max():
    # sigma_max = 1: a dimension located at a bound reaches at most 0.566 nats < 0.6
    mean = jnp.asarray([[50.0] * 3, [0.0] * 3, [-50.0, 50.0, 50.0]])
    dist = gaussian_era(mean, jnp.zeros((3, 3)), 1.8, log_std_max=0.0)
    assert np.asarray(dist.unreachable).tolist() == [True, False, True]
    assert (np.asarray(dist.base.scale)[[0, 2]] == 1).all()
    assert true_entropy(dist)[1] == pytest.approx(1.8, abs=1e-5)


def test_adversary_cannot_push_entropy_below_target():
    """Adam minimises the entropy while driving means to the bounds and pre_std apart."""
    era = GaussianERA(6)
    optimiser = optax.adam(0.5)

    def loss(inputs):
        mean, pre_std = inputs
        dist = era.apply({}, mean, pre_std)
        push = jnp.abs(mean).sum() + pre_std.std(-1).sum()
        return dist.entropy().sum() - 0.1 * push, dist

    def step(state, _):
        inputs, opt_state = state
        (_, dist), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
        updates, opt_state = optimiser.update(grads, opt_state)
        finite = jnp.isfinite(grads[0]).all() & jnp.isfinite(grads[1]).all()
        return (optax.apply_updates(inputs, updates), opt_state), (dist.base, finite)

    rng = np.random.default_rng(0)
    inputs = tuple(jnp.asarray(rng.normal(size=(64, 6)) * 3, jnp.float32) for _ in range(2))
    run = jax.jit(lambda x: jax.lax.scan(step, (x, optimiser.init(x)), length=150))
    (inputs, _), (bases, finite) = run(inputs)
    assert bool(finite.all())
    assert float(inputs[1].std(-1).min()) > 20  # it reached the one-hot-like corner
    loc = torch.tensor(np.asarray(bases.loc, np.float64))
    scale = torch.tensor(np.asarray(bases.scale, np.float64))
    entropy = TorchTruncatedNormal(loc, scale).entropy().sum(-1)
    assert entropy.min().item() >= -3.0 - 1e-4


# ---------------------------------------------------------------------------------------------
# Distributions, transformations, module
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "mode"), [("truncated", "exact"), pytest.param("tanh", "delta", marks=SLOW)]
)
def test_samples_log_probs_and_jit_vmap_grad(bound, mode):
    key = jax.random.key(0)
    mean, pre_std = adversarial_inputs(3, seed=4)

    def loss(mean, pre_std, key):
        dist = gaussian_era(mean, pre_std, -1.5, bound=bound, mode=mode)
        action, log_prob = dist.sample_and_log_prob(key)
        return log_prob + (action**2).sum(-1) + jnp.abs(dist.mode).sum(), action

    # states are independent: per-state gradients (vmap) are the rows of the batch's gradient
    keys = jax.random.split(key, len(mean))
    per_state = jax.vmap(jax.grad(lambda m, p, k: loss(m, p, k)[0], argnums=(0, 1)))

    def whole(mean, pre_std):
        log_prob, action = jax.vmap(loss)(mean, pre_std, keys)
        return log_prob.sum(), action

    both = lambda m, p: (per_state(m, p, keys), jax.grad(whole, (0, 1), has_aux=True)(m, p))
    grads, (whole_grads, action) = jax.jit(both)(mean, pre_std)
    for a, b in zip(grads, whole_grads, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert np.isfinite(a).all()
        # the same operations, fused differently: float32 roundings of each row's terms
        np.testing.assert_allclose(a, b, atol=1e-4 * max(np.abs(b).max(), 1))
    action = np.asarray(action)
    assert action.shape == mean.shape and (np.abs(action) <= 1).all()


def test_module_parameters_and_delta_loss():
    mean, pre_std = (jnp.zeros((4, 3)), jnp.zeros((4, 3)))
    exact = GaussianERA(3)
    assert exact.init(jax.random.key(0), mean, pre_std) == {}
    era = GaussianERA(3, -1.5, bound="tanh", mode="delta", delta=0.5)
    params = era.init(jax.random.key(0), mean, pre_std)
    assert float(params["params"]["raw_delta"]) == 0.5
    dist = era.apply(params, mean, pre_std)
    gaussian = 3 * 0.5 * math.log(2 * math.pi * math.e) + jnp.log(dist.base.scale).sum(-1)
    np.testing.assert_allclose(gaussian, -1.0, atol=1e-5)  # the Gaussian gets H0 + delta

    @jax.jit
    def raw_delta_grad(raw, entropy):
        loss = lambda raw: era.apply(
            {"params": {"raw_delta": raw}}, jnp.full(4, entropy), method=GaussianERA.delta_loss
        )
        return jax.grad(loss)(raw)

    delta_grad = lambda raw, entropy: float(raw_delta_grad(jnp.float32(raw), jnp.float32(entropy)))

    assert delta_grad(0.5, -2.0) < 0  # below target: gradient descent raises delta
    assert delta_grad(0.5, -1.0) > 0  # above: lowers it
    assert delta_grad(-0.1, -1.0) == 0  # no wind-up below 0
    assert delta_grad(-0.1, -2.0) < 0  # but it can come back


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"action_dim": 0}, "action_dim must be an integer >= 1, got 0"),
        ({"bound": "clip"}, "bound must be one of"),
        ({"mode": "approx"}, "mode must be one of"),
        ({"bound": "tanh"}, "mode='exact' is not available for bound='tanh'"),
        ({"low": 1.0}, "need finite low < high"),
        ({"log_std_min": 3.0}, "need log_std_min < log_std_max"),
        ({"target_entropy": 3.0}, "target_entropy=3.0 is outside the feasible range [-10.7"),
        ({"delta": -1.0}, "delta must be finite and >= 0"),
    ],
)
def test_bad_arguments_raise_with_the_argument_named(kwargs, pattern):
    args = {"action_dim": 3, **kwargs}
    with pytest.raises(ValueError, match=re.escape(pattern)):
        GaussianERA(**args)


def test_bad_inputs_raise_with_the_argument_named():
    era = GaussianERA(3)
    with pytest.raises(ValueError, match=re.escape("shape [..., 3]")):
        era.apply({}, jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=re.escape("shape [..., D]")):
        gaussian_era(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(TypeError, match="floating point"):
        gaussian_era(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))
    bad = jnp.zeros((2, 3)).at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match=r"^pre_std has 1 non-finite entries"):
        era.apply({}, jnp.zeros((2, 3)), bad)
    with pytest.raises(ValueError, match=r"^mean has 1 non-finite entries"):
        gaussian_era(bad, jnp.zeros((2, 3)))
    # under jit the check is impossible: the state comes out NaN, never a silent sigma_max
    scale = jax.jit(lambda m: gaussian_era(m, jnp.zeros((2, 3))).base.scale)(bad)
    assert np.isnan(np.asarray(scale[1])).any() and np.isfinite(np.asarray(scale[0])).all()
    with pytest.raises(ValueError, match="pass a key"):
        gaussian_era(jnp.zeros((2, 3)), jnp.zeros((2, 3)), bound="tanh", mode="delta").entropy()
