"""Environment adapter: real Gymnasium MuJoCo and dm_control tasks, stepped for real."""

import re

import numpy as np
import pytest

from era.rl.envs import make_env, make_vector_env


def _rollout(env_id, seed, steps, action_seed=123):
    envs = make_vector_env(env_id, seed)
    rng = np.random.default_rng(action_seed)
    obs = [envs.reset(seed=seed)[0]]
    for _ in range(steps):
        action = rng.uniform(-1, 1, envs.action_space.shape).astype(np.float32)
        obs.append(envs.step(action)[0])
    envs.close()
    return np.concatenate(obs)


@pytest.mark.parametrize(
    ("env_id", "obs_dim", "act_dim"),
    [("Hopper-v5", 11, 3), ("dm_control/walker-run", 24, 6), ("dm_control/cartpole-swingup", 5, 1)],
)
def test_spaces_and_step(env_id, obs_dim, act_dim):
    envs = make_vector_env(env_id, seed=0, num_envs=2)
    assert envs.single_observation_space.shape == (obs_dim,)
    assert envs.single_observation_space.dtype == np.float32
    assert envs.single_action_space.shape == (act_dim,)
    np.testing.assert_array_equal(envs.single_action_space.low, -1.0)
    np.testing.assert_array_equal(envs.single_action_space.high, 1.0)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (2, obs_dim) and obs.dtype == np.float32
    next_obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert next_obs.shape == (2, obs_dim) and next_obs.dtype == np.float32
    assert reward.shape == (2,) and np.all(np.isfinite(reward))
    assert not np.array_equal(obs, next_obs)  # the physics moved
    assert terminated.dtype == np.bool_ and truncated.dtype == np.bool_
    envs.close()


def test_gymnasium_actions_rescaled_to_task_bounds():
    env = make_env("Pendulum-v1", seed=0)  # native torque bounds are [-2, 2]
    env.step(np.array([1.0], dtype=np.float32))
    assert env.unwrapped.last_u == pytest.approx(2.0)
    env.step(np.array([-0.25], dtype=np.float32))
    assert env.unwrapped.last_u == pytest.approx(-0.5)


def test_dm_control_actions_reach_physics_clipped():
    env = make_env("dm_control/cartpole-swingup", seed=0)
    dm_env = env.unwrapped._env
    env.step(np.array([0.3], dtype=np.float32))
    assert dm_env.physics.data.ctrl[0] == pytest.approx(0.3)
    env.step(np.array([5.0], dtype=np.float32))
    assert dm_env.physics.data.ctrl[0] == pytest.approx(1.0)


def test_dm_control_time_limit_is_truncation_with_final_obs():
    envs = make_vector_env("dm_control/cartpole-swingup", seed=0)
    action = np.zeros(envs.action_space.shape, dtype=np.float32)
    for step in range(1, 1001):
        obs, _, terminated, truncated, info = envs.step(action)
        assert not terminated[0]
        if step < 1000:
            assert not truncated[0]
    assert truncated[0]
    # SAME_STEP autoreset: obs is the next episode's first observation, final_obs the last one.
    assert info["_final_obs"][0]
    assert not np.array_equal(info["final_obs"][0], obs[0])
    assert info["_episode"][0] and info["episode"]["l"][0] == 1000
    envs.close()


def test_gymnasium_time_limit_is_truncation():
    env = make_env("Pendulum-v1", seed=0)
    for _ in range(200):
        _, _, terminated, truncated, _ = env.step(np.zeros(1, dtype=np.float32))
        assert not terminated
    assert truncated


def test_hopper_falling_terminates():
    env = make_env("Hopper-v5", seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(np.ones(3, dtype=np.float32))
        steps += 1
    assert terminated and not truncated and steps < 1000


@pytest.mark.parametrize("env_id", ["Hopper-v5", "dm_control/walker-run"])
def test_seeding_is_reproducible(env_id):
    a = _rollout(env_id, seed=3, steps=20)
    np.testing.assert_array_equal(a, _rollout(env_id, seed=3, steps=20))
    assert not np.allclose(a, _rollout(env_id, seed=4, steps=20))


@pytest.mark.parametrize("env_id", ["Hopper-v5", "dm_control/cartpole-swingup"])
def test_returned_env_is_already_seeded(env_id):
    a, b = make_vector_env(env_id, seed=7), make_vector_env(env_id, seed=7)
    np.testing.assert_array_equal(a.action_space.sample(), b.action_space.sample())
    zeros = np.zeros(a.action_space.shape, dtype=np.float32)
    np.testing.assert_array_equal(a.step(zeros)[0], b.step(zeros)[0])
    first = make_env(env_id, seed=7)
    obs = first.reset(seed=7)[0]
    first.step(np.zeros(first.action_space.shape, dtype=np.float32))
    np.testing.assert_array_equal(first.reset(seed=7)[0], obs)


@pytest.mark.parametrize(
    ("env_id", "expected"),
    [
        ("Hoper-v5", "Hopper-v5"),
        ("dm_control/walker-runn", "dm_control/walker-run"),
        ("dm_control/walker-run-v0", "dm_control/walker-run"),
        ("walker-run", "dm_control/DOMAIN-TASK"),
    ],
)
def test_unknown_id_suggests_spelling(env_id, expected):
    with pytest.raises(ValueError, match=re.escape(repr(env_id))) as err:
        make_vector_env(env_id, seed=0)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("env_id", "message"),
    [("CartPole-v1", "continuous Box"), ("dm_control/lqr-lqr_2_1", "finite bounds")],
)
def test_unsupported_tasks_refused(env_id, message):
    with pytest.raises(ValueError, match=message):
        make_env(env_id, seed=0)


def test_num_envs_validated():
    with pytest.raises(ValueError, match="num_envs=0"):
        make_vector_env("Hopper-v5", seed=0, num_envs=0)
