"""What every training run in this project leaves behind, in one place.

A run directory holds ``config.json`` (the exact configuration), ``versions.json`` (Python,
packages, git commit, command line), ``metrics.csv`` (one row per evaluation), TensorBoard
events under ``tb/`` and checkpoints. The helpers here are shared by the RL, vision and LLM
trainers so that every run can be resumed, compared and plotted the same way.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

_TRACKED_PACKAGES = (
    "era-activation",
    "torch",
    "numpy",
    "gymnasium",
    "mujoco",
    "dm-control",
    "timm",
    "torchvision",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "stable-baselines3",
)


class DivergenceError(RuntimeError):
    """A loss or metric became NaN/inf: the run stops and keeps its last good checkpoint."""


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run is repeatable on the same machine."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - for libraries that draw from the global RNG
    torch.manual_seed(seed)


def git_commit() -> str | None:
    """The commit of the source tree this package was imported from, if it is a git checkout."""
    source_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=source_dir,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=source_dir,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict[str, Any]:
    """Python, platform, installed versions of the packages that shape results, git commit."""
    packages = {}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "git_commit": git_commit(),
        "command": sys.argv,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def to_jsonable(config: Any) -> Any:
    """A dataclass (possibly nested) as plain JSON types; paths and other objects as strings."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config, default=str))


def write_run_metadata(out_dir: Path, config: Any) -> None:
    """Save the configuration and the software versions beside the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_jsonable(config), indent=2) + "\n")
    (out_dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write atomically: a crash or Ctrl-C mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (our own files, so not weights-only)."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def check_finite(step: int, **values: float | torch.Tensor) -> None:
    """Raise :class:`DivergenceError` naming every value that is NaN or infinite."""
    bad = {k: float(v) for k, v in values.items() if not math.isfinite(float(v))}
    if bad:
        raise DivergenceError(
            f"non-finite values at step {step}: {bad}; the run stopped, the last good checkpoint "
            "is kept (lower the learning rate or check the inputs)"
        )


class MetricLogger:
    """One CSV row per evaluation plus TensorBoard scalars for everything logged.

    On resume, rows written after the checkpoint's step are dropped from the CSV and purged from
    TensorBoard, so a run that was killed and resumed has each step exactly once.
    """

    def __init__(self, out_dir: Path, *, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path = out_dir / "metrics.csv"
        self._columns: list[str] | None = None
        if resume_step is not None and self.csv_path.exists():
            self._truncate_after(resume_step)
        elif self.csv_path.exists():
            self.csv_path.unlink()
        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        with self.csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            self._columns = list(reader.fieldnames or [])
            rows = [row for row in reader if int(float(row["step"])) <= step]
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(rows)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """TensorBoard only: for frequent training metrics (``losses/qf``, ``charts/sps``...)."""
        for name, value in values.items():
            self.tb.add_scalar(name, float(value), step)

    def row(self, step: int, values: Mapping[str, float]) -> None:
        """Append one evaluation row to the CSV (columns fixed by the first row) and to TB."""
        row = {"step": step, **values}
        if self._columns is None:
            self._columns = list(row)
        unknown = set(row) - set(self._columns)
        if unknown:
            raise ValueError(f"metrics {sorted(unknown)} are not CSV columns {self._columns}")
        new_file = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        self.scalars(step, {f"eval/{k}": v for k, v in values.items()})
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def read_metrics(csv_path: Path) -> dict[str, np.ndarray]:
    """A ``metrics.csv`` as columns of floats (empty cells become NaN)."""
    with Path(csv_path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {
        k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
        for k in rows[0]
    }


class StopFlag:
    """Set by the first Ctrl-C; the training loop checks it, checkpoints and returns."""

    requested = False


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[StopFlag]:
    """First Ctrl-C asks the loop to save and stop; a second one interrupts at once.

    Signal handlers can only be installed from the main thread; elsewhere the flag never fires.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True
        print(
            "\nCtrl-C: saving a checkpoint and stopping (press again to abort now)", file=sys.stderr
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def progress_bar(unit: str = "steps", disable: bool = False):
    """A rich progress bar showing done/total, ``unit``/s, elapsed, ETA and a free-text ``info``.

    Use as ``with progress_bar() as p: task = p.add_task("train", total=n, info="")`` and
    ``p.update(task, advance=k, info=f"return {r:.1f}")``.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed or 0.0:,.1f} {unit}/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=disable,
    )


def run_in_parallel(fn: Callable[[Any], Any], jobs: Sequence[Any], max_workers: int) -> list[Any]:
    """Run ``fn(job)`` for each job, in up to ``max_workers`` fresh processes.

    Spawned (not forked) processes: each builds its own environments and torch threads, which is
    what one-process-per-seed experiments need. One job fails → its exception is re-raised after
    the others finish, so finished seeds are never lost. Ctrl-C reaches the running jobs too (same
    process group), which save and stop; the parent waits for them instead of killing them, and
    jobs that had not started are cancelled (their result is None).
    """
    if max_workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(jobs)
    errors = []
    queued = list(range(len(jobs)))
    with graceful_interrupt() as stop, ProcessPoolExecutor(max_workers, mp_context=ctx) as pool:
        running = {}
        while queued or running:
            # Submit only into free slots: the executor cannot cancel a job it has queued.
            while queued and len(running) < max_workers and not stop.requested:
                i = queued.pop(0)
                running[pool.submit(fn, jobs[i])] = i
            if stop.requested and queued:
                for i in queued:
                    print(f"not started (Ctrl-C): {jobs[i]}", file=sys.stderr)
                queued.clear()
            done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                if future.exception() is not None:
                    errors.append((jobs[i], future.exception()))
                else:
                    results[i] = future.result()
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {len(jobs)} jobs failed: "
            + "; ".join(f"{j}: {e!r}" for j, e in errors)
        ) from errors[0][1]
    return results
