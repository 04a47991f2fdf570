"""TD-MPC2 with an ERA policy prior, or the authors' entropy bonus.

Hansen, Su, Wang, "TD-MPC2: Scalable, Robust World Models for Continuous Control", ICLR 2024.
The agent learns a decoder-free latent world model (``era.rl.world_model``) and acts by planning
in its latent space with MPPI, guided by a policy prior. Two heads share everything else:

* ``alpha``: the authors' prior, a tanh-squashed Gaussian trained to maximise the normalised Q
  plus a small entropy bonus, ``entropy_coef * dim(A) * H[N(mu, sigma)]`` (the pre-squash
  Gaussian's entropy scaled by the action dimension, as the authors' release computes it).
* ``era``: ``GaussianERA`` (truncated normal on [-1, 1], exact mode): the prior's entropy equals
  the target (default -dim(A)/2) in every latent state, by construction, and the bonus is off.

Read top to bottom: the replay of sequences, the running Q scale, the agent (losses, update,
planning), the training loop. Each docstring writes out the paper's equation it implements.

What differs from the authors' release, on purpose: no termination head (terminal transitions
stop bootstrapping in the TD targets, but the planner does not predict them), no action repeat
for dm_control (episodes are 1000 steps), and this works on CPU as well as CUDA.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from era.gaussian import GaussianERA
from era.rl.config import TrainConfig, default_target_entropy
from era.rl.envs import make_env
from era.rl.loop import (
    Reporter,
    evaluate,
    log_row,
    loop_checkpoint,
    restore_loop,
    start_run,
    write_summary,
)
from era.rl.networks import entropy_summary, per_state_entropy, unreachable_count
from era.rl.vec_env import ReplayableEnvs
from era.rl.world_model import (
    MODEL_SIZES,
    TanhGaussianPrior,
    TwoHot,
    WorldModel,
    default_seed_steps,
    discount_for,
)
from era.runs import Clock, check_finite, read_metrics, set_seed, stop_signals

LOG_EVERY = 1000  # steps between TensorBoard training scalars and divergence checks
EVAL_SEED_OFFSET = 10_000


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--tdmpc2.device cuda: no CUDA device is available; use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- replay -------------------------------------------------------------------------------------


class SequenceBuffer:
    """Transitions in the order they happened, sampled as sequences of ``horizon`` steps that
    lie within one episode (the model is trained on ``H``-step rollouts).

    A sequence starting at transition t gives observations ``obs[t], next_obs[t..t+H-1]`` (the
    true next observation, also at a time limit), actions, rewards and termination flags of
    ``t..t+H-1``. Storage lives on ``device``; indices are drawn from that device's generator.
    """

    FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "episode")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, horizon: int, device):
        self.capacity, self.horizon, self.device = capacity, horizon, device
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(*shape, dtype=dtype, device=device)
        self.obs, self.next_obs = zeros(capacity, obs_dim), zeros(capacity, obs_dim)
        self.action, self.reward = zeros(capacity, act_dim), zeros(capacity)
        self.terminated = zeros(capacity)
        self.episode = zeros(capacity, dtype=torch.long)
        self.added = 0  # transitions ever added; logical index i lives at i % capacity
        self._starts: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return min(self.added, self.capacity)

    def add(self, obs, action, reward, next_obs, terminated, episode: int) -> None:
        """One transition (arrays of one environment step) of episode number ``episode``."""
        i = self.added % self.capacity
        for name, value in zip(
            self.FIELDS[:5], (obs, action, reward, next_obs, terminated), strict=True
        ):
            getattr(self, name)[i] = torch.as_tensor(
                np.asarray(value, dtype=np.float32), device=self.device
            )
        self.episode[i] = episode
        self.added += 1
        self._starts = None

    def starts(self) -> torch.Tensor:
        """Logical indices, oldest first, of every stored sequence within one episode."""
        if self._starts is None:
            first = self.added - self.size
            start = torch.arange(first, self.added - self.horizon + 1, device=self.device)
            same = (
                self.episode[start % self.capacity]
                == self.episode[(start + self.horizon - 1) % self.capacity]
            )
            self._starts = start[same]
        return self._starts

    def sample(self, batch_size: int):
        """``obs [H+1, B, O], action [H, B, A], reward [H, B], terminated [H, B]``."""
        starts = self.starts()
        if len(starts) == 0:
            raise RuntimeError(f"no {self.horizon}-step sequence within one episode is stored yet")
        pick = starts[torch.randint(len(starts), (batch_size,), device=self.device)]
        idx = (
            pick.unsqueeze(0) + torch.arange(self.horizon, device=self.device).unsqueeze(1)
        ) % self.capacity
        obs = torch.cat([self.obs[idx[:1]], self.next_obs[idx]])
        return obs, self.action[idx], self.reward[idx], self.terminated[idx]

    def sample_obs(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Stored observations drawn with ``generator`` (CPU), leaving the training stream alone."""
        idx = torch.randint(self.size, (min(n, self.size),), generator=generator)
        return self.obs[idx.to(self.device)]

    def state_dict(self) -> dict:
        """The stored transitions, oldest first (CPU tensors)."""
        order = (torch.arange(self.added - self.size, self.added) % self.capacity).to(self.device)
        return {"added": self.added} | {n: getattr(self, n)[order].cpu() for n in self.FIELDS}

    def load_state_dict(self, state: dict) -> None:
        """Refill from oldest to newest; into a smaller capacity keep the newest."""
        kept = state["obs"].shape[0]
        keep = slice(max(0, kept - self.capacity), kept)
        n = keep.stop - keep.start
        for name in self.FIELDS:
            getattr(self, name)[:n] = state[name][keep].to(self.device)
        # Renumbered from 0 (relative positions are all that sampling uses); further adds go on.
        self.added = n
        self._starts = None


