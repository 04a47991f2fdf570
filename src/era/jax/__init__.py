"""ERA's three activations in JAX, with Flax (``flax.linen``) modules.

Install with ``pip install "era-activation[jax]"``. Pure ``jax.numpy`` functions, safe under
``jit``, ``vmap`` and ``grad``, with the torch API's names: :func:`lambertw_m1`,
:func:`softmax_era` / :class:`SoftmaxERA` (docs/activations.md §2), :func:`gaussian_era` /
:class:`GaussianERA` and the bounded distributions (§1), and the token functions (§3). See
docs/jax.md.
"""

from era.jax.distributions import Normal, TanhNormal, TruncatedNormal
from era.jax.gaussian import ERADistribution, GaussianERA, gaussian_era
from era.jax.softmax import SoftmaxERA, feasible_min_entropy, lambertw_m1, softmax_era
from era.jax.token import (
    era_scales,
    response_entropy,
    token_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
)

__all__ = [
    "ERADistribution",
    "GaussianERA",
    "Normal",
    "SoftmaxERA",
    "TanhNormal",
    "TruncatedNormal",
    "feasible_min_entropy",
    "gaussian_era",
    "lambertw_m1",
    "softmax_era",
    "era_scales",
    "response_entropy",
    "token_entropy",
    "token_logprobs",
    "token_logprobs_and_entropy",
]
