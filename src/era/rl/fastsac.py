"""FastSAC with an ERA policy head, or FastSAC's own auto-tuned temperature.

FastSAC (Seo et al., arXiv 2512.01996; the FastTD3 line of work) is SAC made fast by scale:
many parallel environments, large batches, several updates per environment step, and a critic
that is easy to train at that scale. What this module takes from the paper and the authors'
code (the ``fastsac`` branch of FastTD3 and its maintained version in holosoma):

* **Distributional critic** (C51, Bellemare et al. 2017): each of two critics outputs logits over
  ``num_atoms`` fixed returns ``z_j`` in ``[v_min, v_max]``; ``Q(s, a) = sum_j p_j z_j``. The
  target distribution puts each next-state atom at ``T z_j = r + gamma (1 - terminated)
  (z_j - alpha log pi(a'|s'))``, clipped to the support and projected back onto it (C51's
  projection, Eq. 7 of Bellemare et al.); the loss is the cross-entropy to it.
* **No clipped double Q by default**: as in FastSAC, each critic bootstraps from its own target
  network and the actor maximises the *mean* of the two critics' values.
  ``--fastsac.clipped-double-q`` switches to FastTD3's rule (both critics regress the projected
  distribution of whichever target critic has the lower mean, and the actor uses the min).
* Three-layer networks halving in width (``h, h/2, h/4``) with LayerNorm and SiLU, zero-initialised
  policy output, AdamW (betas 0.9, 0.95), one actor update every ``policy_frequency`` critic
  updates, running observation normalisation, optional ``torch.compile`` and bf16 autocast.

Heads, as in ``era.rl.sac``:

* ``era``: ``GaussianERA`` truncated normal on [-1, 1] in exact mode: the entropy equals the
  target in every state, so there is **no temperature and no entropy term** (the atoms shift by
  ``r + gamma z_j`` only, the actor minimises ``-Q``).
* ``alpha``: FastSAC's tanh-Gaussian with log-std in [-5, 0], temperature initialised at 0.001 and
  tuned towards the target entropy (FastSAC's default 0 nats) by
  ``L(alpha) = -alpha (log pi(a'|s') + H0)`` on the next-state actions of the critic batch.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent

from era.gaussian import GaussianERA, TanhNormal
from era.rl import off_policy
from era.rl.config import TrainConfig, default_target_entropy
from era.rl.networks import EnsembleLinear, policy_entropy_stats
from era.rl.ppo import RunningMeanStd
from era.rl.vec_env import ReplayableEnvs

LOG_STD_MIN, LOG_STD_MAX = -5.0, 0.0  # FastSAC's tanh-Gaussian range
CRITICS = 2


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Network outputs leave bf16 autocast as float32: distributions and the projection need it."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def widths(hidden: int) -> list[int]:
    """FastSAC's halving hidden layers."""
    return [hidden, hidden // 2, hidden // 4]


def target_entropy(config: TrainConfig, act_dim: int) -> float:
    """``--target-entropy``, else -D/2 for the ERA head (as SAC-ERA) and FastSAC's 0 for alpha."""
    if config.target_entropy is not None:
        return config.target_entropy
    return 0.0 if config.head == "alpha" else default_target_entropy("sac", "era", act_dim)


class FastSACActor(nn.Module):
    """``obs -> (mean, raw std) -> head``: LayerNorm/SiLU trunk, zero-initialised output."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, head: nn.Module):
        super().__init__()
        layers: list[nn.Module] = []
        for n_in, n_out in zip([obs_dim] + widths(hidden)[:-1], widths(hidden), strict=True):
            layers += [nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Linear(widths(hidden)[-1], 2 * act_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.head = head

    def forward(self, obs: torch.Tensor):
        return self.head(*self._mean_and_pre_std(obs))

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """``forward(obs).mode`` without building the distribution (no entropy solve)."""
        return self.head.deterministic_action(self._mean_and_pre_std(obs)[0])

    def _mean_and_pre_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return at_least_float32(self.out(self.trunk(obs))).chunk(2, dim=-1)


class TanhGaussianHead(nn.Module):
    """FastSAC's policy: tanh-squashed Gaussian with log-std squashed into [-5, 0]."""

    def forward(self, mean: torch.Tensor, pre_std: torch.Tensor):
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(pre_std) + 1)
        return Independent(TanhNormal(mean, log_std.exp()), 1)

    def deterministic_action(self, mean: torch.Tensor) -> torch.Tensor:
        """The mode of ``forward(mean, pre_std)``, which does not depend on ``pre_std``."""
        return torch.tanh(mean)


