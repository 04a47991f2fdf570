"""The speed-ups of SAC and the exact ERA head change nothing but the time they take."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from era.distributions import TruncatedNormal
from era.gaussian import GaussianERA
from era.rl.config import SACConfig, TrainConfig
from era.rl.sac import SACAgent


def test_exact_head_without_gradients_gives_the_same_policy():
    """Without gradients the exact solve skips its backward-only derivatives."""
    era = GaussianERA(4, -2.0)
    mean = torch.randn(64, 4) * 3  # includes locations close to the bounds
    pre_std = torch.randn(64, 4) * 4  # and very uneven splits of the budget
    with torch.no_grad():
        torch.manual_seed(0)
        fast = era(mean, pre_std)
        fast_action = fast.sample()
    torch.manual_seed(0)
    full = era(mean.requires_grad_(), pre_std.requires_grad_())
    full_action = full.rsample()
    assert full.base_dist.scale.requires_grad
    assert torch.equal(fast.base_dist.scale, full.base_dist.scale.detach())
    assert torch.equal(fast_action, full_action.detach())
    assert torch.equal(fast.unreachable, full.unreachable)


def test_promised_inside_locations_change_no_result():
    loc = torch.rand(200) * 2 - 1
    scale = torch.exp(torch.rand(200) * 7 - 5)
    checked = TruncatedNormal(loc, scale)
    promised = TruncatedNormal(loc, scale, loc_inside=True)
    value = torch.rand(200) * 2 - 1
    for name in ("mean", "variance"):
        assert torch.equal(getattr(promised, name), getattr(checked, name)), name
    assert torch.equal(promised.entropy(), checked.entropy())
    assert torch.equal(promised.log_prob(value), checked.log_prob(value))
    assert torch.equal(promised.cdf(value), checked.cdf(value))
    assert torch.equal(promised.icdf(value.abs()), checked.icdf(value.abs()))
    assert promised.expand((3, 200)).loc_inside


def _updated_agent(head: str, compile: bool, updates: int = 4) -> tuple[SACAgent, list[dict]]:
    torch.manual_seed(0)
    sac = SACConfig(hidden=32, batch_size=32, compile=compile)
    agent = SACAgent(TrainConfig(head=head, sac=sac, progress=False), obs_dim=11, act_dim=3)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(updates):
        batch = (
            torch.randn(1, 32, 11, generator=data),
            torch.rand(1, 32, 3, generator=data) * 2 - 1,
            torch.randn(1, 32, generator=data),
            torch.randn(1, 32, 11, generator=data),
            (torch.rand(1, 32, generator=data) < 0.1).float(),
            *agent.draw(agent.noise, (2, 32, 3)).unbind(1),
        )
        losses.append({k: v.item() for k, v in agent.update(*batch).items()})
    return agent, losses


@pytest.mark.slow  # compiling the graphs takes about a minute of wall time on a small CPU
@pytest.mark.parametrize("head", ["era", "alpha"])
def test_compiled_update_matches_eager(head):
    eager, eager_losses = _updated_agent(head, compile=False)
    compiled, compiled_losses = _updated_agent(head, compile=True)
    for before, after in zip(eager_losses, compiled_losses, strict=True):
        assert after == pytest.approx(before, rel=1e-4, abs=1e-5)
    compiled_state = compiled.state_dict()
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(compiled_state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    obs = torch.randn(1, 11).numpy()
    torch.testing.assert_close(compiled.act(obs), eager.act(obs), rtol=1e-4, atol=1e-5)


_ELU_IN_FRESH_PROCESS = """
import sys, torch
from era.rl import networks
if sys.argv[1] == "wake":
    networks.wake_sleef_expm1()
x = torch.linspace(-20, 5, 100_003)  # many full vectors and a partial one
out = torch.cat([torch.nn.functional.elu(x), torch.expm1(x)])
sys.stdout.buffer.write(out.numpy().tobytes())
"""


def test_expm1_wake_up_changes_no_result():
    """The wake-up only changes the speed of ELU's expm1 (benchmarks/expm1_warmup.py): in a
    fresh process, where it has not run yet, ELU and expm1 give the same bits with and without."""
    outputs = [
        subprocess.run(
            [sys.executable, "-c", _ELU_IN_FRESH_PROCESS, mode], capture_output=True, check=True
        ).stdout
        for mode in ("plain", "wake")
    ]
    assert len(outputs[0]) == 2 * 100_003 * 4
    assert outputs[0] == outputs[1]
