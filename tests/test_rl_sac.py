"""SAC on real tasks: smoke runs, outputs, the ERA floor, exact resume, divergence, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from rl_helpers import assert_same_modules, interrupt_after, rows, train_unsplit_and_resumed

from era.rl import SACConfig, TrainConfig, train
from era.rl import sac as sac_module
from era.rl.buffer import ReplayBuffer
from era.rl.networks import TwinCritic
from era.rl.sac import SACAgent
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


@pytest.mark.parametrize("head", ["era", "alpha"])
def test_interrupted_and_resumed_run_matches_unsplit_run(tmp_path, monkeypatch, head):
    whole = tiny(tmp_path, head=head, total_steps=300, eval_every=150, out=tmp_path / "whole")
    # stops mid-episode, after learning started
    split, a, b = train_unsplit_and_resumed(whole, monkeypatch, sac_module, 170, stopped_at=170)
    assert a["step"] == b["step"] == 300
    assert_same_modules(a, b)
    torch.testing.assert_close(b["buffer"]["obs"], a["buffer"]["obs"])
    # Ctrl-C saves without evaluating, so the split run has the unsplit run's rows, no more
    assert [r["step"] for r in rows(split.out)] == [r["step"] for r in rows(whole.out)]
    for x, y in zip(rows(split.out), rows(whole.out), strict=True):
        assert float(x["return_mean"]) == pytest.approx(float(y["return_mean"]))


@pytest.mark.parametrize("seeds", [None, [0, 1]])
def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, seeds):
    config = tiny(tmp_path, total_steps=600, eval_every=200, checkpoint_every=200, seeds=seeds)
    real_update = sac_module.SACAgent.update
    calls = {"n": 0}

    def poisoned(self, *batch):
        calls["n"] += 1
        losses = real_update(self, *batch)
        if calls["n"] > 250:  # blows up between the checkpoints at steps 200 and 400
            losses["qf_loss"][-1] = float("nan")  # in the last seed only
        return losses

    monkeypatch.setattr(sac_module.SACAgent, "update", poisoned)
    # a vectorised run stops as a whole and names the seed
    with pytest.raises(DivergenceError, match=r"qf_loss \(seed 1\)" if seeds else "qf_loss"):
        train(config)
    for out in [config.out / f"seed{s}" for s in seeds] if seeds else [config.out]:
        checkpoint = load_checkpoint(out / CHECKPOINT)
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
    buffer = ReplayBuffer(5, obs_dim=2, act_dim=1, seeds=2)
    for i in range(7):  # seed 1's transitions are seed 0's plus 100
        buffer.add([[i, i], [i + 100, i + 100]], [[i], [i + 100]], [i, i + 100],
                   [[i + 1, i + 1], [i + 101, i + 101]], [i % 2, i % 2])  # fmt: skip
    assert buffer.size == 5 and buffer.pos == 2
    state = buffer.state_dict(1)
    assert sorted(state["reward"].tolist()) == [102, 103, 104, 105, 106]  # oldest overwritten
    index = torch.tensor([[0, 1, 4, 4], [2, 3, 0, 1]])
    obs, action, reward, next_obs, terminated = buffer.sample(index)
    assert obs.shape == (2, 4, 2) and reward.shape == terminated.shape == (2, 4)
    torch.testing.assert_close(next_obs, obs + 1)  # next_obs stays paired with obs
    torch.testing.assert_close(obs[..., 0], reward)
    torch.testing.assert_close(action[..., 0], reward)
    assert (reward[1] >= 100).all() and (reward[0] < 100).all()  # each seed its own buffer
    copy = ReplayBuffer(5, obs_dim=2, act_dim=1)
    copy.load_state_dict(state)
    torch.testing.assert_close(copy.sample(index[1:])[2][0], reward[1])
    # into a larger buffer (an extended run): the 5 kept transitions, oldest first, then new ones
    larger = ReplayBuffer(8, obs_dim=2, act_dim=1)
    larger.load_state_dict(buffer.state_dict(0))
    larger.add([[7, 7]], [[7]], [7], [[8, 8]], [1])
    assert larger.state_dict()["reward"].tolist() == [2, 3, 4, 5, 6, 7] and larger.size == 6
    smaller = ReplayBuffer(3, obs_dim=2, act_dim=1)
    smaller.load_state_dict(buffer.state_dict(0))
    assert smaller.state_dict()["reward"].tolist() == [4, 5, 6] and smaller.pos == 0


def test_twin_critics_of_every_seed_are_independent_networks():
    critic = TwinCritic(obs_dim=4, act_dim=2, hidden=16, layers=2, seeds=3)
    for i in range(3):
        critic.init_member(i, torch.Generator().manual_seed(i))
    obs, action = torch.randn(3, 8, 4), torch.randn(3, 8, 2)
    q = critic(obs, action)
    assert q.shape == (3, 2, 8)
    assert not torch.allclose(q[1, 0], q[1, 1])
    q[1, 0].sum().backward()
    for name, p in critic.named_parameters():  # only seed 1's critic 0 gets a gradient
        critic_axis = 2 if name.startswith("norm") else 1
        touched = p.grad.movedim(critic_axis, 1).flatten(2).abs().sum(-1) > 0
        assert touched.tolist() == [[False, False], [True, False], [False, False]], name


def batches(obs_dim: int, act_dim: int, seeds: int, size: int, n: int):
    """``n`` replay batches ``[seeds, size, ...]``; seed ``s``'s data depends only on ``s``."""
    out = []
    for _ in range(n):
        fields = []
        for s in range(seeds):
            g = torch.Generator().manual_seed(1000 * s + len(out))
            fields.append((
                torch.randn(size, obs_dim, generator=g),
                torch.rand(size, act_dim, generator=g) * 2 - 1,
                torch.randn(size, generator=g),
                torch.randn(size, obs_dim, generator=g),
                (torch.rand(size, generator=g) < 0.1).float(),
            ))  # fmt: skip
        out.append([torch.stack(f) for f in zip(*fields, strict=True)])
    return out


