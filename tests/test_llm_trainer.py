"""ERAGRPOTrainer and its LM head: exact against hand-computed losses, TRL's own loss and era.token.

Everything runs on a 2-layer Llama built from a config, with a character-level tokenizer built here;
nothing is downloaded.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from era.llm import ERAGRPOConfig, ERAGRPOTrainer, era_lm_head  # noqa: E402
from era.token import token_logprobs  # noqa: E402

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 +=?")
VOCAB = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
PROMPTS = ["ab", "cd 1", "x+y=", "zz", "9?", "hello"]


def make_tokenizer():
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", padding_side="left"
    )


def make_model(seed=0, head_std=1.0):
    """A tiny Llama; a wide LM-head init spreads the token entropies, so bands can split them."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    model = LlamaForCausalLM(config)
    model.lm_head.weight.data.normal_(0.0, head_std)
    return model


def distinct_chars(completions, **_):
    """A toy reward that varies between completions, so advantages are non-zero."""
    return [float(len(set(c))) for c in completions]


def make_args(cls=ERAGRPOConfig, **overrides):
    kwargs = dict(
        output_dir="unused",
        per_device_train_batch_size=6,
        num_generations=3,
        max_completion_length=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        loss_type="bnpo",
        temperature=0.8,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        bf16=False,  # exact comparisons; one training run below uses bf16 autocast
    )
    return cls(**{**kwargs, **overrides})


def make_trainer(model, cls=ERAGRPOTrainer, **config):
    args = make_args(ERAGRPOConfig if cls is ERAGRPOTrainer else GRPOConfig, **config)
    data = Dataset.from_dict({"prompt": PROMPTS * 4})
    trainer = cls(
        model=model,
        reward_funcs=distinct_chars,
        args=args,
        train_dataset=data,
        processing_class=make_tokenizer(),
    )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    return trainer


