"""ERA's verl plugin against era.token, on CPU, without Ray or an inference server.

These tests need verl and its pins, which clash with the main environment: they run in
``.venv-verl`` (``make test-verl``; ``make test`` runs them too) and the main suite ignores this
folder. The engine is exercised through verl's own input preparation on a real packed micro-batch;
only the model is replaced by random float64 logits.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import ActorConfig, FSDPEngineConfig, PolicyLossConfig
from verl.workers.engine import EngineRegistry
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

from era.llm import verl as era_verl
from era.token import era_scales, response_entropy, token_entropy, token_logprobs

VOCAB = 128  # log(128) = 4.85 nats: uniform-ish logits lie above the 3.0 band edge
TEMPERATURE = 0.7


def _micro_batch(seed: int = 0, layout: str = "padded"):
    """A packed micro-batch as verl's update pass sees it, and the per-sample pieces behind it.

    Responses get logit multipliers that put their entropies below, inside and above the band,
    and advantages of both signs (and zero). ``layout`` is how the per-response fields arrive:
    ``"padded"`` from the legacy trainer, ``"nested"`` (jagged) from the v1 trainer's
    TransferQueue.
    """
    g = torch.Generator().manual_seed(seed)
    prompt_lens = [3, 5, 2, 4, 3, 6, 1]
    response_lens = [6, 4, 7, 1, 5, 3, 6]
    # Entropy band position per response: low, low, high, high, inside, low, high.
    logit_gain = [300.0, 300.0, 0.05, 0.05, 2.5, 300.0, 0.05]
    response_adv = [1.0, -0.5, 0.8, 1.2, 0.3, 0.0, -1.0]
    n, p_max, r_max = len(prompt_lens), max(prompt_lens), max(response_lens)
    prompts = torch.zeros(n, p_max, dtype=torch.long)
    responses = torch.zeros(n, r_max, dtype=torch.long)
    attention = torch.zeros(n, p_max + r_max, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        prompts[b, p_max - p :] = torch.randint(0, VOCAB, (p,), generator=g)  # left-padded
        responses[b, :r] = torch.randint(0, VOCAB, (r,), generator=g)  # right-padded
        attention[b, p_max - p : p_max + r] = 1
    response_mask = attention[:, p_max:].clone()
    advantages = torch.tensor(response_adv, dtype=torch.float64)[:, None] * response_mask
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    data = TensorDict(
        {
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention,
            "position_ids": position_ids,
            "response_mask": response_mask,
            "advantages": advantages,
        },
        batch_size=[n],
    )
    data = left_right_2_no_padding(data)
    if layout == "nested":
        lengths = {"prompts": prompt_lens, "responses": response_lens}
        for key in ("prompts", "responses", "response_mask", "advantages"):
            rows = lengths.get(key, response_lens)
            dense = data[key]
            parts = [
                dense[b, p_max - n_b :] if key == "prompts" else dense[b, :n_b]
                for b, n_b in enumerate(rows)
            ]
            data[key] = torch.nested.as_nested_tensor(parts, layout=torch.jagged)
    tu.assign_non_tensor(data, temperature=TEMPERATURE, use_remove_padding=True)
    n_tokens = sum(prompt_lens) + sum(response_lens)
    logits = torch.randn(n_tokens, VOCAB, generator=g, dtype=torch.float64)
    start = 0
    for b, (p, r) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        logits[start : start + p + r] *= logit_gain[b]
        start += p + r
    pieces = SimpleNamespace(
        prompt_lens=prompt_lens, response_lens=response_lens, responses=responses,
        response_mask=response_mask.bool(), advantages=advantages,
    )  # fmt: skip
    return data, logits, pieces


def _engine(pad_to_length_bucket: int | None = None):
    """The ERA engine without a model, device mesh or process group: only the input and output
    preparation is exercised. With a bucket, verl pads each packed micro-batch up to a multiple."""
    engine = object.__new__(era_verl.ERAFSDPEngineWithLMHead)
    engine.engine_config = FSDPEngineConfig(strategy="fsdp2", entropy_from_logits_chunk_size=5)
    engine.pad_to_length = pad_to_length_bucket is not None
    engine.pad_to_length_bucket = pad_to_length_bucket
    engine.use_ulysses_sp = False
    engine.compute_entropy_from_logits = lambda z, chunk_size=None: token_entropy(z)
    return engine


def _actor_config(policy_loss=None, **era):
    """The paper's recipe: clip ratio 1.0, token-mean, no KL, no entropy bonus."""
    return ActorConfig(
        strategy="fsdp2",
        ppo_mini_batch_size=7,
        ppo_micro_batch_size_per_gpu=7,
        clip_ratio=1.0,
        clip_ratio_low=1.0,
        clip_ratio_high=1.0,
        loss_agg_mode="token-mean",
        entropy_coeff=0.0,
        use_kl_loss=False,
        policy_loss=policy_loss or era_verl.ERAPolicyLossConfig(**era),
        rollout_n=1,
    )


