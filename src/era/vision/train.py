"""The image-classification trainer: ERA or a baseline, one CPU to many GPUs (torchrun / DDP).

In the shape of timm's ``train.py``: :func:`train` (the ``era vision train`` command) builds the
data, model, SGD/AdamW with a warmup + cosine schedule and the run folder, then alternates
:func:`train_one_epoch` and :func:`validate` (top-1/5, NLL, ECE, predictive entropy) and writes
CSV + TensorBoard logs and checkpoints. A checkpoint holds everything the next step depends on
(weights, optimiser, schedule, every process's random state, the step), as tensors and plain
data, so a resumed run continues exactly as if it had never stopped. Launched by
``torchrun --nproc-per-node N``, each process trains on ``batch_size / N`` images of every global
batch and gradients are averaged (gloo on CPU, NCCL on GPU); logging and checkpoints are done by
process 0 alone.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.distributed as dist
import tyro
from torch import nn
from torch.utils.data import DataLoader

from era.runs import (
    CHECKPOINT,
    Clock,
    MetricLogger,
    Run,
    RunError,
    StopFlag,
    check_finite,
    load_checkpoint,
    open_run,
    progress_bar,
    set_seed,
    stop_signals,
)
from era.validation import AT_LEAST_0, AT_LEAST_1, POSITIVE, Range, check_ranges
from era.vision.data import ShardedSampler, build_datasets
from era.vision.head import create_model
from era.vision.losses import classification_loss
from era.vision.metrics import EvalAccumulator

# `--out` as in every era command; `--out-dir` is the former spelling.
OutDir = Annotated[Path, tyro.conf.arg(aliases=("--out-dir",))]

# Settings a resumed run may change: they do not change what the run computes.
MAY_CHANGE = frozenset({"max_steps", "progress", "workers", "threads", "eval_batch_size"})

_RANGES = {
    "label_smoothing": Range(0, 1, high_closed=False),
    "confidence_penalty": AT_LEAST_0,
    "drop_rate": Range(0, 1, high_closed=False),
    "mixup": AT_LEAST_0,
    "cutmix": AT_LEAST_0,
    "lr": POSITIVE,
    "momentum": Range(0, 1, high_closed=False),
    "weight_decay": AT_LEAST_0,
    "epochs": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "eval_batch_size": AT_LEAST_1,
    "eval_every": AT_LEAST_0,
    "max_steps": AT_LEAST_0,
    "workers": AT_LEAST_0,
    "threads": AT_LEAST_0,
    "train_subset": AT_LEAST_0,
    "eval_subset": AT_LEAST_0,
    "image_size": AT_LEAST_1,
}


@dataclass
class TrainConfig:
    """Train an image classifier with the ERA head or a baseline; evaluate accuracy and calibration.

    Baselines from the same command: plain cross-entropy (the default), ``--label-smoothing``,
    ``--confidence-penalty``, ``--drop-rate`` (dropout before the classifier), mixup/cutmix.
    """

    out: OutDir = Path("runs/vision/fashion-mnist")
    """run folder: config, versions, metrics.csv, TensorBoard events (tb/), checkpoint; a folder
    holding another run is refused"""
    dataset: Literal["fashion-mnist", "cifar10", "cifar100", "imagefolder"] = "fashion-mnist"
    """fashion-mnist (Debian package dataset-fashion-mnist), cifar10, cifar100 (the python
    versions, extracted in --data-dir), or an ImageFolder tree (--data-dir/train, --data-dir/val)"""
    data_dir: Path | None = None
    """dataset root (default for fashion-mnist: /usr/share/datasets/fashion-mnist)"""
    image_size: int = 224
    """imagefolder only: training crop / evaluation centre-crop size"""
    train_subset: int = 0
    """train on this many images (the same fixed subset for every run); 0 = all"""
    eval_subset: int = 0
    """evaluate on the first this many test images (quick checks); 0 = all"""
    augment: bool = True
    """standard augmentation: pad-and-crop + flip (small images), random-resized crop + flip"""
    model: str = "resnet10t"
    """timm model name (randomly initialised; nothing is downloaded)"""
    era_min_entropy: float | None = None
    """put ERA on the logits with this entropy floor in nats (omit: no ERA)"""
    era_tau: float = 4.0
    """ERA's tau (> e): each class's share before normalisation is capped at 1/tau"""
    era_floor: Literal["tight", "paper"] = "tight"
    """tight: the floor is exactly era_min_entropy; paper: the paper's looser C = exp(H0 - 1)"""
    label_smoothing: float = 0.0
    """label smoothing of the cross-entropy target, in [0, 1)"""
    confidence_penalty: float = 0.0
    """beta of the confidence penalty: loss = CE - beta * H(p)"""
    drop_rate: float = 0.0
    """dropout probability before the classifier"""
    mixup: float = 0.0
    """mixup alpha (0 = off); soft targets through timm.data.Mixup"""
    cutmix: float = 0.0
    """cutmix alpha (0 = off)"""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """SGD with Nesterov momentum, or AdamW"""
    lr: float = 0.1
    """peak learning rate (for the global batch size)"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 5e-4
    """weight decay (decoupled for AdamW)"""
    epochs: int = 10
    """passes over the training set; the cosine schedule spans all of them"""
    warmup_epochs: float = 1.0
    """linear learning-rate warmup, in epochs (may be fractional)"""
    batch_size: int = 128
    """global batch size, split evenly across DDP processes"""
    eval_batch_size: int = 512
    """evaluation batch size per process"""
    eval_every: int = 0
    """evaluate (and checkpoint) every this many steps; 0 = at the end of every epoch"""
    max_steps: int = 0
    """stop with a checkpoint after this many steps in this invocation (0 = no limit)"""
    workers: int = 0
    """data-loading worker processes per training process"""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda"""
    amp: bool = True
    """bfloat16 autocast where the hardware computes in bfloat16 natively: CUDA, and CPUs with
    AVX512-BF16 or AMX (ignored on other CPUs)"""
    channels_last: bool = True
    """channels-last memory format for the model and images (faster convolutions; same results)"""
    compile: bool = False
    """torch.compile the training forward/backward (pays a compilation when the run starts; off
    by default: no speed-up found for ResNet-20 on a CPU)"""
    sync_bn: bool = False
    """with several GPUs, compute BatchNorm statistics over the global batch (SyncBatchNorm)"""
    threads: int = 0
    """torch CPU threads per process (0 = torch's default)"""
    seed: int = 0
    """seed of initialisation, data order, augmentation and dropout"""
    resume: bool = False
    """continue the run in --out from its checkpoint (an error if there is none, or if the
    configuration differs in anything but max_steps, progress, workers, threads,
    eval_batch_size)"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self):
        check_ranges(self, "", _RANGES)
        if not 0.0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"--warmup-epochs {self.warmup_epochs} is out of range: it must be in "
                f"[0, epochs = {self.epochs}]"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}: it must be auto, cpu or cuda")


# ---------------------------------------------------------------------------------------------
# Processes and devices
# ---------------------------------------------------------------------------------------------


def _start_processes(device: str) -> tuple[int, int, torch.device, bool]:
    """``(rank, world_size, device, started_here)``; joins torchrun's process group if any."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device")
    started = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        started = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return rank, world, torch.device("cuda", local_rank), started
    return rank, world, torch.device("cpu"), started


