"""OBAC: the expectile value, the gated behaviour-cloning term, one update per head, the ERA
floor on replay states, exact resume and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rl_helpers import assert_same_modules, train_unsplit_and_resumed

from era.rl import TrainConfig, off_policy, train
from era.rl.config import OBACConfig
from era.rl.obac import OBACAgent
from era.rl.train import CHECKPOINT
from era.runs import DivergenceError, load_checkpoint

OBS, ACT = 11, 3  # Hopper


def tiny(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        env="Hopper-v5", algo="obac", head="era", total_steps=120, eval_every=60,
        checkpoint_every=60, eval_episodes=1, out=tmp_path / "run", progress=False,
        obac=OBACConfig(hidden=16, batch_size=16, learning_starts=40),
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


class Function(torch.nn.Module):
    """A fixed function standing in for one of the agent's networks."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def expectile(values: np.ndarray, tau: float) -> float:
    """The tau-expectile of a sample, by bisection on its first-order condition."""
    lo, hi = values.min(), values.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        u = values - mid
        grad = np.where(u < 0, 1 - tau, tau) * u  # -1/2 d/dv of the asymmetric squared loss
        lo, hi = (mid, hi) if grad.sum() > 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("tau", [0.5, 0.9])
def test_offline_value_loss_is_minimised_at_the_expectile(tmp_path, tau):
    """In one state with several buffer actions, V's loss is stationary at the tau-expectile of
    the offline critic's values (their mean for tau = 0.5), in float64."""
    config = tiny(tmp_path, obac=OBACConfig(hidden=8, expectile=tau))
    agent = OBACAgent(config, OBS, ACT).double()
    n = 64
    q = torch.linspace(-3.0, 5.0, n, dtype=torch.float64) ** 2 / 5  # skewed values
    value = torch.zeros((), dtype=torch.float64, requires_grad=True)
    agent.offline_target = Function(lambda obs, action: q.expand(1, 2, -1))  # [S=1, 2, B]
    agent.offline_value = Function(lambda obs: value.expand(obs.shape[0], 1))
    data = [t.double() for t in batch(n)]
    goal = expectile(q.numpy(), tau)
    if tau == 0.5:
        assert goal == pytest.approx(q.mean().item())
    with torch.no_grad():
        value.fill_(goal)
    _, v_loss = agent.offline_losses(*data)
    (grad,) = torch.autograd.grad(v_loss, value)
    assert abs(grad.item()) < 1e-9
    with torch.no_grad():
        value.fill_(goal + 0.1)
    _, v_loss = agent.offline_losses(*data)
    assert torch.autograd.grad(v_loss, value)[0].item() > 0


@pytest.mark.parametrize("head", ["era", "alpha"])
def test_one_update_per_head_changes_every_network(tmp_path, head):
    torch.manual_seed(0)
    agent = OBACAgent(tiny(tmp_path, head=head), OBS, ACT)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    losses = agent.update(*batch())
    assert set(losses) == set(agent.loss_names)
    assert all(torch.isfinite(v) for v in losses.values())
    after = agent.state_dict()
    for prefix in ("actor.", "critic.", "target_critic.", "offline_critic.", "offline_target.",
                   "offline_value."):  # fmt: skip
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), (
            prefix
        )
    assert torch.equal(before["log_alpha"], after["log_alpha"]) == (head == "era")
    obs = batch()[0]  # evaluation skips the distribution, but must act with its mode
    with torch.no_grad():
        assert torch.equal(agent.act(obs, deterministic=True), agent.policy(obs).mode[0])


@pytest.mark.parametrize("head, gate", [("era", "state"), ("alpha", "batch")])
def test_behaviour_cloning_acts_only_where_the_offline_value_is_higher(tmp_path, head, gate):
    """Gate open (offline values far above the policy's): the actor step raises the buffer
    actions' log-likelihood; gate shut: the loss is SAC's, unaffected by lambda."""
    data = batch(64)
    obs, action = data[0], data[1]

    def agent_with(offset: float, bc_weight: float) -> OBACAgent:
        torch.manual_seed(0)
        obac = OBACConfig(hidden=16, bc_weight=bc_weight, gate=gate)
        config = tiny(tmp_path, head=head, obac=obac)
        agent = OBACAgent(config, OBS, ACT)
        with torch.no_grad():
            agent.offline_value[-1].bias.fill_(offset)
            agent.offline_critic.out.bias.fill_(offset)
        return agent

    shut = [agent_with(-1e6, w).actor_loss(obs, action) for w in (0.0, 10.0)]
    assert shut[1][2].item() == 0.0
    torch.testing.assert_close(shut[0][0], shut[1][0])

    agent = agent_with(1e6, 10.0)
    log_likelihood = lambda: (
        agent.policy(obs).log_prob(action.clamp(-1 + 1e-6, 1 - 1e-6)[None]).mean()
    )  # noqa: E731
    start = log_likelihood().item()
    for _ in range(5):
        loss, _, active = agent.actor_loss(obs, action)
        agent.actor_opt.zero_grad()
        loss.backward()
        agent.actor_opt.step()
    assert active.item() == 1.0
    assert log_likelihood().item() > start


def test_resumed_run_equals_unsplit_run_and_era_floor_holds_on_replay_states(tmp_path, monkeypatch):
    whole = tiny(tmp_path, out=tmp_path / "whole")
    # stops mid-episode, after learning started
    _, a, b = train_unsplit_and_resumed(whole, monkeypatch, off_policy, 70, stopped_at=70)
    assert a["step"] == b["step"] == 120
    assert_same_modules(a, b)
    for name in ("offline_opt", "actor_opt"):
        for key, value in a["agent"][name]["state"][0].items():
            torch.testing.assert_close(b["agent"][name]["state"][0][key], value)

    # float64: the ERA policy's entropy is the target in every replay state (solver tolerance,
    # as in tests/test_gaussian.py)
    agent = OBACAgent(whole, OBS, ACT)
    agent.load_checkpoint_state(a["agent"])
    agent.double()
    entropy = agent.policy(a["buffer"]["obs"].double()).entropy()[0]
    assert entropy.dtype == torch.float64 and entropy.shape == (120,)
    torch.testing.assert_close(entropy, torch.full_like(entropy, -0.5 * ACT), atol=1e-5, rtol=0)


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    real_update = OBACAgent.update
    calls = {"n": 0}

    def poisoned(self, *batch):
        calls["n"] += 1
        losses = real_update(self, *batch)
        if calls["n"] > 30:  # from step 70 on: between the checkpoints at steps 60 and 120
            losses["offline_v_loss"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(OBACAgent, "update", poisoned)
    with pytest.raises(DivergenceError, match="offline_v_loss"):
        train(config)
    checkpoint = load_checkpoint(config.out / CHECKPOINT)
    assert checkpoint["step"] == 60
    assert all(torch.isfinite(v).all() for v in checkpoint["agent"]["modules"].values())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(expectile=1.0), r"--obac.expectile 1.0 is out of range: it must be in \(0, 1\)"),
        (dict(expectile=0.0), "--obac.expectile 0.0 is out of range"),
        (dict(bc_weight=-0.1), "--obac.bc-weight -0.1 is out of range"),
        (dict(batch_size=0), "--obac.batch-size 0 is out of range"),
    ],
)
def test_bad_hyper_parameters_are_rejected_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        OBACConfig(**overrides)


def test_bad_run_settings_are_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="'std' is not a obac head"):
        tiny(tmp_path, head="std")
    with pytest.raises(ValueError, match="--era-mode delta"):
        train(tiny(tmp_path, era_mode="delta"))
    assert not (tmp_path / "run").exists()
