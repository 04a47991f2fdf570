"""ERA: Entropy Regularizing Activation (arXiv 2510.08549).

Output activations that keep the entropy of a model's output distribution above a floor by
construction, so the training loss needs no entropy term:

* :class:`GaussianERA` — continuous actions (unbounded, truncated or tanh-squashed Gaussians);
* :class:`SoftmaxERA` — discrete outputs (classification heads);
* :mod:`era.token` — token-level ERA for LLM policy-gradient updates.
"""

from importlib.metadata import PackageNotFoundError, version

from era.distributions import TanhNormal, TruncatedNormal
from era.gaussian import EntropyCompensation, GaussianERA
from era.softmax import SoftmaxERA, feasible_min_entropy, lambertw_m1, softmax_era

try:
    __version__ = version("era-activation")  # the installed distribution's, from pyproject.toml
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "EntropyCompensation",
    "GaussianERA",
    "SoftmaxERA",
    "TanhNormal",
    "TruncatedNormal",
    "feasible_min_entropy",
    "lambertw_m1",
    "softmax_era",
]