@pytest.mark.parametrize("head, era_mode", [("era", "exact"), ("era", "delta"), ("alpha", "exact")])
def test_seed_of_a_vectorised_agent_updates_like_the_single_seed_agent(head, era_mode):
    """Seed s of S stacked seeds: same initial weights, noise, losses and updated weights as the
    agent of seed s alone. Only float rounding may differ (a batched matmul may block the
    product differently), so the tolerance is a few float32 ulps grown over 5 Adam steps."""
    config = TrainConfig(head=head, era_mode=era_mode, sac=SACConfig(hidden=32, batch_size=16))
    both = SACAgent(config, obs_dim=5, act_dim=2, seeds=[7, 3])
    alone = SACAgent(config, obs_dim=5, act_dim=2, seeds=[3])
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(both.state_dict()[name][1:], value, rtol=0, atol=0)
    for batch in batches(5, 2, seeds=2, size=16, n=5):
        noise = both.draw(both.noise, (2, 16, 2))
        torch.testing.assert_close(noise[1:], alone.draw(alone.noise, (2, 16, 2)), rtol=0, atol=0)
        a = both.update(*batch, noise[:, 0], noise[:, 1])
        b = alone.update(*(x[1:] for x in batch), noise[1:, 0], noise[1:, 1])
        for k in b:
            torch.testing.assert_close(a[k][1:], b[k], rtol=1e-5, atol=1e-6, msg=k)
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(both.state_dict()[name][1:], value, rtol=1e-5, atol=1e-6)
    obs = torch.randn(2, 5).numpy()
    torch.testing.assert_close(both.act(obs)[1:], alone.act(obs[1:]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head, era_mode", [("era", "exact"), ("era", "delta"), ("alpha", "exact")])
def test_deterministic_action_is_the_policy_mode(head, era_mode):
    """Evaluation skips building the distribution; it must still act with its mode."""
    config = TrainConfig(head=head, era_mode=era_mode, sac=SACConfig(hidden=32))
    agent = SACAgent(config, obs_dim=5, act_dim=2, seeds=[0, 1])
    obs = torch.randn(2, 5) * 3
    with torch.no_grad():
        mode = agent.actor(obs.unsqueeze(1)).mode.squeeze(1).numpy()
    np.testing.assert_array_equal(agent.act(obs.numpy(), deterministic=True), mode)


def test_seed_of_a_vectorised_run_matches_its_single_run(tmp_path):
    """End to end: environment, warm-up, replay sampling, updates, evaluation and checkpoint of
    seed 1 trained beside seed 0 equal those of seed 1 trained alone. Rounding differences
    (see above) could grow through 200 updates and the environment, hence rtol=1e-3."""
    config = tiny(tmp_path, head="alpha", seeds=[0, 1], out=tmp_path / "vector")
    runs = train(config)
    assert runs == [config.out / "seed0", config.out / "seed1"]
    (single,) = train(dataclasses.replace(config, seeds=None, seed=1, out=tmp_path / "single"))
    for name in ("config.json", "versions.json", "summary.json", "metrics.csv", CHECKPOINT):
        assert (runs[1] / name).is_file(), name
    a, b = load_checkpoint(runs[1] / CHECKPOINT), load_checkpoint(single / CHECKPOINT)
    assert a["config"] | {"out": ""} == b["config"] | {"out": ""}
    for name, value in b["agent"]["modules"].items():
        torch.testing.assert_close(a["agent"]["modules"][name], value, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(a["buffer"]["obs"], b["buffer"]["obs"], rtol=1e-3, atol=1e-5)
    for x, y in zip(rows(runs[1]), rows(single), strict=True):
        for key in ("return_mean", "qf_loss", "actor_loss", "alpha"):
            assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-3, abs=1e-5), key
    assert float(rows(runs[0])[-1]["return_mean"]) != float(rows(runs[1])[-1]["return_mean"])


def test_interrupted_vectorised_run_resumes_like_the_unsplit_run(tmp_path, monkeypatch):
    whole = tiny(tmp_path, seeds=[0, 1], era_mode="delta", out=tmp_path / "whole")
    train(whole)
    split = dataclasses.replace(whole, out=tmp_path / "split")
    interrupt_after(monkeypatch, sac_module, 170)
    train(split)
    monkeypatch.undo()
    train(dataclasses.replace(split, resume=True))
    for seed in (0, 1):
        a = load_checkpoint(whole.out / f"seed{seed}" / CHECKPOINT)
        b = load_checkpoint(split.out / f"seed{seed}" / CHECKPOINT)
        assert a["step"] == b["step"] == 300
        assert_same_modules(a, b)
        torch.testing.assert_close(b["buffer"]["obs"], a["buffer"]["obs"])


def test_device_option_resolves_and_refuses_a_missing_gpu():
    from era.rl.sac import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cuda")
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="device='cuda'"):
            resolve_device("cuda")