def _forward(engine, data, logits, loss_function):
    model_inputs, output_args = engine.prepare_model_inputs(data)
    pad = output_args["pad_size"]  # the model also scores verl's padding tokens
    if pad:
        logits = torch.cat([logits, torch.full((pad, VOCAB), 7.0, dtype=logits.dtype)])
    assert model_inputs["input_ids"].shape[1] == logits.shape[0]
    output = SimpleNamespace(logits=logits[None])
    return engine.prepare_model_outputs(output, output_args, data, loss_function)


def _reference(logits, pieces, settings):
    """ERA from era.token alone, on logits gathered response by response: the decision's entropy,
    scales and activated log-probs, in the loss's [B, R] layout."""
    n, r_max = pieces.responses.shape
    rows = torch.zeros(n, r_max, VOCAB, dtype=logits.dtype)
    start = 0
    for b, (p, r) in enumerate(zip(pieces.prompt_lens, pieces.response_lens, strict=True)):
        # The logits at position t predict token t + 1: the response starts at row p - 1.
        rows[b, :r] = logits[start + p - 1 : start + p - 1 + r]
        start += p + r
    z = rows / torch.tensor(TEMPERATURE, dtype=torch.float32).double()  # verl keeps T in float32
    entropy = token_entropy(z.detach()).masked_fill(~pieces.response_mask, 0)
    h = response_entropy(entropy, pieces.response_mask, settings["top_fraction"])
    scale, adv_scale = era_scales(
        h, pieces.advantages, low=settings["low"], high=settings["high"], k=settings["k"]
    )
    logp = token_logprobs(z, pieces.responses, scale=scale)
    return h, scale, adv_scale, logp


SETTINGS = {"low": 0.45, "high": 3.0, "k": 2.0, "top_fraction": 0.2}


def _config_settings():
    return {
        "era_low": SETTINGS["low"],
        "era_high": SETTINGS["high"],
        "era_k": SETTINGS["k"],
        "era_top_fraction": SETTINGS["top_fraction"],
    }


def test_registrations_are_visible_by_name(monkeypatch):
    assert get_policy_loss_fn("era") is era_verl.compute_policy_loss_era
    monkeypatch.setenv("VERL_ENGINE_DEVICE", "cuda")
    monkeypatch.setenv("VERL_ENGINE_VENDOR", "era")
    for backend in ("fsdp", "fsdp2"):
        cls = EngineRegistry.get_engine_cls("language_model", backend)
        assert cls is era_verl.ERAFSDPEngineWithLMHead
    monkeypatch.setenv("VERL_ENGINE_VENDOR", "nvidia")
    assert EngineRegistry.get_engine_cls("language_model", "fsdp2") is not (
        era_verl.ERAFSDPEngineWithLMHead
    )


def test_verl_external_module_mechanism_loads_the_plugin():
    """What a Ray worker does at `import verl` with VERL_USE_EXTERNAL_MODULES set."""
    code = (
        "import verl\n"
        "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY\n"
        "assert 'era' in POLICY_LOSS_REGISTRY, sorted(POLICY_LOSS_REGISTRY)\n"
    )
    env = dict(os.environ, VERL_USE_EXTERNAL_MODULES="era.llm.verl")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)


