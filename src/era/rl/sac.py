"""Soft actor-critic with an ERA policy head, or the usual auto-tuned temperature, for S seeds at
once.

Two heads share everything else (networks, optimiser, replay, schedule), so a comparison
isolates the head:

* ``era``: ``GaussianERA`` with a truncated normal on [-1, 1]. Its entropy is held at the target
  by the activation itself (in every state in ``exact`` mode, on average in ``delta`` mode), so
  there is **no entropy term anywhere** (``docs/activations.md``): the critic target is
  ``r + gamma * (1 - terminated) * min(Q1', Q2')(s', a')`` and the actor minimises
  ``-min(Q1, Q2)(s, a)``.
* ``alpha``: tanh-squashed Gaussian with SAC's entropy bonus and a temperature tuned towards the
  target entropy (default -dim(A)).

**Seeds are a batch dimension.** The agent holds the networks of S independent seeds stacked
along a leading axis of every parameter (``era.rl.networks.EnsembleLinear``): one batched
forward, one backward and one (per-element, hence per-seed) Adam step update all of them. Each
seed keeps its own environment, replay buffer, random generators and run directory
(``OUT/seed{N}/``, the files of a single run), so seed ``s`` of a vectorised run computes what
the single run of that seed computes, up to float rounding. A single run is S = 1.

Per-seed randomness: every random number a seed uses comes from that seed's two generators:
``explore`` (initial weights, uniform warm-up actions) on the CPU, and ``update`` (acting noise,
replay indices, the noise of both losses) on the training device. The losses take their noise as
arguments, which is also what lets ``torch.compile`` turn each into one graph.

Read top to bottom: building the agent, one gradient update, the training loop.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from era.gaussian import GaussianERA
from era.rl.buffer import ReplayBuffer
from era.rl.config import TrainConfig, default_target_entropy
from era.rl.envs import make_env
from era.rl.loop import Reporter, start_run, write_summary
from era.rl.networks import (
    SACActor,
    TanhGaussianHead,
    TwinCritic,
    entropy_summary,
    noise_kind,
    per_state_entropy,
    sample_from_noise,
)
from era.rl.vec_env import ReplayableEnvs
from era.runs import (
    Clock,
    MetricLogger,
    Run,
    RunError,
    check_finite,
    read_metrics,
    set_seed,
    stop_signals,
)

LOG_EVERY = 1000  # steps between TensorBoard training scalars and divergence checks


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(device)


def seed_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """The ``explore`` (CPU) and ``update`` (training device) generators of one seed, seeded
    with independent streams derived from the run seed."""
    explore, update = np.random.SeedSequence(seed).generate_state(2)
    return {
        "explore": torch.Generator().manual_seed(int(explore)),
        "update": torch.Generator(device).manual_seed(int(update)),
    }


class SACAgent(torch.nn.Module):
    """Actor, twin critics, target critics and (``alpha`` head) log-temperatures of S seeds.

    Every parameter and optimiser state has the seed axis first, so seed ``s``'s agent is the
    ``[s : s + 1]`` slice of everything (which is how its checkpoint is written).
    """

    def __init__(
        self,
        config: TrainConfig,
        obs_dim: int,
        act_dim: int,
        seeds: list[int] | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        seeds = [config.seed] if seeds is None else list(seeds)
        sac = config.sac
        self.config = sac
        self.head = config.head
        self.seeds = seeds
        self.device = torch.device(device)
        self.target_entropy = (
            config.target_entropy
            if config.target_entropy is not None
            else default_target_entropy("sac", config.head, act_dim)
        )
        n = len(seeds)
        if config.head == "era":
            head = GaussianERA(
                act_dim, self.target_entropy, bound="truncated", mode=config.era_mode
            )
        else:
            head = TanhGaussianHead()
        self.actor = SACActor(obs_dim, act_dim, sac.hidden, sac.layers, head, seeds=n)
        self.critic = TwinCritic(obs_dim, act_dim, sac.hidden, sac.layers, seeds=n)
        self.generators = [seed_generators(seed, self.device) for seed in seeds]
        for i, generators in enumerate(self.generators):
            self.actor.init_member(i, generators["explore"])
            self.critic.init_member(i, generators["explore"])
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.full((n,), float(np.log(sac.init_alpha))))
        # delta-mode ERA learns its compensation delta >= 0 by its own dual loss, never
        # through -Q; one delta per seed, shaped to broadcast over [S, B, D].
        self.compensation = getattr(head, "compensation", None)
        if self.compensation is not None:
            self.compensation.raw_delta = torch.nn.Parameter(torch.zeros(n, 1, 1))
        self.to(self.device)
        dual = set(self.compensation.parameters()) if self.compensation is not None else set()
        # fused: one kernel per optimiser step instead of several per parameter (CPU and GPU).
        # Adam is per element, so one optimiser over stacked seeds is S independent Adams.
        adam = lambda params: torch.optim.Adam(params, lr=sac.lr, fused=True)
        self.actor_opt = adam([p for p in self.actor.parameters() if p not in dual])
        self.critic_opt = adam(self.critic.parameters())
        dual_params = list(dual) if self.head == "era" else [self.log_alpha]
        self.dual_opt = adam(dual_params) if dual_params else None
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        self.act_dim = act_dim
        self.noise = "uniform" if self.head == "era" else "normal"
        assert self.noise == noise_kind(self.actor(torch.zeros(n, 1, obs_dim, device=device)))
        # bf16 autocast of the networks (--sac.amp bf16); targets and losses stay float32.
        self._autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
            if sac.amp == "bf16"
            else contextlib.nullcontext
        )
        # Both losses (forward and backward) as compiled graphs (--sac.compile), and the
        # exploring action: the exact ERA head's solve is hundreds of small ops, which on a GPU
        # cost one kernel launch each at every environment step. Optimiser steps stay eager:
        # fused Adam is one kernel already.
        compile = (lambda fn: torch.compile(fn, dynamic=False)) if sac.compile else (lambda fn: fn)
        self._critic_loss = compile(self.critic_loss)
        self._actor_loss = compile(self.actor_loss)
        self._explore = compile(self.explore)

    @property
    def alpha(self) -> torch.Tensor:
        """``[S, 1]``: each seed's temperature, broadcasting over a batch."""
        return self.log_alpha.detach().exp().unsqueeze(-1)

    # --- random numbers: one stream per seed ---

    def draw(self, kind: str, shape: tuple[int, ...], stream: str = "update") -> torch.Tensor:
        """``[S, *shape]`` noise, row ``s`` from seed ``s``'s ``stream`` generator."""
        fn = torch.rand if kind == "uniform" else torch.randn
        device = self.device if stream == "update" else "cpu"
        return torch.stack([fn(shape, generator=g[stream], device=device) for g in self.generators])

    def sample_batch(self, buffer: ReplayBuffer) -> tuple[torch.Tensor, ...]:
        """One batch per seed from its own buffer, plus the noise both losses consume."""
        b = self.config.batch_size
        index = torch.stack(
            [
                torch.randint(0, buffer.size, (b,), generator=g["update"], device=self.device)
                for g in self.generators
            ]
        )
        noise = self.draw(self.noise, (2, b, self.act_dim))
        return (*buffer.sample(index), noise[:, 0], noise[:, 1])

    # --- one gradient update ---

    def critic_loss(self, obs, action, reward, next_obs, terminated, next_noise) -> torch.Tensor:
        """``[S]``: each seed's two Q's regressed on its clipped double-Q target (minus
        alpha*log pi for SAC); summed over critics, averaged over the batch."""
        with torch.no_grad():
            with self._autocast():
                next_dist = self.actor(next_obs)
                next_action, next_log_prob = sample_from_noise(
                    next_dist, next_noise, with_log_prob=self.head == "alpha"
                )
                next_q = self.target_critic(next_obs, next_action)
            next_q = next_q.float().min(1).values
            if self.head == "alpha":
                next_q = next_q - self.alpha * next_log_prob.float()
            target = reward + self.config.gamma * (1.0 - terminated) * next_q
        with self._autocast():
            q = self.critic(obs, action)
        return (q.float() - target.unsqueeze(1)).pow(2).mean(-1).sum(1)

    def actor_loss(self, obs, noise) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[S]``: -min Q of a reparameterised action (plus alpha*log pi for SAC), and the
        per-state entropy ``[S, B]`` the dual step needs (None for exact-mode ERA: it is the
        target already)."""
        with self._autocast():
            dist = self.actor(obs)
            new_action, log_prob = sample_from_noise(
                dist, noise, with_log_prob=self.head == "alpha"
            )
            q = self.critic(obs, new_action)
        loss = -q.float().min(1).values.mean(-1)
        if self.head == "alpha":
            log_prob = log_prob.float()
            return loss + (self.alpha * log_prob).mean(-1), -log_prob.detach()
        if self.compensation is not None:
            with torch.no_grad():
                return loss, dist.entropy()
        return loss, None

    def dual_loss(self, entropy: torch.Tensor) -> torch.Tensor:
        """Dual ascent on each seed's entropy constraint: the temperature (alpha head) or the
        delta compensation (ERA delta mode, projected onto delta >= 0 as
        ``EntropyCompensation`` does)."""
        gap = (self.target_entropy - entropy).mean(-1)  # [S]
        if self.head == "alpha":
            return (-self.log_alpha * gap).sum()
        raw_delta = self.compensation.raw_delta
        with torch.no_grad():
            raw_delta.clamp_(min=0)
        return (raw_delta.view(-1) * -gap).sum()

    def update(
        self, obs, action, reward, next_obs, terminated, next_noise, actor_noise
    ) -> dict[str, torch.Tensor]:
        """One gradient step of every seed's critics, actor and temperature/compensation.

        Inputs are ``[S, B, ...]`` (``sample_batch``); returns per-seed ``[S]`` losses. The
        losses are summed over seeds before ``backward``: seeds share no parameter, so each
        seed's gradient is its own loss's.
        """
        qf_loss = self._critic_loss(obs, action, reward, next_obs, terminated, next_noise)
        self.critic_opt.zero_grad(set_to_none=True)
        qf_loss.sum().backward()
        self.critic_opt.step()

        self.critic.requires_grad_(False)  # the actor's loss differentiates Q in a only
        actor_loss, entropy = self._actor_loss(obs, actor_noise)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        if self.dual_opt is not None:
            self.dual_opt.zero_grad(set_to_none=True)
            self.dual_loss(entropy).backward()
            self.dual_opt.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)
        losses = {"qf_loss": qf_loss.detach(), "actor_loss": actor_loss.detach()}
        if entropy is not None:
            losses["entropy"] = entropy.mean(-1)
        return losses

    # --- acting and measuring ---

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """``obs [S, obs_dim]`` (one state per seed) -> ``[S, act_dim]``: one transfer each way."""
        obs = torch.as_tensor(obs, dtype=torch.float32).to(self.device).unsqueeze(1)
        with self._autocast():
            if deterministic:
                action = self.actor.deterministic_action(obs)
            else:
                action = self._explore(obs, self.draw(self.noise, (1, self.act_dim)))
        return action.squeeze(1).float().cpu().numpy()

    def explore(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The policy's action on ``obs [S, 1, obs_dim]`` from the given noise."""
        return sample_from_noise(self.actor(obs), noise)[0]

    @torch.no_grad()
    def entropy_stats(self, obs: torch.Tensor) -> list[dict[str, float]]:
        """Per seed: per-state entropy of the policy on ``obs [S, N, obs_dim]`` (min/mean/max),
        the unreachable count and the temperature or delta."""
        dist = self.actor(obs)
        with torch.random.fork_rng(devices=[]):  # a sampled estimate must not shift training
            entropy = per_state_entropy(dist).cpu()
        unreachable = getattr(dist, "unreachable", None)
        stats = []
        for i in range(len(self.seeds)):
            row = entropy_summary(entropy[i]) | {
                "target_entropy": self.target_entropy,
                "unreachable": int(unreachable[i].sum()) if unreachable is not None else 0,
            }
            if self.head == "alpha":
                row["alpha"] = self.alpha[i].item()
            elif self.compensation is not None:
                row["delta"] = self.compensation.delta.view(-1)[i].item()
            else:
                row["delta"] = 0.0
            stats.append(row)
        return stats

    # --- checkpoints: one per seed, in the format of a single run ---

    def _optimisers(self) -> dict[str, torch.optim.Optimizer]:
        optimisers = {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}
        if self.dual_opt is not None:
            optimisers["dual_opt"] = self.dual_opt
        return optimisers

    def checkpoint_state(self, i: int = 0) -> dict:
        """Seed ``i``'s agent: the ``[i : i + 1]`` slice of every parameter and Adam moment."""
        take = lambda t: t[i : i + 1].detach().cpu().clone()
        state = {"modules": {k: take(v) for k, v in self.state_dict().items()}}
        for name, optimiser in self._optimisers().items():
            saved = optimiser.state_dict()
            saved["state"] = {
                p: {k: (v.clone() if k == "step" else take(v)) for k, v in s.items()}
                for p, s in saved["state"].items()
            }
            state[name] = saved
        state["generators"] = {k: g.get_state() for k, g in self.generators[i].items()}
        return state

    def load_checkpoint_states(self, states: list[dict]) -> None:
        """Stack the seeds' checkpoints (``checkpoint_state`` of each) back into this agent."""
        cat = lambda tensors: torch.cat(list(tensors)).to(self.device)
        self.load_state_dict(
            {k: cat(s["modules"][k] for s in states) for k in states[0]["modules"]}
        )
        for name, optimiser in self._optimisers().items():
            merged = copy.deepcopy(states[0][name])
            for p, s in merged["state"].items():
                for k in s:
                    if k != "step":
                        s[k] = cat(state[name]["state"][p][k] for state in states)
            optimiser.load_state_dict(merged)
        for generators, state in zip(self.generators, states, strict=True):
            for k, g in generators.items():
                g.set_state(state["generators"][k])


