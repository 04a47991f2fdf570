"""ERA inside TorchRL: the ProbabilisticActor distribution and SACLoss without a temperature."""

import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchrl")

from tensordict import TensorDict  # noqa: E402
from tensordict.nn import NormalParamExtractor, TensorDictModule  # noqa: E402
from torch import nn  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator  # noqa: E402

from era.rl.torchrl import ERASACLoss, ERATruncatedNormal  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
# Exact mode's per-state entropy error (tests/test_gaussian.py): 1e-10 nats in float64, 1e-5 in
# float32.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks: a second thread only adds contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_actor(obs_dim=3, action_dim=2, target=-1.0, distribution_class=ERATruncatedNormal):
    net = nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * action_dim, num_cells=[16]),
        NormalParamExtractor(scale_mapping="none"),
    )
    if distribution_class is ERATruncatedNormal:
        kwargs = {"target_entropy": target, "low": torch.full((action_dim,), -2.0), "high": 2.0}
        keys = ["mean", "pre_std"]
    else:
        kwargs, keys = {"low": -2.0, "high": 2.0}, ["loc", "scale"]
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=keys),
        in_keys=keys,
        distribution_class=distribution_class,
        distribution_kwargs=kwargs,
    )


def make_qvalue(obs_dim=3, action_dim=2):
    return ValueOperator(
        MLP(in_features=obs_dim + action_dim, out_features=1, num_cells=[16]),
        in_keys=["observation", "action"],
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_distribution_entropy_is_the_target_in_every_state(dtype):
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(500, 3, generator=g, dtype=dtype) * 4  # locations up to the bounds
    pre_std = torch.randn(500, 3, generator=g, dtype=dtype) * 5
    dist = ERATruncatedNormal(mean, pre_std, target_entropy=-1.5, low=-2.0, high=2.0)
    entropy = dist.entropy()
    assert entropy.shape == (500,) and entropy.dtype == dtype
    assert (entropy + 1.5).abs().max() <= TOL[dtype]
    assert not dist.unreachable.any()
    action = dist.rsample()
    assert action.shape == (500, 3) and (action.abs() <= 2).all()
    assert dist.log_prob(action).shape == (500,)
    assert torch.equal(dist.deterministic_sample, dist.mode)
    assert torch.allclose(dist.mode, 2 * torch.tanh(mean))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"low": torch.tensor([-1.0, -2.0, -1.0])}, "one low for all action dimensions"),
        ({"high": math.inf}, "high=inf: action bounds must be finite"),
        ({"target_entropy": 5.0}, "target_entropy=5.0 is outside the feasible range"),
    ],
)
def test_distribution_bad_arguments_raise(kwargs, match):
    kwargs = {"target_entropy": -1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        ERATruncatedNormal(torch.zeros(4, 3), torch.zeros(4, 3), **kwargs)


def test_actor_samples_in_the_box_and_deterministic_is_the_mode():
    actor = make_actor()
    td = TensorDict({"observation": torch.randn(64, 3)}, batch_size=[64])
    with set_exploration_type(ExplorationType.RANDOM):
        random = actor(td.clone())["action"]
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        deterministic = actor(td.clone())["action"]
    assert (random.abs() <= 2).all() and (deterministic.abs() <= 2).all()
    assert torch.equal(deterministic, actor.get_dist(td).mode)
    assert torch.allclose(actor.get_dist(td).entropy(), torch.full((64,), -1.0), atol=1e-5)


def test_loss_has_no_temperature_and_updates_the_actor():
    torch.manual_seed(0)
    actor, qvalue = make_actor(), make_qvalue()
    loss = ERASACLoss(actor, qvalue)
    loss.make_value_estimator(gamma=0.99)
    assert "log_alpha" not in dict(loss.named_parameters())
    assert loss.target_entropy.item() == -1.0
    batch = TensorDict(
        {
            "observation": torch.randn(32, 3),
            "action": torch.rand(32, 2) * 4 - 2,
            "next": {
                "observation": torch.randn(32, 3),
                "reward": torch.randn(32, 1),
                "done": torch.zeros(32, 1, dtype=torch.bool),
                "terminated": torch.zeros(32, 1, dtype=torch.bool),
            },
        },
        batch_size=[32],
    )
    before = [p.detach().clone() for p in actor.parameters()]
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
    for _ in range(3):
        out = loss(batch.clone())
        assert out["alpha"].item() == 0.0 and out["loss_alpha"].item() == 0.0
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(b, a) for b, a in zip(before, actor.parameters(), strict=True))


@pytest.mark.parametrize(
    "kwargs", [{"alpha_init": 0.0}, {"fixed_alpha": True}, {"target_entropy": -1.0}]
)
def test_loss_refuses_temperature_arguments(kwargs):
    with pytest.raises(ValueError, match=f"ERASACLoss sets \\['{next(iter(kwargs))}'\\]"):
        ERASACLoss(make_actor(), make_qvalue(), **kwargs)


def test_loss_refuses_an_actor_without_era():
    with pytest.raises(TypeError, match="ERATruncatedNormal"):
        ERASACLoss(make_actor(distribution_class=TanhNormal), make_qvalue())


def test_the_docs_example_runs_sac_updates_and_holds_the_floor():
    """docs/integrations.md's TorchRL example on Pendulum-v1, 400 frames and 20 updates."""
    code = re.search(r"```python\n(# torchrl_example.*?)```", DOCS.read_text(), re.S).group(1)
    for full in ("total_frames=2_000", "range(50)"):
        assert full in code
    code = code.replace("total_frames=2_000", "total_frames=400").replace("range(50)", "range(10)")
    torch.manual_seed(0)
    namespace = {}
    exec(code, namespace)
    assert namespace["entropy"].shape == (128,)
    assert (namespace["entropy"] + 0.5).abs().max() <= TOL[torch.float32]
    # float64 on replay observations: the same network outputs, solved in double precision
    actor, buffer = namespace["actor"], namespace["buffer"]
    params = actor.module[0](buffer.sample())
    dist = ERATruncatedNormal(
        params["mean"].double(), params["pre_std"].double(), target_entropy=-0.5, low=-2, high=2
    )
    assert (dist.entropy() + 0.5).abs().max() <= TOL[torch.float64]
