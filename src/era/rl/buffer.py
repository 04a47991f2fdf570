"""Replay buffer for off-policy agents: preallocated torch tensors, uniform sampling."""

from __future__ import annotations

import torch


class ReplayBuffer:
    """A ring buffer of ``(obs, action, reward, next_obs, terminated)`` transitions.

    ``next_obs`` is the true last observation of an episode (not the reset observation), and
    only ``terminated`` (not time-limit truncation) stops bootstrapping. Sampling draws indices
    from torch's global generator, so a seeded run samples the same batches every time.
    """

    FIELDS = ("obs", "action", "reward", "next_obs", "terminated")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.capacity = capacity
        self.obs = torch.zeros(capacity, obs_dim)
        self.action = torch.zeros(capacity, act_dim)
        self.reward = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.terminated = torch.zeros(capacity)
        self.pos = 0
        self.size = 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        """Add a batch of transitions (one per vectorised environment); arrays or tensors."""
        values = [
            torch.as_tensor(v, dtype=torch.float32)
            for v in (obs, action, reward, next_obs, terminated)
        ]
        n = values[0].shape[0]
        idx = torch.arange(self.pos, self.pos + n) % self.capacity
        for name, value in zip(self.FIELDS, values, strict=True):
            getattr(self, name)[idx] = value
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None):
        """A uniform batch: ``obs, action, reward, next_obs, terminated``."""
        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        return tuple(getattr(self, name)[idx] for name in self.FIELDS)

    def state_dict(self) -> dict:
        """Only the filled part, so a checkpoint early in a run stays small."""
        filled = {name: getattr(self, name)[: self.size].clone() for name in self.FIELDS}
        return {"capacity": self.capacity, "pos": self.pos, "size": self.size, **filled}

    def load_state_dict(self, state: dict) -> None:
        """Restore a buffer; into a different capacity (a run extended with a larger
        ``--total-steps``), keep the most recent transitions in order."""
        if state["capacity"] == self.capacity:
            self.pos, self.size = state["pos"], state["size"]
            for name in self.FIELDS:
                getattr(self, name)[: self.size] = state[name]
            return
        size = state["size"]
        oldest = state["pos"] if size == state["capacity"] else 0
        order = (torch.arange(size) + oldest) % size
        keep = order[-self.capacity :]
        for name in self.FIELDS:
            getattr(self, name)[: len(keep)] = state[name][keep]
        self.size = len(keep)
        self.pos = self.size % self.capacity