def make_batch(seed=1, batch=6, prompt_len=4, completion_len=7):
    """A batch as TRL's rollout hands it to the loss: left-padded prompts, right-padded answers."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(2, len(VOCAB), (batch, prompt_len), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :2] = 0
    prompt_ids[0, :2] = 0
    completion_ids = torch.randint(2, len(VOCAB), (batch, completion_len), generator=g)
    lengths = torch.tensor([7, 5, 6, 3, 7, 4])[:batch]
    completion_mask = (torch.arange(completion_len) < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, 0)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "num_items_in_batch": completion_mask.sum(),
    }


# ---------------------------------------------------------------------------------------------
# The loss written out by hand, independently of era.token and of the trainer
# ---------------------------------------------------------------------------------------------


def hand_logits(model, batch, temperature):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    n = batch["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=mask).logits  # the unpatched forward
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays float64
    return logits[:, -n - 1 : -1] / temperature


def hand_response_entropy(logits, mask, top_fraction=0.2):
    logp = torch.log_softmax(logits.detach().double(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    out = []
    for row, m in zip(entropy, mask, strict=True):
        values = sorted(row[m.bool()].tolist(), reverse=True)
        n = max(1, math.floor(top_fraction * len(values)))
        out.append(sum(values[:n]) / n)
    return out


def hand_loss(model, batch, advantages, *, temperature, low, high, k, scaling=True, top_k=None,
              old=None, eps=0.2):  # fmt: skip
    z = hand_logits(model, batch, temperature)
    mask = batch["completion_mask"].float()
    h = hand_response_entropy(z, batch["completion_mask"])
    scale = []
    for h_i, a_i in zip(h, advantages.tolist(), strict=True):
        if a_i > 0 and h_i < low:
            scale.append(k)
        elif a_i > 0 and h_i > high:
            scale.append(1 / k)
        else:
            scale.append(1.0)
    scale = torch.tensor(scale)
    zs = z * scale[:, None, None]
    labels = batch["completion_ids"][..., None]
    if top_k is None:
        logp = torch.log_softmax(zs, dim=-1).gather(-1, labels)[..., 0]
    else:
        top = zs.topk(top_k, dim=-1).values
        label_z = zs.gather(-1, labels)[..., 0]
        logp = label_z - torch.logsumexp(top, dim=-1)
        logp = torch.where(label_z < top[..., -1], torch.full_like(logp, -1e4), logp)
    adv = (advantages / scale if scaling else advantages)[:, None]
    ratio = torch.exp(logp - (logp.detach() if old is None else old))
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    return (per_token * mask).sum() / mask.sum(), scale


def loss_and_grads(loss_fn, model):
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(a, b):
    """Loss and every gradient equal up to rounding, whatever the CPU's kernels.

    Each entry sums many rounded terms (a 2-layer transformer, forward and backward), and how
    the sums are split differs between kernels (AVX2, AVX-512, thread counts), so an entry that
    is the small difference of large terms may move by several ulps of the tensor's largest
    entry. The tolerance is therefore 1000 ulps of that largest entry, in the tensors' own
    dtype: float32 leaves a 200x margin over the 5 ulps seen on AVX-512, float64 (the
    hand-computed comparisons) one of 1000x over the measured 1e-16 relative; a wrong scale or a
    lost token changes the gradients by a large fraction of their size.
    """
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=_rounding(loss_b))
    for name in grads_a:
        want = grads_b[name]
        torch.testing.assert_close(grads_a[name], want, rtol=0, atol=_rounding(want), msg=name)


def _rounding(x):
    return 1000 * torch.finfo(x.dtype).eps * max(x.abs().max().item(), torch.finfo(x.dtype).tiny)


def band_around(model, batch, temperature=0.8):
    """A band with two responses below, two inside and two above it."""
    with torch.no_grad():
        h = sorted(
            hand_response_entropy(hand_logits(model, batch, temperature), batch["completion_mask"])
        )
    assert h[1] < h[2] and h[3] < h[4], "need distinct response entropies"
    return (h[1] + h[2]) / 2, (h[3] + h[4]) / 2, h


def band_advantages(model, batch, temperature=0.8):
    """Per band (below, in, above): one response with A > 0 and one with A < 0."""
    with torch.no_grad():
        h = hand_response_entropy(hand_logits(model, batch, temperature), batch["completion_mask"])
    order = sorted(range(len(h)), key=h.__getitem__)
    advantages = torch.zeros(len(h))
    for rank, row in enumerate(order):
        advantages[row] = 0.7 + 0.1 * rank if rank % 2 == 0 else -0.9 + 0.05 * rank
    return advantages


# ---------------------------------------------------------------------------------------------
# The LM head
# ---------------------------------------------------------------------------------------------


def random_head(n=11, hidden=6, vocab=37, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, dtype=dtype, generator=g).requires_grad_()
    w = torch.randn(vocab, hidden, dtype=dtype, generator=g).requires_grad_()
    b = torch.randn(vocab, dtype=dtype, generator=g).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=g)
    return h, w, b, labels


@pytest.mark.parametrize("top_k", [None, 4])
def test_head_gradcheck(top_k):
    h, w, b, labels = random_head(n=7, hidden=4, vocab=19)
    scales = (1.0, 2.0, 0.5)
    column = torch.tensor([0, 1, 2, 1, 0, 2, 1])

    def f(h, w, b):
        out = era_lm_head(h, w, b, labels, scales=scales, temperature=0.7, top_k=top_k,
                          token_tile=3, vocab_tile=8)  # fmt: skip
        return out.logprobs(scales, column)

    assert torch.autograd.gradcheck(f, (h, w, b))


@pytest.mark.parametrize("top_k", [None, 5])
@pytest.mark.parametrize("k", [3.0, 2.0])  # k = 2 takes the head's exp-free path
def test_head_matches_era_token_and_tiling_does_not_matter(top_k, k):
    h, w, b, labels = random_head(n=23, vocab=50, dtype=torch.float32, seed=3)
    scales = (1.0, k, 1 / k)
    column = torch.randint(0, 3, (23,), generator=torch.Generator().manual_seed(4))
    weights = torch.randn(23, generator=torch.Generator().manual_seed(5))
    results = []
    for tiles in [(23, 50), (4, 7), (1, 50)]:
        out = era_lm_head(h, w, b, labels, scales=scales, temperature=1.3, top_k=top_k,
                          token_tile=tiles[0], vocab_tile=tiles[1])  # fmt: skip
        logps = out.logprobs(scales, column)
        grads = torch.autograd.grad((logps * weights).sum(), (h, w, b))
        results.append((logps.detach(), out.entropy, grads))
    # era.token on the full logits, per-row scale, is the reference.
    logits = (h @ w.T + b) / 1.3
    ref = token_logprobs(logits, labels, scale=torch.tensor(scales)[column], top_k=top_k)
    ref_grads = torch.autograd.grad((ref * weights).sum(), (h, w, b))
    ref_entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    for logps, entropy, grads in results:
        torch.testing.assert_close(logps, ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(entropy, ref_entropy.detach(), rtol=1e-5, atol=1e-5)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_head_gradient_with_every_column_in_use():
    """A loss that reads several scales per token takes the general backward path."""
    h, w, b, labels = random_head()
    scales = (1.0, 2.0, 0.5)
    mix = torch.randn(11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    out = era_lm_head(h, w, b, labels, scales=scales, token_tile=3, vocab_tile=10)
    got = torch.autograd.grad((out.log_norm * mix).sum() + out.label_logit.sum(), (h, w, b))
    z = h @ w.T + b
    log_norm = torch.stack([torch.logsumexp(s * z, -1) for s in scales], -1)
    label = z.gather(1, labels[:, None])[:, 0]
    want = torch.autograd.grad((log_norm * mix).sum() + label.sum(), (h, w, b))
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r)


def test_head_bad_arguments():
    h, w, b, labels = random_head()
    with pytest.raises(ValueError, match="scales"):
        era_lm_head(h, w, b, labels, scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="temperature"):
        era_lm_head(h, w, b, labels, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        era_lm_head(h, w, b, labels, top_k=38)
    with pytest.raises(ValueError, match="labels"):
        era_lm_head(h, w, b, labels[:3])


# ---------------------------------------------------------------------------------------------
# The trainer's loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scaling", "top_k"), [(True, None), (False, None), (True, 5)], ids=["adv", "noadv", "topk"]
)
def test_loss_equals_hand_computed(scaling, top_k):
    model, batch = make_model().double(), make_batch()
    low, high, _ = band_around(model, batch)
    advantages = band_advantages(model, batch)
    trainer = make_trainer(model, era_low=low, era_high=high, era_k=2.0,
                           era_advantage_scaling=scaling, era_top_k_logprobs=top_k)  # fmt: skip
    inputs = {**batch, "advantages": advantages}
    got = loss_and_grads(lambda: trainer.compute_loss(trainer.model, inputs), model)
    _, scale = hand_loss(model, batch, advantages, temperature=0.8, low=low, high=high, k=2.0,
                         scaling=scaling, top_k=top_k)  # fmt: skip
    want = loss_and_grads(
        lambda: hand_loss(
            model,
            batch,
            advantages,
            temperature=0.8,
            low=low,
            high=high,
            k=2.0,
            scaling=scaling,
            top_k=top_k,
        )[0],  # fmt: skip
        model,
    )
    assert sorted(scale.tolist()) == [0.5, 1.0, 1.0, 1.0, 1.0, 2.0]  # both branches, A<0 untouched
    assert_same(got, want)
    assert torch.equal(inputs["advantages"], advantages), "the caller's batch must not be rescaled"
    metrics = trainer._metrics["train"]
    assert metrics["era/frac_below"][-1] == pytest.approx(2 / 6)
    assert metrics["era/frac_in_band"][-1] == pytest.approx(2 / 6)
    assert metrics["era/frac_above"][-1] == pytest.approx(2 / 6)
    assert metrics["era/frac_scaled"][-1] == pytest.approx(2 / 6)


def test_loss_with_old_logprobs_equals_hand_computed():
    """Off-policy: the PPO ratio against given old log-probs, clipped, under the activation."""
    model, batch = make_model().double(), make_batch()
    low, high, _ = band_around(model, batch)
    advantages = band_advantages(model, batch)
    old = -3.0 + 0.3 * torch.randn(
        batch["completion_ids"].shape, generator=torch.Generator().manual_seed(2)
    )
    old = old * batch["completion_mask"]
    trainer = make_trainer(model, era_low=low, era_high=high)
    inputs = {**batch, "advantages": advantages, "old_per_token_logps": old}
    got = loss_and_grads(lambda: trainer.compute_loss(trainer.model, inputs), model)
    want = loss_and_grads(
        lambda: hand_loss(
            model, batch, advantages, temperature=0.8, low=low, high=high, k=2.0, old=old
        )[0],  # fmt: skip
        model,
    )
    assert_same(got, want)


def test_infinite_band_equals_trl():
    base, batch = make_model(), make_batch()  # float32: TRL computes its loss in float32
    advantages = band_advantages(base, batch)
    old = -3.0 + 0.3 * torch.randn(
        batch["completion_ids"].shape, generator=torch.Generator().manual_seed(2)
    )
    inputs = {**batch, "advantages": advantages, "old_per_token_logps": old}
    results = []
    for cls, extra in [
        (GRPOTrainer, {}),
        (ERAGRPOTrainer, {"era_low": -math.inf, "era_high": math.inf}),
    ]:
        model = copy.deepcopy(base)
        trainer = make_trainer(model, cls, **extra)
        results.append(
            loss_and_grads(lambda t=trainer: t.compute_loss(t.model, dict(inputs)), model)
        )
    assert_same(*results)


def test_old_logprobs_are_scored_under_the_activation():
    """With an old-log-prob pass, the stored old log-probs are ERA's at the sampling weights."""
    model = make_model()
    trainer = make_trainer(model, era_low=100.0, era_high=200.0, num_iterations=2)  # all below
    trainer.model.train()
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS])
    assert "old_per_token_logps" in inputs and "era_response_entropy" in inputs
    assert (inputs["advantages"] > 0).any()
    stored = trainer.compute_loss(trainer.model, inputs)
    fresh = {k: v for k, v in inputs.items() if k != "old_per_token_logps"}
    on_policy = trainer.compute_loss(trainer.model, fresh)  # ratio exactly 1
    torch.testing.assert_close(stored, on_policy)
    # ...whereas TRL's unscaled old log-probs would not give ratio 1 on the sharpened responses.
    with torch.no_grad():
        plain = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            inputs["completion_ids"].shape[1],
        )[0]  # fmt: skip
    sharpened = inputs["advantages"] > 0
    mask = inputs["completion_mask"].bool()
    gap = (plain - inputs["old_per_token_logps"]).abs()[sharpened[:, None] & mask]
    assert gap.max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------


