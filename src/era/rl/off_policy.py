"""The training loop shared by FastSAC and OBAC: N parallel environments, a replay buffer, a few
gradient updates per environment step, evaluation, logging and exact checkpoint/resume.

The agent supplies the algorithm through a small interface (see :class:`OffPolicyAgent`); this
module owns everything around it, in the same way as ``sac.train``: the run folder, metrics.csv
and TensorBoard, the progress bar, Ctrl-C (checkpoint and stop), NaN -> ``DivergenceError``.

Steps are environment steps summed over the N environments, so ``--total-steps`` means the same
for every agent. Evaluations and checkpoints happen at the first vector step that reaches a
multiple of ``--eval-every`` / ``--checkpoint-every`` (exactly at it when N divides them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from era.rl.buffer import ReplayBuffer
from era.rl.config import TrainConfig
from era.rl.envs import make_env
from era.rl.loop import (
    Reporter,
    evaluate,
    loop_checkpoint,
    restore_loop,
    rng_state,
    set_rng_state,
    start_run,
    write_summary,
)
from era.rl.vec_env import ReplayableEnvs
from era.runs import Clock, check_finite, read_metrics, set_seed, stop_signals

LOG_EVERY = 1000  # steps between TensorBoard training scalars and divergence checks


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available); asking for a missing GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


class OffPolicyAgent(Protocol):
    """What the loop needs from an agent (a ``torch.nn.Module``)."""

    loss_names: tuple[str, ...]
    """keys of ``update``'s dict, logged to TensorBoard and as metrics.csv columns"""

    def observe(self, obs: torch.Tensor) -> None:
        """See a batch of new environment observations (observation statistics)."""

    def update(self, obs, action, reward, next_obs, terminated) -> dict[str, torch.Tensor]:
        """The gradient updates of one replay batch."""

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions ``[B, A]`` in [-1, 1] for raw observations ``[B, O]``."""

    def entropy_stats(self, obs: torch.Tensor) -> dict[str, float]:
        """Per-state entropy (mean/min/max), target, unreachable count, temperature."""

    def checkpoint_state(self) -> dict: ...

    def load_checkpoint_state(self, state: dict) -> None: ...


def build_agent(config: TrainConfig, agent_class, num_envs: int):
    """``num_envs`` environments and ``agent_class(config, obs_dim, act_dim)`` on ``--device``;
    raises ``ValueError`` for an unknown env, an infeasible target or a missing GPU."""
    device = resolve_device(config.device)
    envs = ReplayableEnvs(config.env, config.seed, num_envs=num_envs)
    obs_dim = envs.observation_space.shape[0]
    act_dim = envs.action_space.shape[0]
    return envs, agent_class(config, obs_dim, act_dim).to(device)


def checkpoint_policy(build, config: TrainConfig, checkpoint: dict):
    """The deterministic policy ``obs -> action`` of a checkpoint (for ``era rl eval``), on the
    CPU; ``build`` is the agent module's."""
    envs, agent = build(dataclasses.replace(config, device="cpu"))
    envs.close()
    agent.load_checkpoint_state(checkpoint["agent"])
    return lambda obs: agent.act(torch.as_tensor(obs, dtype=torch.float32)[None], True)[0].numpy()


@dataclass
class Schedule:
    """How much data and how many updates: the algorithm's own hyper-parameters."""

    num_envs: int
    learning_starts: int
    """environment steps of uniformly random actions before the first update"""
    updates_per_vector_step: int
    """gradient updates after each step of all N environments"""
    batch_size: int
    buffer_size: int


def crossed(step: int, stride: int, every: int) -> bool:
    """Whether the last ``stride`` steps, ending at ``step``, reached a multiple of ``every``."""
    return step // every > (step - stride) // every


def sample(buffer: ReplayBuffer, size: int, generator: torch.Generator | None = None):
    """A uniform batch ``obs [B, o], action, reward [B], next_obs, terminated [B]`` of the
    single-seed buffer; indices come from torch's CPU generator, so a run resumes exactly."""
    index = torch.randint(0, buffer.size, (1, size), generator=generator)
    return [field[0] for field in buffer.sample(index.to(buffer.data.device))]


def stats_batch(buffer: ReplayBuffer, step: int, size: int = 1024) -> torch.Tensor:
    """Replay states for the entropy report; a generator of its own keeps training's stream."""
    generator = torch.Generator().manual_seed(step)
    return sample(buffer, min(size, buffer.size), generator)[0]


