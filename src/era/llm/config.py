"""The configurations of ``era llm warm-start | train | eval``; they double as the Python API.

Each is validated when it is built (so at parse time on the command line): a bad value raises a
``ValueError`` naming the field, its value and what is allowed. The runs themselves are in
:mod:`era.llm.runner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from era.llm.settings import ERASettings
from era.llm.tasks import Grader
from era.validation import AT_LEAST_0, AT_LEAST_1, POSITIVE, Range, check_ranges

DEFAULT_TASK_OPTIONS = {
    "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
}
FINITE_POSITIVE = Range(0, math.inf, low_closed=False, high_closed=False)

HELD_OUT_SEED_OFFSET = 10_000_019
"""Held-out problems are drawn from ``data_seed`` plus this, then filtered against training."""


@dataclass
class TaskArgs:
    """Which problems to train and evaluate on."""

    name: str = "chain_sum"
    """reasoning-gym task (e.g. chain_sum, basic_arithmetic, gcd, products)."""
    options: dict[str, int] | None = None
    """The task's own config fields; default for chain_sum: two terms of 1-2 digits."""
    grader: Grader = "reasoning-gym"
    """reasoning-gym: the task's scorer; math-verify: symbolic equality of the answer."""
    train_size: int = 8000
    """Number of distinct training problems."""
    held_out_size: int = 200
    """Number of held-out problems (never seen in training) for accuracy and pass@k."""
    data_seed: int = 0
    """Seed of the problem generator (the same for every run seed, so runs share the data)."""

    def __post_init__(self):
        check_ranges(self, "task.", {"train_size": AT_LEAST_1, "held_out_size": AT_LEAST_1})

    def problems(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """``(train, held_out)``: disjoint sets of problems, deterministic in the arguments."""
        from era.llm.tasks import make_problems

        options = DEFAULT_TASK_OPTIONS.get(self.name, {}) if self.options is None else self.options
        train = make_problems(self.name, seed=self.data_seed, size=self.train_size, **options)
        held_out = make_problems(
            self.name,
            seed=self.data_seed + HELD_OUT_SEED_OFFSET,
            size=self.held_out_size,
            exclude={p["question"] for p in train},
            **options,
        )
        return train, held_out


@dataclass
class WarmStartConfig:
    """Build the tiny model and its tokenizer, then train it briefly on (question, answer) pairs."""

    out: Path = Path("runs/llm/init")
    """Where the model and tokenizer are saved (a new Hugging Face checkpoint folder); the run's
    config and versions go to out/warm_start/."""
    task: TaskArgs = field(default_factory=TaskArgs)
    steps: int = 1000
    """Supervised steps (0 keeps the random initialisation)."""
    batch_size: int = 64
    """Problems per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (decays linearly to 0)."""
    hidden_size: int = 128
    """Width of the tiny transformer."""
    layers: int = 2
    """Depth of the tiny transformer."""
    heads: int = 4
    """Attention heads."""
    vocab_size: int = 128
    """Size of the tokenizer trained on the task's text (digits are always single tokens)."""
    seed: int = 0
    """Seed of the initialisation and batch order."""
    eval_samples: int = 16
    """Samples per held-out problem for the pass@k printed at the end."""

    def __post_init__(self):
        positive = ("batch_size", "hidden_size", "layers", "heads", "eval_samples")
        check_ranges(self, "", {"steps": AT_LEAST_0, **dict.fromkeys(positive, AT_LEAST_1),
                                "vocab_size": Range(32), "lr": POSITIVE})  # fmt: skip
        if self.hidden_size % self.heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})"
            )


