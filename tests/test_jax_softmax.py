"""Tests for era.jax.softmax: equal to era.softmax (values and gradients, float32 and float64),
the floor on adversarial logits, jit/vmap/grad, the Flax module and argument checks.

Tolerances follow from the operations: W₋₁ is a few ulps accurate in both implementations;
``W₋₁(−y)`` turns a relative error δ of ``y`` into ``δ/|1 + W|`` (≤ ``δ/(log τ − 1)`` here, since
``W ≤ −log τ``); softmax's sum over n classes adds about ``log2(n)`` roundings; and the softmax
backward ``p_i (a_i − Σ_j p_j a_j)`` (``a = dL/dp``) can only be trusted to
``ε·p_i (|a_i| + Σ_j p_j |a_j|)``, its cancellation bound.
"""

import math
import re

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

import era.softmax as torch_softmax  # noqa: E402
from era.jax import SoftmaxERA, lambertw_m1, softmax_era  # noqa: E402

INV_E = math.exp(-1)
CASES = [("tight", "exact"), ("paper", "exact"), ("paper", "approx")]


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run the test in both precisions; float64 needs JAX's x64 mode, restored afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param == "float64")
    yield np.dtype(request.param)
    jax.config.update("jax_enable_x64", previous)


def entropy(logits) -> np.ndarray:
    """Entropy of softmax(logits) in float64 (numpy), adding no error of its own."""
    z = np.asarray(logits, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(-1)


def random_logits(n: int, rows: int, max_scale: float, seed: int, dtype=np.float64):
    """Gaussian logits at log-spaced scales up to max_scale; row 0 constant, row 1 one-hot."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, n)) * np.logspace(-2, math.log10(max_scale), rows)[:, None]
    z[0] = 0
    z[1] = 0
    z[1, n // 2] = 1e4
    return z.astype(dtype)


@jax.jit
def _lambertw_and_slope(x):
    return lambertw_m1(x), jax.vmap(jax.grad(lambertw_m1))(x)


# ---------------------------------------------------------------------------------------------
# lambertw_m1
# ---------------------------------------------------------------------------------------------


def test_lambertw_m1_matches_torch(dtype):
    eps = np.finfo(dtype).eps
    near = -INV_E + np.logspace(math.log10(eps), -1, 300)
    far = -np.logspace(math.log10(0.26), -30, 700)
    x = np.concatenate([near, far]).astype(dtype)
    x = x[x >= -INV_E]  # the rounding of −1/e + tiny can fall just outside the domain
    w, slope = (np.asarray(a) for a in _lambertw_and_slope(x))
    assert w.dtype == dtype and slope.dtype == dtype
    x_torch = torch.tensor(x, requires_grad=True)
    w_torch = torch_softmax.lambertw_m1(x_torch)
    w_torch.sum().backward()
    w_torch, slope_torch = w_torch.detach().numpy(), x_torch.grad.numpy()
    assert (np.abs(w - w_torch) <= 8 * eps * np.abs(w_torch)).all()
    # W / (x (1 + W)): 1 + W is computed from W, so it carries W's error times |W / (1 + W)|
    amplification = 1 + np.abs(w_torch / (1 + w_torch))
    assert (np.abs(slope - slope_torch) <= 8 * eps * amplification * np.abs(slope_torch)).all()


def test_lambertw_m1_domain_policy(dtype):
    x = jnp.asarray([-INV_E, 0.0, -0.0, 1e-3, -0.38, -0.5, math.nan], dtype)
    w = np.asarray(lambertw_m1(x))
    assert w[0] == -1  # the rounded −1/e counts as the branch point
    assert w[1] == -np.inf and w[2] == -np.inf
    assert np.isnan(w[3:]).all()
    assert np.isfinite(np.asarray(jax.grad(lambertw_m1)(jnp.asarray(-INV_E, dtype))))


@pytest.mark.parametrize("low_precision", ["float16", "bfloat16"])
def test_lambertw_m1_low_precision_computed_in_float32(low_precision):
    x = jnp.linspace(-0.36, -1e-3, 200).astype(low_precision)
    w = lambertw_m1(x)
    assert w.dtype == x.dtype
    assert (w == lambertw_m1(x.astype(jnp.float32)).astype(low_precision)).all()


def test_lambertw_m1_rejects_integer_arrays():
    with pytest.raises(TypeError, match="floating-point"):
        lambertw_m1(jnp.asarray([-1]))


# ---------------------------------------------------------------------------------------------
# softmax_era against the torch implementation
# ---------------------------------------------------------------------------------------------


def _value_and_vjp(logits, weights, min_entropy, floor, inverse):
    f = lambda z: softmax_era(z, min_entropy, floor=floor, inverse=inverse)
    out, vjp = jax.vjp(f, logits)
    return out, vjp(weights)[0]


_value_and_vjp = jax.jit(_value_and_vjp, static_argnums=(2, 3, 4))


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("n", "floor", "inverse"),
    [
        (10, "tight", "exact"),
        (10, "paper", "exact"),
        (10, "paper", "approx"),
        (1000, "tight", "exact"),
        pytest.param(1000, "paper", "exact", marks=SLOW),
        pytest.param(1000, "paper", "approx", marks=SLOW),
    ],
)
def test_softmax_era_matches_torch(dtype, n, floor, inverse):
    eps = np.finfo(dtype).eps
    # Logits of a network's usual size: softmax's own conditioning grows with |z|.
    z = random_logits(n, 64, 10.0, seed=n, dtype=dtype)[2:]
    weights = np.random.default_rng(1).normal(size=z.shape).astype(dtype)
    out, grad = (np.asarray(a) for a in _value_and_vjp(z, weights, 0.6, floor, inverse))
    assert out.dtype == dtype and grad.dtype == dtype

    z_torch = torch.tensor(z, requires_grad=True)
    out_torch = torch_softmax.softmax_era(z_torch, 0.6, floor=floor, inverse=inverse)
    (out_torch * torch.tensor(weights)).sum().backward()
    out_torch, grad_torch = out_torch.detach().numpy(), z_torch.grad.numpy()

    roundings = 1 + math.log2(n)
    amplification = 1 / (math.log(4.0) - 1)  # 1/|1 + W| at its largest, τ = 4
    assert (
        np.abs(out - out_torch) <= 4 * roundings * amplification * eps * np.abs(out_torch)
    ).all()

    # the softmax backward's cancellation bound, from a float64 a = dL/dp
    p = torch.softmax(torch.tensor(z, dtype=torch.float64), -1).requires_grad_()
    _, slope, offset = torch_softmax._shares(n, 0.6, 4.0, floor, inverse)
    era_logits = torch_softmax._era_from_probs(p, slope, offset, inverse)
    (era_logits * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    a, p = p.grad.abs().numpy(), p.detach().numpy()
    bound = eps * p * (a + (p * a).sum(-1, keepdims=True))
    assert (np.abs(grad - grad_torch) <= 8 * roundings * bound).all()


# ---------------------------------------------------------------------------------------------
# The floor
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "tau"),
    [(10, 0.26, 4.0), (1000, 0.9, 9.0), pytest.param(2, 0.5, 4.0, marks=SLOW)],
)
def test_tight_floor_holds_on_adversarial_logits(dtype, n, fraction, tau):
    min_entropy = fraction * math.log(n)
    z = random_logits(n, 32, 1e4, seed=n, dtype=dtype)
    out = np.asarray(softmax_era(z, min_entropy, tau=tau))
    assert out.dtype == dtype and np.isfinite(out).all()
    h = entropy(out)
    tolerance = 1e-4 if dtype == np.float32 else 1e-9
    assert h.min() >= min_entropy - tolerance
    assert h[1] == pytest.approx(min_entropy, abs=tolerance)  # one-hot: the floor is tight


@pytest.mark.parametrize(
    ("floor", "inverse"), [CASES[0], *(pytest.param(*case, marks=SLOW) for case in CASES[1:])]
)
def test_extreme_logits_give_finite_values_and_gradients(floor, inverse):
    f = lambda z: softmax_era(z, 0.5, floor=floor, inverse=inverse)
    value_and_grad = jax.jit(jax.value_and_grad(lambda z: (f(z) * jax.nn.softmax(f(z))).sum()))
    for n in (2, 1000):
        z = np.zeros((5, n), np.float32)
        z[0, 0], z[1, 0], z[2] = 1e4, -1e4, np.linspace(-1e4, 1e4, n)
        z[3, :] = 3e38
        z[4] = np.finfo(np.float32).min
        assert np.isfinite(np.asarray(f(z))).all()
        value, grad = value_and_grad(z)
        assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()


def test_adversary_cannot_push_entropy_below_floor():
    """Adam on the input logits, minimising the output entropy, gets close to but never below."""
    min_entropy = 0.6
    era = SoftmaxERA(10, min_entropy)
    optimiser = optax.adam(0.1)

    def output_entropy(z):
        logp = jax.nn.log_softmax(era.apply({}, z))
        return -(jnp.exp(logp) * logp).sum(-1)

    def step(state, _):
        z, opt_state = state
        h, grad = jax.value_and_grad(lambda z: output_entropy(z).sum())(z)
        updates, opt_state = optimiser.update(grad, opt_state)
        return (optax.apply_updates(z, updates), opt_state), output_entropy(z).min()

    z = jnp.asarray(random_logits(10, 16, 3.0, seed=2, dtype=np.float32))
    (z, _), lowest = jax.jit(lambda z: jax.lax.scan(step, (z, optimiser.init(z)), length=300))(z)
    lowest = float(lowest.min())
    assert np.isfinite(np.asarray(z)).all()
    assert min_entropy - 1e-4 <= lowest < min_entropy + 0.02


# ---------------------------------------------------------------------------------------------
# Transformations, module, arguments
# ---------------------------------------------------------------------------------------------


def test_jit_vmap_grad_agree_with_eager():
    z = jnp.asarray(random_logits(7, 8, 10.0, seed=3, dtype=np.float32))

    def entropy_of(row):
        logp = jax.nn.log_softmax(softmax_era(row, 0.9))
        return -(jnp.exp(logp) * logp).sum()

    eager = np.stack([np.asarray(jax.grad(entropy_of)(row)) for row in z[:2]])
    transformed = np.asarray(jax.jit(jax.vmap(jax.grad(entropy_of)))(z))[:2]
    # the same operations, fused or not: float32 rounding of a sum over 7 classes, times the
    # condition 1/|1 + W| ≤ 2.6 (see the module docstring)
    scale = np.abs(eager).max()
    np.testing.assert_allclose(transformed, eager, atol=64 * np.finfo(np.float32).eps * scale)
    np.testing.assert_allclose(softmax_era(z.T, 0.9, axis=0), softmax_era(z, 0.9).T)


def test_module_matches_function_and_torch_constants():
    era = SoftmaxERA(7, 0.9, tau=6.0)
    z = jnp.asarray(random_logits(7, 8, 10.0, seed=9, dtype=np.float32))
    assert era.init(jax.random.key(0), z) == {}  # no parameters
    assert (era.apply({}, z) == softmax_era(z, 0.9, tau=6.0)).all()
    torch_era = torch_softmax.SoftmaxERA(7, 0.9, tau=6.0)
    assert era.budget == torch_era.budget and era.max_probability == torch_era.max_probability


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"tau": 2.0}, "tau must be a finite number > e"),
        ({"floor": "loose"}, "floor must be one of"),
        ({"inverse": "approx"}, 'floor="tight" needs inverse="exact"'),
        ({"min_entropy": 2.31}, "min_entropy must lie in [0, 2.30259)"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, match):
    args = {"num_classes": 10, "min_entropy": 0.5, **kwargs}
    with pytest.raises(ValueError, match=re.escape(match)):
        SoftmaxERA(**args)
    with pytest.raises(ValueError, match=re.escape(match)):
        softmax_era(jnp.zeros((2, args.pop("num_classes"))), **args)


def test_wrong_shape_or_dtype_at_call():
    with pytest.raises(ValueError, match=re.escape("expected logits [..., 10]")):
        SoftmaxERA(10, 0.5).apply({}, jnp.zeros((4, 9)))
    with pytest.raises(TypeError, match="floating-point"):
        softmax_era(jnp.zeros((4, 10), jnp.int32), 0.5)


@pytest.mark.parametrize("row", [[math.nan, 0.0, 1.0, 2.0], [math.inf, 0, 1, 2], [-math.inf] * 4])
def test_rows_without_a_distribution_raise_eagerly_and_are_nan_under_jit(row):
    logits = jnp.asarray([[0.0, 1.0, 2.0, 3.0], row, row])
    with pytest.raises(ValueError, match=r"^logits has 2 row\(s\) without a distribution"):
        softmax_era(logits, 0.5)
    out = np.asarray(jax.jit(lambda z: softmax_era(z, 0.5))(logits))
    assert np.isfinite(out[0]).all() and np.isnan(out[1:]).all()


def test_minus_inf_logits_are_classes_with_probability_zero():
    out = np.asarray(softmax_era(jnp.asarray([[-math.inf, 0.0, 1.0, 2.0, 30.0]]), 0.8))
    assert np.isfinite(out).all() and entropy(out)[0] >= 0.8 - 1e-4


def test_empty_batch_gives_an_empty_result():
    out, grad = jax.value_and_grad(lambda z: softmax_era(z, 1.0).sum())(jnp.zeros((0, 7)))
    assert out == 0 and grad.shape == (0, 7)
