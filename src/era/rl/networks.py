"""Actor and critic networks shared by the SAC and PPO agents.

The policy *head* is the only thing that differs between ERA and its baseline: the trunk outputs
a mean and a raw std vector, and the head turns them into an action distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from era.gaussian import GaussianERA, TanhNormal

# The usual SAC log-std range (CleanRL, SB3); the alpha head squashes its raw output into it.
TANH_LOG_STD_MIN, TANH_LOG_STD_MAX = -5.0, 2.0


def mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    """Linear layers of the given sizes with ``act`` in between."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), act()]
    return nn.Sequential(*layers[:-1])


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied in one batched matmul: ``[n, B, in] -> [n, B, out]``.

    SAC's two critics run as one network this way, halving the number of small kernels per update.
    Each member is initialised like ``nn.Linear``.
    """

    def __init__(self, n: int, n_in: int, n_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(n, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinCritic(nn.Module):
    """Two Q-networks ``Q(s, a)`` with LayerNorm and ELU (as the authors' critic), fused.

    ``forward`` returns ``[2, B]``: both critics' values, so ``.min(0)`` is SAC's clipped target.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int):
        super().__init__()
        sizes = [obs_dim + act_dim] + [hidden] * layers
        self.hidden = nn.ModuleList(
            EnsembleLinear(2, i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.norm_weight = nn.Parameter(torch.ones(layers, 2, 1, hidden))
        self.norm_bias = nn.Parameter(torch.zeros(layers, 2, 1, hidden))
        self.out = EnsembleLinear(2, hidden, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], -1).expand(2, -1, -1)
        for layer, weight, bias in zip(self.hidden, self.norm_weight, self.norm_bias, strict=True):
            h = layer(x)
            x = F.elu(F.layer_norm(h, h.shape[-1:]) * weight + bias)
        return self.out(x).squeeze(-1)


class TanhGaussianHead(nn.Module):
    """SAC's usual policy: tanh-squashed Gaussian, log-std squashed into [-5, 2]."""

    def forward(self, mean: torch.Tensor, pre_std: torch.Tensor) -> Distribution:
        log_std = TANH_LOG_STD_MIN + 0.5 * (TANH_LOG_STD_MAX - TANH_LOG_STD_MIN) * (
            torch.tanh(pre_std) + 1
        )
        return Independent(TanhNormal(mean, log_std.exp()), 1)


class SACActor(nn.Module):
    """MLP trunk (ELU) -> (mean, raw std) -> head (``GaussianERA`` or ``TanhGaussianHead``)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int, head: nn.Module):
        super().__init__()
        self.trunk = mlp([obs_dim] + [hidden] * layers + [2 * act_dim], nn.ELU)
        self.head = head

    def forward(self, obs: torch.Tensor) -> Distribution:
        mean, pre_std = self.trunk(obs).chunk(2, dim=-1)
        return self.head(mean, pre_std)


def per_state_entropy(dist: Distribution, samples: int = 16) -> torch.Tensor:
    """Entropy of each state's action distribution, ``[B]``.

    Exact for ERA and Gaussian heads; the tanh-Gaussian has no closed form, so it is a
    ``samples``-sample Monte Carlo estimate ``-mean log pi(a)`` there.
    """
    if isinstance(dist, Independent) and isinstance(dist.base_dist, TanhNormal):
        return -dist.log_prob(dist.sample((samples,))).mean(0)
    return dist.entropy()


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class PPOAgent(nn.Module):
    """CleanRL's MuJoCo actor-critic: separate 2-layer tanh MLPs, orthogonal initialisation.

    ``era`` head: the actor outputs a mean and a raw std per dimension, and an unbounded
    ``GaussianERA`` fixes the Gaussian's entropy at the target in every state. ``std`` head: the
    usual state-independent log-std parameter. Actions are clipped to [-1, 1] by the caller.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, era: GaussianERA | None):
        super().__init__()
        self.era = era
        out = 2 * act_dim if era is not None else act_dim
        self.critic = nn.Sequential(
            _orthogonal(nn.Linear(obs_dim, hidden), math.sqrt(2)),
            nn.Tanh(),
            _orthogonal(nn.Linear(hidden, hidden), math.sqrt(2)),
            nn.Tanh(),
            _orthogonal(nn.Linear(hidden, 1), 1.0),
        )
        self.actor = nn.Sequential(
            _orthogonal(nn.Linear(obs_dim, hidden), math.sqrt(2)),
            nn.Tanh(),
            _orthogonal(nn.Linear(hidden, hidden), math.sqrt(2)),
            nn.Tanh(),
            _orthogonal(nn.Linear(hidden, out), 0.01),
        )
        self.log_std = nn.Parameter(torch.zeros(act_dim)) if era is None else None

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def policy(self, obs: torch.Tensor) -> Distribution:
        out = self.actor(obs)
        if self.era is not None:
            return self.era(*out.chunk(2, dim=-1))
        return Independent(Normal(out, self.log_std.expand_as(out).exp()), 1)