# -- the running Q scale ------------------------------------------------------------------------


def update_q_scale(scale: torch.Tensor, q: torch.Tensor, tau: float) -> None:
    """The policy loss divides Q by S, a running (Polyak, rate tau) estimate of the 5-95 %
    percentile range of Q over the batch, floored at 1, as in the paper's policy-prior
    objective: one entropy coefficient then fits every reward scale."""
    with torch.no_grad():
        low, high = torch.quantile(q.float(), torch.tensor([0.05, 0.95], device=q.device))
        scale.lerp_((high - low).clamp(min=1.0), tau)


# -- the agent ----------------------------------------------------------------------------------


class TDMPC2Agent(torch.nn.Module):
    """World model, its two optimisers, the Q scale and the MPPI planner."""

    def __init__(self, config: TrainConfig, obs_dim: int, act_dim: int, episode_length: int):
        super().__init__()
        cfg = self.config = config.tdmpc2
        self.head, self.act_dim = config.head, act_dim
        self.device = resolve_device(cfg.device)
        if config.era_mode != "exact":
            raise ValueError(
                f"--era-mode {config.era_mode} is not available for --algo tdmpc2: its ERA prior "
                "is the exact per-state floor (--era-mode exact)"
            )
        if config.head == "era":
            self.target_entropy = (
                config.target_entropy
                if config.target_entropy is not None
                else default_target_entropy("tdmpc2", "era", act_dim)
            )
            prior_head = GaussianERA(act_dim, self.target_entropy, bound="truncated", mode="exact")
        else:
            self.target_entropy = None
            if config.target_entropy is not None:
                raise ValueError(
                    f"--target-entropy {config.target_entropy} has no meaning for the tdmpc2 alpha "
                    "head (a fixed entropy bonus, --tdmpc2.entropy-coef); leave it unset"
                )
            prior_head = TanhGaussianPrior()
        self.num_q = cfg.num_q if cfg.num_q is not None else MODEL_SIZES[cfg.model_size]["num_q"]
        self.model = WorldModel(
            obs_dim, act_dim, size=cfg.model_size, num_q=self.num_q, prior_head=prior_head
        ).to(self.device)
        self.model.eval()
        self.two_hot = TwoHot(num_bins=101, vmin=-10.0, vmax=10.0)
        self.discount = cfg.discount if cfg.discount is not None else discount_for(episode_length)
        self.iterations = cfg.iterations + 2 * (act_dim >= 20)  # the authors' large-action rule
        self.register_buffer("q_scale", torch.ones((), device=self.device))
        self.register_buffer(
            "rho_powers",
            cfg.rho ** torch.arange(cfg.horizon + 1.0, device=self.device),
            persistent=False,
        )
        m = self.model
        self.optim = torch.optim.Adam(
            [
                {"params": m.encoder.parameters(), "lr": cfg.lr * cfg.enc_lr_scale},
                {"params": [*m.dynamics.parameters(), *m.reward.parameters(), *m.qs.parameters()]},
            ],
            lr=cfg.lr,
        )
        self.prior_params = [*m.prior.parameters(), *m.prior_head.parameters()]
        self.pi_optim = torch.optim.Adam(self.prior_params, lr=cfg.lr, eps=1e-5)
        self._q_params = list(m.qs.parameters())
        self._target_params = list(m.target_qs.parameters())
        compile = (
            (lambda fn: torch.compile(fn, dynamic=False, options={"fallback_random": True}))
            if cfg.compile
            else (lambda fn: fn)
        )
        self._model_loss = compile(self.model_loss)
        self._policy_loss = compile(self.policy_loss)
        self._estimate_value = compile(self.estimate_value)

    # -- values -----------------------------------------------------------------------------

    def q_value(self, z, action, target: bool = False, reduce: str = "min") -> torch.Tensor:
        """Q from two ensemble members drawn at random: their min (TD targets, a pessimistic
        estimate) or their mean (planning and the policy loss), as the paper."""
        logits = self.model.q_logits(z, action, target=target)
        pair = torch.randperm(self.num_q, device=logits.device)[:2]
        q = self.two_hot.decode(logits[pair])
        return q.min(0).values if reduce == "min" else q.mean(0)

    @torch.no_grad()
    def td_targets(self, next_z, reward, terminated) -> torch.Tensor:
        """``r_t + gamma * (1 - terminated_t) * min Q_target(z_{t+1}, a')``, a' ~ p(z_{t+1})
        (the paper's TD target)."""
        next_action = self.model.policy(next_z).sample()
        next_q = self.q_value(next_z, next_action, target=True, reduce="min")
        return reward + self.discount * (1 - terminated) * next_q

    # -- losses -----------------------------------------------------------------------------

    def model_loss(self, obs, action, reward, terminated):
        """The paper's model objective: joint-embedding prediction, reward and value losses on
        an H-step rollout,

            L = sum_t rho^t [ c1 ||d(z_t, a_t) - sg(h(s_{t+1}))||^2 + c2 CE(R(z_t, a_t), r_t)
                             + c3 mean_k CE(Q_k(z_t, a_t), q_t) ],  z_0 = h(s_0)

        with each term averaged over t (and the Q term over members); q_t is the TD target.
        Returns the loss, its parts and the latent rollout (for the policy loss)."""
        cfg, horizon = self.config, self.config.horizon
        with torch.no_grad():
            next_z = self.model.encode(obs[1:])
            td = self.td_targets(next_z, reward, terminated)
        z = self.model.encode(obs[0])
        zs, consistency = [z], 0.0
        for t in range(horizon):
            z = self.model.next(z, action[t])
            consistency = consistency + self.rho_powers[t] * F.mse_loss(z, next_z[t])
            zs.append(z)
        zs = torch.stack(zs)
        rho = self.rho_powers[:horizon]
        reward_ce = self.two_hot.cross_entropy(self.model.reward_logits(zs[:-1], action), reward)
        value_ce = self.two_hot.cross_entropy(self.model.q_logits(zs[:-1], action), td)
        consistency = consistency / horizon
        reward_loss = (rho * reward_ce.mean(-1)).sum() / horizon
        value_loss = (rho * value_ce.mean((0, 2))).sum() / horizon
        total = (
            cfg.consistency_coef * consistency
            + cfg.reward_coef * reward_loss
            + cfg.value_coef * value_loss
        )
        return total, consistency, reward_loss, value_loss, zs

    def policy_loss(self, zs) -> torch.Tensor:
        """``-sum_t rho^t mean_batch [ Q(z_t, a_t) / S + bonus ]``, a_t ~ p(z_t) reparameterised,
        Q the mean of two members (the paper's policy-prior objective); S the running Q scale,
        first updated with this batch's Q at t=0. The bonus is
        ``entropy_coef * dim(A) * H[N(mu, sigma)]`` for the alpha head and 0 for ERA, whose
        entropy is fixed."""
        dist = self.model.policy(zs)
        action = dist.rsample()
        q = self.q_value(zs, action, reduce="mean")
        update_q_scale(self.q_scale, q[0], self.config.tau)
        objective = q / self.q_scale
        if self.head == "alpha":
            gaussian = dist.base_dist
            entropy = (0.5 + 0.5 * math.log(2 * math.pi) + gaussian.scale.log()).sum(-1)
            objective = objective + self.config.entropy_coef * self.act_dim * entropy
        return -(self.rho_powers * objective.mean(-1)).mean()

    def update(self, obs, action, reward, terminated) -> dict[str, torch.Tensor]:
        """One step of the world model, then of the prior on the (detached) rollout, then the
        Polyak averages of the target Q-ensemble."""
        cfg = self.config
        self.model.train()
        total, consistency, reward_loss, value_loss, zs = self._model_loss(
            obs, action, reward, terminated
        )
        self.optim.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
        self.optim.step()

        for p in self._q_params:  # the prior's loss differentiates Q in the action only
            p.requires_grad_(False)
        pi_loss = self._policy_loss(zs.detach())
        self.pi_optim.zero_grad(set_to_none=True)
        pi_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.prior_params, cfg.grad_clip_norm)
        self.pi_optim.step()
        for p in self._q_params:
            p.requires_grad_(True)

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._q_params, cfg.tau)
        self.model.eval()
        return {
            "consistency_loss": consistency.detach(),
            "reward_loss": reward_loss.detach(),
            "value_loss": value_loss.detach(),
            "pi_loss": pi_loss.detach(),
            "total_loss": total.detach(),
            "grad_norm": grad_norm.detach(),
        }

    # -- planning ---------------------------------------------------------------------------

    def estimate_value(self, z, actions) -> torch.Tensor:
        """``sum_{t<H} gamma^t R(z_t, a_t) + gamma^H Q(z_H, a_H)``, a_H ~ p(z_H): the return of
        each action sequence under the model (the paper's planning objective)."""
        value, discount = 0.0, 1.0
        for t in range(actions.shape[0]):
            reward = self.two_hot.decode(self.model.reward_logits(z, actions[t]))
            z = self.model.next(z, actions[t])
            value = value + discount * reward
            discount = discount * self.discount
        final_action = self.model.policy(z).sample()
        return value + discount * self.q_value(z, final_action, reduce="mean")

    @torch.no_grad()
    def plan(self, obs: torch.Tensor, warm_mean: torch.Tensor | None, explore: bool):
        """MPPI in latent space guided by the policy prior, as the paper plans: ``iterations``
        rounds of sampling ``num_samples`` action sequences (``num_pi_trajs`` of them rolled out
        by the prior, the rest from N(mean, std^2)), keeping the ``num_elites`` best by
        ``estimate_value`` and refitting mean and std to them with weights
        ``exp(temperature * value)``.

        ``warm_mean``: the previous step's final mean (shifted by one step to start from), or
        None at an episode's first step. Returns the first action (an elite drawn by its weight,
        plus N(0, std^2) noise when exploring) and the final mean for the next step.
        """
        cfg, horizon = self.config, self.config.horizon
        z = self.model.encode(obs.unsqueeze(0))
        pi_actions = []
        if cfg.num_pi_trajs:
            pz = z.expand(cfg.num_pi_trajs, -1)
            for t in range(horizon):
                pi_actions.append(self.model.policy(pz).sample())
                if t < horizon - 1:
                    pz = self.model.next(pz, pi_actions[-1])
        pi_actions = torch.stack(pi_actions) if pi_actions else None
        z = z.expand(cfg.num_samples, -1)
        mean = torch.zeros(horizon, self.act_dim, device=self.device)
        if warm_mean is not None:
            mean[:-1] = warm_mean[1:]
        std = torch.full_like(mean, cfg.max_std)
        for _ in range(self.iterations):
            noise = torch.randn(
                horizon, cfg.num_samples - cfg.num_pi_trajs, self.act_dim, device=self.device
            )
            actions = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
            if pi_actions is not None:
                actions = torch.cat([pi_actions, actions], 1)
            value = self._estimate_value(z, actions).nan_to_num(0)
            elite_value, elite = value.topk(cfg.num_elites)
            elite_actions = actions[:, elite]
            weight = torch.softmax(cfg.temperature * elite_value, 0)
            mean = torch.einsum("e,hed->hd", weight, elite_actions)
            spread = torch.einsum("e,hed->hd", weight, (elite_actions - mean.unsqueeze(1)) ** 2)
            std = spread.sqrt().clamp(cfg.min_std, cfg.max_std)
        chosen = elite_actions[0, torch.multinomial(weight, 1)[0]]
        if explore:
            chosen = chosen + std[0] * torch.randn(self.act_dim, device=self.device)
        return chosen.clamp(-1, 1), mean

    @torch.no_grad()
    def prior_action(self, obs: torch.Tensor, explore: bool) -> torch.Tensor:
        """Acting without planning (``--tdmpc2.no-mpc``): the prior's sample or mode."""
        dist = self.model.policy(self.model.encode(obs))
        return dist.sample() if explore else dist.mode

    # -- reporting and checkpoints ----------------------------------------------------------

    @torch.no_grad()
    def entropy_stats(self, obs: torch.Tensor) -> dict[str, float]:
        """Per-state entropy of the prior on replay states (min/mean/max); for ERA also the
        target and the number of states where it is out of reach."""
        dist = self.model.policy(self.model.encode(obs))
        with _forked_rng(self.device):  # a sampled estimate (tanh head) must not shift training
            entropy = per_state_entropy(dist)
        stats = entropy_summary(entropy)
        if self.target_entropy is not None:  # the alpha head has a bonus, not a target
            stats["target_entropy"] = self.target_entropy
            stats["unreachable"] = unreachable_count(dist)
        return stats | {"q_scale": self.q_scale.item()}

    def checkpoint_state(self) -> dict:
        return {
            "modules": {k: v.cpu() for k, v in self.state_dict().items()},
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
        }

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])