def native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds ``device`` up: CUDA, or a CPU that oneDNN runs in bf16
    (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower than float32."""
    return device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _random_state() -> dict:
    """Every random stream as tensors and plain data (loadable with ``weights_only=True``)."""
    # NumPy's global stream is part of the state: timm's Mixup draws its lambdas from it.
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation weights (the usual recipe for ResNets).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=config.lr)


def _schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup to the peak learning rate, then cosine decay to zero at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> EvalAccumulator:
    """Statistics of the model on this process's share of the test set, summed over processes."""
    model.eval()
    stats = EvalAccumulator(device=device)
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        stats.update(logits.float(), labels)
    stats.all_reduce()
    model.train()
    return stats


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Session:
    """What :func:`train_one_epoch` works with: the built pieces of one process's run."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: nn.Module
    forward: nn.Module
    """the model as trained: wrapped for DDP and compiled when asked"""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    mixup: object | None
    train_sampler: ShardedSampler
    train_loader: DataLoader
    test_loader: DataLoader
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    amp: bool
    memory_format: torch.memory_format
    run: Run | None
    """the run folder (process 0 only)"""
    logger: MetricLogger | None
    step: int = 0
    metrics: dict[str, float] | None = None
    """the last validation's metrics"""
    steps_here: int = 0
    """steps taken in this invocation (for max_steps)"""
    clock: Clock | None = None
    """training time summed over the run's invocations; started when training starts"""

    def save(self) -> None:
        """Checkpoint (process 0 writes; every process contributes its random state)."""
        states = _gather(_random_state(), self.world)
        if self.rank == 0:
            self.run.save_checkpoint(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "step": self.step,
                    "elapsed": self.clock.seconds(),
                    "random": states,
                    "config": self.run.config,
                }
            )