def run(config: TrainConfig, build, cfg, num_envs: int):
    """Seed, build (the agent module's ``build``) and train one agent whose options ``cfg``
    hold ``learning_starts``, ``updates_per_step``, ``batch_size`` and ``buffer_size``;
    returns the run directory."""
    set_seed(config.seed)
    envs, agent = build(config)
    schedule = Schedule(
        num_envs=num_envs,
        learning_starts=cfg.learning_starts,
        updates_per_vector_step=cfg.updates_per_step,
        batch_size=cfg.batch_size,
        buffer_size=cfg.buffer_size,
    )
    return train(config, agent, envs, schedule, next(agent.parameters()).device)


def train(
    config: TrainConfig,
    agent: OffPolicyAgent,
    envs: ReplayableEnvs,
    schedule: Schedule,
    device: torch.device,
):
    """Train ``agent`` as configured; returns the run directory."""
    run, logger, checkpoint = start_run(config)
    obs_dim, act_dim = envs.observation_space.shape[0], envs.action_space.shape[0]
    # one ring buffer, one row per environment transition (N rows per step)
    buffer = ReplayBuffer(
        min(schedule.buffer_size, config.total_steps), obs_dim, act_dim, device=device
    )
    eval_env = make_env(config.env, config.seed + 10_000)
    step, elapsed, row_step = 0, 0.0, None
    if checkpoint is not None:
        restore_loop(checkpoint, agent, buffer, envs)
        set_rng_state(checkpoint["rng"])
        if checkpoint.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        step, elapsed, row_step = checkpoint["step"], checkpoint["elapsed"], checkpoint["row_step"]
    n = envs.num_envs

    def to_device(*arrays):
        return [torch.as_tensor(a, dtype=torch.float32).to(device) for a in arrays]

    def policy(obs: np.ndarray) -> np.ndarray:
        (obs,) = to_device(obs[None])
        return agent.act(obs, deterministic=True)[0].cpu().numpy()

    def save():
        run.save_checkpoint(
            loop_checkpoint(
                run, step, row_step, clock.seconds(), agent, buffer, envs,
                rng=rng_state(),
                # on a GPU, policy samples come from the CUDA generator
                cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            )
        )  # fmt: skip

    def log_evaluation() -> None:
        nonlocal row_step
        check_finite(step, **losses)
        ret_mean, ret_std = evaluate(
            policy, eval_env, config.eval_episodes, seed=config.seed + 10_000
        )
        obs = stats_batch(buffer, step) if buffer.size else torch.as_tensor(envs.obs)
        row = {
            "return_mean": ret_mean,
            "return_std": ret_std,
            **agent.entropy_stats(obs.to(device)),
            **{name: float(value) for name, value in losses.items()},
            "sps": reporter.sps(step),
            "time_s": clock.seconds(),
        }
        logger.row(step, row)
        reporter.evaluation(step, row)
        row_step = step

    clock = Clock(elapsed)
    reporter = Reporter(config, step)
    losses = {name: torch.tensor(0.0) for name in agent.loss_names}
    obs = envs.obs
    try:
        with stop_signals() as stop:
            while step < config.total_steps and not stop.requested:
                (obs_t,) = to_device(obs)
                agent.observe(obs_t)
                if step < schedule.learning_starts:
                    action = torch.rand(n, act_dim).numpy() * 2 - 1
                else:
                    action = agent.act(obs_t).cpu().numpy()
                result = envs.step(action)
                for i in range(n):
                    buffer.add(
                        obs[i], action[i], result.reward[i], result.next_obs[i],
                        result.terminated[i],
                    )  # fmt: skip
                obs = result.obs
                step += n
                for episode_return in result.episode_returns:
                    logger.scalars(step, {"charts/episodic_return": episode_return})

                if step > schedule.learning_starts:
                    for _ in range(schedule.updates_per_vector_step):
                        losses = agent.update(*sample(buffer, schedule.batch_size))

                if crossed(step, n, LOG_EVERY):
                    check_finite(step, **losses)
                    logger.scalars(
                        step,
                        {f"losses/{k}": v for k, v in losses.items()}
                        | {"charts/sps": reporter.sps(step)},
                    )
                    reporter.advance_to(step)
                if crossed(step, n, config.eval_every) or step >= config.total_steps:
                    log_evaluation()
                if crossed(step, n, config.checkpoint_every):
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
    return run.out