# --- the training loop ---


@dataclass
class SeedRun:
    """What one seed of a vectorised run owns besides its slice of the agent."""

    config: TrainConfig
    run: Run
    envs: ReplayableEnvs
    eval_env: object
    logger: MetricLogger
    row_step: int | None = None


def build(config: TrainConfig, seeds: list[int] | None = None):
    """Environments and agent; raises ``ValueError`` for an unknown env or infeasible target."""
    seeds = [config.seed] if seeds is None else seeds
    envs = [ReplayableEnvs(config.env, seed, num_envs=1) for seed in seeds]
    obs_dim = envs[0].observation_space.shape[0]
    act_dim = envs[0].action_space.shape[0]
    agent = SACAgent(config, obs_dim, act_dim, seeds, resolve_device(config.device))
    return (envs[0] if len(seeds) == 1 else envs), agent


def stats_batch(buffer: ReplayBuffer, step: int, size: int = 1024) -> torch.Tensor:
    """Replay states ``[S, N, obs_dim]`` on which the per-state entropy is reported; a generator
    of its own keeps the training random streams unchanged (the same indices for every seed)."""
    generator = torch.Generator().manual_seed(step)
    index = torch.randint(0, buffer.size, (min(size, buffer.size),), generator=generator)
    return buffer.sample(index.to(buffer.data.device).expand(buffer.seeds, -1))[0]


