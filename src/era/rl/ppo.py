"""PPO with an ERA policy head, or the usual state-independent log-std with an entropy bonus.

CleanRL's MuJoCo recipe (clipped surrogate, GAE, clipped value loss, advantage normalisation,
linear learning-rate annealing, observation normalisation and return-based reward scaling) on
vectorised environments. The heads:

* ``era``: the actor outputs a mean and a raw std per action dimension; an unbounded
  ``GaussianERA`` fixes the Gaussian's entropy at the target (default -0.3*dim(A), see
  ``docs/activations.md``) in every state. The entropy bonus stays available
  (``--ppo.ent-coef``, the paper keeps 0.01).
* ``std``: a learned state-independent log-std and the entropy bonus.

Actions are clipped to [-1, 1] before the environment (the distribution's own sample is what
enters the ratio). Time-limit truncations bootstrap with the value of the true last observation.

Read top to bottom: normalisers, the agent, the rollout/update loop.
"""

from __future__ import annotations

import numpy as np
import torch

from era.gaussian import GaussianERA
from era.rl.config import TrainConfig, default_target_entropy
from era.rl.envs import make_env
from era.rl.loop import (
    Reporter,
    evaluate,
    log_row,
    rng_state,
    set_rng_state,
    start_run,
    write_summary,
)
from era.rl.networks import PPOAgent, entropy_summary
from era.rl.vec_env import ReplayableEnvs
from era.runs import Clock, Run, check_finite, read_metrics, set_seed, stop_signals

CLIP_NORMALISED = 10.0  # normalised observations and scaled rewards are clipped to +-10


class RunningMeanStd(torch.nn.Module):
    """Running mean and variance of a stream of batches (parallel update formula)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, x: np.ndarray) -> None:
        x = torch.as_tensor(x, dtype=torch.float64)
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var.copy_(
            (self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total) / total
        )
        self.count.fill_(total)

    def normalise(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        z = (x - self.mean) / torch.sqrt(self.var + 1e-8)
        return z.clamp(-CLIP_NORMALISED, CLIP_NORMALISED).float()


class PPO(torch.nn.Module):
    """The actor-critic plus its observation statistics (frozen outside training)."""

    def __init__(self, config: TrainConfig, obs_dim: int, act_dim: int):
        super().__init__()
        self.target_entropy = None
        era = None
        if config.head == "era":
            self.target_entropy = (
                config.target_entropy
                if config.target_entropy is not None
                else default_target_entropy("ppo", "era", act_dim)
            )
            era = GaussianERA(act_dim, self.target_entropy, bound="none")
        self.agent = PPOAgent(obs_dim, act_dim, config.ppo.hidden, era)
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.norm_obs = config.ppo.norm_obs

    def observe(self, obs: np.ndarray, update: bool = False) -> torch.Tensor:
        """Observations as the networks see them (updating the statistics during rollouts)."""
        if not self.norm_obs:
            return torch.as_tensor(obs, dtype=torch.float32)
        if update:
            self.obs_rms.update(obs)
        return self.obs_rms.normalise(obs)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation."""
        dist = self.agent.policy(self.observe(obs))
        return dist.mode.clamp(-1, 1).numpy()


def build(config: TrainConfig) -> tuple[ReplayableEnvs, PPO]:
    """Environments and agent; raises ``ValueError`` for an unknown env or infeasible target."""
    envs = ReplayableEnvs(config.env, config.seed, num_envs=config.ppo.num_envs)
    return envs, PPO(config, envs.observation_space.shape[0], envs.action_space.shape[0])


