"""The fused exact path of era.softmax (p ↦ W₋₁(−y) as one autograd node) against the same map
composed from plain torch ops and the public lambertw_m1."""

import pytest
import torch

from era.softmax import _era_from_probs, _shares, lambertw_m1, softmax_era


def composed(z: torch.Tensor, min_entropy: float) -> torch.Tensor:
    _, slope, offset = _shares(z.shape[-1], min_entropy, 4.0, "tight", "exact")
    y = (slope * torch.softmax(z, -1) + offset).clamp(min=torch.finfo(z.dtype).tiny)
    return lambertw_m1(-y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("min_entropy", [0.0, 0.6])  # 0: offset 0, the clamp bites
def test_fused_path_matches_composed_value_and_gradient(dtype, min_entropy):
    g = torch.Generator().manual_seed(0)
    z = (
        torch.randn(16, 300, generator=g, dtype=dtype)
        * torch.logspace(-1, 3, 16, dtype=dtype)[:, None]
    )
    weights = torch.randn(16, 300, generator=g, dtype=dtype)
    grads = []
    for f in (lambda t: softmax_era(t, min_entropy), lambda t: composed(t, min_entropy)):
        leaf = z.clone().requires_grad_()
        out = f(leaf)
        (out * weights).sum().backward()
        grads.append((out.detach(), leaf.grad))
    (fused, fused_grad), (ref, ref_grad) = grads
    eps = torch.finfo(dtype).eps
    assert torch.allclose(fused, ref, rtol=8 * eps, atol=0)
    assert fused_grad.isfinite().all()
    assert torch.allclose(
        fused_grad,
        ref_grad,
        rtol=1e-4 if dtype == torch.float32 else 1e-10,
        atol=1e-5 if dtype == torch.float32 else 1e-12,
    )
    if min_entropy == 0.0:
        assert (ref == lambertw_m1(torch.tensor(-torch.finfo(dtype).tiny, dtype=dtype))).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_share_gets_zero_gradient(dtype):
    """With offset 0 a class whose probability underflows has its share clamped to the smallest
    normal number; like a clamp, its gradient is zero (not the huge slope of W₋₁ next to 0)."""
    p = torch.tensor([0.0, 1e-3, 0.999], dtype=dtype, requires_grad=True)
    _era_from_probs(p, 0.3, 0.0, "exact").sum().backward()
    assert p.grad[0] == 0
    assert (p.grad[1:] > 0).all() and p.grad.isfinite().all()  # z′ rises with p


def test_float32_one_halley_step_is_enough_everywhere():
    """A dense sweep of the whole branch (both initial-guess regimes, both ways of computing s),
    against the float64 solver (two steps, checked against scipy/mpmath in test_softmax.py)."""
    inv_e = torch.tensor(-1 / torch.e, dtype=torch.float64)
    near = inv_e + torch.logspace(-8, -0.5, 100_000, dtype=torch.float64)
    far = -torch.logspace(-0.6, -37, 100_000, dtype=torch.float64)
    x = torch.cat([near, far]).float()
    x = x[x >= -1 / torch.e]
    ref = lambertw_m1(x.double())
    rel = ((lambertw_m1(x).double() - ref) / ref).abs()
    assert rel.max() < 4 * torch.finfo(torch.float32).eps
