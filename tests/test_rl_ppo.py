"""PPO on real tasks: smoke runs, the ERA entropy, exact resume, and its numerical pieces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from rl_helpers import interrupt_after, rows

from era.rl import PPOConfig, TrainConfig, train
from era.rl import ppo as ppo_module
from era.rl.ppo import RunningMeanStd, gae
from era.runs import CHECKPOINT, RunError, load_checkpoint


def tiny(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        env="Hopper-v5", algo="ppo", head="era", total_steps=256, eval_every=128,
        checkpoint_every=128, eval_episodes=1, out=tmp_path / "run", progress=False,
        ppo=PPOConfig(num_envs=2, num_steps=64, hidden=16, epochs=2, minibatches=4),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("head", ["era", "std"])
@pytest.mark.parametrize("env", ["Hopper-v5", "dm_control/cartpole-swingup"])
def test_smoke_run_writes_documented_outputs(tmp_path, env, head):
    (run,) = train(tiny(tmp_path, env=env, head=head))
    table = rows(run)
    assert [int(r["step"]) for r in table] == [128, 256]
    columns = {"return_mean", "return_std", "entropy", "entropy_min", "entropy_max",
               "policy_loss", "value_loss", "approx_kl", "clipfrac", "sps", "time_s"}  # fmt: skip
    assert columns <= set(table[0])
    assert all(np.isfinite(float(v)) for r in table for v in r.values())
    assert list((run / "tb").glob("events.out.tfevents.*"))
    if head == "era":  # unbounded GaussianERA: the entropy is the target in every state
        target = -0.3 * (3 if env == "Hopper-v5" else 1)
        for r in table:
            assert float(r["target_entropy"]) == pytest.approx(target)
            assert float(r["entropy_min"]) == pytest.approx(target, abs=1e-4)
            assert float(r["entropy_max"]) == pytest.approx(target, abs=1e-4)
    else:
        assert "target_entropy" not in table[0]


def test_interrupted_and_resumed_run_matches_unsplit_run(tmp_path, monkeypatch):
    whole = tiny(tmp_path, out=tmp_path / "whole", total_steps=384)
    train(whole)
    split = dataclasses.replace(whole, out=tmp_path / "split")
    interrupt_after(monkeypatch, ppo_module, 2)
    train(split)
    assert load_checkpoint(split.out / CHECKPOINT)["step"] == 256  # after two rollouts
    monkeypatch.undo()
    with (split.out / "metrics.csv").open("a") as f:
        f.write("384,1")  # a row torn by a crash after the checkpoint
    train(dataclasses.replace(split, resume=True))
    a, b = load_checkpoint(whole.out / CHECKPOINT), load_checkpoint(split.out / CHECKPOINT)
    assert a["step"] == b["step"] == 384
    for name, value in a["ppo"].items():
        torch.testing.assert_close(b["ppo"][name], value, msg=name)
    # the interruption fell on an evaluation step, so both runs have the same rows
    assert [r["return_mean"] for r in rows(whole.out)] == [
        r["return_mean"] for r in rows(split.out)
    ]
    # and TensorBoard shows the same events, each step once (timings aside)
    whole_tb, split_tb = tb_scalars(whole.out), tb_scalars(split.out)
    assert whole_tb.keys() == split_tb.keys() and "eval/return_mean" in whole_tb
    for tag, events in whole_tb.items():
        if not tag.endswith(("sps", "time_s")):
            assert split_tb[tag] == events, tag
        assert [s for s, _ in split_tb[tag]] == [s for s, _ in events], tag


def untimed_rows(run_dir) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in ("sps", "time_s")} for r in rows(run_dir)]


def test_resume_starts_the_seeds_that_a_stop_left_unstarted(tmp_path):
    """A stop cancels the seeds that had not started (``run_in_parallel``): ``resume`` continues
    the seeds with a checkpoint and starts those with no folder, as a fresh run would."""
    config = tiny(tmp_path, seeds=[0, 1], workers=1, total_steps=128)
    train(dataclasses.replace(config, seeds=[0]))  # stopped before seed 1 started
    train(dataclasses.replace(config, resume=True, total_steps=256))
    for seed in (0, 1):
        assert [int(r["step"]) for r in rows(config.out / f"seed{seed}")] == [128, 256]
    (fresh,) = train(tiny(tmp_path, seed=1, out=tmp_path / "fresh"))
    assert untimed_rows(config.out / "seed1") == untimed_rows(fresh)
    # a folder with run files but no checkpoint is still not ours to start over
    (config.out / "seed2").mkdir()
    (config.out / "seed2" / "metrics.csv").write_text("step\n")
    with pytest.raises(RunError, match="no checkpoint"):
        train(dataclasses.replace(config, seeds=[0, 1, 2], resume=True, total_steps=384))


def tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def test_gae_matches_hand_computation():
    # one env, three steps; the episode is truncated after step 1 (bootstrap, stop recursion)
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    next_values = torch.tensor([[0.4], [9.0], [0.2]])
    ended = torch.tensor([[0.0], [1.0], [0.0]])
    terminated = torch.zeros(3, 1)
    g, lam = 0.9, 0.8
    d2 = 3.0 + g * 0.2 - 0.3
    d1 = 2.0 + g * 9.0 - 0.4
    d0 = 1.0 + g * 0.4 - 0.5
    expected = torch.tensor([[d0 + g * lam * d1], [d1], [d2]])
    torch.testing.assert_close(gae(rewards, values, next_values, ended, terminated, g, lam),
                               expected)  # fmt: skip
    # a termination drops the bootstrap value
    out = gae(rewards, values, next_values, ended, torch.tensor([[0.0], [1.0], [0.0]]), g, lam)
    assert out[1, 0].item() == pytest.approx(2.0 - 0.4)


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (n, 4)) for n in (1, 7, 50)]
    rms = RunningMeanStd((4,))
    for batch in batches:
        rms.update(batch)
    data = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-3)
    z = rms.normalise(data)
    assert z.abs().max() <= 10.0
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-3)


def test_bad_configurations_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="dm_control/walker-runn"):
        train(tiny(tmp_path, env="dm_control/walker-runn"))
    with pytest.raises(ValueError, match="target_entropy"):
        train(tiny(tmp_path, target_entropy=100.0))
    with pytest.raises(ValueError, match="head='alpha'"):
        tiny(tmp_path, head="alpha")
