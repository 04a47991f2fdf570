"""Replay buffers for off-policy agents: one per seed, stacked in one preallocated tensor."""

from __future__ import annotations

import torch


class ReplayBuffer:
    """S ring buffers of ``(obs, action, reward, next_obs, terminated)`` transitions.

    Buffer ``s`` belongs to seed ``s`` of a vectorised run (S = 1 for a single run); all of them
    fill in lockstep, one transition per seed per environment step. A transition is one row of
    ``data [S, capacity, width]`` (the five fields side by side), so adding is one copy (one
    host-to-device transfer on a GPU) and sampling one gather. ``next_obs`` is the true last
    observation of an episode (not the reset observation), and only ``terminated`` (not
    time-limit truncation) stops bootstrapping.
    """

    FIELDS = ("obs", "action", "reward", "next_obs", "terminated")

    def __init__(
        self, capacity: int, obs_dim: int, act_dim: int, seeds: int = 1, device: str = "cpu"
    ):
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.capacity = capacity
        widths = {"obs": obs_dim, "action": act_dim, "reward": 1, "next_obs": obs_dim,
                  "terminated": 1}  # fmt: skip
        self.columns, start = {}, 0
        for name in self.FIELDS:
            self.columns[name] = slice(start, start + widths[name])
            start += widths[name]
        self.data = torch.zeros(seeds, capacity, start, device=device)
        self.pos = 0
        self.size = 0

    @property
    def seeds(self) -> int:
        return self.data.shape[0]

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        """One transition per seed: ``obs [S, obs_dim]``, ``reward [S]``, ...; arrays or tensors."""
        row = torch.cat(
            [
                torch.as_tensor(v, dtype=torch.float32).reshape(self.seeds, -1)
                for v in (obs, action, reward, next_obs, terminated)
            ],
            dim=1,
        )
        self.data[:, self.pos] = row.to(self.data.device, non_blocking=True)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The transitions at ``index [S, B]`` (row ``s`` indexes seed ``s``'s buffer):
        ``obs [S, B, obs_dim], action, reward [S, B], next_obs, terminated [S, B]``."""
        rows = torch.gather(self.data, 1, index.unsqueeze(-1).expand(-1, -1, self.data.shape[2]))
        fields = [rows[..., self.columns[name]] for name in self.FIELDS]
        fields[2], fields[4] = fields[2].squeeze(-1), fields[4].squeeze(-1)
        return tuple(fields)

    def state_dict(self, seed_index: int = 0) -> dict:
        """Seed ``seed_index``'s buffer, only its filled part (a checkpoint early in a run stays
        small), field by field: the format of a single run's checkpoint."""
        filled = self.data[seed_index, : self.size].cpu()
        fields = {name: filled[:, cols].clone() for name, cols in self.columns.items()}
        fields["reward"], fields["terminated"] = fields["reward"][:, 0], fields["terminated"][:, 0]
        return {"capacity": self.capacity, "pos": self.pos, "size": self.size, **fields}

    def load_state_dict(self, state: dict, seed_index: int = 0) -> None:
        """Restore seed ``seed_index``'s buffer; into a different capacity (a run extended with
        a larger ``--total-steps``), keep the most recent transitions in order."""
        size = state["size"]
        rows = torch.cat([state[name].reshape(size, -1) for name in self.FIELDS], dim=1)
        if state["capacity"] == self.capacity:
            pos = state["pos"]
        else:
            oldest = state["pos"] if size == state["capacity"] else 0
            rows = rows[((torch.arange(size) + oldest) % size)[-self.capacity :]]
            size = len(rows)
            pos = size % self.capacity
        self.data[seed_index, :size] = rows.to(self.data.device)
        self.pos, self.size = pos, size