def test_settings_arrive_through_hydra_target():
    node = OmegaConf.create(
        {"_target_": "era.llm.verl.ERAPolicyLossConfig", "era_low": 0.3, "era_k": 1.5}
    )
    config = omega_conf_to_dataclass(node)
    assert isinstance(config, era_verl.ERAPolicyLossConfig)
    assert (config.loss_mode, config.era_low, config.era_high, config.era_k) == (
        "era", 0.3, 3.0, 1.5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"era_k": 0.5}, "era_k must be finite and > 1, got 0.5"),
        ({"era_k": 1.0}, "era_k must be finite and > 1, got 1.0"),
        ({"era_low": 3.0, "era_high": 1.0}, "need era_low < era_high"),
        ({"era_top_fraction": 0.0}, r"era_top_fraction must be in \(0, 1\], got 0.0"),
        ({"loss_mode": "vanilla"}, "needs loss_mode='era', got 'vanilla'"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        era_verl.ERAPolicyLossConfig(**kwargs)


LAYOUTS = pytest.mark.parametrize("layout", ["padded", "nested"])


@pytest.mark.parametrize(("layout", "bucket"), [("padded", None), ("nested", None), ("padded", 16)])
def test_update_pass_scales_and_logprobs_equal_era_token(layout, bucket):
    data, logits, pieces = _micro_batch(layout=layout)
    loss_function = partial(ppo_loss, config=_actor_config(**_config_settings()))
    output = _forward(_engine(bucket), data, logits, loss_function)
    decision = era_verl._take_decision(pieces.advantages.shape)

    h, scale, _, logp = _reference(logits, pieces, SETTINGS)
    mask = pieces.response_mask
    torch.testing.assert_close(decision.response_entropy, h, rtol=0, atol=1e-12)
    assert torch.equal(decision.logit_scale[mask], scale[mask])
    # The batch was built to hit every case: x k, / k, and unscaled (A <= 0 or inside the band).
    assert {2.0, 0.5, 1.0} <= set(scale[mask].tolist())
    assert torch.all(scale[pieces.advantages <= 0] == 1.0)
    log_probs = no_padding_2_padding(output["log_probs"], data)
    torch.testing.assert_close(log_probs[mask], logp[mask], rtol=0, atol=1e-12)


def test_old_logprob_pass_is_verls_unmodified_policy():
    data, logits, pieces = _micro_batch()
    output = _forward(_engine(), data, logits, None)  # compute_log_prob passes no loss
    no_band = {**SETTINGS, "low": -math.inf, "high": math.inf}  # no scaling anywhere
    _, _, _, logp = _reference(logits, pieces, no_band)
    log_probs = no_padding_2_padding(output["log_probs"], data)
    mask = pieces.response_mask
    torch.testing.assert_close(log_probs[mask], logp[mask], rtol=0, atol=1e-12)
    assert era_verl._pending is None  # no decision is left for a loss to pick up


def _loss_and_grad(engine, data, logits, config):
    leaf = logits.clone().requires_grad_(True)
    output = _forward(engine, data, leaf, partial(ppo_loss, config=config))
    loss, metrics = ppo_loss(config, output, data)
    loss.backward()
    return loss, leaf.grad, metrics


def _with_old_logprobs(seed, layout="padded"):
    data, logits, pieces = _micro_batch(seed, layout)
    old = no_padding_2_padding(_forward(_engine(), data, logits, None)["log_probs"], data)
    data["old_log_probs"] = old.detach()
    n_tokens = int(pieces.response_mask.sum())
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=n_tokens, global_batch_size=7)
    return data, logits, pieces, n_tokens