def run_training(model, **config):
    trainer = make_trainer(model, max_steps=2, logging_steps=1, **config)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert math.isfinite(entry["loss"])
        for name in (
            "frac_below",
            "frac_in_band",
            "frac_above",
            "response_entropy",
            "token_entropy",
        ):
            assert math.isfinite(entry[f"era/{name}"])
        fractions = entry["era/frac_below"] + entry["era/frac_in_band"] + entry["era/frac_above"]
        assert fractions == pytest.approx(1.0)
    changed = [
        n
        for n, p in trainer.model.named_parameters()
        if n in before and not torch.equal(p, before[n])
    ]
    assert changed, "no trainable parameter moved"
    return trainer, changed


def test_two_step_training_run_in_bf16_with_checkpointing():
    run_training(
        make_model(), era_low=100.0, era_high=200.0, bf16=True, gradient_checkpointing=True
    )


def test_training_with_gradient_accumulation_and_reused_rollouts():
    run_training(make_model(), gradient_accumulation_steps=2, num_iterations=2, era_low=100.0,
                 era_high=200.0, per_device_train_batch_size=3)  # fmt: skip


def test_training_with_lora():
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = make_model()
    data = Dataset.from_dict({"prompt": PROMPTS * 4})
    trainer = ERAGRPOTrainer(
        model=model,
        reward_funcs=distinct_chars,
        args=make_args(max_steps=2, logging_steps=1, era_low=100.0, era_high=200.0),
        train_dataset=data,
        processing_class=make_tokenizer(),
        peft_config=config,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("era/frac_scaled" in entry for entry in trainer.state.log_history)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"era_low": 3.0, "era_high": 1.0}, "era_low < era_high"),
        ({"era_low": math.nan}, "era_low"),
        ({"era_k": 1.0}, "era_k"),
        ({"era_k": math.inf}, "era_k"),
        ({"era_top_fraction": 0.0}, "era_top_fraction"),
        ({"era_top_fraction": 1.5}, "era_top_fraction"),
        ({"era_top_k_logprobs": 0}, "era_top_k_logprobs"),
        ({"era_top_k_logprobs": 2.5}, "era_top_k_logprobs"),
        ({"entropy_coef": 0.01}, "entropy bonus"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_args(**overrides)


def test_trainer_needs_era_config():
    with pytest.raises(TypeError, match="ERAGRPOConfig"):
        ERAGRPOTrainer(
            model=make_model(),
            reward_funcs=lambda completions, **_: [0.0] * len(completions),
            args=make_args(GRPOConfig),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            processing_class=make_tokenizer(),
        )


def test_transformed_lm_heads_are_refused():
    model = make_model()
    model.config.final_logit_softcapping = 30.0  # as in Gemma 2
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        make_trainer(model)