@dataclass
class TrainConfig(ERASettings):
    """GRPO (--no-era) or GRPO + ERA (--era) on a task, with held-out evaluations.

    The --era-* flags are the fields of era.llm.settings.ERASettings, as in ERAGRPOConfig.
    """

    out: Path = Path("runs/llm/train")
    """Run directory: config, metrics.csv, tb/, checkpoint-N/, final/."""
    model: str = "tiny"
    """'tiny' (built and warm-started in out/init), 'smollm2', or a local checkpoint path."""
    task: TaskArgs = field(default_factory=TaskArgs)
    seed: int = 0
    """Seed of sampling, shuffling and (for 'tiny') the initialisation."""
    steps: int = 200
    """Optimizer steps; each uses one fresh batch of rollouts (on-policy)."""
    learning_rate: float = 1e-4
    """AdamW learning rate (constant)."""
    prompts_per_step: int = 16
    """Distinct problems per step."""
    num_generations: int = 8
    """Completions sampled per problem (the GRPO group)."""
    max_completion_length: int = 8
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    beta: float = 0.0
    """KL coefficient against the initial model (0: no reference model, as in ERA's recipe)."""
    era: bool = True
    """Use ERA in the loss (--no-era: plain GRPO, the same trainer with the band switched off)."""
    lora_rank: int = 0
    """0: train every weight; > 0: train LoRA adapters of this rank on every linear layer (peft),
    merged into final/ at the end."""
    lora_alpha: float = 16.0
    """LoRA's scale numerator: the adapters' output is multiplied by lora_alpha / lora_rank."""
    gradient_checkpointing: bool = False
    """Trade compute for memory (worth it for real models on a GPU)."""
    eval_every: int = 10
    """Steps between held-out evaluations (one metrics.csv row each)."""
    eval_problems: int = 100
    """Held-out problems used by each evaluation during training."""
    eval_samples: int = 16
    """Samples per held-out problem (pass@k for k up to this)."""
    save_every: int = 50
    """Steps between checkpoints."""
    resume: bool = False
    """Continue from the last checkpoint-N in out (with the same configuration)."""
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    """Only for model='tiny': how the tiny model is built and warm-started."""

    def __post_init__(self):
        super().__post_init__()  # the ERA settings
        counts = ("steps", "prompts_per_step", "max_completion_length", "eval_every",
                  "eval_problems", "eval_samples", "save_every")  # fmt: skip
        check_ranges(self, "", {
            **dict.fromkeys(counts, AT_LEAST_1),
            "num_generations": Range(2),  # GRPO compares a group
            "lora_rank": AT_LEAST_0,
            **dict.fromkeys(("learning_rate", "temperature", "lora_alpha"), FINITE_POSITIVE),
            "beta": Range(0, math.inf, high_closed=False),
        })  # fmt: skip
        if self.eval_problems > self.task.held_out_size:
            raise ValueError(
                f"eval_problems ({self.eval_problems}) must be <= task.held_out_size "
                f"({self.task.held_out_size})"
            )


@dataclass
class EvalConfig:
    """Greedy accuracy and pass@k of a model on held-out problems or on CHAMP."""

    model: str
    """'smollm2' or a checkpoint directory (e.g. runs/llm/train/final)."""
    problems: Literal["held-out", "champ"] = "held-out"
    """held-out: the task's held-out set; champ: the 270 CHAMP problems (math-verify)."""
    task: TaskArgs = field(default_factory=TaskArgs)
    samples: int = 16
    """Samples per problem; pass@k is reported for k = 1, 2, 4, ... up to this."""
    temperature: float = 1.0
    """Sampling temperature for pass@k (accuracy is always greedy)."""
    max_new_tokens: int = 8
    """Longest completion in tokens (raise it for chat models and CHAMP, e.g. 512)."""
    limit: int | None = None
    """Evaluate only the first N problems."""
    seed: int = 0
    """Seed of the sampling."""
    out: Path | None = None
    """Also write the results to this JSON file."""

    def __post_init__(self):
        ranges = {"samples": AT_LEAST_1, "max_new_tokens": AT_LEAST_1}
        ranges["temperature"] = FINITE_POSITIVE
        if self.limit is not None:
            ranges["limit"] = AT_LEAST_1
        check_ranges(self, "", ranges)