def _build(config: TrainConfig, rank: int, world: int, device: torch.device) -> Session:
    """Data, model, optimiser, schedule; the run folder opened (process 0) or refused."""
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by the number of processes ({world})"
        )
    local_batch = config.batch_size // world
    if (config.mixup or config.cutmix) and local_batch % 2:
        raise ValueError(f"mixup/cutmix need an even per-process batch, got {local_batch}")
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _open_run(config, rank, world)
    set_seed(config.seed)

    data = build_datasets(
        config.dataset,
        config.data_dir,
        augment=config.augment,
        image_size=config.image_size,
        train_subset=config.train_subset,
        seed=config.seed,
    )
    train_sampler = ShardedSampler(
        len(data.train), batch_size=config.batch_size, rank=rank, world_size=world, seed=config.seed
    )
    steps_per_epoch = train_sampler.batches_per_epoch()
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size={config.batch_size} exceeds the {len(data.train)} training images"
        )
    test_size = min(config.eval_subset or len(data.test), len(data.test))
    test_sampler = ShardedSampler(
        test_size, batch_size=test_size, rank=rank, world_size=world, shuffle=False, drop_last=False
    )
    # Each loader draws a seed per pass from its own generator, not from the global stream that
    # dropout uses: otherwise a resumed run (one more pass started) would shift that stream.
    loader_options = dict(
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.workers > 0,
    )
    train_loader = DataLoader(
        data.train,
        batch_size=local_batch,
        sampler=train_sampler,
        collate_fn=data.train_collate,
        drop_last=True,
        generator=torch.Generator(),
        **loader_options,
    )
    test_loader = DataLoader(
        data.test,
        batch_size=config.eval_batch_size,
        sampler=test_sampler,
        collate_fn=data.test_collate,
        generator=torch.Generator(),
        **loader_options,
    )

    model = create_model(
        config.model,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        era_min_entropy=config.era_min_entropy,
        tau=config.era_tau,
        floor=config.era_floor,
        drop_rate=config.drop_rate,
    ).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if config.sync_bn and world > 1:
        if device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    forward = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if config.compile:
        forward = torch.compile(forward)
    optimizer = _optimizer(model, config)
    total_steps = config.epochs * steps_per_epoch
    scheduler = _schedule(optimizer, round(config.warmup_epochs * steps_per_epoch), total_steps)
    mixup = None
    if config.mixup or config.cutmix:
        from timm.data import Mixup

        mixup = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            label_smoothing=config.label_smoothing,
            num_classes=data.num_classes,
        )
    return Session(
        config=config,
        rank=rank,
        world=world,
        device=device,
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=scheduler,
        mixup=mixup,
        train_sampler=train_sampler,
        train_loader=train_loader,
        test_loader=test_loader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        eval_every=config.eval_every or steps_per_epoch,
        amp=config.amp and native_bfloat16(device),
        memory_format=memory_format,
        run=run,
        logger=None,
    )


def _open_run(config: TrainConfig, rank: int, world: int) -> Run | None:
    """Process 0 opens the run folder (``era.runs.open_run``: new, or resumed with the same
    configuration); a refusal stops every process with the same message."""
    run, error = None, None
    if rank == 0:
        try:
            run = open_run(config.out, config, resume=config.resume, may_change=MAY_CHANGE)
        except RunError as e:
            error = str(e)
    errors = [e for e in _gather(error, world) if e]
    if errors:
        raise RunError(errors[0])
    return run


def _resume(session: Session) -> float:
    """Restore weights, optimiser, schedule, random streams and step from the checkpoint;
    returns the training time the run had taken so far."""
    config, world = session.config, session.world
    state = load_checkpoint(Path(config.out) / CHECKPOINT, map_location=session.device)
    session.model.load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.scheduler.load_state_dict(state["scheduler"])
    session.step = state["step"]
    if len(state["random"]) != world:
        raise RunError(
            f"the checkpoint in {config.out} was written by {len(state['random'])} processes; "
            f"resume it with the same number, not {world}"
        )
    _set_random_state(state["random"][session.rank])
    return state.get("elapsed", 0.0)  # checkpoints written before 1 Dec 2026 lack it


