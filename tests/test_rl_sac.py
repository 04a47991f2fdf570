"""SAC on real tasks: smoke runs, outputs, the ERA floor, exact resume, divergence, errors."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from era.rl import SACConfig, TrainConfig, train
from era.rl import sac as sac_module
from era.rl.buffer import ReplayBuffer
from era.rl.networks import TwinCritic
from era.rl.train import CHECKPOINT
from era.rl.vec_env import ReplayableEnvs
from era.runs import DivergenceError, RunError, load_checkpoint

SAC_COLUMNS = [
    "step", "return_mean", "return_std", "entropy", "entropy_min", "entropy_max",
    "target_entropy", "unreachable",
]  # fmt: skip


def tiny(tmp_path, **overrides) -> TrainConfig:
    """A few hundred steps with small networks: seconds on a CPU, still the real loop."""
    values = dict(
        env="Hopper-v5", algo="sac", head="era", total_steps=300, eval_every=150,
        checkpoint_every=150, eval_episodes=1, out=tmp_path / "run", progress=False,
        sac=SACConfig(hidden=32, batch_size=32, learning_starts=100),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "env, head, era_mode",
    [
        ("Hopper-v5", "era", "exact"),
        ("dm_control/cartpole-swingup", "era", "delta"),
        ("dm_control/cartpole-swingup", "alpha", "exact"),
    ],
)
def test_smoke_run_writes_documented_outputs(tmp_path, env, head, era_mode):
    config = tiny(tmp_path, env=env, head=head, era_mode=era_mode)
    (run,) = train(config)
    table = rows(run)
    assert [int(r["step"]) for r in table] == [150, 300]
    assert list(table[0])[: len(SAC_COLUMNS)] == SAC_COLUMNS
    extra = "alpha" if head == "alpha" else "delta"
    assert {extra, "qf_loss", "actor_loss", "sps", "time_s"} <= set(table[0])
    assert all(np.isfinite(float(v)) for r in table for v in r.values())
    assert list((run / "tb").glob("events.out.tfevents.*"))
    for name in ("config.json", "versions.json", "summary.json", CHECKPOINT):
        assert (run / name).is_file(), name
    action_dim = 3 if env == "Hopper-v5" else 1
    target = -0.5 * action_dim if head == "era" else -1.0 * action_dim
    assert float(table[-1]["target_entropy"]) == pytest.approx(target)
    if head == "era" and era_mode == "exact":
        # The floor holds in every replay state, not only on average.
        for r in table:
            assert float(r["entropy_min"]) == pytest.approx(target, abs=1e-3)
            assert float(r["entropy_max"]) == pytest.approx(target, abs=1e-3)


class StopAfter:
    """Stands in for Ctrl-C: ``requested`` turns True after ``n`` checks (one per env step)."""

    def __init__(self, n: int):
        self.n = n

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n < 0


def interrupt_after(monkeypatch, module, steps: int) -> None:
    from contextlib import nullcontext

    monkeypatch.setattr(module, "stop_signals", lambda: nullcontext(StopAfter(steps)))


@pytest.mark.parametrize("head", ["era", "alpha"])
def test_interrupted_and_resumed_run_matches_unsplit_run(tmp_path, monkeypatch, head):
    whole = tiny(tmp_path, head=head, total_steps=300, eval_every=150, out=tmp_path / "whole")
    train(whole)

    split = dataclasses.replace(whole, out=tmp_path / "split")
    interrupt_after(monkeypatch, sac_module, 170)  # stops mid-episode, after learning started
    train(split)
    assert load_checkpoint(split.out / CHECKPOINT)["step"] == 170
    monkeypatch.undo()
    train(dataclasses.replace(split, resume=True))

    a = load_checkpoint(whole.out / CHECKPOINT)
    b = load_checkpoint(split.out / CHECKPOINT)
    assert a["step"] == b["step"] == 300
    for name, value in a["agent"]["modules"].items():
        torch.testing.assert_close(b["agent"]["modules"][name], value, msg=name)
    torch.testing.assert_close(b["buffer"]["obs"], a["buffer"]["obs"])
    by_step = {r["step"]: r for r in rows(split.out)}
    for r in rows(whole.out):  # the split run also has its Ctrl-C row at step 170
        assert float(by_step[r["step"]]["return_mean"]) == pytest.approx(float(r["return_mean"]))


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny(tmp_path, total_steps=600, eval_every=200, checkpoint_every=200)
    real_update = sac_module.SACAgent.update
    calls = {"n": 0}

    def poisoned(self, *batch):
        calls["n"] += 1
        losses = real_update(self, *batch)
        if calls["n"] > 250:  # blows up between the checkpoints at steps 200 and 400
            losses["qf_loss"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(sac_module.SACAgent, "update", poisoned)
    with pytest.raises(DivergenceError, match="qf_loss"):
        train(config)
    checkpoint = load_checkpoint(config.out / CHECKPOINT)
    assert checkpoint["step"] == 200
    assert all(torch.isfinite(v).all() for v in checkpoint["agent"]["modules"].values())


def test_bad_configurations_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="Hoper-v5"):
        train(tiny(tmp_path, env="Hoper-v5"))
    with pytest.raises(ValueError, match="target_entropy"):
        train(tiny(tmp_path, target_entropy=50.0))  # above 3 * log(2), the uniform entropy
    assert not (tmp_path / "run" / "metrics.csv").exists()
    with pytest.raises(ValueError, match="head='std'"):
        tiny(tmp_path, head="std")
    with pytest.raises(ValueError, match="--eval-every 0"):
        tiny(tmp_path, eval_every=0)


def test_existing_run_needs_resume_and_resume_needs_same_config(tmp_path):
    config = tiny(tmp_path, total_steps=150)
    train(config)
    with pytest.raises(RunError, match="--resume"):
        train(config)
    with pytest.raises(RunError, match="--sac.hidden 32 -> 64"):
        other = dataclasses.replace(config, resume=True, sac=SACConfig(hidden=64))
        train(other)
    # Extending a finished run continues it from its checkpoint.
    train(dataclasses.replace(config, resume=True, total_steps=300))
    assert [int(r["step"]) for r in rows(config.out)] == [150, 300]


def test_replayable_envs_restore_mid_episode_state():
    for env_id in ("Hopper-v5", "dm_control/cartpole-swingup"):
        envs = ReplayableEnvs(env_id, seed=3, num_envs=2)
        actions = np.random.default_rng(0).uniform(-1, 1, (38, 2, envs.action_space.shape[0]))
        for action in actions[:-1].astype(np.float32):
            envs.step(action)
        restored = ReplayableEnvs(env_id, seed=3, num_envs=2)
        restored.load_state_dict(envs.state_dict())
        np.testing.assert_array_equal(restored.obs, envs.obs)
        actions = actions[-1].astype(np.float32)
        a, b = envs.step(actions), restored.step(actions)
        np.testing.assert_array_equal(a.next_obs, b.next_obs)
        np.testing.assert_array_equal(a.reward, b.reward)


def test_replay_buffer_ring_and_state_round_trip():
    buffer = ReplayBuffer(5, obs_dim=2, act_dim=1)
    for i in range(7):
        buffer.add([[i, i]], [[i]], [i], [[i + 1, i + 1]], [i % 2])
    assert buffer.size == 5 and buffer.pos == 2
    assert sorted(buffer.reward.tolist()) == [2, 3, 4, 5, 6]  # the oldest two were overwritten
    copy = ReplayBuffer(5, obs_dim=2, act_dim=1)
    copy.load_state_dict(buffer.state_dict())
    torch.manual_seed(0)
    first = buffer.sample(8)
    torch.manual_seed(0)
    for x, y in zip(first, copy.sample(8), strict=True):
        torch.testing.assert_close(x, y)
    # next_obs stays paired with obs
    obs, _, reward, next_obs, _ = first
    torch.testing.assert_close(next_obs, obs + 1)
    torch.testing.assert_close(obs[:, 0], reward)
    # into a larger buffer (an extended run): the 5 kept transitions, oldest first, then new ones
    larger = ReplayBuffer(8, obs_dim=2, act_dim=1)
    larger.load_state_dict(buffer.state_dict())
    larger.add([[7, 7]], [[7]], [7], [[8, 8]], [1])
    assert larger.reward[:6].tolist() == [2, 3, 4, 5, 6, 7] and larger.size == 6
    smaller = ReplayBuffer(3, obs_dim=2, act_dim=1)
    smaller.load_state_dict(buffer.state_dict())
    assert smaller.reward.tolist() == [4, 5, 6] and smaller.pos == 0


def test_twin_critics_are_independent_networks():
    critic = TwinCritic(obs_dim=4, act_dim=2, hidden=16, layers=2)
    obs, action = torch.randn(8, 4), torch.randn(8, 2)
    q = critic(obs, action)
    assert q.shape == (2, 8)
    assert not torch.allclose(q[0], q[1])
    q[0].sum().backward()
    for p in critic.parameters():  # member 1's slice gets no gradient from member 0's output
        assert p.grad.shape[-3 if p.dim() == 4 else 0] == 2
        grad_1 = p.grad[:, 1] if p.dim() == 4 else p.grad[1]
        assert torch.count_nonzero(grad_1) == 0
