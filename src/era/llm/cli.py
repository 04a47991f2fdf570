"""``era llm``: warm-start, train (GRPO with or without ERA) and evaluate language models.

    era llm warm-start --out-dir runs/llm/init          # tiny model + tokenizer + supervised phase
    era llm train --model runs/llm/init --out-dir runs/llm/era --era
    era llm train --model runs/llm/init --out-dir runs/llm/grpo --no-era
    era llm eval --model runs/llm/era/final

The configs below double as the Python API: ``train(TrainConfig(...))``. A run directory holds
``config.json``, ``versions.json``, ``metrics.csv`` (one row per held-out evaluation, with the
training metrics averaged since the previous one), TensorBoard events under ``tb/``, TRL checkpoints
(``checkpoint-N``; ``--resume`` continues from the last) and the final model under ``final/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from era.llm.tasks import Grader

DEFAULT_TASK_OPTIONS = {
    "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
}
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

    def problems(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """``(train, held_out)``: disjoint sets of problems, deterministic in the arguments."""
        from era.llm.tasks import make_problems

        for name, value in (("train_size", self.train_size), ("held_out_size", self.held_out_size)):
            if value < 1:
                raise ValueError(f"task.{name} must be >= 1, got {value}")
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

    out_dir: Path = Path("runs/llm/init")
    """Where the model and tokenizer are saved (a Hugging Face checkpoint directory); the run's
    config and versions go to out_dir/warm_start/."""
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


@dataclass
class TrainConfig:
    """GRPO (--no-era) or GRPO + ERA (--era) on a task, with held-out evaluations."""

    out_dir: Path = Path("runs/llm/train")
    """Run directory: config, metrics.csv, tb/, checkpoint-N/, final/."""
    model: str = "tiny"
    """'tiny' (built and warm-started in out_dir/init), 'smollm2', or a local checkpoint path."""
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
    era_low: float = 0.45
    """Lower end of the response-entropy band (nats): below it, responses with A > 0 get k·z."""
    era_high: float = 3.0
    """Upper end of the band; above it positive-advantage responses get z/k."""
    era_k: float = 2.0
    """ERA's logit scale k > 1."""
    era_top_fraction: float = 0.2
    """A response's entropy is the mean of its top fraction of token entropies."""
    era_advantage_scaling: bool = True
    """Divide (multiply) the advantage by k where the logits were multiplied (divided) by k."""
    era_top_k_logprobs: int | None = None
    """Renormalise log-probs over the top-k activated logits (the authors' code uses 20)."""
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
    """Continue from the last checkpoint-N in out_dir."""
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    """Only for model='tiny': how the tiny model is built and warm-started."""


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


def _ks(samples: int) -> list[int]:
    return [2**i for i in range(int(math.log2(samples)) + 1)] + (
        [samples] if samples & (samples - 1) else []
    )


# ---------------------------------------------------------------------------------------------
# warm-start
# ---------------------------------------------------------------------------------------------


def warm_start(cfg: WarmStartConfig) -> dict[str, float]:
    """Build, warm-start and save the tiny model; returns its held-out evaluation."""
    from era.llm.evaluate import evaluate
    from era.llm.models import tiny_model, train_tokenizer
    from era.llm.sft import warm_start as supervised
    from era.runs import set_seed, write_run_metadata

    if cfg.steps < 0:
        raise ValueError(f"steps must be >= 0, got {cfg.steps}")
    set_seed(cfg.seed)
    train, held_out = cfg.task.problems()
    texts = [f"{p['question']} {p['answer']}" for p in train]
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size)
    model = tiny_model(
        tokenizer, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads, seed=cfg.seed
    )
    if cfg.steps:
        supervised(
            model,
            tokenizer,
            train,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=cfg.seed,
        )
    result = evaluate(
        model,
        tokenizer,
        held_out,
        samples=cfg.eval_samples,
        ks=_ks(cfg.eval_samples),
        grader=cfg.task.grader,
    )
    # The directory is a Hugging Face checkpoint, whose config.json is the model's: the run's own
    # config and versions go one level down.
    write_run_metadata(cfg.out_dir / "warm_start", cfg)
    model.save_pretrained(cfg.out_dir)
    tokenizer.save_pretrained(cfg.out_dir)
    (cfg.out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {cfg.out_dir}; held-out: " + _summary(result))
    return result


def _summary(result: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in result.items())


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

_TRAIN_METRICS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "frac_reward_zero_std": "frac_zero_std",
    "entropy": "entropy",
    "completions/mean_length": "completion_length",
    "era/response_entropy": "response_entropy",
    "era/frac_below": "frac_below",
    "era/frac_in_band": "frac_in_band",
    "era/frac_above": "frac_above",
    "era/frac_scaled": "frac_scaled",
}
"""TRL / ERA log keys → metrics.csv columns (averaged over the steps between evaluations)."""