def gae(rewards, values, next_values, ended, terminated, gamma, lam):
    """Generalised advantage estimates for a ``[T, N]`` rollout.

    ``next_values[t]`` is the value of the state reached after step ``t`` (0 where terminated);
    ``ended[t]`` stops the recursion at episode ends (terminated or truncated).
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * (1 - terminated[t]) - values[t]
        running = delta + gamma * lam * (1 - ended[t]) * running
        advantages[t] = running
    return advantages


def update(ppo: PPO, optimiser, cfg, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``cfg.epochs`` passes of clipped-surrogate minibatch updates over one rollout."""
    agent, n = ppo.agent, batch["obs"].shape[0]
    size = n // cfg.minibatches
    stats: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac")
    }
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n).split(size):
            dist = agent.policy(batch["obs"][idx])
            log_ratio = dist.log_prob(batch["actions"][idx]) - batch["log_probs"][idx]
            ratio = log_ratio.exp()
            adv = batch["advantages"][idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            policy_loss = torch.max(
                -adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)
            ).mean()
            value = agent.value(batch["obs"][idx])
            old_value, ret = batch["values"][idx], batch["returns"][idx]
            clipped = old_value + (value - old_value).clamp(-cfg.clip, cfg.clip)
            value_loss = 0.5 * torch.max((value - ret) ** 2, (clipped - ret) ** 2).mean()
            entropy = dist.entropy().mean()
            loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimiser.step()
            with torch.no_grad():
                stats["policy_loss"].append(policy_loss.detach())
                stats["value_loss"].append(value_loss.detach())
                stats["approx_kl"].append(((ratio - 1) - log_ratio).mean())
                stats["clipfrac"].append(((ratio - 1).abs() > cfg.clip).float().mean())
    return {k: torch.stack(v).mean() for k, v in stats.items()}


