"""Soft actor-critic with an ERA policy head, or the usual auto-tuned temperature.

Two heads share everything else (networks, optimiser, replay, schedule), so a comparison
isolates the head:

* ``era``: ``GaussianERA`` with a truncated normal on [-1, 1]. Its entropy is held at the target
  by the activation itself (in every state in ``exact`` mode, on average in ``delta`` mode), so
  there is **no entropy term anywhere** (spec §1.3): the critic target is
  ``r + gamma * (1 - terminated) * min(Q1', Q2')(s', a')`` and the actor minimises
  ``-min(Q1, Q2)(s, a)``.
* ``alpha``: tanh-squashed Gaussian with SAC's entropy bonus and a temperature tuned towards the
  target entropy (default -dim(A)).

Read top to bottom: building the agent, one gradient update, the training loop.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from era.gaussian import GaussianERA
from era.rl.buffer import ReplayBuffer
from era.rl.config import TrainConfig, default_target_entropy
from era.rl.envs import make_env
from era.rl.loop import (
    Reporter,
    evaluate,
    rng_state,
    set_rng_state,
    start_run,
    write_summary,
)
from era.rl.networks import (
    SACActor,
    TanhGaussianHead,
    TwinCritic,
    per_state_entropy,
)
from era.rl.vec_env import ReplayableEnvs
from era.runs import check_finite, read_metrics, set_seed, stop_signals

LOG_EVERY = 1000  # steps between TensorBoard training scalars and divergence checks


class SACAgent(torch.nn.Module):
    """Actor, twin critics, target critics and (``alpha`` head) the log-temperature."""

    def __init__(self, config: TrainConfig, obs_dim: int, act_dim: int):
        super().__init__()
        sac = config.sac
        self.config = sac
        self.head = config.head
        self.target_entropy = (
            config.target_entropy
            if config.target_entropy is not None
            else default_target_entropy("sac", config.head, act_dim)
        )
        if config.head == "era":
            head = GaussianERA(
                act_dim, self.target_entropy, bound="truncated", mode=config.era_mode
            )
        else:
            head = TanhGaussianHead()
        self.actor = SACActor(obs_dim, act_dim, sac.hidden, sac.layers, head)
        self.critic = TwinCritic(obs_dim, act_dim, sac.hidden, sac.layers)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(float(np.log(sac.init_alpha))))
        # delta-mode ERA learns its compensation by its own dual loss, never through -Q.
        self.compensation = getattr(head, "compensation", None)
        dual = set(self.compensation.parameters()) if self.compensation is not None else set()
        # fused: one kernel per optimiser step instead of several per parameter (CPU and GPU)
        adam = lambda params: torch.optim.Adam(params, lr=sac.lr, fused=True)
        self.actor_opt = adam([p for p in self.actor.parameters() if p not in dual])
        self.critic_opt = adam(self.critic.parameters())
        dual_params = list(dual) if self.head == "era" else [self.log_alpha]
        self.dual_opt = adam(dual_params) if dual_params else None
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        # Both losses and their backward passes as compiled graphs (--sac.compile); the random
        # numbers stay torch's own (fallback_random), so a compiled run draws what an eager one
        # does. Optimiser steps stay eager: fused Adam is one kernel already.
        compile = (
            (lambda fn: torch.compile(fn, dynamic=False, options={"fallback_random": True}))
            if sac.compile
            else (lambda fn: fn)
        )
        self._critic_loss = compile(self.critic_loss)
        self._actor_loss = compile(self.actor_loss)
        self._sample_action = compile(self.sample_action)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def critic_loss(self, obs, action, reward, next_obs, terminated) -> torch.Tensor:
        """Both Q's regressed on the clipped double-Q target (minus alpha*log pi for SAC)."""
        with torch.no_grad():
            next_dist = self.actor(next_obs)
            next_action = next_dist.sample()
            next_q = self.target_critic(next_obs, next_action).min(0).values
            if self.head == "alpha":
                next_q = next_q - self.alpha * next_dist.log_prob(next_action)
            target = reward + self.config.gamma * (1.0 - terminated) * next_q
        return (self.critic(obs, action) - target).pow(2).mean(1).sum()

    def actor_loss(self, obs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-min Q of a reparameterised action (plus alpha*log pi for SAC), and the per-state
        entropy the dual step needs (None for exact-mode ERA: it is the target already)."""
        dist = self.actor(obs)
        new_action = dist.rsample()
        loss = -self.critic(obs, new_action).min(0).values.mean()
        if self.head == "alpha":
            log_prob = dist.log_prob(new_action)
            return loss + (self.alpha * log_prob).mean(), -log_prob.detach()
        if self.compensation is not None:
            with torch.no_grad():
                return loss, dist.entropy()
        return loss, None

    def update(self, obs, action, reward, next_obs, terminated) -> dict[str, torch.Tensor]:
        """One gradient step of critics, actor and temperature/compensation on a batch."""
        qf_loss = self._critic_loss(obs, action, reward, next_obs, terminated)
        self.critic_opt.zero_grad(set_to_none=True)
        qf_loss.backward()
        self.critic_opt.step()

        self.critic.requires_grad_(False)  # the actor's loss differentiates Q in a only
        actor_loss, entropy = self._actor_loss(obs)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        # Temperature (alpha head) or delta compensation (ERA delta mode): dual ascent on the
        # entropy constraint.
        if self.dual_opt is not None:
            if self.head == "alpha":
                dual_loss = -(self.log_alpha * (self.target_entropy - entropy)).mean()
            else:
                dual_loss = self.compensation.loss(entropy)
            self.dual_opt.zero_grad(set_to_none=True)
            dual_loss.backward()
            self.dual_opt.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)
        losses = {"qf_loss": qf_loss.detach(), "actor_loss": actor_loss.detach()}
        if entropy is not None:
            losses["entropy"] = entropy.mean()
        return losses

    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs).sample()

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        obs = torch.as_tensor(obs, dtype=torch.float32)
        if deterministic:
            return self.actor(obs).mode.numpy()
        return self._sample_action(obs).numpy()

    @torch.no_grad()
    def entropy_stats(self, obs: torch.Tensor) -> dict[str, float]:
        """Per-state entropy of the policy on ``obs`` (min/mean/max) and the unreachable count."""
        dist = self.actor(obs)
        with torch.random.fork_rng(devices=[]):  # a sampled estimate must not shift training
            entropy = per_state_entropy(dist)
        unreachable = getattr(dist, "unreachable", None)
        stats = {
            "entropy": entropy.mean().item(),
            "entropy_min": entropy.min().item(),
            "entropy_max": entropy.max().item(),
            "target_entropy": self.target_entropy,
            "unreachable": int(unreachable.sum()) if unreachable is not None else 0,
        }
        if self.head == "alpha":
            stats["alpha"] = self.alpha.item()
        else:
            delta = self.compensation.delta if self.compensation is not None else 0.0
            stats["delta"] = float(delta)
        return stats

    def checkpoint_state(self) -> dict:
        optimisers = {
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
        }
        if self.dual_opt is not None:
            optimisers["dual_opt"] = self.dual_opt.state_dict()
        return {"modules": self.state_dict(), **optimisers}

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        if self.dual_opt is not None:
            self.dual_opt.load_state_dict(state["dual_opt"])


def build(config: TrainConfig) -> tuple[ReplayableEnvs, SACAgent]:
    """Environment and agent; raises ``ValueError`` for an unknown env or infeasible target."""
    envs = ReplayableEnvs(config.env, config.seed, num_envs=1)
    obs_dim = envs.observation_space.shape[0]
    act_dim = envs.action_space.shape[0]
    return envs, SACAgent(config, obs_dim, act_dim)


def stats_batch(buffer: ReplayBuffer, step: int, size: int = 1024) -> torch.Tensor:
    """Replay states on which the per-state entropy is reported; a generator of its own keeps
    the training random stream unchanged."""
    generator = torch.Generator().manual_seed(step)
    return buffer.sample(min(size, buffer.size), generator=generator)[0]


def train(config: TrainConfig):
    """Train SAC (``era`` or ``alpha`` head) as configured; returns the run directory."""
    set_seed(config.seed)
    envs, agent = build(config)
    run, logger, checkpoint = start_run(config)
    cfg = config.sac
    capacity = min(cfg.buffer_size, config.total_steps)
    buffer = ReplayBuffer(capacity, envs.observation_space.shape[0], envs.action_space.shape[0])
    eval_env = make_env(config.env, config.seed + 10_000)
    step, elapsed, row_step = 0, 0.0, None
    if checkpoint is not None:
        agent.load_checkpoint_state(checkpoint["agent"])
        buffer.load_state_dict(checkpoint["buffer"])
        envs.load_state_dict(checkpoint["envs"])
        set_rng_state(checkpoint["rng"])
        step, elapsed, row_step = checkpoint["step"], checkpoint["elapsed"], checkpoint["row_step"]

    def save():
        run.save_checkpoint(
            {
                "step": step,
                "config": run.config,
                "agent": agent.checkpoint_state(),
                "buffer": buffer.state_dict(),
                "envs": envs.state_dict(),
                "rng": rng_state(),
                "elapsed": elapsed + time.perf_counter() - t0,
                "row_step": row_step,
            },
        )

    def log_evaluation() -> dict:
        nonlocal row_step
        check_finite(step, **losses)
        ret_mean, ret_std = evaluate(
            lambda o: agent.act(o, deterministic=True),
            eval_env,
            config.eval_episodes,
            seed=config.seed + 10_000,
        )
        obs = stats_batch(buffer, step) if buffer.size else torch.as_tensor(envs.obs)
        row = {
            "return_mean": ret_mean,
            "return_std": ret_std,
            **agent.entropy_stats(obs),
            "qf_loss": float(losses["qf_loss"]),
            "actor_loss": float(losses["actor_loss"]),
            "sps": reporter.sps(step),
            "time_s": elapsed + time.perf_counter() - t0,
        }
        logger.row(step, row)
        reporter.evaluation(step, row)
        row_step = step
        return row

    t0 = time.perf_counter()
    reporter = Reporter(config, step)
    losses = {"qf_loss": torch.tensor(0.0), "actor_loss": torch.tensor(0.0)}
    obs = envs.obs
    try:
        with stop_signals() as stop:
            while step < config.total_steps and not stop.requested:
                if step < cfg.learning_starts:
                    action = torch.rand(envs.num_envs, *envs.action_space.shape).numpy() * 2 - 1
                else:
                    action = agent.act(obs)
                result = envs.step(action)
                buffer.add(obs, action, result.reward, result.next_obs, result.terminated)
                obs = result.obs
                step += envs.num_envs
                for episode_return in result.episode_returns:
                    logger.scalars(step, {"charts/episodic_return": episode_return})

                if step > cfg.learning_starts:
                    for _ in range(cfg.updates_per_step * envs.num_envs):
                        losses = agent.update(*buffer.sample(cfg.batch_size))

                if step % LOG_EVERY == 0:
                    check_finite(step, **losses)
                    logger.scalars(
                        step,
                        {f"losses/{k}": v for k, v in losses.items()}
                        | {"charts/sps": reporter.sps(step)},
                    )
                    reporter.advance_to(step)
                if step % config.eval_every == 0 or step == config.total_steps:
                    log_evaluation()
                if step % config.checkpoint_every == 0:
                    check_finite(step, **losses)
                    save()
            if row_step != step:  # always end with an evaluation of the final policy
                log_evaluation()
            save()
            reporter.advance_to(step)
        write_summary(run.out, read_metrics(logger.csv_path), elapsed + time.perf_counter() - t0)
    finally:
        reporter.close()
        logger.close()
        envs.close()
    return run.out


def load_policy(config: TrainConfig, checkpoint: dict):
    """The deterministic policy ``obs -> action`` of a checkpoint (for ``era rl eval``)."""
    envs, agent = build(config)
    envs.close()
    agent.load_checkpoint_state(checkpoint["agent"])
    return lambda obs: agent.act(obs, deterministic=True)