def test_era_off_equals_plain_verl():
    """An infinite band: the ERA engine and loss reproduce verl's stock engine and vanilla PPO."""
    data, logits, _, _ = _with_old_logprobs(seed=2)
    off = {**_config_settings(), "era_low": -math.inf, "era_high": math.inf}
    era_loss, era_grad, _ = _loss_and_grad(_engine(), data, logits, _actor_config(**off))
    plain = _actor_config(policy_loss=PolicyLossConfig(loss_mode="vanilla"))
    plain_loss, plain_grad, _ = _loss_and_grad(_engine(), data, logits, plain)
    torch.testing.assert_close(era_loss, plain_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(era_grad, plain_grad, rtol=0, atol=1e-12)


@LAYOUTS
def test_loss_and_gradient_equal_era_token_objective(layout):
    """verl's ppo_loss with the 'era' loss = token-mean of -A'·log softmax(s·z)[a] (ratio 1)."""
    data, logits, pieces, n_tokens = _with_old_logprobs(seed=1, layout=layout)
    loss, grad, metrics = _loss_and_grad(
        _engine(), data, logits, _actor_config(**_config_settings())
    )

    ref_leaf = logits.clone().requires_grad_(True)
    h, scale, adv_scale, logp = _reference(ref_leaf, pieces, SETTINGS)
    mask = pieces.response_mask
    ref_loss = -(pieces.advantages * adv_scale * logp)[mask].sum() / n_tokens
    ref_loss.backward()
    # At the update the ratio is 1, so the loss value is -token-mean(A') and the gradient is ERA's.
    torch.testing.assert_close(loss, -(pieces.advantages * adv_scale)[mask].sum() / n_tokens)
    torch.testing.assert_close(grad, ref_leaf.grad, rtol=0, atol=1e-12)
    expected = {
        "era/frac_scaled": (scale != 1).any(dim=1),
        "era/frac_below": h < SETTINGS["low"],
        "era/frac_above": h > SETTINGS["high"],
    }
    for name, flags in expected.items():
        assert metrics[name].values == [pytest.approx(float(flags.sum()) / 7)], name


def test_era_loss_without_the_engine_fails_loudly():
    era_verl._pending = None
    x = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="no ERA decision"):
        era_verl.compute_policy_loss_era(x, x, x, x.bool(), config=_actor_config())


def test_unsupported_layouts_are_named():
    data, logits, _ = _micro_batch()
    engine = _engine()
    engine.use_ulysses_sp = True
    with pytest.raises(NotImplementedError, match="Ulysses sequence parallelism"):
        engine.prepare_model_outputs(
            SimpleNamespace(logits=logits[None]), {}, data,
            partial(ppo_loss, config=_actor_config()),
        )  # fmt: skip


def _recipes() -> list[list[str]]:
    """The command-line overrides of every `verl.trainer.main_ppo` command in docs/verl.md."""
    text = (Path(__file__).parents[2] / "docs" / "verl.md").read_text()
    recipes = []
    for block in text.split("python3 -m verl.trainer.main_ppo")[1:]:
        block = block.split("```")[0]
        recipes.append([t for t in block.replace("\\\n", " ").split() if "=" in t])
    return recipes


def test_documented_recipes_compose_in_verls_configuration():
    """Every override names a real key of verl 0.9.1's trainer configuration, the ERA settings
    reach an ERAPolicyLossConfig, and verl's own validation accepts the result."""
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import validate_config

    recipes = _recipes()
    assert len(recipes) == 2
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    for overrides in recipes:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            config = compose(config_name="ppo_trainer", overrides=overrides)
        actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
        assert isinstance(actor.policy_loss, era_verl.ERAPolicyLossConfig)
        assert actor.policy_loss.loss_mode == "era"
        assert config.actor_rollout_ref.model.external_lib == "era.llm.verl"
        validate_config(config, use_reference_policy=False, use_critic=False)


def test_era_loss_mode_without_era_settings_is_named():
    """loss_mode=era on verl's own PolicyLossConfig (the `_target_` override forgotten)."""
    data, logits, _ = _micro_batch()
    config = _actor_config(policy_loss=PolicyLossConfig(loss_mode="era"))
    with pytest.raises(TypeError, match="_target_=era.llm.verl.ERAPolicyLossConfig"):
        _forward(_engine(), data, logits, partial(ppo_loss, config=config))
