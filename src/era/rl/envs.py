"""Environments for the RL agents: Gymnasium MuJoCo tasks and dm_control suite tasks.

Contract (what the agents in ``era.rl`` rely on):

* ids: any registered Gymnasium id with a continuous (Box) action space, e.g. ``"Hopper-v5"``,
  or a dm_control suite task spelled ``"dm_control/DOMAIN-TASK"``, e.g. ``"dm_control/walker-run"``,
  ``"dm_control/ball_in_cup-catch"``. Anything else raises ``ValueError`` with close matches.
* observations: 1-D ``float32`` arrays (dm_control's dict observations are flattened in the
  suite's key order).
* actions: ``float32`` Box in ``[-1, 1]`` for every task; the adapter rescales to the task's own
  bounds, so one policy head (``GaussianERA(low=-1, high=1)``) fits all tasks.
* episode ends: ``terminated`` means a real terminal state (bootstrap with 0), ``truncated`` means a
  time limit (bootstrap from the final observation). dm_control's suite time limit (1000 steps for
  most tasks) is therefore reported as truncation, never termination.
* vector autoreset: ``AutoresetMode.SAME_STEP``. When sub-environment ``i`` ends at a step, that
  same ``step`` returns the first observation of its *next* episode in ``obs[i]``; the true last
  observation (the ``next_obs`` to store for bootstrapping) is ``info["final_obs"][i]``, valid
  where ``info["_final_obs"][i]`` is True. So a replay buffer stores::

      real_next_obs = next_obs.copy()
      if "final_obs" in info:
          done = info["_final_obs"]
          real_next_obs[done] = np.stack(info["final_obs"][done])

  and ``next_obs`` is used as the next policy input without any extra reset step (every step is a
  real transition, unlike NEXT_STEP where one step in each episode is a dummy reset).
* episode statistics: ``RecordEpisodeStatistics`` puts the return and length of finished episodes
  in ``info["episode"]["r"]`` / ``["l"]``, valid where ``info["_episode"]`` is True.
* seeding: ``make_env(id, seed)`` and ``make_vector_env(id, seed)`` return environments already
  reset with ``seed`` (sub-environment ``i`` gets ``seed + i``) and with their action spaces
  seeded, so random warm-up actions and all later episodes are reproducible; calling
  ``reset(seed=seed)`` again gives the same first observation.

Vectorisation is ``SyncVectorEnv``: a MuJoCo-sized environment step is no dearer than the
inter-process round trip of ``AsyncVectorEnv``, which on the 2-core machine of
``docs/benchmarks/rl.md`` was not reliably faster (``benchmarks/rl_throughput.py``).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics as VectorEpisodeStatistics

DM_CONTROL_PREFIX = "dm_control/"
# Beyond this the task is effectively unbounded (dm_control's lqr uses 1e10): a policy in [-1, 1]
# rescaled onto such bounds would be meaningless, so those tasks are refused.
MAX_ACTION_BOUND = 1e6

# dm_control picks an OpenGL backend on import; on a headless machine GLFW only warns. We never
# render here, so switch rendering off unless the user chose a backend.
if "DISPLAY" not in os.environ:
    os.environ.setdefault("MUJOCO_GL", "disable")


class DMControlEnv(gym.Env):
    """A dm_control suite task as a Gymnasium environment.

    Observations are the suite's observation dict flattened to one float32 vector; actions are a
    Box in [-1, 1] mapped linearly onto the task's action bounds. The suite ends every episode at
    its time limit with discount 1 (a truncation); only a last step with discount 0 is a
    termination. Seeding goes through the task's own random state (``task_kwargs["random"]``).
    """

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str, seed: int | None = None):
        from dm_control import suite

        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        spec = self._env.action_spec()
        self._low = spec.minimum.astype(np.float64)
        self._high = spec.maximum.astype(np.float64)
        _check_bounds(f"{DM_CONTROL_PREFIX}{domain}-{task}", self._low, self._high)
        self.action_space = spaces.Box(-1.0, 1.0, shape=spec.shape, dtype=np.float32)
        size = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)

    def _flat(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate(
            [np.asarray(v, dtype=np.float32).ravel() for v in observation.values()]
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        return self._flat(self._env.reset().observation), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        step = self._env.step(self._low + (action + 1.0) * 0.5 * (self._high - self._low))
        terminated = step.last() and step.discount == 0.0
        truncated = step.last() and not terminated
        return self._flat(step.observation), float(step.reward), terminated, truncated, {}


def _check_bounds(env_id: str, low: np.ndarray, high: np.ndarray) -> None:
    if not np.all(np.abs(np.concatenate([low, high])) <= MAX_ACTION_BOUND):  # also rejects inf/NaN
        raise ValueError(
            f"env_id={env_id!r} has action bounds low={low}, high={high}; the agents need finite "
            f"bounds within +-{MAX_ACTION_BOUND:g} to rescale actions from [-1, 1]."
        )


def _dm_control_env(env_id: str, seed: int) -> gym.Env:
    from dm_control import suite

    name = env_id[len(DM_CONTROL_PREFIX) :]
    known = [f"{d}-{t}" for d, t in suite.ALL_TASKS]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = (
            f" Close matches: {', '.join(DM_CONTROL_PREFIX + c for c in close)}." if close else ""
        )
        raise ValueError(
            f"env_id={env_id!r} is not a dm_control suite task.{hint} Spell them "
            f"'dm_control/DOMAIN-TASK', e.g. 'dm_control/walker-run'; domains: "
            f"{', '.join(sorted({d for d, _ in suite.ALL_TASKS}))}."
        )
    domain, task = name.split("-", 1)
    return DMControlEnv(domain, task, seed=seed)


def _gymnasium_env(env_id: str) -> gym.Env:
    if env_id not in gym.envs.registry:
        close = difflib.get_close_matches(env_id, list(gym.envs.registry), n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(
            f"env_id={env_id!r} is not a registered Gymnasium environment.{hint} dm_control "
            f"suite tasks are spelled 'dm_control/DOMAIN-TASK', e.g. 'dm_control/walker-run'."
        )
    env = gym.make(env_id)
    if not isinstance(env.action_space, spaces.Box):
        env.close()
        raise ValueError(
            f"env_id={env_id!r} has action space {env.action_space}; the agents need a "
            f"continuous Box action space."
        )
    space = env.action_space
    _check_bounds(env_id, space.low, space.high)
    if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))
    if not isinstance(env.observation_space, spaces.Box) or len(env.observation_space.shape) != 1:
        env = gym.wrappers.FlattenObservation(env)
    space = env.observation_space
    float32_space = spaces.Box(
        space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
    )
    return gym.wrappers.TransformObservation(env, lambda o: o.astype(np.float32), float32_space)


def _make_single(env_id: str, seed: int) -> gym.Env:
    if env_id.startswith(DM_CONTROL_PREFIX):
        return _dm_control_env(env_id, seed)
    return _gymnasium_env(env_id)


def make_vector_env(env_id: str, seed: int, *, num_envs: int = 1) -> gym.vector.VectorEnv:
    """``num_envs`` copies in a Gymnasium ``SyncVectorEnv`` (SAME_STEP autoreset) with episode
    statistics, already reset with ``seed``. See the module docstring. The trainers step
    ``era.rl.vec_env.ReplayableEnvs`` instead (restorable from a checkpoint); this is the
    standard vector env, for comparisons and tools."""
    if num_envs < 1:
        raise ValueError(f"num_envs={num_envs} must be >= 1.")
    first = _make_single(env_id, seed)  # built here so a bad id fails with our own error
    factories = [lambda: first]
    factories += [lambda i=i: _make_single(env_id, seed + i) for i in range(1, num_envs)]
    envs = SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP)
    envs = VectorEpisodeStatistics(envs)
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    return envs


def make_env(env_id: str, seed: int) -> gym.Env:
    """One environment, already reset with ``seed``: what the trainers step (one per
    ``ReplayableEnvs`` slot) and evaluate on."""
    env = gym.wrappers.RecordEpisodeStatistics(_make_single(env_id, seed))
    env.action_space.seed(seed)
    env.reset(seed=seed)
    return env