def train_one_epoch(session: Session, stop: StopFlag, bar, task) -> bool:
    """Train from ``session.step`` to the end of its epoch, validating and checkpointing every
    ``eval_every`` steps; returns True when the run must stop here (a stop signal on any
    process, or ``max_steps`` reached in this invocation)."""
    config, device, world = session.config, session.device, session.world
    session.train_sampler.set_epoch(*divmod(session.step, session.steps_per_epoch))
    loss_sum, loss_count = 0.0, 0
    for images, labels in session.train_loader:
        images = images.to(device, non_blocking=True, memory_format=session.memory_format)
        labels = labels.to(device)
        target = labels
        if session.mixup is not None:
            images, target = session.mixup(images, labels)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=session.amp):
            logits = session.forward(images)
        loss = classification_loss(
            logits,
            target,
            label_smoothing=0.0 if session.mixup is not None else config.label_smoothing,
            confidence_penalty=config.confidence_penalty,
        )
        session.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        session.optimizer.step()
        session.scheduler.step()
        session.step += 1
        session.steps_here += 1
        # One small all-reduce per step: the mean loss and any process's stop signal, so that
        # every process stops (or fails) at the same step.
        shared = torch.tensor([loss.item(), float(stop.requested)], device=device)
        if world > 1:
            dist.all_reduce(shared)
        mean_loss, stopping = shared[0].item() / world, shared[1].item() > 0
        check_finite(session.step, loss=mean_loss)
        loss_sum, loss_count = loss_sum + mean_loss, loss_count + 1
        metrics = session.metrics
        info = f"loss {mean_loss:.3f}" + (f" top1 {metrics['top1']:.3f}" if metrics else "")
        bar.update(task, advance=1, info=info)

        step, lr = session.step, session.scheduler.get_last_lr()[0]
        if step % session.eval_every == 0 or step == session.total_steps:
            stats = validate(
                session.model, session.test_loader, device, session.amp, session.memory_format
            )
            session.metrics = stats.compute()
            if session.logger:
                row = {
                    "epoch": step / session.steps_per_epoch,
                    **session.metrics,
                    "train_loss": loss_sum / loss_count,
                    "lr": lr,
                    "time_s": session.clock.seconds(),
                }
                session.logger.row(step, row)
                (Path(config.out) / "reliability.json").write_text(
                    json.dumps({"step": step, **stats.reliability()}) + "\n"
                )
            loss_sum, loss_count = 0.0, 0
            session.save()
        elif session.logger and step % 50 == 0:
            session.logger.scalars(step, {"train/loss": mean_loss, "train/lr": lr})
        if stopping or (config.max_steps and session.steps_here >= config.max_steps):
            if step % session.eval_every:
                session.save()
            return True
        if step == session.total_steps:
            break
    return False


def train(config: TrainConfig) -> dict[str, float]:
    """Train (or resume) as configured; returns the last validation's metrics.

    A run stopped by Ctrl-C or SIGTERM saves a checkpoint and raises ``era.runs.Interrupted``
    (``era`` exits 130 / 143); one stopped by ``max_steps`` returns.
    """
    rank, world, device, started_here = _start_processes(config.device)
    try:
        return _main(config, rank, world, device)
    finally:
        if started_here:
            dist.destroy_process_group()


def _main(config: TrainConfig, rank: int, world: int, device: torch.device) -> dict[str, float]:
    session = _build(config, rank, world, device)
    final_path = Path(config.out) / "final.json"
    elapsed = 0.0
    if config.resume:
        elapsed = _resume(session)
        if session.step >= session.total_steps and final_path.exists():
            final = json.loads(final_path.read_text())
            return {k: v for k, v in final.items() if k != "step"}
    if rank == 0:
        session.logger = MetricLogger(
            Path(config.out), resume_step=session.step if config.resume else None
        )
    session.clock = Clock(elapsed)
    quiet = rank != 0 or not config.progress
    try:
        with stop_signals() as stop, progress_bar(disable=quiet) as bar:
            task = bar.add_task(
                f"train {config.model}", total=session.total_steps, completed=session.step, info=""
            )
            while session.step < session.total_steps:
                if train_one_epoch(session, stop, bar, task):
                    if rank == 0 and not stop.requested:
                        print(
                            f"stopped at step {session.step}/{session.total_steps}; "
                            "continue with --resume"
                        )
                    return session.metrics or {}
    finally:
        if session.logger:
            session.logger.close()
    if rank == 0:
        final_path.write_text(
            json.dumps({"step": session.step, **session.metrics}, indent=2) + "\n"
        )
    return session.metrics
