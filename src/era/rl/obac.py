"""Offline-boosted actor-critic (OBAC) with an ERA policy head, or SAC's temperature.

OBAC (Luo et al., "Offline-Boosted Actor-Critic: Adaptively Blending Optimal Historical
Behaviors in Deep Off-Policy RL", ICML 2024) is SAC plus a second, *offline* evaluation of the
replay buffer, learned concurrently from the same batches:

* **Online critic** ``Q^pi`` (twin, clipped double Q): SAC's, evaluating the current policy.
* **Offline critic** ``Q^mu`` and value ``V^mu`` of the buffer's behaviour policy ``mu`` (the
  mixture of all past policies), learned *in sample* like IQL (Kostrikov et al. 2022): only
  buffer actions are ever evaluated, so no out-of-distribution action is queried.

      L(V^mu) = E_D[ |tau - 1(u < 0)| u^2 ],  u = min(Q^mu_target)(s, a) - V^mu(s)   (expectile)
      L(Q^mu) = E_D[ (r + gamma (1 - terminated) V^mu(s') - Q^mu(s, a))^2 ]

  With ``tau`` near 1 (0.9) ``V^mu(s)`` approaches the value of the best action the buffer holds
  in ``s``: the value of the best historical behaviour, ``V^{mu*}``.
* **Adaptive behaviour-regularised policy improvement**: the paper constrains the policy to stay
  close to ``mu*`` (a KL bound) only in states where that behaviour is better than the current
  policy, ``V^{mu*}(s) >= V^pi(s)``, and not at all elsewhere. Its Lagrangian form, which the
  authors' code optimises with a fixed multiplier ``lambda`` (``bc_weight``, default 0.001):

      L(pi) = E_s[ E_{a~pi}[alpha log pi(a|s) - min Q^pi(s, a)] ]
              - lambda E_{(s,a)~D}[ 1(V^{mu*}(s) > V^pi(s)) log pi(a|s) ]

  with ``V^pi(s) = min Q^pi(s, a~pi)``. ``--obac.gate state`` applies the indicator per state
  (the paper's constraint); ``--obac.gate batch`` applies it to the whole batch when the batch
  mean of ``min Q^pi(s, a~pi)`` is below that of ``min Q^mu(s, a_D)`` (the authors' code). The
  authors clamp ``log pi(a|s)`` to [-20, 2]; we do not, since with an ERA head the buffer
  actions' log-likelihood often lies above 2 and the clamp would switch the term off.

Heads, as in ``era.rl.sac``: ``era`` (``GaussianERA`` truncated normal, exact per-state floor, no
entropy term anywhere; ``log pi(a_D|s)`` is the truncated normal's log-density) and ``alpha``
(tanh-Gaussian, temperature tuned towards -dim(A), as in the authors' code).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from era.gaussian import GaussianERA
from era.rl import off_policy
from era.rl.config import TrainConfig, default_target_entropy
from era.rl.networks import SACActor, TanhGaussianHead, TwinCritic, policy_entropy_stats
from era.rl.vec_env import ReplayableEnvs

# Buffer actions are clamped this far inside [-1, 1] before the tanh head's log-density
# (atanh(+-1) is infinite; a float32 tanh sample can round to exactly +-1).
EDGE = 1e-6


class OBACAgent(nn.Module):
    """Actor, online twin critic (+ target), offline twin critic (+ target), offline value and
    (``alpha`` head) the log-temperature."""

    loss_names = ("qf_loss", "actor_loss", "offline_qf_loss", "offline_v_loss", "bc_active")

    def __init__(self, config: TrainConfig, obs_dim: int, act_dim: int):
        super().__init__()
        cfg = config.obac
        self.config = cfg
        self.head = config.head
        self.target_entropy = (
            config.target_entropy
            if config.target_entropy is not None
            else default_target_entropy("sac", config.head, act_dim)
        )
        if config.head == "era":
            if config.era_mode != "exact":
                raise ValueError(
                    f"--era-mode {config.era_mode}: OBAC-ERA uses the exact per-state floor "
                    "only (delta mode is for --algo sac)"
                )
            head = GaussianERA(act_dim, self.target_entropy, bound="truncated", mode="exact")
        else:
            head = TanhGaussianHead()
        # SAC's networks are seed ensembles (a leading seed axis); OBAC runs one seed, S = 1
        self.actor = SACActor(obs_dim, act_dim, cfg.hidden, cfg.layers, head)
        self.critic = TwinCritic(obs_dim, act_dim, cfg.hidden, cfg.layers)
        self.offline_critic = TwinCritic(obs_dim, act_dim, cfg.hidden, cfg.layers)
        for network in (self.actor, self.critic, self.offline_critic):
            network.init_member(0, torch.default_generator)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.offline_target = copy.deepcopy(self.offline_critic).requires_grad_(False)
        sizes = [obs_dim] + [cfg.hidden] * cfg.layers
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ELU()]
        self.offline_value = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.init_alpha))))

        adam = lambda params: torch.optim.Adam(params, lr=cfg.lr)  # noqa: E731
        self.actor_opt = adam(self.actor.parameters())
        self.critic_opt = adam(self.critic.parameters())
        self.offline_opt = adam(
            [*self.offline_critic.parameters(), *self.offline_value.parameters()]
        )
        self.alpha_opt = adam([self.log_alpha]) if self.head == "alpha" else None
        self._online = list(self.critic.parameters()), list(self.target_critic.parameters())
        self._offline = (
            list(self.offline_critic.parameters()),
            list(self.offline_target.parameters()),
        )

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def observe(self, obs: torch.Tensor) -> None:
        """OBAC uses raw observations (as SAC)."""

    def policy(self, obs: torch.Tensor):
        """The action distribution, batch shape ``[1, B]`` (the ensemble's seed axis)."""
        return self.actor(obs.unsqueeze(0))

    @staticmethod
    def q(critic: TwinCritic, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Both Q-values of a twin critic, ``[2, B]``."""
        return critic(obs.unsqueeze(0), action.unsqueeze(0))[0]

    def critic_loss(self, obs, action, reward, next_obs, terminated) -> torch.Tensor:
        """SAC's clipped double-Q regression (no entropy term with the ERA head)."""
        with torch.no_grad():
            next_dist = self.policy(next_obs)
            next_action = next_dist.sample()
            next_q = self.q(self.target_critic, next_obs, next_action[0]).min(0).values
            if self.head == "alpha":
                next_q = next_q - self.alpha * next_dist.log_prob(next_action)[0]
            target = reward + self.config.gamma * (1.0 - terminated) * next_q
        return (self.q(self.critic, obs, action) - target).pow(2).mean(1).sum()

    def offline_losses(self, obs, action, reward, next_obs, terminated):
        """In-sample evaluation of the buffer: ``Q^mu`` regressed on ``r + gamma V^mu(s')``,
        ``V^mu`` on the ``tau``-expectile of the target ``min Q^mu(s, a_D)``."""
        with torch.no_grad():
            next_v = self.offline_value(next_obs).squeeze(-1)
            target = reward + self.config.gamma * (1.0 - terminated) * next_v
            q_behaviour = self.q(self.offline_target, obs, action).min(0).values
        q_loss = (self.q(self.offline_critic, obs, action) - target).pow(2).mean(1).sum()
        u = q_behaviour - self.offline_value(obs).squeeze(-1)
        weight = (self.config.expectile - (u < 0).to(u.dtype)).abs()  # |tau - 1(u < 0)|
        v_loss = (weight * u.pow(2)).mean()
        return q_loss, v_loss

    def actor_loss(self, obs, action):
        """SAC's actor loss plus ``-lambda * gate * log pi(a_D|s)`` (module docstring); also the
        log-probabilities the temperature needs and the fraction of gated states."""
        dist = self.policy(obs)
        new_action = dist.rsample()
        q_policy = self.q(self.critic, obs, new_action[0]).min(0).values
        log_prob = dist.log_prob(new_action)[0]
        loss = -q_policy
        if self.head == "alpha":
            loss = loss + self.alpha * log_prob
        with torch.no_grad():
            if self.config.gate == "state":
                gate = (self.offline_value(obs).squeeze(-1) > q_policy).float()
            else:
                q_behaviour = self.q(self.offline_critic, obs, action).min(0).values
                gate = (q_policy.mean() < q_behaviour.mean()).float().expand_as(q_policy)
        if self.head == "alpha":
            action = action.clamp(-1 + EDGE, 1 - EDGE)
        bc = -(gate * dist.log_prob(action.unsqueeze(0))[0])
        return (loss + self.config.bc_weight * bc).mean(), log_prob.detach(), gate.mean()

    def update(self, obs, action, reward, next_obs, terminated) -> dict[str, torch.Tensor]:
        """One gradient step of both evaluations, the actor and the temperature."""
        qf_loss = self.critic_loss(obs, action, reward, next_obs, terminated)
        self.critic_opt.zero_grad(set_to_none=True)
        qf_loss.backward()
        self.critic_opt.step()

        offline_q_loss, offline_v_loss = self.offline_losses(
            obs, action, reward, next_obs, terminated
        )
        self.offline_opt.zero_grad(set_to_none=True)
        (offline_q_loss + offline_v_loss).backward()
        self.offline_opt.step()

        self.critic.requires_grad_(False)  # the actor's loss differentiates Q in a only
        actor_loss, log_prob, bc_active = self.actor_loss(obs, action)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        if self.alpha_opt is not None:
            alpha_loss = -(self.log_alpha * (self.target_entropy + log_prob)).mean()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()

        with torch.no_grad():
            tau = self.config.tau
            torch._foreach_lerp_(self._online[1], self._online[0], tau)
            torch._foreach_lerp_(self._offline[1], self._offline[0], tau)
        return {
            "qf_loss": qf_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "offline_qf_loss": offline_q_loss.detach(),
            "offline_v_loss": offline_v_loss.detach(),
            "bc_active": bc_active,
        }

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        if deterministic:  # the mode needs no entropy solve
            return self.actor.deterministic_action(obs.unsqueeze(0))[0]
        return self.policy(obs).sample()[0]

    @torch.no_grad()
    def entropy_stats(self, obs: torch.Tensor) -> dict[str, float]:
        """Per-state entropy of the policy on ``obs`` (min/mean/max) and the unreachable count."""
        stats = policy_entropy_stats(self.policy(obs), self.target_entropy)
        if self.head == "alpha":
            stats["alpha"] = self.alpha.item()
        return stats

    def checkpoint_state(self) -> dict:
        state = {
            "modules": self.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "offline_opt": self.offline_opt.state_dict(),
        }
        if self.alpha_opt is not None:
            state["alpha_opt"] = self.alpha_opt.state_dict()
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.offline_opt.load_state_dict(state["offline_opt"])
        if self.alpha_opt is not None:
            self.alpha_opt.load_state_dict(state["alpha_opt"])


def build(config: TrainConfig) -> tuple[ReplayableEnvs, OBACAgent]:
    """Environment and agent (see :func:`off_policy.build_agent`)."""
    return off_policy.build_agent(config, OBACAgent, num_envs=1)


def train(config: TrainConfig):
    """Train OBAC (``era`` or ``alpha`` head) as configured; returns the run directory."""
    return off_policy.run(config, build, config.obac, num_envs=1)


def load_policy(config: TrainConfig, checkpoint: dict):
    """The deterministic policy ``obs -> action`` of a checkpoint (for ``era rl eval``)."""
    return off_policy.checkpoint_policy(build, config, checkpoint)
