"""The runs behind ``era llm``: warm-start a tiny model, train it with GRPO (+ ERA), evaluate.

Each function takes its configuration from :mod:`era.llm.config`. A training run directory holds
``config.json``, ``versions.json``, ``metrics.csv`` (one row per held-out evaluation, with the
training metrics averaged since the previous one), TensorBoard events under ``tb/``, TRL
checkpoints (``checkpoint-N``; ``--resume`` continues from the last) and the final model under
``final/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from era.llm.config import EvalConfig, TrainConfig, WarmStartConfig
from era.llm.evaluate import evaluate
from era.llm.models import load_model, tiny_model, train_tokenizer
from era.llm.sft import warm_start as supervised
from era.llm.tasks import champ_problems, prompt, reward_function
from era.llm.trl import ERAGRPOConfig, ERAGRPOTrainer
from era.runs import (
    MetricLogger,
    RunError,
    check_finite,
    check_run,
    open_run,
    progress_bar,
    set_seed,
    stop_signals,
    write_run_metadata,
)

TRAIN_CHECKPOINTS = "checkpoint-*"
"""TRL's checkpoint folders: what ``--resume`` continues from."""
MAY_CHANGE = frozenset({"steps", "eval_every", "save_every", "gradient_checkpointing"})
"""Settings a resumed run may change: they do not change what the steps compute (gradient
checkpointing recomputes the same activations instead of keeping them)."""


def _ks(samples: int) -> list[int]:
    return [2**i for i in range(int(math.log2(samples)) + 1)] + (
        [samples] if samples & (samples - 1) else []
    )


# ---------------------------------------------------------------------------------------------
# warm-start
# ---------------------------------------------------------------------------------------------