class DistributionalCritic(nn.Module):
    """Two C51 critics run as one batched network: ``(obs, action) -> logits [2, B, atoms]``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, num_atoms: int):
        super().__init__()
        sizes = [obs_dim + act_dim] + widths(hidden)
        self.hidden = nn.ModuleList(
            EnsembleLinear((CRITICS,), i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.norm_weight = nn.ParameterList(
            nn.Parameter(torch.ones(CRITICS, 1, width)) for width in sizes[1:]
        )
        self.norm_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(CRITICS, 1, width)) for width in sizes[1:]
        )
        self.out = EnsembleLinear((CRITICS,), sizes[-1], num_atoms)
        for layer in (*self.hidden, self.out):  # nn.Linear's initialisation, from torch's stream
            for member in range(CRITICS):
                layer.init_member(member, torch.default_generator)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], -1).expand(CRITICS, -1, -1)
        for layer, weight, bias in zip(self.hidden, self.norm_weight, self.norm_bias, strict=True):
            h = layer(x)
            x = F.silu(F.layer_norm(h, h.shape[-1:]) * weight + bias)
        return at_least_float32(self.out(x))


def project(target_atoms: torch.Tensor, probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """C51's projection: the distribution with mass ``probs`` at ``target_atoms`` (``[..., N]``),
    moved onto the fixed ``support`` (``[N]``, evenly spaced) by splitting each atom's mass
    between its two neighbours in proportion to closeness (Bellemare et al. 2017, Eq. 7).

    Written as ``sum_j probs_j * max(0, 1 - |clip(Tz_j) - z_i| / dz)``: dense and deterministic
    (no scatter), and the mass of an atom exactly on ``z_i`` goes to ``z_i`` alone.
    """
    dz = support[1] - support[0]
    clipped = target_atoms.clamp(support[0], support[-1])
    weights = (1 - (clipped.unsqueeze(-2) - support.unsqueeze(-1)).abs() / dz).clamp(min=0)
    return (weights * probs.unsqueeze(-2)).sum(-1)


class FastSACAgent(nn.Module):
    """Actor, two distributional critics and their targets, observation statistics and (alpha
    head) the log-temperature."""

    loss_names = ("qf_loss", "actor_loss")

    def __init__(self, config: TrainConfig, obs_dim: int, act_dim: int):
        super().__init__()
        cfg = config.fastsac
        self.config = cfg
        self.head = config.head
        self.target_entropy = target_entropy(config, act_dim)
        if config.head == "era":
            if config.era_mode != "exact":
                raise ValueError(
                    f"--era-mode {config.era_mode}: FastSAC-ERA uses the exact per-state floor "
                    "only (delta mode is for --algo sac)"
                )
            head = GaussianERA(act_dim, self.target_entropy, bound="truncated", mode="exact")
        else:
            head = TanhGaussianHead()
        self.actor = FastSACActor(obs_dim, act_dim, cfg.actor_hidden, head)
        self.critic = DistributionalCritic(obs_dim, act_dim, cfg.critic_hidden, cfg.num_atoms)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("support", torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms))
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.init_alpha))))
        self.updates = 0  # critic updates so far: every policy_frequency-th also updates the actor
        self.register_buffer("last_actor_loss", torch.tensor(0.0))

        def adamw(params, weight_decay):
            return torch.optim.AdamW(
                params, lr=cfg.lr, weight_decay=weight_decay, betas=(0.9, 0.95)
            )

        self.actor_opt = adamw(self.actor.parameters(), cfg.weight_decay)
        self.critic_opt = adamw(self.critic.parameters(), cfg.weight_decay)
        self.alpha_opt = adamw([self.log_alpha], 0.0) if self.head == "alpha" else None
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        compile = (
            (lambda fn: torch.compile(fn, dynamic=False, options={"fallback_random": True}))
            if cfg.compile
            else (lambda fn: fn)
        )
        self._critic_loss = compile(self.critic_loss)
        self._actor_loss = compile(self.actor_loss)

    def autocast(self):
        """bf16 autocast of the network passes (``--fastsac.amp bf16``)."""
        if self.config.amp == "none":
            return nullcontext()
        return torch.autocast(self.support.device.type, dtype=torch.bfloat16)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_rms.normalise(obs) if self.config.obs_norm else obs

    def observe(self, obs: torch.Tensor) -> None:
        if self.config.obs_norm:
            self.obs_rms.update(obs)

    def q_values(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected return of each critic, ``[2, B]``."""
        return (logits.softmax(-1) * self.support).sum(-1)

    def critic_loss(self, obs, action, reward, next_obs, terminated):
        """Cross-entropy of each critic to its projected target; also ``log pi(a'|s')``."""
        with torch.no_grad():
            with self.autocast():
                next_dist = self.actor(next_obs)
                next_action = next_dist.sample()
                next_logits = self.target_critic(next_obs, next_action)
            next_log_prob = next_dist.log_prob(next_action)
            atoms = self.support.expand(reward.shape[0], -1)
            if self.head == "alpha":
                atoms = atoms - (self.alpha * next_log_prob).unsqueeze(-1)
            target_atoms = (
                reward.unsqueeze(-1)
                + (self.config.gamma * (1.0 - terminated)).unsqueeze(-1) * atoms
            )
            target = project(target_atoms, next_logits.softmax(-1), self.support)  # [2, B, N]
            if self.config.clipped_double_q:
                lower = (target * self.support).sum(-1).argmin(0)  # [B]
                target = target.gather(0, lower.view(1, -1, 1).expand(1, *target.shape[1:]))
        with self.autocast():
            logits = self.critic(obs, action)
        loss = -(target * logits.log_softmax(-1)).sum(-1).mean(-1).sum()
        return loss, next_log_prob

    def actor_loss(self, obs):
        """``-Q`` (mean of the critics; min with clipped double Q) of a reparameterised action,
        plus ``alpha log pi`` for the alpha head."""
        with self.autocast():
            dist = self.actor(obs)
            action = dist.rsample()
            q = self.q_values(self.critic(obs, action))
        q = q.min(0).values if self.config.clipped_double_q else q.mean(0)
        if self.head == "alpha":
            return (self.alpha * dist.log_prob(action) - q).mean()
        return -q.mean()

    def update(self, obs, action, reward, next_obs, terminated) -> dict[str, torch.Tensor]:
        """One critic update (and temperature), an actor update every ``policy_frequency``-th."""
        obs, next_obs = self.normalise(obs), self.normalise(next_obs)
        qf_loss, next_log_prob = self._critic_loss(obs, action, reward, next_obs, terminated)
        self.critic_opt.zero_grad(set_to_none=True)
        qf_loss.backward()
        self.critic_opt.step()
        if self.alpha_opt is not None:
            alpha_loss = -(self.log_alpha.exp() * (next_log_prob + self.target_entropy)).mean()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()

        self.updates += 1
        losses = {"qf_loss": qf_loss.detach()}
        if self.updates % self.config.policy_frequency == 0:
            self.critic.requires_grad_(False)
            actor_loss = self._actor_loss(obs)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            self.critic.requires_grad_(True)
            self.last_actor_loss.copy_(actor_loss.detach())
        losses["actor_loss"] = self.last_actor_loss.clone()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)
        return losses

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        with self.autocast():
            if deterministic:  # the mode needs no entropy solve
                return self.actor.deterministic_action(self.normalise(obs))
            return self.actor(self.normalise(obs)).sample()

    @torch.no_grad()
    def entropy_stats(self, obs: torch.Tensor) -> dict[str, float]:
        """Per-state entropy of the policy on ``obs`` (min/mean/max) and the unreachable count."""
        stats = policy_entropy_stats(self.actor(self.normalise(obs)), self.target_entropy)
        if self.head == "alpha":
            stats["alpha"] = self.alpha.item()
        return stats

    def checkpoint_state(self) -> dict:
        state = {
            "modules": self.state_dict(),
            "updates": self.updates,
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
        }
        if self.alpha_opt is not None:
            state["alpha_opt"] = self.alpha_opt.state_dict()
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        self.updates = state["updates"]
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        if self.alpha_opt is not None:
            self.alpha_opt.load_state_dict(state["alpha_opt"])


def build(config: TrainConfig) -> tuple[ReplayableEnvs, FastSACAgent]:
    """Environments and agent (see :func:`off_policy.build_agent`)."""
    return off_policy.build_agent(config, FastSACAgent, num_envs=config.fastsac.num_envs)


def train(config: TrainConfig):
    """Train FastSAC (``era`` or ``alpha`` head) as configured; returns the run directory."""
    return off_policy.run(config, build, config.fastsac, num_envs=config.fastsac.num_envs)


def load_policy(config: TrainConfig, checkpoint: dict):
    """The deterministic policy ``obs -> action`` of a checkpoint (for ``era rl eval``)."""
    return off_policy.checkpoint_policy(build, config, checkpoint)
