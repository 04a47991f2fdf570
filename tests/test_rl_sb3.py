"""ERA inside Stable-Baselines3's SAC: learning, the per-state floor, save/load, bad arguments."""

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3 import SAC  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.sac.policies import SACPolicy  # noqa: E402

from era.rl.sb3 import ERASAC, ERAMultiInputPolicy, ERASACPolicy  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
SMALL = {"net_arch": [32, 32]}
# Exact mode's per-state entropy error (tests/test_gaussian.py): 1e-10 nats in float64 (three
# Newton steps reach ~1e-13), 1e-5 in float32 (two steps reach float32's resolution).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class CountSteps(BaseCallback):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def _on_step(self) -> bool:
        self.calls += 1
        return True


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks: a second thread only adds contention (10x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    """ERASAC after 300 steps on two Pendulum envs (100 random, then one update per step)."""
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = ERASAC(
        "MlpPolicy", env, learning_starts=100, batch_size=32, policy_kwargs=SMALL, seed=0
    )
    before = [p.detach().clone() for p in model.policy.actor.parameters()]
    torch.manual_seed(0)
    callback = CountSteps()
    model.learn(300, callback=callback)
    return model, before, callback


def test_learn_updates_the_actor_with_entropy_coefficient_zero(trained):
    model, before, callback = trained
    assert model.num_timesteps == 300 and callback.calls == 150  # 2 envs per step
    assert model.ent_coef_tensor.item() == 0.0 and model.log_ent_coef is None
    assert model.logger.name_to_value["train/ent_coef"] == 0.0
    after = dict(model.policy.actor.named_parameters())
    changed = {n for (n, a), b in zip(after.items(), before, strict=True) if not torch.equal(a, b)}
    # pre_std has no effect (and no gradient) with one action dimension: w = softmax = 1
    assert changed == set(after) - {"pre_std.weight", "pre_std.bias"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_entropy_is_the_target_on_replay_observations(trained, dtype):
    model, _, _ = trained
    actor = model.policy.actor
    size = model.replay_buffer.size()
    obs = torch.as_tensor(model.replay_buffer.observations[:size].reshape(-1, 3))
    with torch.no_grad():
        mean, pre_std = actor.distribution_inputs(obs)
        # widen the network's outputs so states near the bounds and wide ones are covered too
        mean = torch.cat([mean, 5 * mean, mean - 4])
        pre_std = torch.cat([pre_std, 5 * pre_std, pre_std + 3])
        dist = actor.era(mean.to(dtype), pre_std.to(dtype))
    assert model.target_entropy == -0.5 == actor.era.target_entropy  # "auto" is -D/2, D = 1
    assert actor.era.last_unreachable == 0
    entropy = dist.entropy()
    assert entropy.dtype == dtype and entropy.shape == (3 * len(obs),)
    assert (entropy - model.target_entropy).abs().max() <= TOL[dtype]


def test_actions_stay_in_the_box(trained):
    model, _, _ = trained
    obs = model.env.reset()
    for deterministic in (True, False):
        action, _ = model.predict(np.repeat(obs, 50, axis=0), deterministic=deterministic)
        assert np.all(np.abs(action) <= 2.0)  # Pendulum's box is [-2, 2]
    actions = model.replay_buffer.actions[: model.replay_buffer.size()]
    assert np.all(np.abs(actions) <= 1.0)  # stored in SB3's normalised [-1, 1]


def test_save_load_predict_round_trip(trained, tmp_path):
    model, _, _ = trained
    path = tmp_path / "era_sac"
    model.save(path)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(64, 3)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    for cls in (ERASAC, SAC):  # the policy class travels in the file: plain SAC.load works too
        loaded = cls.load(path, device="cpu")
        assert isinstance(loaded.policy, ERASACPolicy)
        assert loaded.policy.actor.era.target_entropy == model.target_entropy
        assert loaded.ent_coef_tensor.item() == 0.0
        actions, _ = loaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(actions, expected)
    loaded = ERASAC.load(path, device="cpu")
    torch.manual_seed(3)
    sampled, _ = model.predict(obs)
    torch.manual_seed(3)
    resampled, _ = loaded.predict(obs)
    np.testing.assert_array_equal(sampled, resampled)


def test_target_entropy_is_honoured_and_plain_sac_accepts_the_policy():
    env = gym.make("Pendulum-v1")
    model = ERASAC("MlpPolicy", env, target_entropy=-1.25, policy_kwargs=SMALL)
    assert model.policy.actor.era.target_entropy == -1.25
    plain = SAC(ERASACPolicy, env, ent_coef=0.0, policy_kwargs={**SMALL, "target_entropy": -1.25})
    obs = torch.zeros(4, 3)
    for m in (model, plain):
        entropy = m.policy.actor.distribution(obs).entropy()
        assert torch.allclose(entropy, torch.full((4,), -1.25), atol=TOL[torch.float32])


def test_dict_observations_with_multi_input_policy():
    base = gym.make("Pendulum-v1")
    space = gym.spaces.Dict({"state": base.observation_space})
    env = gym.wrappers.TransformObservation(base, lambda o: {"state": o}, space)
    model = ERASAC(
        "MultiInputPolicy", env, learning_starts=50, batch_size=16, policy_kwargs={"net_arch": [16]}
    )
    model.learn(80)
    assert isinstance(model.policy, ERAMultiInputPolicy)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        entropy = model.policy.actor.distribution(model.policy.obs_to_tensor(obs)[0]).entropy()
    assert torch.allclose(entropy, torch.tensor([-0.5]), atol=TOL[torch.float32])


def test_the_docs_example_runs(tmp_path, monkeypatch):
    """docs/integrations.md's SB3 example, with 300 steps instead of its 5,000."""
    code = re.search(r"```python\n(# sb3_example.*?)```", DOCS.read_text(), re.S).group(1)
    assert "total_timesteps=5_000" in code
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(code.replace("total_timesteps=5_000", "total_timesteps=300"), namespace)
    assert (tmp_path / "era_sac_pendulum.zip").exists()
    assert torch.allclose(namespace["entropy"], torch.tensor(-0.5), atol=TOL[torch.float32])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ent_coef": "auto"}, ValueError, "ent_coef='auto'"),
        ({"ent_coef": 0.1}, ValueError, "ent_coef=0.1"),
        ({"target_entropy": "high"}, ValueError, "target_entropy='high'"),
        ({"target_entropy": 1.0}, ValueError, "target_entropy=1.0 is outside the feasible range"),
        ({"use_sde": True}, ValueError, "use_sde=True"),
        ({"policy_kwargs": {"target_entropy": -2.0}}, ValueError, "differs from"),
        ({"policy": SACPolicy}, TypeError, "ERASACPolicy"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    kwargs = {"policy": "MlpPolicy", **kwargs}
    with pytest.raises(error, match=match):
        ERASAC(env=gym.make("Pendulum-v1"), **kwargs)


def test_unbounded_action_space_is_refused():
    box = gym.spaces.Box(-np.inf, np.inf, (2,))
    obs = gym.spaces.Box(-1, 1, (3,))
    with pytest.raises(ValueError, match="infinite bounds"):
        ERASACPolicy(obs, box, lambda _: 3e-4)
    with pytest.raises(TypeError, match="Box action space"):
        ERASACPolicy(obs, gym.spaces.Discrete(3), lambda _: 3e-4)


def test_default_target_is_half_a_nat_per_dimension_below_zero_and_pre_std_learns():
    box = gym.spaces.Box(-1, 1, (4,))
    policy = ERASACPolicy(gym.spaces.Box(-1, 1, (3,)), box, lambda _: 3e-4, net_arch=[8])
    actor = policy.actor
    assert actor.era.target_entropy == -2.0
    obs = torch.randn(16, 3)
    with torch.no_grad():
        mean, pre_std = actor.distribution_inputs(obs)
        entropy = actor.era(mean.double(), (10 * pre_std).double()).entropy()
    assert (entropy + 2.0).abs().max() <= TOL[torch.float64]
    # with D > 1 the split of the entropy across dimensions is learned through pre_std
    action, log_prob = actor.action_log_prob(obs)
    assert action.shape == (16, 4) and log_prob.shape == (16,)
    (action**2).sum().backward()
    assert actor.pre_std.weight.grad.abs().sum() > 0 and actor.mu.weight.grad.abs().sum() > 0
