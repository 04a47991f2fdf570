"""TD-MPC2: the world model's pieces, one update and one plan per head, the ERA prior's floor,
exact resume, the command line and bad flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rl_helpers import assert_same_modules, rows, train_unsplit_and_resumed

from era.rl import TDMPC2Config, TrainConfig, train
from era.rl import tdmpc2 as tdmpc2_module
from era.rl.cli import PlotConfig, plot
from era.rl.cli import main as rl_main
from era.rl.tdmpc2 import SequenceBuffer, TDMPC2Agent, build, update_q_scale
from era.rl.train import CHECKPOINT
from era.rl.world_model import SimNorm, TwoHot, discount_for
from era.runs import DivergenceError, load_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Like ``era rl train --threads 1``: on a busy CPU, two threads per tiny op are far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Planning and batches shrunk so that a test takes seconds; the networks are the real size-1 ones.
SMALL = dict(
    num_samples=16, num_elites=4, num_pi_trajs=4, iterations=2, batch_size=16, device="cpu"
)


def agent_for(head: str, obs_dim: int = 5, act_dim: int = 2, **overrides) -> TDMPC2Agent:
    config = TrainConfig(algo="tdmpc2", head=head, tdmpc2=TDMPC2Config(**(SMALL | overrides)))
    return TDMPC2Agent(config, obs_dim, act_dim, episode_length=100)


def filled_buffer(obs_dim: int = 5, act_dim: int = 2, n: int = 60) -> SequenceBuffer:
    """Random transitions in three episodes of 20 steps."""
    g = torch.Generator().manual_seed(0)
    buffer = SequenceBuffer(100, obs_dim, act_dim, horizon=3, device=torch.device("cpu"))
    for i in range(n):
        buffer.add(
            torch.randn(obs_dim, generator=g),
            torch.rand(act_dim, generator=g) * 2 - 1,
            float(torch.rand((), generator=g)),
            torch.randn(obs_dim, generator=g),
            0.0,
            episode=i // 20,
        )
    return buffer


def test_two_hot_round_trip_and_simnorm():
    two_hot = TwoHot(101, -10.0, 10.0)
    x = torch.tensor([-1e3, -5.3, -1.0, 0.0, 0.37, 2.0, 40.0, 1e3], dtype=torch.float64)
    target = two_hot.encode(x)
    assert torch.allclose(target.sum(-1), torch.ones_like(x))
    assert ((target > 0).sum(-1) <= 2).all()
    # decoding the two-hot vector itself (as log-probabilities) gives x back exactly
    torch.testing.assert_close(two_hot.decode(target.clamp_min(1e-300).log()), x)
    top = two_hot.encode(torch.tensor([1e30], dtype=torch.float64))  # clipped at vmax
    assert top[0, -1] == 1.0
    z = SimNorm(8)(torch.randn(3, 32))
    torch.testing.assert_close(z.unflatten(-1, (4, 8)).sum(-1), torch.ones(3, 4))
    assert discount_for(1000) == 0.995 and discount_for(500) == 0.99 and discount_for(10) == 0.95


def test_sequences_never_cross_episodes_and_survive_a_checkpoint():
    buffer = filled_buffer()
    starts = buffer.starts()
    assert len(starts) == 3 * (20 - 2)  # three episodes of 20 steps, windows of 3
    torch.manual_seed(0)
    obs, action, reward, terminated = buffer.sample(64)
    assert obs.shape == (4, 64, 5) and action.shape == (3, 64, 2) and reward.shape == (3, 64)
    # consecutive steps are consecutive transitions: next_obs of t is obs fed at t+1's input
    restored = SequenceBuffer(100, 5, 2, horizon=3, device=torch.device("cpu"))
    restored.load_state_dict(buffer.state_dict())
    torch.manual_seed(0)
    for a, b in zip((obs, action, reward, terminated), restored.sample(64), strict=True):
        torch.testing.assert_close(a, b)
    smaller = SequenceBuffer(30, 5, 2, horizon=3, device=torch.device("cpu"))
    smaller.load_state_dict(buffer.state_dict())  # keeps the newest 30: half of episode 1, all of 2
    assert len(smaller.starts()) == (10 - 2) + (20 - 2)


@pytest.mark.parametrize("head", ["era", "alpha"])
def test_one_update_and_one_plan(head):
    torch.manual_seed(0)
    agent = agent_for(head)
    buffer = filled_buffer()
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    losses = agent.update(*buffer.sample(16))
    assert set(losses) >= {"consistency_loss", "reward_loss", "value_loss", "pi_loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    after = agent.model.state_dict()
    for name in ("encoder.0.0.weight", "dynamics.0.0.weight", "prior.0.0.weight", "qs.out.weight"):
        assert not torch.equal(before[name], after[name]), name
    # the target ensemble moved by tau towards the online one, no further
    torch.testing.assert_close(
        after["target_qs.out.weight"],
        before["target_qs.out.weight"].lerp(after["qs.out.weight"], agent.config.tau),
    )
    assert agent.q_scale.item() >= 1.0
    action, mean = agent.plan(buffer.obs[0], None, explore=True)
    assert action.shape == (2,) and mean.shape == (3, 2)
    assert torch.isfinite(action).all() and action.abs().max() <= 1
    action, warm = agent.plan(buffer.obs[1], mean, explore=False)
    assert torch.isfinite(warm).all() and action.abs().max() <= 1


def test_era_prior_entropy_equals_target_in_every_buffer_state():
    torch.manual_seed(0)
    agent = agent_for("era", act_dim=3)
    buffer = filled_buffer(act_dim=3)
    for _ in range(3):  # a trained (not freshly initialised) prior
        agent.update(*buffer.sample(16))
    agent.model.double()
    with torch.no_grad():
        dist = agent.model.policy(agent.model.encode(buffer.obs[: buffer.size].double()))
    assert agent.target_entropy == -1.5  # -dim(A)/2
    assert not dist.unreachable.any()
    # float64 Newton solve: 7e-14 nats per dimension (era.gaussian), well within 1e-10
    torch.testing.assert_close(
        dist.entropy(), torch.full((buffer.size,), -1.5, dtype=torch.float64), atol=1e-10, rtol=0
    )


def tiny(tmp_path, **overrides) -> TrainConfig:
    """InvertedPendulum (short episodes while the policy is poor): the real loop in seconds."""
    values = dict(
        env="InvertedPendulum-v5", algo="tdmpc2", head="era", total_steps=50, eval_every=25,
        checkpoint_every=25, eval_episodes=1, out=tmp_path / "run", progress=False,
        tdmpc2=TDMPC2Config(**SMALL, seed_steps=10),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("head", ["era", pytest.param("alpha", marks=pytest.mark.slow)])
def test_interrupted_and_resumed_run_matches_unsplit_run(tmp_path, monkeypatch, head):
    whole = tiny(tmp_path, head=head, out=tmp_path / "whole")
    # stops mid-episode, after learning started, with a warm-started planner
    split, a, b = train_unsplit_and_resumed(whole, monkeypatch, tdmpc2_module, 33, stopped_at=33)
    assert a["step"] == b["step"] == 50
    assert_same_modules(a, b, rtol=0, atol=0)
    torch.testing.assert_close(b["buffer"]["action"], a["buffer"]["action"], rtol=0, atol=0)
    # Ctrl-C saves without evaluating, so the split run has the unsplit run's rows, no more
    assert [r["step"] for r in rows(split.out)] == [r["step"] for r in rows(whole.out)]
    for x, y in zip(rows(split.out), rows(whole.out), strict=True):
        assert x == y | {"sps": x["sps"], "time_s": x["time_s"]}


def test_command_line_run_writes_documented_outputs_and_plots(tmp_path):
    out = tmp_path / "cli"
    argv = [
        "train", "--algo", "tdmpc2", "--head", "alpha", "--env", "InvertedPendulum-v5",
        "--total-steps", "40", "--eval-every", "40", "--eval-episodes", "1", "--out", str(out),
        "--no-progress", "--tdmpc2.seed-steps", "30", "--tdmpc2.num-samples", "16",
        "--tdmpc2.num-elites", "4", "--tdmpc2.num-pi-trajs", "4", "--tdmpc2.iterations", "1",
        "--tdmpc2.batch-size", "8", "--tdmpc2.device", "cpu",
    ]  # fmt: skip
    rl_main(argv)
    (row,) = rows(out)
    assert {"return_mean", "entropy", "entropy_min", "value_loss", "pi_loss", "q_scale"} <= set(row)
    assert all(np.isfinite(float(row[k])) for k in ("return_mean", "entropy", "value_loss"))
    for name in ("config.json", "versions.json", "summary.json", CHECKPOINT):
        assert (out / name).is_file(), name
    assert plot(PlotConfig(runs=[out], out=tmp_path / "curves.png")).is_file()


def test_bad_flags_are_rejected_clearly(tmp_path):
    with pytest.raises(ValueError, match="--tdmpc2.num-elites 600"):
        TDMPC2Config(num_elites=600)
    with pytest.raises(ValueError, match="--tdmpc2.num-pi-trajs 512"):
        TDMPC2Config(num_pi_trajs=512)
    with pytest.raises(ValueError, match="--tdmpc2.horizon 0"):
        TDMPC2Config(horizon=0)
    with pytest.raises(ValueError, match="--tdmpc2.seed-steps 2"):
        TDMPC2Config(seed_steps=2)  # shorter than one 3-step sequence
    with pytest.raises(ValueError, match="head='std'"):
        TrainConfig(algo="tdmpc2", head="std")
    with pytest.raises(ValueError, match="--era-mode delta"):
        build(tiny(tmp_path, era_mode="delta"))
    with pytest.raises(ValueError, match="--target-entropy -1.0 has no meaning"):
        build(tiny(tmp_path, head="alpha", target_entropy=-1.0))
    with pytest.raises(ValueError, match="target_entropy"):
        build(tiny(tmp_path, target_entropy=5.0))  # above log(2), the uniform entropy on [-1, 1]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--tdmpc2.device cuda"):
            build(tiny(tmp_path, tdmpc2=TDMPC2Config(device="cuda")))
    with pytest.raises(SystemExit):  # tyro: an unknown model size is refused at parse time
        rl_main(["train", "--algo", "tdmpc2", "--tdmpc2.model-size", "3"])
    assert not (tmp_path / "run").exists()


def test_dm_control_task_builds_with_its_time_limit():
    envs, agent = build(
        TrainConfig(env="dm_control/cartpole-swingup", algo="tdmpc2", tdmpc2=TDMPC2Config(**SMALL))
    )
    envs.close()
    assert agent.discount == 0.995  # 1000-step episodes
    assert agent.model.parameter_count() > 5e5  # the authors' "1M" preset


def test_q_scale_tracks_the_5_95_percentile_range_floored_at_one():
    scale = torch.ones(())
    update_q_scale(scale, torch.arange(101.0), tau=0.01)  # percentiles 5 and 95: range 90
    assert scale.item() == pytest.approx(1 + 0.01 * (90 - 1))
    update_q_scale(scale, torch.zeros(50), tau=1.0)  # a flat Q never shrinks S below 1
    assert scale.item() == 1.0


@pytest.mark.slow
def test_compiled_update_equals_eager_and_compiled_planning_runs():
    """``--tdmpc2.compile`` (minutes of compiling on a CPU): same losses, a finite plan."""
    buffer = filled_buffer()
    results = []
    for compile in (True, False):
        torch.manual_seed(0)
        agent = agent_for("era", compile=compile)
        for _ in range(3):
            losses = agent.update(*buffer.sample(16))
        results.append(losses)
        action, mean = agent.plan(buffer.obs[0], None, explore=True)
        assert torch.isfinite(action).all() and torch.isfinite(mean).all()
    for name, value in results[1].items():
        torch.testing.assert_close(results[0][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    real_update = TDMPC2Agent.update
    calls = {"n": 0}

    def poisoned(self, *batch):
        calls["n"] += 1
        losses = real_update(self, *batch)
        if calls["n"] > 30:  # step 31 of 50: after the checkpoint at step 25
            losses["value_loss"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(TDMPC2Agent, "update", poisoned)
    with pytest.raises(DivergenceError, match="value_loss"):
        train(config)
    checkpoint = load_checkpoint(config.out / CHECKPOINT)
    assert checkpoint["step"] == 25
    assert all(torch.isfinite(v).all() for v in checkpoint["agent"]["modules"].values())
