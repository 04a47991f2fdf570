"""TD-MPC2's implicit world model: the networks, with no training logic (``tdmpc2.py`` has that).

Hansen, Su, Wang, "TD-MPC2: Scalable, Robust World Models for Continuous Control", ICLR 2024.
Five components on a latent state z (the paper's model):

    encoder     z   = h(s)                 SimNorm output
    dynamics    z'  = d(z, a)              SimNorm output
    reward      r^  = R(z, a)              two-hot logits (discrete regression in symlog space)
    value       q^  = Q_k(z, a), k=1..K    two-hot logits, an ensemble with dropout
    policy      a^ ~ p(z)                  the policy prior that guides planning

Every hidden layer is Linear -> LayerNorm -> Mish (as the paper). ``SimNorm`` splits a vector into
groups of 8 and takes a softmax in each group: the latent lives on a product of simplices, which
bounds it and biases it towards sparsity. Rewards and values are predicted as
distributions over 101 bins of ``symlog(x)`` in [-10, 10], so one set of hyper-parameters copes
with any reward scale (the paper's "discrete regression").

The policy prior's head is the one thing ERA changes: ``TanhGaussianPrior`` is the authors' (a
tanh-squashed Gaussian with log sigma in [-10, 2], trained with an entropy bonus), ``GaussianERA``
fixes the entropy of a truncated normal at the target in every state (no bonus).

Model sizes (parameters in millions) and their widths are the authors' presets, ``MODEL_SIZES``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent

from era.distributions import TanhNormal
from era.rl.networks import EnsembleLinear

# The authors' presets: encoder width, MLP width, latent size, encoder layers, Q-ensemble size.
MODEL_SIZES = {
    1: dict(enc_dim=256, mlp_dim=384, latent_dim=128, enc_layers=2, num_q=2),
    5: dict(enc_dim=256, mlp_dim=512, latent_dim=512, enc_layers=2, num_q=5),
    19: dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, enc_layers=3, num_q=5),
    48: dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, enc_layers=4, num_q=5),
    317: dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, enc_layers=5, num_q=8),
}


# -- discrete regression ------------------------------------------------------------------------


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|): compresses large rewards/values so one bin range fits all tasks."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot:
    """Scalars <-> distributions over ``num_bins`` evenly spaced bins of symlog(x) in [vmin, vmax].

    A scalar becomes the "two-hot" vector that puts weight on the two bins around symlog(x) so
    that its mean is symlog(x) exactly (clipped to the range); a prediction's logits become the
    symexp of their mean bin. Training is cross-entropy against the two-hot target.
    """

    def __init__(self, num_bins: int, vmin: float, vmax: float):
        self.num_bins, self.vmin, self.vmax = num_bins, vmin, vmax
        self.bin_size = (vmax - vmin) / (num_bins - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[...]`` scalars -> ``[..., num_bins]`` two-hot targets."""
        position = (symlog(x).clamp(self.vmin, self.vmax) - self.vmin) / self.bin_size
        lower = position.floor().clamp(max=self.num_bins - 2)  # vmax itself: all weight on top
        upper_weight = (position - lower).unsqueeze(-1)
        lower = lower.long().unsqueeze(-1)
        target = torch.zeros(*x.shape, self.num_bins, dtype=x.dtype, device=x.device)
        target.scatter_(-1, lower, 1 - upper_weight)
        target.scatter_(-1, lower + 1, upper_weight)
        return target

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """``[..., num_bins]`` logits -> ``[...]`` scalars."""
        bins = torch.linspace(
            self.vmin, self.vmax, self.num_bins, device=logits.device, dtype=logits.dtype
        )
        return symexp((logits.softmax(-1) * bins).sum(-1))

    def cross_entropy(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[...]``: cross-entropy of predicted logits against the two-hot encoding of x."""
        return -(self.encode(x) * logits.log_softmax(-1)).sum(-1)


# -- layers -------------------------------------------------------------------------------------


class SimNorm(nn.Module):
    """Simplicial normalisation: softmax within consecutive groups of ``group`` entries."""

    def __init__(self, group: int = 8):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.group)).softmax(-1).flatten(-2)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class NormedLinear(nn.Sequential):
    """Linear -> (Dropout) -> LayerNorm -> activation (Mish unless given)."""

    def __init__(self, n_in: int, n_out: int, act: nn.Module | None = None, dropout: float = 0.0):
        layers = [nn.Linear(n_in, n_out)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers, nn.LayerNorm(n_out), act if act is not None else nn.Mish())


def mlp(
    n_in: int, hidden: list[int], n_out: int, out_act: nn.Module | None = None
) -> nn.Sequential:
    """NormedLinear hidden layers; the output layer is plain Linear, or NormedLinear with
    ``out_act`` (SimNorm for the encoder and the dynamics)."""
    sizes = [n_in, *hidden]
    layers: list[nn.Module] = [
        NormedLinear(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    layers.append(
        nn.Linear(sizes[-1], n_out) if out_act is None else NormedLinear(sizes[-1], n_out, out_act)
    )
    return nn.Sequential(*layers)


class QEnsemble(nn.Module):
    """``num_q`` Q-networks run as one batched network (``EnsembleLinear``): ``[K, ..., bins]``.

    Each member: Linear -> Dropout -> LayerNorm -> Mish, Linear -> LayerNorm -> Mish, Linear.
    Dropout (0.01) only on the first layer and only in training mode, as in the paper.
    """

    def __init__(self, num_q: int, n_in: int, hidden: int, n_out: int, dropout: float):
        super().__init__()
        self.num_q, self.dropout = num_q, dropout
        self.hidden = nn.ModuleList(
            [EnsembleLinear((num_q,), n_in, hidden), EnsembleLinear((num_q,), hidden, hidden)]
        )
        self.norm_weight = nn.Parameter(torch.ones(2, num_q, 1, hidden))
        self.norm_bias = nn.Parameter(torch.zeros(2, num_q, 1, hidden))
        self.out = EnsembleLinear((num_q,), hidden, n_out)
        for layer in (*self.hidden, self.out):  # like nn.Linear, from torch's global generator
            for member in range(num_q):
                layer.init_member(member, torch.default_generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1]).expand(self.num_q, -1, -1)
        for i, layer in enumerate(self.hidden):
            h = layer(x)
            if i == 0 and self.dropout:
                h = F.dropout(h, self.dropout, self.training)
            x = F.mish(F.layer_norm(h, h.shape[-1:]) * self.norm_weight[i] + self.norm_bias[i])
        return self.out(x).reshape(self.num_q, *batch, -1)


class TanhGaussianPrior(nn.Module):
    """The authors' policy prior: ``tanh(x)``, x ~ N(mean, sigma^2), log sigma squashed into
    [log_std_min, log_std_max] = [-10, 2] by a tanh."""

    def __init__(self, log_std_min: float = -10.0, log_std_max: float = 2.0):
        super().__init__()
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, mean: torch.Tensor, pre_std: torch.Tensor) -> Distribution:
        span = self.log_std_max - self.log_std_min
        log_std = self.log_std_min + 0.5 * span * (torch.tanh(pre_std) + 1)
        return Independent(TanhNormal(mean, log_std.exp(), validate_args=False), 1)


# -- the world model ----------------------------------------------------------------------------


class WorldModel(nn.Module):
    """Encoder, latent dynamics, reward, Q-ensemble (+ its Polyak target) and policy prior."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        size: int,
        num_q: int,
        prior_head: nn.Module,
        num_bins: int = 101,
        simnorm_group: int = 8,
        dropout: float = 0.01,
    ):
        super().__init__()
        s = MODEL_SIZES[size]
        latent, width = s["latent_dim"], s["mlp_dim"]
        if latent % simnorm_group:
            raise ValueError(
                f"latent size {latent} is not a multiple of simnorm_group={simnorm_group}"
            )
        self.latent_dim, self.act_dim = latent, act_dim
        self.encoder = mlp(
            obs_dim, [s["enc_dim"]] * (s["enc_layers"] - 1), latent, SimNorm(simnorm_group)
        )
        self.dynamics = mlp(latent + act_dim, [width, width], latent, SimNorm(simnorm_group))
        self.reward = mlp(latent + act_dim, [width, width], num_bins)
        self.prior = mlp(latent, [width, width], 2 * act_dim)
        self.prior_head = prior_head
        self.qs = QEnsemble(num_q, latent + act_dim, width, num_bins, dropout)
        self.apply(_init_weights)
        # Reward and values start at exactly 0 (uniform logits decode to symexp(0) = 0).
        nn.init.zeros_(self.reward[-1].weight)
        nn.init.zeros_(self.qs.out.weight)
        nn.init.zeros_(self.qs.out.bias)
        self.target_qs = copy.deepcopy(self.qs).requires_grad_(False)

    def train(self, mode: bool = True):
        """The target Q-ensemble stays in evaluation mode (no dropout in TD targets)."""
        super().train(mode)
        self.target_qs.train(False)
        return self

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs)

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.dynamics(torch.cat([z, action], -1))

    def reward_logits(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.reward(torch.cat([z, action], -1))

    def q_logits(self, z: torch.Tensor, action: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``[K, ..., bins]``: logits of every ensemble member (of the target copy if asked)."""
        return (self.target_qs if target else self.qs)(torch.cat([z, action], -1))

    def policy(self, z: torch.Tensor) -> Distribution:
        """The policy prior p(.|z): a distribution over the action box [-1, 1]^D."""
        mean, pre_std = self.prior(z).chunk(2, dim=-1)
        return self.prior_head(mean, pre_std)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _init_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) weights and zero biases, as the authors initialise."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, EnsembleLinear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def discount_for(
    episode_length: int, denominator: float = 5, low: float = 0.95, high: float = 0.995
) -> float:
    """The authors' discount heuristic: ``(L/5 - 1) / (L/5)`` clipped to [0.95, 0.995]; longer
    episodes get a longer horizon (0.995 for 1000-step dm_control episodes)."""
    frac = episode_length / denominator
    return min(max((frac - 1) / frac, low), high)


def default_seed_steps(episode_length: int) -> int:
    """Random steps before learning: max(1000, 5 episodes), the authors' rule."""
    return max(1000, 5 * episode_length)