def evaluate_seeds(
    agent: SACAgent, envs: list, episodes: int, seeds: list[int]
) -> list[tuple[float, float]]:
    """Mean and std return of ``episodes`` deterministic episodes per seed, all seeds stepped
    in lockstep (one batched policy call per step). Seed ``s``'s episode ``k`` starts from
    ``reset(seed=s + k)``, as in ``era.rl.train.evaluate``."""
    n = len(envs)
    returns = np.zeros((n, episodes))
    for k in range(episodes):
        obs = np.stack([env.reset(seed=seed + k)[0] for env, seed in zip(envs, seeds, strict=True)])
        running = np.ones(n, bool)
        while running.any():
            actions = agent.act(obs, deterministic=True)
            for i in np.flatnonzero(running):
                obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
                returns[i, k] += float(reward)
                running[i] = not (terminated or truncated)
    return [(float(r.mean()), float(r.std())) for r in returns]


def train(config: TrainConfig):
    """Train one SAC run (``era`` or ``alpha`` head); returns the run directory."""
    return train_seeds([config])[0]


def train_seeds(configs: list[TrainConfig]):
    """Train the single-seed runs ``configs`` (equal but for seed and out) as one vectorised
    run; returns their run directories. On ``--resume`` every seed continues from its own
    checkpoint, which must all be at the same step (they are written together)."""
    config = configs[0]
    seeds = [c.seed for c in configs]
    set_seed(seeds[0])  # libraries that draw from the global generators
    envs, agent = build(config, seeds)
    envs = envs if isinstance(envs, list) else [envs]
    cfg = config.sac
    runs = []
    for c, e in zip(configs, envs, strict=True):
        run, logger, checkpoint = start_run(c)
        runs.append((SeedRun(c, run, e, make_env(c.env, c.seed + 10_000), logger), checkpoint))
    checkpoints = [checkpoint for _, checkpoint in runs]
    runs = [run for run, _ in runs]
    capacity = min(cfg.buffer_size, config.total_steps)
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    buffer = ReplayBuffer(capacity, obs_dim, act_dim, len(seeds), agent.device)
    step, elapsed = 0, 0.0
    if any(c is not None for c in checkpoints):
        steps = {c["step"] if c is not None else None for c in checkpoints}
        if len(steps) != 1:
            raise RunError(
                f"the seeds' checkpoints in {config.out.parent} are at different steps "
                f"({sorted(map(str, steps))}); resume them with --seed-mode processes"
            )
        agent.load_checkpoint_states([c["agent"] for c in checkpoints])
        for i, (run, checkpoint) in enumerate(zip(runs, checkpoints, strict=True)):
            buffer.load_state_dict(checkpoint["buffer"], i)
            run.envs.load_state_dict(checkpoint["envs"])
            run.row_step = checkpoint["row_step"]
        step, elapsed = checkpoints[0]["step"], checkpoints[0]["elapsed"]

    def save():
        for i, run in enumerate(runs):
            run.run.save_checkpoint(
                {
                    "step": step,
                    "config": run.run.config,
                    "agent": agent.checkpoint_state(i),
                    "buffer": buffer.state_dict(i),
                    "envs": run.envs.state_dict(),
                    "elapsed": clock.seconds(),
                    "row_step": run.row_step,
                },
            )

    def check(losses):
        for i, seed in enumerate(seeds):
            check_finite(step, **{f"{k} (seed {seed})": v[i] for k, v in losses.items()})

    def log_evaluation() -> None:
        check(losses)
        results = evaluate_seeds(
            agent, [r.eval_env for r in runs], config.eval_episodes, [s + 10_000 for s in seeds]
        )
        if buffer.size:
            obs = stats_batch(buffer, step)
        else:  # an evaluation before the first step: the current states
            obs = torch.as_tensor(np.stack([r.envs.obs for r in runs]), device=agent.device)
        stats = agent.entropy_stats(obs)
        for i, run in enumerate(runs):
            row = {
                "return_mean": results[i][0],
                "return_std": results[i][1],
                **stats[i],
                "qf_loss": float(losses["qf_loss"][i]),
                "actor_loss": float(losses["actor_loss"][i]),
                "sps": reporter.sps(step),
                "time_s": clock.seconds(),
            }
            run.logger.row(step, row)
            reporter_for(run).evaluation(step, row)
            run.row_step = step

    clock = Clock(elapsed)
    reporter = Reporter(config, step)
    if len(seeds) > 1:
        reporter.bar.update(
            reporter.task, description=f"sac-{config.head} {config.env} seeds {seeds}"
        )
    # With several seeds, each prints one line per evaluation (the bar shows them together).
    quiet = {}
    if len(seeds) > 1:
        quiet = {c.seed: Reporter(dataclasses.replace(c, progress=False), step) for c in configs}
    reporter_for = lambda run: quiet.get(run.config.seed, reporter)
    zeros = torch.zeros(len(seeds))
    losses = {"qf_loss": zeros, "actor_loss": zeros}
    obs = np.stack([run.envs.obs[0] for run in runs])
    try:
        with stop_signals() as stop:
            while step < config.total_steps and not stop.requested:
                if step < cfg.learning_starts:
                    action = (agent.draw("uniform", (act_dim,), stream="explore") * 2 - 1).numpy()
                else:
                    action = agent.act(obs)
                results = [run.envs.step(action[i : i + 1]) for i, run in enumerate(runs)]
                buffer.add(
                    obs,
                    action,
                    np.stack([r.reward[0] for r in results]),
                    np.stack([r.next_obs[0] for r in results]),
                    np.stack([r.terminated[0] for r in results]),
                )
                obs = np.stack([r.obs[0] for r in results])
                step += 1
                for run, result in zip(runs, results, strict=True):
                    for episode_return in result.episode_returns:
                        run.logger.scalars(step, {"charts/episodic_return": episode_return})

                if step > cfg.learning_starts:
                    for _ in range(cfg.updates_per_step):
                        losses = agent.update(*agent.sample_batch(buffer))

                if step % LOG_EVERY == 0:
                    check(losses)
                    for i, run in enumerate(runs):
                        run.logger.scalars(
                            step,
                            {f"losses/{k}": v[i] for k, v in losses.items()}
                            | {"charts/sps": reporter.sps(step)},
                        )
                    reporter.advance_to(step)
                if step % config.eval_every == 0 or step == config.total_steps:
                    log_evaluation()
                if step % config.checkpoint_every == 0:
                    check(losses)
                    save()
            if any(run.row_step != step for run in runs) and not stop.requested:
                log_evaluation()
            save()
            reporter.advance_to(step)
        for run in runs:  # not after a stop: stop_signals raises Interrupted then
            write_summary(run.run.out, read_metrics(run.logger.csv_path), clock.seconds())
    finally:
        reporter.close()
        for r in quiet.values():
            r.close()
        for run in runs:
            run.logger.close()
            run.envs.close()
    return [run.run.out for run in runs]


def load_policy(config: TrainConfig, checkpoint: dict):
    """The deterministic policy ``obs -> action`` of a checkpoint (for ``era rl eval``)."""
    envs, agent = build(dataclasses.replace(config, device="cpu"))  # whatever trained it
    envs.close()
    agent.load_checkpoint_states([checkpoint["agent"]])
    return lambda obs: agent.act(obs[None], deterministic=True)[0]
