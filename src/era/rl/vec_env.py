"""Training environments that a checkpoint can rebuild exactly.

Simulator state cannot be pickled portably (Gymnasium's MuJoCo environments pickle as "rebuild
from constructor arguments", losing the physics state). But MuJoCo is deterministic, so an
episode is fully described by the seed it was reset with and the actions taken since. This class
resets every episode with a seed derived from ``(run seed, env index, episode number)`` and keeps
the actions of the current episodes; ``load_state_dict`` replays them (at most one episode per
environment), which puts every environment back into its exact state.

This is why the trainers step their own copies of ``era.rl.envs.make_env`` instead of a
Gymnasium vector env (whose autoreset draws seeds nobody can replay). Semantics otherwise match
``make_vector_env``'s SAME_STEP autoreset: ``step`` returns the first observation of the next
episode where one ended, and the true last observation separately for bootstrapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from era.rl.envs import make_env


def episode_seed(seed: int, env_index: int, episode: int) -> int:
    """Independent, reproducible seed for one episode of one environment of one run."""
    return int(np.random.SeedSequence([seed, env_index, episode]).generate_state(1)[0])


@dataclass
class StepResult:
    obs: np.ndarray
    """``[N, obs_dim]`` policy input for the next step (a reset observation where one ended)"""
    reward: np.ndarray
    """``[N]``"""
    terminated: np.ndarray
    """``[N]`` bool: a real terminal state (do not bootstrap)"""
    truncated: np.ndarray
    """``[N]`` bool: time limit (bootstrap from ``next_obs``)"""
    next_obs: np.ndarray
    """``[N, obs_dim]`` the observation the action led to (the true last one where one ended)"""
    episode_returns: list[float]
    """undiscounted returns of the episodes that ended at this step"""


class ReplayableEnvs:
    """``num_envs`` copies of one task, stepped in lockstep, restorable from a checkpoint."""

    def __init__(self, env_id: str, seed: int, num_envs: int = 1):
        self.seed = seed
        self.envs = [make_env(env_id, seed + i) for i in range(num_envs)]
        self.action_space = self.envs[0].action_space
        self.observation_space = self.envs[0].observation_space
        self.episodes = [0] * num_envs
        self.actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.returns = [0.0] * num_envs
        self.obs = np.stack([self._reset(i) for i in range(num_envs)])

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def _reset(self, i: int) -> np.ndarray:
        self.actions[i], self.returns[i] = [], 0.0
        obs, _ = self.envs[i].reset(seed=episode_seed(self.seed, i, self.episodes[i]))
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions, dtype=np.float32)
        n = self.num_envs
        next_obs = np.empty_like(self.obs)
        reward, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        obs, finished = np.empty_like(self.obs), []
        for i, env in enumerate(self.envs):
            next_obs[i], reward[i], terminated[i], truncated[i], _ = env.step(actions[i])
            self.actions[i].append(actions[i].copy())
            self.returns[i] += float(reward[i])
            obs[i] = next_obs[i]
            if terminated[i] or truncated[i]:
                finished.append(self.returns[i])
                self.episodes[i] += 1
                obs[i] = self._reset(i)
        self.obs = obs
        return StepResult(obs, reward, terminated, truncated, next_obs, finished)

    def state_dict(self) -> dict:
        """Seeds, episode counters and the current episodes' actions (as tensors, so that a
        checkpoint loads with ``weights_only=True``)."""
        return {
            "seed": self.seed,
            "episodes": list(self.episodes),
            "actions": [
                torch.from_numpy(
                    np.array(a, dtype=np.float32).reshape(len(a), *self.action_space.shape)
                )
                for a in self.actions
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        """Reset each environment into its current episode and replay that episode's actions."""
        if state["seed"] != self.seed or len(state["episodes"]) != self.num_envs:
            raise ValueError(
                f"checkpointed environments (seed {state['seed']}, "
                f"{len(state['episodes'])} envs) do not match this run "
                f"(seed {self.seed}, {self.num_envs} envs)"
            )
        self.episodes = list(state["episodes"])
        for i, actions in enumerate(state["actions"]):
            self.obs[i] = self._reset(i)
            for action in np.asarray(actions, dtype=np.float32):
                self.obs[i], reward, *_ = self.envs[i].step(action)
                self.actions[i].append(action.copy())
                self.returns[i] += float(reward)

    def close(self) -> None:
        for env in self.envs:
            env.close()
