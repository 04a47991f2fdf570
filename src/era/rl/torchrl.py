"""ERA inside TorchRL: a ``ProbabilisticActor`` distribution and SAC without a temperature.

Extra ``[torchrl]``. Two pieces:

* ``ERATruncatedNormal``, a ``distribution_class`` for ``ProbabilisticActor``: it takes the
  network's raw ``mean`` and ``pre_std`` (e.g. from ``NormalParamExtractor(scale_mapping="none")``)
  and is ``GaussianERA``'s truncated normal on ``[low, high]``, whose entropy equals
  ``target_entropy`` in every state (exact mode, ``docs/activations.md``).
* ``ERASACLoss``, TorchRL's ``SACLoss`` with the entropy term removed. ``SACLoss`` stores
  ``log(alpha)``, so ``fixed_alpha=True, alpha_init=0.0`` is not possible (``log 0``), and a tiny
  ``alpha_init`` would keep a small bonus; here alpha is exactly 0 (the ``alpha * log_prob`` terms
  of the actor loss and of the critic target vanish) and ``loss_alpha`` is 0 with no parameter
  behind it. Its ``target_entropy`` is read from the actor's distribution, so the loss reports the
  floor the actor holds.
"""

from __future__ import annotations

import functools
import math

import torch
from tensordict.nn import ProbabilisticTensorDictModule
from torchrl.objectives import SACLoss

from era.gaussian import ERADistribution, GaussianERA

__all__ = ["ERASACLoss", "ERATruncatedNormal"]


class ERATruncatedNormal(ERADistribution):
    """``GaussianERA(D, target_entropy, bound="truncated", mode="exact")(mean, pre_std)``.

    Args:
        mean, pre_std: ``[..., D]`` raw network outputs (no squashing, no positivity map).
        target_entropy: entropy of every state's action distribution, nats over all D dims.
        low, high: the action bounds, numbers or tensors holding one value each (TorchRL's
            ``Bounded`` spec ``.space.low`` / ``.space.high`` for a box with equal bounds).
        log_std_min, log_std_max: ``GaussianERA``'s range of log sigma, in action units.

    ``deterministic_sample`` (used under ``ExplorationType.DETERMINISTIC``) is the mode, the
    tanh of the mean mapped onto the box.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        pre_std: torch.Tensor,
        *,
        target_entropy: float,
        low: float | torch.Tensor = -1.0,
        high: float | torch.Tensor = 1.0,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ):
        if not torch.is_tensor(mean) or mean.ndim == 0:
            raise ValueError(f"mean must be a tensor of shape [..., D], got {mean!r}")
        era = _activation(
            mean.shape[-1],
            float(target_entropy),
            _single_value("low", low),
            _single_value("high", high),
            float(log_std_min),
            float(log_std_max),
        )
        dist = era(mean, pre_std)
        super().__init__(dist.base_dist, 1, validate_args=False)
        self.unreachable = dist.unreachable

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return self.mode


@functools.lru_cache(maxsize=64)
def _activation(action_dim, target_entropy, low, high, log_std_min, log_std_max) -> GaussianERA:
    """One validated activation per configuration (exact mode has no parameters to share)."""
    return GaussianERA(
        action_dim,
        target_entropy,
        bound="truncated",
        mode="exact",
        low=low,
        high=high,
        log_std_min=log_std_min,
        log_std_max=log_std_max,
    )


def _single_value(name: str, value: float | torch.Tensor) -> float:
    """A bound as one float: ``GaussianERA`` has one interval for all dimensions."""
    if torch.is_tensor(value):
        flat = value.detach().flatten()
        if flat.numel() == 0 or not bool((flat == flat[0]).all()):
            raise ValueError(
                f"{name}={value!r}: ERATruncatedNormal needs one {name} for all action "
                "dimensions; rescale the actions (e.g. to [-1, 1]) first"
            )
        value = flat[0].item()
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: action bounds must be finite")
    return value


class ERASACLoss(SACLoss):
    """``SACLoss`` whose temperature is exactly 0, for an actor with ``ERATruncatedNormal``.

    Takes ``SACLoss``'s arguments except the temperature's (``alpha_init``, ``min_alpha``,
    ``max_alpha``, ``fixed_alpha``, ``target_entropy``), which are set here: the actor holds the
    entropy, so nothing is learned for it. ``loss_alpha`` is a zero tensor (summing it with the
    other losses is harmless), ``alpha`` is reported as 0 and ``entropy`` is SACLoss's usual
    estimate ``-mean(log_prob)`` of the sampled actions.
    """

    def __init__(self, actor_network, qvalue_network, **kwargs):
        taken = {"alpha_init", "min_alpha", "max_alpha", "fixed_alpha", "target_entropy"}
        given = sorted(taken & set(kwargs))
        if given:
            raise ValueError(
                f"ERASACLoss sets {given} itself (no temperature: the actor's "
                "ERATruncatedNormal holds the entropy); set target_entropy in the actor's "
                "distribution_kwargs"
            )
        super().__init__(
            actor_network,
            qvalue_network,
            fixed_alpha=True,  # log_alpha is a buffer: no parameter for an optimizer to move
            target_entropy=_actor_target_entropy(actor_network),
            **kwargs,
        )

    @property
    def _alpha(self) -> torch.Tensor:
        return torch.zeros((), device=self.log_alpha.device)

    def _alpha_loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(log_prob)


def _actor_target_entropy(actor_network) -> float:
    for module in actor_network.modules():
        if isinstance(module, ProbabilisticTensorDictModule):
            if module.distribution_class is ERATruncatedNormal:
                return float(module.distribution_kwargs["target_entropy"])
    raise TypeError(
        "ERASACLoss needs an actor whose distribution_class is "
        "era.rl.torchrl.ERATruncatedNormal (with target_entropy in distribution_kwargs)"
    )