def _check_train(cfg: TrainConfig) -> None:
    positive = (
        "steps",
        "prompts_per_step",
        "num_generations",
        "max_completion_length",
        "eval_every",
        "eval_problems",
        "eval_samples",
        "save_every",
    )
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.num_generations < 2:
        raise ValueError(
            f"num_generations must be >= 2 (GRPO compares a group), got {cfg.num_generations}"
        )
    if cfg.learning_rate <= 0 or cfg.temperature <= 0:
        raise ValueError(
            f"learning_rate and temperature must be > 0, got "
            f"{cfg.learning_rate} and {cfg.temperature}"
        )
    if cfg.eval_problems > cfg.task.held_out_size:
        raise ValueError(
            f"eval_problems ({cfg.eval_problems}) must be <= task.held_out_size "
            f"({cfg.task.held_out_size})"
        )


def _last_checkpoint(out_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return (
        Path(found) if out_dir.is_dir() and (found := get_last_checkpoint(str(out_dir))) else None
    )


def _load_policy(cfg: TrainConfig):
    """``(model, tokenizer)`` of the starting policy; 'tiny' is built once into out_dir/init."""
    from era.llm.models import load_model

    if cfg.model != "tiny":
        return load_model(cfg.model)
    init = cfg.out_dir / "init"
    if not (init / "config.json").is_file():
        ws = dataclasses.replace(cfg.warm_start, out_dir=init, task=cfg.task, seed=cfg.seed)
        warm_start(ws)
    return load_model(str(init))


def _trainer_config(cfg: TrainConfig):
    import torch

    from era.llm import ERAGRPOConfig

    band = (cfg.era_low, cfg.era_high) if cfg.era else (-math.inf, math.inf)
    batch = cfg.prompts_per_step * cfg.num_generations
    return ERAGRPOConfig(
        output_dir=str(cfg.out_dir),
        seed=cfg.seed,
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        era_low=band[0],
        era_high=band[1],
        era_k=cfg.era_k,
        era_top_fraction=cfg.era_top_fraction,
        era_advantage_scaling=cfg.era_advantage_scaling,
        era_top_k_logprobs=cfg.era_top_k_logprobs,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        logging_steps=1,
        save_steps=cfg.save_every,
        save_strategy="steps",
        report_to="none",
        disable_tqdm=True,
    )


def _callback(cfg: TrainConfig, held_out, logger, stop_flag, bar):
    """A TRL callback: held-out evaluations, metrics.csv rows, progress, Ctrl-C → save and stop."""
    from transformers import TrainerCallback

    from era.llm.evaluate import evaluate
    from era.runs import check_finite

    class EraLLMCallback(TrainerCallback):
        def __init__(self):
            self.pending: dict[str, list[float]] = {}
            self.task = None

        def evaluate(self, step, model, tokenizer):
            row = {
                name: statistics.fmean(v) if (v := self.pending.get(name)) else math.nan
                for name in _TRAIN_METRICS.values()
            }
            result = evaluate(
                model,
                tokenizer,
                held_out[: cfg.eval_problems],
                samples=cfg.eval_samples,
                ks=_ks(cfg.eval_samples),
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_completion_length,
                grader=cfg.task.grader,
                seed=cfg.seed,
            )
            row.update({f"eval_{k}": v for k, v in result.items()})
            logger.row(step, row)
            self.pending.clear()
            return result

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
            self.task = bar.add_task(
                "GRPO" + (" + ERA" if cfg.era else ""),
                total=cfg.steps,
                completed=state.global_step,
                info="",
            )
            if state.global_step == 0:
                self.evaluate(0, model, processing_class)

        def on_log(self, args, state, control, logs=None, model=None, processing_class=None, **kw):
            logs = logs or {}
            if "reward" not in logs:  # the end-of-training summary, not a step
                return
            step = state.global_step
            check_finite(step, loss=logs.get("loss", 0.0), reward=logs["reward"])
            values = {
                col: float(logs[key])
                for key, col in _TRAIN_METRICS.items()
                if logs.get(key) is not None
            }
            for col, value in values.items():
                self.pending.setdefault(col, []).append(value)
            logger.scalars(step, {f"train/{c}": v for c, v in values.items()})
            bar.update(
                self.task,
                completed=step,
                info=f"reward {values['reward']:.3f}  entropy {values.get('entropy', 0):.3f}",
            )
            if step % cfg.eval_every == 0 or step == cfg.steps:
                result = self.evaluate(step, model, processing_class)
                bar.console.log(f"step {step}: held-out " + _summary(result))

        def on_step_end(self, args, state, control, **kw):
            if stop_flag.requested:
                control.should_save = True
                control.should_training_stop = True

    return EraLLMCallback()


def train(cfg: TrainConfig) -> Path:
    """Run GRPO (with ERA unless ``cfg.era`` is False); returns the run directory."""
    from datasets import Dataset
    from transformers import PrinterCallback

    from era.llm import ERAGRPOTrainer
    from era.llm.tasks import prompt, reward_function
    from era.runs import (
        MetricLogger,
        graceful_interrupt,
        progress_bar,
        set_seed,
        write_run_metadata,
    )

    _check_train(cfg)
    args = _trainer_config(cfg)  # validates the ERA/TRL fields before anything is loaded
    checkpoint = _last_checkpoint(cfg.out_dir)
    if checkpoint is not None and not cfg.resume:
        raise ValueError(
            f"{cfg.out_dir} already holds {checkpoint.name}: pass --resume to continue "
            "it, or choose another --out-dir"
        )
    if cfg.resume and checkpoint is None:
        raise ValueError(f"--resume: no checkpoint-N in {cfg.out_dir} to resume from")
    set_seed(cfg.seed)
    train_problems, held_out = cfg.task.problems()
    model, tokenizer = _load_policy(cfg)
    chat = bool(tokenizer.chat_template)
    dataset = Dataset.from_list(
        [{**p, "prompt": prompt(p["question"], chat=chat)} for p in train_problems]
    )
    write_run_metadata(cfg.out_dir, cfg)
    resume_step = None
    if checkpoint is not None:
        resume_step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    logger = MetricLogger(cfg.out_dir, resume_step=resume_step)
    with graceful_interrupt() as stop_flag, progress_bar(unit="steps") as bar:
        trainer = ERAGRPOTrainer(
            model=model,
            reward_funcs=reward_function(cfg.task.grader),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[_callback(cfg, held_out, logger, stop_flag, bar)],
        )
        trainer.remove_callback(PrinterCallback)
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            logger.close()
    if trainer.state.global_step >= cfg.steps:
        trainer.save_model(str(cfg.out_dir / "final"))
        tokenizer.save_pretrained(cfg.out_dir / "final")
        print(f"done: {cfg.out_dir / 'metrics.csv'}, final model in {cfg.out_dir / 'final'}")
    else:
        print(f"stopped at step {trainer.state.global_step}; continue with --resume")
    return cfg.out_dir


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------


def evaluate_model(cfg: EvalConfig) -> dict[str, float]:
    """Evaluate ``cfg.model``; prints and returns accuracy, mean reward and pass@k."""
    from era.llm.evaluate import evaluate
    from era.llm.models import load_model
    from era.llm.tasks import champ_problems

    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {cfg.limit}")
    model, tokenizer = load_model(cfg.model)
    if cfg.problems == "champ":
        problems, grader = champ_problems(), "math-verify"
    else:
        problems, grader = cfg.task.problems()[1], cfg.task.grader
    problems = problems[: cfg.limit]
    result = evaluate(
        model,
        tokenizer,
        problems,
        samples=cfg.samples,
        ks=_ks(cfg.samples),
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        grader=grader,
        seed=cfg.seed,
    )
    print(f"{cfg.model} on {len(problems)} {cfg.problems} problems: " + _summary(result))
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(
            json.dumps(
                {"model": cfg.model, "problems": cfg.problems, "n": len(problems), **result},
                indent=2,
            )
            + "\n"
        )
    return result


def main(argv: list[str]) -> None:
    import tyro

    config = tyro.extras.subcommand_cli_from_dict(
        {"warm-start": WarmStartConfig, "train": TrainConfig, "eval": EvalConfig},
        args=argv,
        prog="era llm",
    )
    run = {WarmStartConfig: warm_start, TrainConfig: train, EvalConfig: evaluate_model}
    run[type(config)](config)