def warm_start(cfg: WarmStartConfig) -> dict[str, float]:
    """Build, warm-start and save the tiny model; returns its held-out evaluation."""
    check_run(cfg.out, cfg, resume=False)  # never replaces a model folder or any run
    if cfg.out.is_dir() and any(cfg.out.iterdir()):
        raise RunError(f"--out {cfg.out} is not empty: warm-start writes a new model folder there")
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
    write_run_metadata(cfg.out / "warm_start", cfg)
    model.save_pretrained(cfg.out)
    tokenizer.save_pretrained(cfg.out)
    (cfg.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {cfg.out}; held-out: " + _summary(result))
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


def _last_checkpoint(out: Path) -> Path | None:
    return Path(found) if out.is_dir() and (found := get_last_checkpoint(str(out))) else None


def _load_policy(cfg: TrainConfig):
    """``(model, tokenizer)`` of the starting policy; 'tiny' is built once into out/init."""
    if cfg.model != "tiny":
        return load_model(cfg.model)
    init = cfg.out / "init"
    if not (init / "config.json").is_file():
        ws = dataclasses.replace(cfg.warm_start, out=init, task=cfg.task, seed=cfg.seed)
        warm_start(ws)
    return load_model(str(init))


def _lora(cfg: TrainConfig):
    """peft's LoRA config for ``cfg.lora_rank > 0`` (every linear layer but the LM head)."""
    if not cfg.lora_rank:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _trainer_config(cfg: TrainConfig) -> ERAGRPOConfig:
    """TRL's config for ``cfg``; under torchrun / accelerate it joins the process group.

    The global batch (``prompts_per_step × num_generations`` completions) is split evenly over the
    processes, so a step sees the same rollouts' worth of data however many processes run it.
    """
    era = cfg.era_settings()
    if not cfg.era:  # plain GRPO: the same trainer with an infinite band
        era.update(era_low=-math.inf, era_high=math.inf)
    batch = cfg.prompts_per_step * cfg.num_generations
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch % world:
        raise ValueError(
            f"{world} processes cannot split a batch of prompts_per_step × num_generations = "
            f"{cfg.prompts_per_step} × {cfg.num_generations} = {batch} completions evenly: choose "
            f"them so that {world} divides their product"
        )
    cpu = not torch.cuda.is_available()
    return ERAGRPOConfig(
        output_dir=str(cfg.out),
        seed=cfg.seed,
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=batch // world,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        **era,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        logging_steps=1,
        save_steps=cfg.save_every,
        save_strategy="steps",
        save_total_limit=2,  # resuming needs the last; a real model's checkpoint is GBs
        report_to="none",
        disable_tqdm=True,
        use_cpu=cpu,  # without it, transformers runs CPU processes as independent copies (gloo)
    )


class EvalCallback(TrainerCallback):
    """Held-out evaluations, metrics.csv rows, progress, and Ctrl-C → save and stop.

    Training metrics logged by TRL (already gathered over processes) are averaged over the steps
    between two evaluations and written with the evaluation as one metrics.csv row; every step
    also goes to TensorBoard. In a multi-process run only the main process (the one given a
    ``logger``) evaluates and writes; a stop request on any process stops all of them at the
    same step.
    """

    def __init__(self, cfg: TrainConfig, held_out, logger: MetricLogger | None, stop_flag, bar):
        self.cfg, self.held_out, self.logger = cfg, held_out, logger
        self.stop_flag, self.bar = stop_flag, bar
        self.pending: dict[str, list[float]] = {}
        self.task = None

    def evaluate(self, step, model, tokenizer) -> dict[str, float]:
        cfg = self.cfg
        row = {
            name: statistics.fmean(v) if (v := self.pending.get(name)) else math.nan
            for name in _TRAIN_METRICS.values()
        }
        result = evaluate(
            model,
            tokenizer,
            self.held_out[: cfg.eval_problems],
            samples=cfg.eval_samples,
            ks=_ks(cfg.eval_samples),
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_completion_length,
            grader=cfg.task.grader,
            seed=cfg.seed,
        )
        row.update({f"eval_{k}": v for k, v in result.items()})
        self.logger.row(step, row)
        self.pending.clear()
        return result

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        if self.logger is None:
            return
        self.task = self.bar.add_task(
            "GRPO" + (" + ERA" if self.cfg.era else ""),
            total=self.cfg.steps,
            completed=state.global_step,
            info="",
        )
        if state.global_step == 0:
            self.evaluate(0, model, processing_class)

    def on_log(self, args, state, control, logs=None, model=None, processing_class=None, **kw):
        logs = logs or {}
        if self.logger is None or "reward" not in logs:  # not main, or the end-of-training summary
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
        self.logger.scalars(step, {f"train/{c}": v for c, v in values.items()})
        self.bar.update(
            self.task,
            completed=step,
            info=f"reward {values['reward']:.3f}  entropy {values.get('entropy', 0):.3f}",
        )
        if step % self.cfg.eval_every == 0 or step == self.cfg.steps:
            result = self.evaluate(step, model, processing_class)
            self.bar.console.log(f"step {step}: held-out " + _summary(result))

    def on_step_end(self, args, state, control, **kw):
        stop = self.stop_flag.requested
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor(float(stop), device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            control.should_save = True
            control.should_training_stop = True


def train(cfg: TrainConfig) -> Path:
    """Run GRPO (with ERA unless ``cfg.era`` is False); returns the run directory."""
    # Refuse a folder holding another run, a --resume without a checkpoint or with another
    # configuration (era.runs' rules), on every process, before anything is loaded or written.
    check_run(cfg.out, cfg, resume=cfg.resume, may_change=MAY_CHANGE, checkpoint=TRAIN_CHECKPOINTS)
    args = _trainer_config(cfg)  # validates the TRL fields; joins the process group if any
    checkpoint = _last_checkpoint(cfg.out) if cfg.resume else None
    main = args.process_index == 0
    set_seed(cfg.seed)
    train_problems, held_out = cfg.task.problems()
    with args.main_process_first(desc="loading the policy"):  # 'tiny' is built by the main one
        model, tokenizer = _load_policy(cfg)
    chat = bool(tokenizer.chat_template)
    dataset = Dataset.from_list(
        [{**p, "prompt": prompt(p["question"], chat=chat)} for p in train_problems]
    )
    logger = None
    if main:  # the only writer of the run folder; TRL's checkpoints handle processes themselves
        open_run(
            cfg.out, cfg, resume=cfg.resume, may_change=MAY_CHANGE, checkpoint=TRAIN_CHECKPOINTS
        )
        resume_step = None
        if checkpoint is not None:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            resume_step = state["global_step"]
        logger = MetricLogger(cfg.out, resume_step=resume_step)
    # A stop signal (Ctrl-C, SIGTERM) saves a checkpoint; leaving the block then raises
    # era.runs.Interrupted, which `era` turns into exit status 130 / 143.
    with stop_signals() as stop_flag, progress_bar(unit="steps", disable=not main) as bar:
        trainer = ERAGRPOTrainer(
            model=model,
            reward_funcs=reward_function(cfg.task.grader),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[EvalCallback(cfg, held_out, logger, stop_flag, bar)],
            peft_config=_lora(cfg),
        )
        trainer.remove_callback(PrinterCallback)
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            if logger is not None:
                logger.close()
    if trainer.state.global_step >= cfg.steps:
        final = cfg.out / "final"
        if cfg.lora_rank:  # a plain checkpoint, loadable without peft
            merged = trainer.model.merge_and_unload()
            if main:
                merged.save_pretrained(final)
        else:
            trainer.save_model(str(final))
        if main:
            tokenizer.save_pretrained(final)
            print(f"done: {cfg.out / 'metrics.csv'}, final model in {final}")
    elif main:  # stopped on another process's signal
        print(f"stopped at step {trainer.state.global_step}; continue with --resume")
    return cfg.out


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------


def evaluate_model(cfg: EvalConfig) -> dict[str, float]:
    """Evaluate ``cfg.model``; prints and returns accuracy, mean reward and pass@k."""
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
