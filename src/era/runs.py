"""What every training run in this project leaves behind, and its lifecycle, in one place.

A run folder holds ``config.json`` (the exact configuration), ``versions.json`` (Python,
packages, git commit, command line), ``metrics.csv`` (one row per evaluation), TensorBoard
events under ``tb/`` and a checkpoint. Every trainer (RL, vision, LLM, the demo) goes through the
same few calls, so every run is created, refused, resumed, stopped and logged by one set of rules::

    run = open_run(cfg.out, cfg, resume=cfg.resume, may_change={"total_steps"})
    state = run.load_checkpoint() if run.resumed else None   # tensors and plain data only
    logger = MetricLogger(run.out, resume_step=state["step"] if state else None)
    with stop_signals() as stop:               # first Ctrl-C / SIGTERM: stop.requested = True
        while step < total and not stop.requested:
            ...                                # train, logger.row(step, {...})
        run.save_checkpoint({"step": step, ...})
    # leaving the block after a signal raises Interrupted: `era` exits 130 (SIGINT) / 143 (SIGTERM)

The rules (:func:`open_run`): a folder holding any run file is never overwritten; ``--resume``
needs a checkpoint; a resume continues only the *same* configuration, compared by value (the
``out``/``resume`` fields and the caller's ``may_change`` keys excluded, so a relative, absolute or
moved ``--out`` is the same run). Checkpoints are written atomically and loaded with
``torch.load(weights_only=True)``: they hold tensors and plain Python data only, and a crafted
file cannot run code. Problems a user can fix raise :class:`RunError` (one line, naming the
folder or file); ``era.cli`` prints those as ``era: error: ...``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import multiprocessing
import os
import pickle
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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


CHECKPOINT = "checkpoint.pt"
# Files and folders that make a folder a run folder: any of them means "never overwrite".
RUN_FILES = ("config.json", "versions.json", "metrics.csv", "summary.json", "tb", CHECKPOINT)
# Where a run is and whether it was asked to resume never make it another run.
LOCATION_KEYS = frozenset({"out", "out_dir", "resume"})


class RunError(Exception):
    """A problem with a run folder or checkpoint that the user can fix; its message is one line
    naming the folder or file (an existing run, a refused resume, a corrupt checkpoint...)."""


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


@dataclasses.dataclass(frozen=True)
class Run:
    """An opened run folder: new (``resumed`` False) or continuing its checkpoint."""

    out: Path
    config: dict[str, Any]
    """the configuration as JSON (what ``config.json`` holds)"""
    resumed: bool
    checkpoint_path: Path

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path, map_location)

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Atomically write ``state`` (tensors and plain data; by convention with a ``"step"``)."""
        save_checkpoint(self.checkpoint_path, state)


def open_run(
    out: Path,
    config: Any,
    *,
    resume: bool,
    may_change: Iterable[str] = (),
    checkpoint: str = CHECKPOINT,
) -> Run:
    """Create a new run folder, or reopen one to resume it; refuse anything else.

    ``config`` is a dataclass or a JSON-able mapping. ``may_change`` names the settings (dotted
    for nested ones, e.g. ``"sac.compile"``) that a resume may change without making it another
    run, such as the total number of steps. ``checkpoint`` is the checkpoint's file name (or a
    glob pattern such as ``"checkpoint-*"`` for a trainer that writes checkpoint folders). Writes
    ``config.json`` and ``versions.json``; raises :class:`RunError` when the folder holds another
    run, ``resume`` finds no checkpoint or a different configuration, or ``out`` is unusable.
    """
    out = Path(out)
    config = check_run(out, config, resume=resume, may_change=may_change, checkpoint=checkpoint)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (out / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
    except OSError as e:
        raise RunError(f"cannot write the run folder {out}: {e.strerror or e}") from e
    return Run(out, config, resumed=resume, checkpoint_path=out / checkpoint)


def check_run(
    out: Path,
    config: Any,
    *,
    resume: bool,
    may_change: Iterable[str] = (),
    checkpoint: str = CHECKPOINT,
) -> dict[str, Any]:
    """The decision of :func:`open_run` without touching the folder (a parent process checks its
    runs before starting them elsewhere). Returns ``config`` as JSON."""
    out = Path(out)
    config = to_jsonable(config)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder")
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise RunError(f"--out {out} is not writable")
    if not resume:
        found = [name for name in (*RUN_FILES, checkpoint) if out.is_dir() and any(out.glob(name))]
        if found:
            raise RunError(
                f"{out} already holds a run ({', '.join(dict.fromkeys(found))}); pass --resume to "
                "continue it or choose another --out"
            )
        return config
    if not (out.is_dir() and any(out.glob(checkpoint))):
        raise RunError(
            f"--resume: no checkpoint ({checkpoint}) in {out} to continue; drop --resume to start "
            "a new run there (if the folder holds no other run files) or fix --out"
        )
    saved_path = out / "config.json"
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"--resume: cannot read {saved_path} to check it is the same run") from e
    changed = _differences(saved, config, LOCATION_KEYS | set(may_change))
    if changed:
        allowed = ", ".join(_flag(k) for k in sorted(may_change)) or "none"
        raise RunError(
            f"--resume: {out} holds a run with another configuration ("
            + ", ".join(f"{_flag(k)} {old!r} -> {new!r}" for k, old, new in changed)
            + f"); only these may change on resume: {allowed}; choose another --out for a new run"
        )
    return config


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


_ABSENT = "(absent)"


