"""FastSAC: the C51 projection, one update per head, the ERA floor on replay states, exact
resume, the command line and its errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from rl_helpers import assert_same_modules, rows, train_unsplit_and_resumed

from era.cli import main as era
from era.rl import TrainConfig, off_policy, train
from era.rl.config import FastSACConfig
from era.rl.fastsac import FastSACAgent, project

OBS, ACT = 11, 3  # Hopper


def tiny(tmp_path, **overrides) -> TrainConfig:
    """A few hundred steps of 4 environments with small networks: seconds on a CPU."""
    values = dict(
        env="Hopper-v5", algo="fastsac", head="era", total_steps=160, eval_every=80,
        checkpoint_every=80, eval_episodes=1, out=tmp_path / "run", progress=False,
        fastsac=FastSACConfig(
            num_envs=4, actor_hidden=16, critic_hidden=16, num_atoms=11, batch_size=32,
            updates_per_step=2, policy_frequency=2, learning_starts=40,
        ),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def batch(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, OBS, generator=g),
        torch.rand(n, ACT, generator=g) * 2 - 1,
        torch.randn(n, generator=g),
        torch.randn(n, OBS, generator=g),
        (torch.rand(n, generator=g) < 0.1).float(),
    )


def test_projection_keeps_mass_and_mean_and_clips_to_the_support():
    support = torch.linspace(-5, 5, 21, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(64, 21, generator=g, dtype=torch.float64).softmax(-1)
    shift = torch.rand(64, 1, generator=g, dtype=torch.float64) - 0.5
    atoms = 0.9 * support + shift  # stays inside [-5, 5]
    projected = project(atoms, probs, support)
    assert (projected >= 0).all()
    torch.testing.assert_close(projected.sum(-1), torch.ones(64, dtype=torch.float64))
    # linear interpolation between neighbours preserves the mean of atoms inside the support
    torch.testing.assert_close((projected * support).sum(-1), (probs * atoms).sum(-1))
    # an atom on a grid point lands there alone; atoms beyond the support land on its ends
    on_grid = project(support.expand(1, -1), torch.eye(21, dtype=torch.float64)[3:4], support)
    torch.testing.assert_close(on_grid, torch.eye(21, dtype=torch.float64)[3:4])
    beyond = project(torch.full((1, 21), 99.0, dtype=torch.float64), probs[:1], support)
    assert beyond[0, -1].item() == pytest.approx(1.0)


@pytest.mark.parametrize("head, clipped_double_q", [("era", False), ("alpha", True)])
def test_one_update_per_head_changes_every_network(tmp_path, head, clipped_double_q):
    torch.manual_seed(0)
    config = tiny(tmp_path, head=head)
    config = dataclasses.replace(
        config, fastsac=dataclasses.replace(config.fastsac, clipped_double_q=clipped_double_q)
    )
    agent = FastSACAgent(config, OBS, ACT)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    data = batch()
    agent.observe(data[0])
    for _ in range(config.fastsac.policy_frequency):  # the last one also updates the actor
        losses = agent.update(*data)
    assert set(losses) == set(agent.loss_names)
    assert all(torch.isfinite(v) for v in losses.values())
    after = agent.state_dict()
    for prefix in ("actor.", "critic.", "target_critic.", "obs_rms."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), (
            prefix
        )
    assert torch.equal(before["log_alpha"], after["log_alpha"]) == (head == "era")
    assert agent.critic(*data[:2]).shape == (2, 32, config.fastsac.num_atoms)
    action = agent.act(data[0])
    assert action.shape == (32, ACT) and action.abs().max() <= 1
    # evaluation skips the distribution, but must act with its mode
    with torch.no_grad():
        mode = agent.actor(agent.normalise(data[0])).mode
    assert mode.abs().max() > 0 and torch.equal(agent.act(data[0], deterministic=True), mode)


def test_resumed_run_equals_unsplit_run_and_era_floor_holds_on_replay_states(tmp_path, monkeypatch):
    whole = tiny(tmp_path, out=tmp_path / "whole")
    # 25 vector steps = 100 steps: mid-episode, after learning started
    _, a, b = train_unsplit_and_resumed(whole, monkeypatch, off_policy, 25, stopped_at=100)
    assert a["step"] == b["step"] == 160
    assert a["agent"]["updates"] == b["agent"]["updates"] > 0
    assert_same_modules(a, b)
    torch.testing.assert_close(b["buffer"]["obs"], a["buffer"]["obs"])
    assert [r["step"] for r in rows(whole.out)] == ["80", "160"]

    # The trained ERA policy's entropy equals the target in every replay state, in float64
    # (tolerance: the float64 solver's, as in tests/test_gaussian.py).
    agent = FastSACAgent(whole, OBS, ACT)
    agent.load_checkpoint_state(a["agent"])
    agent.double()
    obs = agent.normalise(a["buffer"]["obs"].double()).double()
    entropy = agent.actor(obs).entropy()
    assert entropy.dtype == torch.float64 and entropy.shape == (160,)
    torch.testing.assert_close(entropy, torch.full_like(entropy, -0.5 * ACT), atol=1e-5, rtol=0)


def test_command_line_trains_plots_and_evaluates(tmp_path, capsys):
    out = tmp_path / "cli"
    era(["rl", "train", "--algo", "fastsac", "--head", "alpha", "--env", "InvertedPendulum-v5",
         "--total-steps", "64", "--eval-every", "32", "--eval-episodes", "1", "--no-progress",
         "--out", str(out), "--fastsac.num-envs", "4", "--fastsac.actor-hidden", "8",
         "--fastsac.critic-hidden", "8", "--fastsac.batch-size", "8",
         "--fastsac.learning-starts", "16", "--fastsac.num-atoms", "5"])  # fmt: skip
    table = rows(out)
    assert [r["step"] for r in table] == ["32", "64"]
    assert float(table[-1]["target_entropy"]) == 0.0  # FastSAC's own default
    assert "alpha" in table[-1]
    era(["rl", "plot", str(out), "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0
    era(["rl", "eval", str(out), "--episodes", "1"])
    assert "over 1 episodes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_atoms=1), "--fastsac.num-atoms 1 is out of range"),
        (dict(v_min=5.0, v_max=5.0), "--fastsac.v-min 5.0 and --fastsac.v-max 5.0"),
        (dict(tau=0.0), "--fastsac.tau 0.0 is out of range"),
        (dict(num_envs=0), "--fastsac.num-envs 0 is out of range"),
        (dict(weight_decay=float("nan")), "--fastsac.weight-decay nan is out of range"),
    ],
)
def test_bad_hyper_parameters_are_rejected_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        FastSACConfig(**overrides)


def test_bad_run_settings_are_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="'std' is not a fastsac head"):
        tiny(tmp_path, head="std")
    with pytest.raises(ValueError, match="--era-mode delta"):
        train(tiny(tmp_path, era_mode="delta"))
    with pytest.raises(ValueError, match="target_entropy=5.0 is outside the feasible range"):
        train(tiny(tmp_path, target_entropy=5.0))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA device"):
            train(tiny(tmp_path, device="cuda"))
    assert not (tmp_path / "run").exists()