class Planner:
    """``obs -> action`` for an environment loop, keeping MPPI's warm start across steps;
    ``reset()`` at each episode start (``era.rl.train.evaluate`` calls it)."""

    def __init__(self, agent: TDMPC2Agent, explore: bool):
        self.agent, self.explore = agent, explore
        self.mean: torch.Tensor | None = None

    def reset(self) -> None:
        self.mean = None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.agent.device)
        if not self.agent.config.mpc:
            return self.agent.prior_action(obs, self.explore).cpu().numpy()
        action, self.mean = self.agent.plan(obs, self.mean, self.explore)
        return action.cpu().numpy()


@contextmanager
def _forked_rng(device: torch.device, seed: int | None = None):
    """Run a block on a copy of the CPU (and CUDA) generators, optionally reseeded."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- building and training ----------------------------------------------------------------------


def episode_length(env) -> int:
    """Time limit of the task: Gymnasium's ``max_episode_steps``, dm_control's step limit."""
    spec = getattr(env, "spec", None)
    if spec is not None and spec.max_episode_steps:
        return int(spec.max_episode_steps)
    suite_env = getattr(env.unwrapped, "_env", None)  # era.rl.envs.DMControlEnv
    if suite_env is not None and math.isfinite(suite_env._step_limit):
        return int(suite_env._step_limit)
    return 1000


def build(config: TrainConfig) -> tuple[ReplayableEnvs, TDMPC2Agent]:
    """Environment and agent; raises ``ValueError`` for an unknown env, bad flags or target."""
    envs = ReplayableEnvs(config.env, config.seed, num_envs=1)
    obs_dim = envs.observation_space.shape[0]
    act_dim = envs.action_space.shape[0]
    try:
        agent = TDMPC2Agent(config, obs_dim, act_dim, episode_length(envs.envs[0]))
    except Exception:
        envs.close()
        raise
    return envs, agent


def train(config: TrainConfig):
    """Train TD-MPC2 (``era`` or ``alpha`` prior) as configured; returns the run directory."""
    set_seed(config.seed)
    envs, agent = build(config)
    run, logger, checkpoint = start_run(config)
    cfg, device = config.tdmpc2, agent.device
    seed_steps = (
        cfg.seed_steps
        if cfg.seed_steps is not None
        else default_seed_steps(episode_length(envs.envs[0]))
    )
    capacity = min(cfg.buffer_size, config.total_steps)
    obs_dim, act_dim = envs.observation_space.shape[0], envs.action_space.shape[0]
    buffer = SequenceBuffer(capacity, obs_dim, act_dim, cfg.horizon, device)
    eval_env = make_env(config.env, config.seed + EVAL_SEED_OFFSET)
    planner = Planner(agent, explore=True)
    step, row_step, clock = 0, None, Clock()
    if checkpoint is not None:
        restore_loop(checkpoint, agent, buffer, envs)
        set_rng_state(checkpoint["rng"], device)
        mean = checkpoint["plan_mean"]
        planner.mean = None if mean is None else mean.to(device)
        step, row_step, clock = (
            checkpoint["step"],
            checkpoint["row_step"],
            Clock(checkpoint["elapsed"]),
        )

    def save():
        run.save_checkpoint(
            loop_checkpoint(
                run, step, row_step, clock.seconds(), agent, buffer, envs,
                rng=rng_state(device),
                plan_mean=None if planner.mean is None else planner.mean.cpu(),
            )
        )  # fmt: skip

    def log_evaluation() -> None:
        nonlocal row_step
        check_finite(step, **losses)
        # Evaluation plans with its own seeded generators: repeatable, and training's untouched.
        with _forked_rng(device, seed=config.seed + EVAL_SEED_OFFSET):
            ret_mean, ret_std = evaluate(
                Planner(agent, explore=False),
                eval_env,
                config.eval_episodes,
                seed=config.seed + EVAL_SEED_OFFSET,
            )
        if buffer.size:
            obs = buffer.sample_obs(1024, torch.Generator().manual_seed(step))
        else:
            obs = torch.as_tensor(envs.obs, device=device)
        row = {
            "return_mean": ret_mean,
            "return_std": ret_std,
            **agent.entropy_stats(obs),
            **{k: float(v) for k, v in losses.items()},
        }
        row_step = log_row(logger, reporter, clock, step, row)

    reporter = Reporter(config, step)
    zero = torch.tensor(0.0)
    losses = dict.fromkeys(
        ("consistency_loss", "reward_loss", "value_loss", "pi_loss", "total_loss", "grad_norm"),
        zero,
    )
    obs = envs.obs
    try:
        with stop_signals() as stop:
            while step < config.total_steps and not stop.requested:
                if len(envs.actions[0]) == 0:  # an episode's first step: no warm start
                    planner.reset()
                if step < seed_steps:
                    action = torch.rand(1, act_dim).numpy() * 2 - 1
                else:
                    action = planner(obs[0])[None]
                episode = envs.episodes[0]
                result = envs.step(action)
                buffer.add(
                    obs[0],
                    action[0],
                    result.reward[0],
                    result.next_obs[0],
                    result.terminated[0],
                    episode,
                )
                obs = result.obs
                step += 1
                for episode_return in result.episode_returns:
                    logger.scalars(step, {"charts/episodic_return": episode_return})

                # The authors' schedule: at the end of the seed phase, as many updates as seed
                # steps (pretraining on the random data), then one per environment step.
                updates = seed_steps if step == seed_steps else int(step > seed_steps)
                for _ in range(updates):
                    losses = agent.update(*buffer.sample(cfg.batch_size))

                if step % LOG_EVERY == 0:
                    check_finite(step, **losses)
                    logger.scalars(
                        step,
                        {f"losses/{k}": v for k, v in losses.items()}
                        | {"charts/sps": reporter.sps(step), "charts/q_scale": agent.q_scale},
                    )
                    reporter.advance_to(step)
                if step % config.eval_every == 0 or step == config.total_steps:
                    log_evaluation()
                if step % config.checkpoint_every == 0:
                    check_finite(step, **losses)
                    save()
            if row_step != step and not stop.requested:  # end with a final evaluation
                log_evaluation()
            save()
            reporter.advance_to(step)
        write_summary(run.out, read_metrics(logger.csv_path), clock.seconds())
    finally:
        reporter.close()
        logger.close()
        envs.close()
        eval_env.close()
    return run.out


def load_policy(config: TrainConfig, checkpoint: dict):
    """The evaluation planner ``obs -> action`` of a checkpoint (for ``era rl eval``)."""
    envs, agent = build(config)
    envs.close()
    agent.load_checkpoint_state(checkpoint["agent"])
    return Planner(agent, explore=False)