def _differences(old: Mapping, new: Mapping, ignored: set[str]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every setting that differs, skipping ``ignored`` keys and
    everything below them."""
    old, new = _flatten(old), _flatten(new)
    skip = lambda key: any(key == i or key.startswith(i + ".") for i in ignored)  # noqa: E731
    return [
        (key, old.get(key, _ABSENT), new.get(key, _ABSENT))
        for key in sorted(old.keys() | new.keys())
        if not skip(key) and old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]


def _flag(key: str) -> str:
    """``sac.batch_size`` -> ``--sac.batch-size``, as tyro spells the field on the command line."""
    return "--" + key.replace("_", "-")


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write atomically: a crash or Ctrl-C mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint of tensors and plain data (``weights_only``: a crafted file cannot run
    code); a missing, truncated or foreign file raises :class:`RunError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # garbage, or objects that unpickling would construct
        raise RunError(
            f"{path} is not a readable checkpoint: corrupt, or holding objects other than tensors "
            "and plain data (which could run code, so it is not loaded)"
        ) from e
    except Exception as e:  # noqa: BLE001 - truncated zips and pickles fail in many ways
        reason = " ".join(str(e).split()).split(". ")[0] or type(e).__name__
        raise RunError(
            f"{path} is not a readable checkpoint (corrupt or truncated): {reason}"
        ) from e
    if not isinstance(state, dict):
        raise RunError(f"{path} is not a checkpoint of this project (holds {type(state).__name__})")
    return state


class Clock:
    """Training wall time summed over a run's sessions: a resumed run continues its clock."""

    def __init__(self, elapsed: float = 0.0):
        self.before = elapsed
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start


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

    A new run starts both logs; resuming from a checkpoint at ``resume_step`` keeps what was
    logged up to and including that step and drops the rest (rows after it from the CSV, a torn
    last row left by a crash, and TensorBoard events after it), so a run that was stopped and
    resumed has each step exactly once, as an unsplit run has.
    """

    def __init__(self, out_dir: Path, *, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path = out_dir / "metrics.csv"
        self._columns: list[str] | None = None
        if resume_step is None and self.csv_path.exists():
            raise RunError(f"{self.csv_path} exists: a new run would overwrite it")
        if resume_step is not None and self.csv_path.exists():
            self._truncate_after(resume_step)
        # TensorBoard drops events with step >= purge_step when it reads the folder.
        purge_step = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge_step)

    def _truncate_after(self, step: int) -> None:
        """Keep the complete rows up to ``step``; a last line without its newline (a write cut
        short) or a row with missing or empty cells only is not a complete row."""
        text = self.csv_path.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(text.splitlines())
        self._columns = list(reader.fieldnames or []) or None
        rows = [row for row in reader if _complete(row) and int(float(row["step"])) <= step]
        if self._columns is None:
            self.csv_path.unlink()
            return
        tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.csv_path)

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


def _complete(row: dict) -> bool:
    """A CSV row with every cell present (no ``None``, no extra cells) and some value besides
    its step."""
    values = [v for k, v in row.items() if k != "step"]
    return None not in row and None not in values and any(v != "" for v in values)


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


class Interrupted(BaseException):
    """A stop signal ended the run after it saved; the process should exit ``128 + signum``
    (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a command killed by that signal.

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


class StopFlag:
    """Set by the first stop signal; the training loop checks ``requested``, saves and returns."""

    requested = False
    signum: int | None = None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals() -> Iterator[StopFlag]:
    """The first Ctrl-C (SIGINT) or SIGTERM (what schedulers send) asks the loop to stop; a
    second one aborts at once. Leaving the block after a stop raises :class:`Interrupted`, so
    code after it (the "run finished" part) does not run and ``era`` exits non-zero.

    Signal handlers can only be installed from the main thread; elsewhere the flag never fires.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            raise Interrupted(signum)
        flag.requested, flag.signum = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: saving a checkpoint and stopping (again to abort now)", file=sys.stderr)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if flag.requested:
        raise Interrupted(flag.signum)


@contextlib.contextmanager
def exit_on_stop(hint: str = "rerun the same command to continue") -> Iterator[None]:
    """For scripts whose runs save their state on a stop (the benchmarks): a Ctrl-C or SIGTERM
    ends the script with one line, ``stopped; <hint>``, and the status ``128 + signal``, not a
    traceback."""
    try:
        yield
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"stopped; {hint}", file=sys.stderr, flush=True)
        raise SystemExit(getattr(e, "exit_code", 130)) from None


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
    process group; send SIGTERM to the group as well), which save and stop; the parent waits for
    them instead of killing them, cancels the jobs that had not started, and raises
    :class:`Interrupted`.
    """
    if max_workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(jobs)
    errors = []
    queued = list(range(len(jobs)))
    with stop_signals() as stop, ProcessPoolExecutor(max_workers, mp_context=ctx) as pool:
        running = {}
        while queued or running:
            # Submit only into free slots: the executor cannot cancel a job it has queued.
            while queued and len(running) < max_workers and not stop.requested:
                i = queued.pop(0)
                running[pool.submit(fn, jobs[i])] = i
            if stop.requested and queued:
                for i in queued:
                    print(f"not started (stopped): {jobs[i]}", file=sys.stderr)
                queued.clear()
            done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                error = future.exception()
                if error is None:
                    results[i] = future.result()
                elif not isinstance(error, (Interrupted, KeyboardInterrupt)):  # stopped, not failed
                    errors.append((jobs[i], error))
        if errors:
            raise RuntimeError(
                f"{len(errors)} of {len(jobs)} jobs failed: "
                + "; ".join(f"{j}: {e!r}" for j, e in errors)
            ) from errors[0][1]
    return results