class RewardScaler(torch.nn.Module):
    """Divides rewards by the running std of the discounted return (as Gymnasium's
    ``NormalizeReward``), clipped to +-10; the identity when ``enabled`` is False."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool):
        super().__init__()
        self.gamma, self.enabled = gamma, enabled
        self.return_rms = RunningMeanStd()
        self.register_buffer("discounted", torch.zeros(num_envs, dtype=torch.float64))

    def __call__(self, reward: np.ndarray, ended: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return reward
        self.discounted.mul_(self.gamma).add_(torch.as_tensor(reward))
        self.return_rms.update(self.discounted.numpy())
        self.discounted[torch.as_tensor(ended)] = 0.0
        scale = np.sqrt(self.return_rms.var.item() + 1e-8)
        return np.clip(reward / scale, -CLIP_NORMALISED, CLIP_NORMALISED)


@torch.no_grad()
def collect_rollout(ppo: PPO, envs: ReplayableEnvs, rewards: RewardScaler, num_steps: int):
    """``num_steps`` steps of every environment; returns ``[T, N, ...]`` tensors and the
    ``(t, return)`` of the episodes that ended.

    Only the policy runs per step; the values of all visited and reached states are computed in
    two batched calls afterwards (the networks do not change during a rollout).
    """
    obs, next_obs, actions, log_probs, reward, ended, terminated = ([] for _ in range(7))
    episodes = []
    for t in range(num_steps):
        obs.append(ppo.observe(envs.obs, update=True))
        dist = ppo.agent.policy(obs[-1])
        actions.append(dist.sample())
        log_probs.append(dist.log_prob(actions[-1]))
        result = envs.step(actions[-1].clamp(-1, 1).numpy())
        next_obs.append(ppo.observe(result.next_obs))
        ended.append(result.terminated | result.truncated)
        terminated.append(result.terminated)
        reward.append(rewards(result.reward, ended[-1]))
        episodes += [(t + 1, r) for r in result.episode_returns]
    as_tensor = lambda xs: torch.as_tensor(np.stack(xs), dtype=torch.float32)
    buf = {"obs": torch.stack(obs), "actions": torch.stack(actions),
           "log_probs": torch.stack(log_probs), "rewards": as_tensor(reward),
           "ended": as_tensor(ended), "terminated": as_tensor(terminated)}  # fmt: skip
    buf["values"] = ppo.agent.value(buf["obs"])
    buf["next_values"] = ppo.agent.value(torch.stack(next_obs))
    return buf, episodes


def evaluation_row(
    ppo: PPO, eval_env, config: TrainConfig, states: torch.Tensor, losses: dict
) -> dict[str, float]:
    """Deterministic return, per-state entropy over ``states`` (the latest rollout's) and the
    latest losses (checked finite after each update): one ``metrics.csv`` row without timing."""
    ret_mean, ret_std = evaluate(ppo.act, eval_env, config.eval_episodes, seed=config.seed + 10_000)
    with torch.no_grad():
        entropy = ppo.agent.policy(states).entropy()
    target = {} if ppo.target_entropy is None else {"target_entropy": ppo.target_entropy}
    return {
        "return_mean": ret_mean,
        "return_std": ret_std,
        **entropy_summary(entropy),
        **target,
        **{k: float(v) for k, v in losses.items()},
    }


def save(
    run: Run, step: int, row_step: int | None, clock: Clock, ppo: PPO, optimiser, rewards, envs
) -> None:
    """Everything a resume needs to continue exactly: agent, optimiser, reward statistics,
    environments, random state, step, time and the step of the last evaluation row."""
    run.save_checkpoint(
        {
            "step": step,
            "config": run.config,
            "ppo": ppo.state_dict(),
            "optimiser": optimiser.state_dict(),
            "rewards": rewards.state_dict(),
            "envs": envs.state_dict(),
            "rng": rng_state(),
            "elapsed": clock.seconds(),
            "row_step": row_step,
        }
    )


def train(config: TrainConfig):
    """Train PPO (``era`` or ``std`` head) as configured; returns the run directory."""
    cfg = config.ppo
    set_seed(config.seed)
    envs, ppo = build(config)
    run, logger, checkpoint = start_run(config)
    optimiser = torch.optim.Adam(ppo.agent.parameters(), lr=cfg.lr, eps=1e-5)
    rewards = RewardScaler(envs.num_envs, cfg.gamma, cfg.norm_reward)
    eval_env = make_env(config.env, config.seed + 10_000)
    per_rollout = cfg.num_envs * cfg.num_steps
    step, elapsed, row_step = 0, 0.0, None
    if checkpoint is not None:
        ppo.load_state_dict(checkpoint["ppo"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        rewards.load_state_dict(checkpoint["rewards"])
        envs.load_state_dict(checkpoint["envs"])
        set_rng_state(checkpoint["rng"])
        step, elapsed, row_step = checkpoint["step"], checkpoint["elapsed"], checkpoint["row_step"]

    clock = Clock(elapsed)
    reporter = Reporter(config, step)
    losses = {k: torch.tensor(0.0) for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac")}
    rollout_obs = ppo.observe(envs.obs)
    try:
        with stop_signals() as stop:
            while step + per_rollout <= config.total_steps and not stop.requested:
                for group in optimiser.param_groups:
                    group["lr"] = cfg.lr * (1.0 - step / config.total_steps)
                buf, episodes = collect_rollout(ppo, envs, rewards, cfg.num_steps)
                for t, episode_return in episodes:
                    logger.scalars(
                        step + t * envs.num_envs, {"charts/episodic_return": episode_return}
                    )
                advantages = gae(
                    buf["rewards"],
                    buf["values"],
                    buf["next_values"],
                    buf["ended"],
                    buf["terminated"],
                    cfg.gamma,
                    cfg.gae_lambda,
                )
                batch = {
                    "obs": buf["obs"].flatten(0, 1),
                    "actions": buf["actions"].flatten(0, 1),
                    "log_probs": buf["log_probs"].flatten(),
                    "values": buf["values"].flatten(),
                    "advantages": advantages.flatten(),
                    "returns": (advantages + buf["values"]).flatten(),
                }
                losses = update(ppo, optimiser, cfg, batch)
                rollout_obs = batch["obs"]
                previous, step = step, step + per_rollout
                check_finite(step, **losses)
                logger.scalars(
                    step,
                    {f"losses/{k}": v for k, v in losses.items()}
                    | {"charts/sps": reporter.sps(step)},
                )
                reporter.advance_to(step)
                if step // config.eval_every > previous // config.eval_every:
                    row = evaluation_row(ppo, eval_env, config, rollout_obs, losses)
                    row_step = log_row(logger, reporter, clock, step, row)
                if step // config.checkpoint_every > previous // config.checkpoint_every:
                    save(run, step, row_step, clock, ppo, optimiser, rewards, envs)
            if row_step != step and not stop.requested:  # end with a final evaluation
                row = evaluation_row(ppo, eval_env, config, rollout_obs, losses)
                row_step = log_row(logger, reporter, clock, step, row)
            save(run, step, row_step, clock, ppo, optimiser, rewards, envs)
        write_summary(run.out, read_metrics(logger.csv_path), clock.seconds())
    finally:
        reporter.close()
        logger.close()
        envs.close()
    return run.out


def load_policy(config: TrainConfig, checkpoint: dict):
    """The deterministic policy ``obs -> action`` of a checkpoint (for ``era rl eval``)."""
    envs, ppo = build(config)
    envs.close()
    ppo.load_state_dict(checkpoint["ppo"])
    return ppo.act
