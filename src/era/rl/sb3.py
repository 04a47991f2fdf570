"""ERA inside Stable-Baselines3's SAC: ``ERASAC("MlpPolicy", env)``, extra ``[sb3]``.

SB3's actor outputs a mean and a log-std and squashes a Gaussian with tanh; here the same network
outputs a mean and a raw std vector and ``GaussianERA`` turns them into a truncated normal on
[-1, 1], SB3's normalised action box (SB3 rescales actions to the environment's bounds), whose
entropy equals the target in every state (exact mode, ``docs/activations.md``). So the loss needs
no entropy term:

* SB3's entropy coefficient is fixed at 0: ``ERASAC`` passes ``ent_coef=0.0``, which makes SB3
  keep a constant 0 instead of learning a temperature (no ``log_ent_coef``, no optimizer; the
  ``alpha * log_prob`` terms of both losses vanish). Any other ``ent_coef`` is refused.
* SB3's ``target_entropy`` argument is the floor. ``"auto"`` means ERA's SAC default ``-D/2``
  nats, not SB3's ``-D``: SB3's value is a heuristic for a temperature that holds the entropy of
  a tanh-squashed Gaussian near the target only on average, ERA's is the target the method was
  evaluated with for a floor that holds in every state.

Everything else is SB3's own: replay buffer, critics, vec envs, callbacks, ``save``/``load``
(``ERASAC.load`` and ``SAC.load`` both rebuild the ERA policy), rl-zoo hyper-parameters (but
not ``ent_coef`` or ``use_sde``, which are refused).
``ERASACPolicy`` also works with plain ``SAC(ERASACPolicy, env, ent_coef=0.0,
policy_kwargs={"target_entropy": ...})``; ``ERASAC`` is that, checked, with SB3's
``target_entropy`` wired to the floor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    NatureCNN,
    create_mlp,
)
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from era.gaussian import ERADistribution, GaussianERA

__all__ = ["ERAActor", "ERACnnPolicy", "ERAMultiInputPolicy", "ERASAC", "ERASACPolicy"]

# SACPolicy hands these gSDE settings to every actor; a truncated normal has no use for them.
_SDE_ACTOR_KWARGS = ("use_sde", "log_std_init", "use_expln", "clip_mean")


class ERAActor(BasePolicy):
    """SAC actor: MLP trunk -> (mean, pre_std) -> ``GaussianERA`` on [-1, 1].

    Same interface as SB3's ``sac.policies.Actor`` (``forward``, ``action_log_prob``,
    ``_predict``), which is all ``SAC.train`` and ``SAC.predict`` use.
    """

    action_space: spaces.Box

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        target_entropy: float | None = None,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ):
        # squash_output=True: actions are in [-1, 1] and SB3 rescales them to the env's box.
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=True,
        )
        self.net_arch = net_arch
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        action_dim = get_action_dim(action_space)
        self.latent_pi = nn.Sequential(*create_mlp(features_dim, -1, net_arch, activation_fn))
        last_layer_dim = net_arch[-1] if net_arch else features_dim
        self.mu = nn.Linear(last_layer_dim, action_dim)
        self.pre_std = nn.Linear(last_layer_dim, action_dim)
        self.era = GaussianERA(
            action_dim,
            target_entropy,
            bound="truncated",
            mode="exact",
            low=-1.0,
            high=1.0,
            log_std_min=log_std_min,
            log_std_max=log_std_max,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            features_dim=self.features_dim,
            activation_fn=self.activation_fn,
            features_extractor=self.features_extractor,
            target_entropy=self.era.target_entropy,
            log_std_min=self.era.log_std_min,
            log_std_max=self.era.log_std_max,
        )
        return data

    def distribution_inputs(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's raw outputs ``(mean, pre_std)``, each ``[batch, D]``."""
        latent = self.latent_pi(self.extract_features(obs, self.features_extractor))
        return self.mu(latent), self.pre_std(latent)

    def distribution(self, obs) -> ERADistribution:
        """The policy in each state; its ``entropy()`` is the target everywhere."""
        return self.era(*self.distribution_inputs(obs))

    def forward(self, obs, deterministic: bool = False) -> torch.Tensor:
        dist = self.distribution(obs)
        return dist.mode if deterministic else dist.rsample()

    def action_log_prob(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in [-1, 1], ``[batch, D]``, and its log-density, ``[batch]``."""
        dist = self.distribution(obs)
        action = dist.rsample()
        return action, dist.log_prob(action)

    def _predict(self, observation, deterministic: bool = False) -> torch.Tensor:
        return self(observation, deterministic)


class ERASACPolicy(SACPolicy):
    """SB3's ``SACPolicy`` (critics, optimizers, feature extractors) with an ``ERAActor``.

    Extra arguments (through ``policy_kwargs``): ``target_entropy`` (nats over the whole
    action in [-1, 1] units; ``None``: ``-D/2``; ``ERASAC`` fills it from its own
    ``target_entropy``), ``log_std_min``, ``log_std_max`` (``GaussianERA``'s). The action space
    must be a ``Box`` with finite bounds; gSDE (``use_sde=True``) is not supported.
    """

    actor: ERAActor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule,
        *args,
        target_entropy: float | None = None,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        **kwargs,
    ):
        _check_action_space(action_space)
        if kwargs.get("use_sde", False):
            raise ValueError(
                "use_sde=True: gSDE exploration replaces the policy's noise, which would bypass "
                "ERA's entropy floor; use the default use_sde=False"
            )
        # Set before SACPolicy.__init__, which builds the actor.
        self.era_kwargs = {
            "target_entropy": target_entropy,
            "log_std_min": log_std_min,
            "log_std_max": log_std_max,
        }
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> ERAActor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        for name in _SDE_ACTOR_KWARGS:
            kwargs.pop(name)
        return ERAActor(**kwargs, **self.era_kwargs).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.era_kwargs)
        return data


class ERACnnPolicy(ERASACPolicy):
    """``ERASACPolicy`` for image observations (SB3's ``"CnnPolicy"``: a NatureCNN encoder)."""

    def __init__(self, *args, features_extractor_class=NatureCNN, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class ERAMultiInputPolicy(ERASACPolicy):
    """``ERASACPolicy`` for dict observations (SB3's ``"MultiInputPolicy"``)."""

    def __init__(self, *args, features_extractor_class=CombinedExtractor, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class ERASAC(SAC):
    """SB3's SAC with an ERA policy: ``ERASAC("MlpPolicy", env, target_entropy=-0.5)``.

    Takes every argument of ``stable_baselines3.SAC``. ``ent_coef`` must be 0 (its default
    here): the entropy is held by the policy, not by a temperature. ``target_entropy`` is the
    per-state entropy of the policy in nats, in SB3's normalised action units [-1, 1]^D;
    ``"auto"`` gives ``-D/2`` (see the module docstring). ``policy`` is ``"MlpPolicy"``,
    ``"CnnPolicy"``, ``"MultiInputPolicy"`` (the ERA versions of SB3's) or a subclass of
    ``ERASACPolicy``.
    """

    policy_aliases = {
        "MlpPolicy": ERASACPolicy,
        "CnnPolicy": ERACnnPolicy,
        "MultiInputPolicy": ERAMultiInputPolicy,
    }

    def __init__(self, policy, env, *args, **kwargs):
        ent_coef = kwargs.setdefault("ent_coef", 0.0)
        if isinstance(ent_coef, str) or ent_coef != 0:
            raise ValueError(
                f"ent_coef={ent_coef!r}: ERASAC holds the entropy by construction, so SAC's "
                "entropy coefficient must be 0 (leave ent_coef out); set the floor with "
                "target_entropy instead"
            )
        super().__init__(policy, env, *args, **kwargs)

    def _setup_model(self) -> None:
        if not (
            isinstance(self.policy_class, type) and issubclass(self.policy_class, ERASACPolicy)
        ):
            raise TypeError(
                f"policy={self.policy_class!r}: ERASAC needs 'MlpPolicy', 'CnnPolicy', "
                "'MultiInputPolicy' or a subclass of era.rl.sb3.ERASACPolicy"
            )
        if self.target_entropy == "auto":
            self.target_entropy = -0.5 * get_action_dim(self.action_space)
        elif isinstance(self.target_entropy, str):
            raise ValueError(
                f"target_entropy={self.target_entropy!r}: must be 'auto' or a number (nats)"
            )
        self.target_entropy = float(self.target_entropy)
        given = self.policy_kwargs.get("target_entropy", self.target_entropy)
        if given != self.target_entropy:
            raise ValueError(
                f"policy_kwargs target_entropy={given!r} differs from "
                f"target_entropy={self.target_entropy!r}: pass it once, as ERASAC's target_entropy"
            )
        self.policy_kwargs = {**self.policy_kwargs, "target_entropy": self.target_entropy}
        super()._setup_model()


def _check_action_space(action_space: spaces.Space) -> None:
    if not isinstance(action_space, spaces.Box):
        raise TypeError(f"ERA policies need a Box action space, got {action_space!r}")
    if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        raise ValueError(
            f"action space {action_space!r} has infinite bounds: SB3 rescales actions from "
            "[-1, 1] to the box, so it must be finite (wrap the env in "
            "gymnasium.wrappers.ClipAction with finite bounds, or rescale it)"
        )
