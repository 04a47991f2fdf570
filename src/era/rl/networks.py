"""Actor and critic networks shared by the SAC and PPO agents.

The policy *head* is the only thing that differs between ERA and its baseline: the trunk outputs
a mean and a raw std vector, and the head turns them into an action distribution.

SAC's networks are *ensembles*: every parameter has a leading seed axis, so the agents of S
independent seeds (and each seed's twin critics) run as one batched matrix product per layer
(``EnsembleLinear``). A single run is the ensemble of one.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from era.distributions import TanhNormal, TruncatedNormal
from era.gaussian import GaussianERA

# The usual SAC log-std range (CleanRL, SB3); the alpha head squashes its raw output into it.
TANH_LOG_STD_MIN, TANH_LOG_STD_MAX = -5.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@functools.cache
def wake_sleef_expm1() -> None:
    """Run one vectorised atanh, once per process, before the ELU networks train.

    Measured on this project's machine (AMD EPYC virtual machine, AVX-512, torch 2.14.1): the
    vectorised ``expm1`` that ELU runs on (eager and compiled) is about 7x slower in a process
    until a vectorised ``atanh`` or ``tanh`` of Sleef's has run once; afterwards, in every thread
    of the process, it is fast. The cause is not known. A tanh-Gaussian agent wakes it by itself
    (its compiled graphs run Sleef's tanh); the ERA head does not, so without this its compiled
    SAC update took 1.6x as long. One atanh of 4,096 zeros changes no result.
    ``benchmarks/expm1_warmup.py`` measures it.
    """
    torch.atanh(torch.zeros(4096))


class EnsembleLinear(nn.Module):
    """Independent linear layers applied in one batched matmul.

    ``members`` is the ensemble's shape: ``(S,)`` for S actors, ``(S, 2)`` for S twin critics.
    ``forward`` maps ``[*members, B, in]`` to ``[*members, B, out]``. Members are initialised
    like ``nn.Linear`` (uniform in +-1/sqrt(in)) by :meth:`init_member`, one seed at a time from
    that seed's generator, so member ``s`` starts the same whatever the ensemble's size.
    """

    def __init__(self, members: tuple[int, ...], n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(*members, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(*members, 1, n_out))

    @torch.no_grad()
    def init_member(self, index: int, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[-2])
        self.weight[index].uniform_(-bound, bound, generator=generator)
        self.bias[index].uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in, n_out = self.weight.shape[-2:]
        batch = x.shape[-2]
        out = torch.baddbmm(
            self.bias.reshape(-1, 1, n_out),
            x.reshape(-1, batch, n_in),
            self.weight.reshape(-1, n_in, n_out),
        )
        return out.view(*self.weight.shape[:-2], batch, n_out)


class TwinCritic(nn.Module):
    """Two Q-networks ``Q(s, a)`` per seed, with LayerNorm and ELU (as the authors' critic).

    ``forward(obs [S, B, o], action [S, B, a])`` returns ``[S, 2, B]``: both critics' values, so
    ``.min(1)`` is SAC's clipped target.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int, seeds: int = 1):
        super().__init__()
        wake_sleef_expm1()
        sizes = [obs_dim + act_dim] + [hidden] * layers
        self.hidden = nn.ModuleList(
            EnsembleLinear((seeds, 2), i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.norm_weight = nn.Parameter(torch.ones(seeds, layers, 2, 1, hidden))
        self.norm_bias = nn.Parameter(torch.zeros(seeds, layers, 2, 1, hidden))
        self.out = EnsembleLinear((seeds, 2), hidden, 1)

    def init_member(self, index: int, generator: torch.Generator) -> None:
        for layer in (*self.hidden, self.out):
            layer.init_member(index, generator)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], -1).unsqueeze(1).expand(-1, 2, -1, -1)
        for i, layer in enumerate(self.hidden):
            h = layer(x)
            h = F.layer_norm(h, h.shape[-1:])
            x = F.elu(h * self.norm_weight[:, i] + self.norm_bias[:, i])
        return self.out(x).squeeze(-1)


class TanhGaussianHead(nn.Module):
    """SAC's usual policy: tanh-squashed Gaussian, log-std squashed into [-5, 2]."""

    def forward(self, mean: torch.Tensor, pre_std: torch.Tensor) -> Distribution:
        log_std = TANH_LOG_STD_MIN + 0.5 * (TANH_LOG_STD_MAX - TANH_LOG_STD_MIN) * (
            torch.tanh(pre_std) + 1
        )
        return Independent(TanhNormal(mean, log_std.exp()), 1)

    def deterministic_action(self, mean: torch.Tensor) -> torch.Tensor:
        """The mode of ``forward(mean, pre_std)``, which does not depend on ``pre_std``."""
        return torch.tanh(mean)


class SACActor(nn.Module):
    """MLP trunk (ELU) -> (mean, raw std) -> head (``GaussianERA`` or ``TanhGaussianHead``).

    ``forward(obs [S, B, o])`` returns a distribution with batch shape ``[S, B]``.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: int, layers: int, head: nn.Module, seeds: int = 1
    ):
        super().__init__()
        wake_sleef_expm1()
        sizes = [obs_dim] + [hidden] * layers + [2 * act_dim]
        self.trunk = nn.ModuleList(
            EnsembleLinear((seeds,), i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = head

    def init_member(self, index: int, generator: torch.Generator) -> None:
        for layer in self.trunk:
            layer.init_member(index, generator)

    def forward(self, obs: torch.Tensor) -> Distribution:
        return self.head(*self._mean_and_pre_std(obs))

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """``forward(obs).mode`` without building the distribution (no entropy solve)."""
        return self.head.deterministic_action(self._mean_and_pre_std(obs)[0])

    def _mean_and_pre_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = obs
        for i, layer in enumerate(self.trunk):
            x = layer(x) if i == 0 else layer(F.elu(x))
        return x.chunk(2, dim=-1)


def noise_kind(dist: Distribution) -> str:
    """What :func:`sample_from_noise` consumes: ``"uniform"`` (truncated normal, by inverse
    cdf) or ``"normal"`` (tanh-Gaussian, by reparameterisation)."""
    return "uniform" if isinstance(dist.base_dist, TruncatedNormal) else "normal"


def sample_from_noise(
    dist: Distribution, noise: torch.Tensor, with_log_prob: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A reparameterised action from given noise (and its log-probability if asked).

    The caller draws the noise, so each seed of an ensemble can draw from its own generator
    while the policy runs batched. The same noise gives what ``dist.rsample()`` would give
    after drawing it: ``icdf(u)`` for the truncated normal, ``tanh(loc + scale * eps)`` for the
    tanh-Gaussian (whose log-probability then needs no ``atanh``: ``eps`` is the standardised
    pre-squash value).
    """
    base = dist.base_dist
    if isinstance(base, TruncatedNormal):
        eps = torch.finfo(noise.dtype).eps
        action = base.icdf(noise.clamp(eps, 1 - eps))
        return action, dist.log_prob(action) if with_log_prob else None
    if isinstance(base, TanhNormal):
        x = base.loc + base.scale * noise
        action = torch.tanh(x)
        if not with_log_prob:
            return action, None
        log_tanh_jacobian = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
        log_prob = -0.5 * noise.square() - base.scale.log() - _HALF_LOG_2PI - log_tanh_jacobian
        return action, log_prob.sum(-1)
    raise TypeError(f"no noise sampler for {type(base).__name__}")


def per_state_entropy(dist: Distribution, samples: int = 16) -> torch.Tensor:
    """Entropy of each state's action distribution, ``[B]``.

    Exact for ERA and Gaussian heads; the tanh-Gaussian has no closed form, so it is a
    ``samples``-sample Monte Carlo estimate ``-mean log pi(a)`` there.
    """
    if isinstance(dist, Independent) and isinstance(dist.base_dist, TanhNormal):
        return -dist.log_prob(dist.sample((samples,))).mean(0)
    return dist.entropy()


def entropy_summary(entropy: torch.Tensor) -> dict[str, float]:
    """Mean, lowest and highest of per-state entropies: the ``metrics.csv`` entropy columns."""
    return {
        "entropy": entropy.mean().item(),
        "entropy_min": entropy.min().item(),
        "entropy_max": entropy.max().item(),
    }


def unreachable_count(dist: Distribution) -> int:
    """States where an ERA head cannot reach its target entropy (0 for the other heads)."""
    unreachable = getattr(dist, "unreachable", None)
    return int(unreachable.sum()) if unreachable is not None else 0


@torch.no_grad()
def policy_entropy_stats(dist: Distribution, target_entropy: float) -> dict[str, float]:
    """:func:`entropy_summary` of ``dist`` with its target and :func:`unreachable_count`.

    A sampled estimate (tanh head) draws on a fork of the CPU generator so that reporting does
    not shift training.
    """
    with torch.random.fork_rng(devices=[]):
        entropy = per_state_entropy(dist)
    return entropy_summary(entropy) | {
        "target_entropy": target_entropy,
        "unreachable": unreachable_count(dist),
    }


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
