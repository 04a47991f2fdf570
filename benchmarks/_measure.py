"""Measurement helpers shared by the memory benchmarks (``token_memory.py``, ``llm_overhead.py``).

Peak memory of one call: on CUDA, ``max_memory_allocated`` over the call; on CPU, the kernel's
high-water mark of resident memory (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``,
Linux >= 4.0) minus the resident size before the call. For the CPU figure to follow live tensors
the process must start with glibc's ``MALLOC_MMAP_THRESHOLD_`` small (:data:`SMALL_MMAP_ENV`), so
that freed buffers go back to the kernel, and should be fresh (one call per spawned process).
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch

SMALL_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(call: Callable[[], object], device: str) -> int:
    """Peak memory that one ``call()`` adds to what is already allocated."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _vm_kib("VmRSS")
    call()
    return (_vm_kib("VmHWM") - before) * 1024


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    # A virtual machine may name every host CPU alike ("AMD EPYC"); family and model tell
    # the generations apart (their bf16 matmul rates differ 2x on this project's machines).
    fields = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.machine()
    family, model = fields.get("cpu family"), fields.get("model")
    return f"{fields['model name']} (family {family}, model {model})"


def environment(device: str) -> dict:
    """What a reader needs to judge a timing: versions, machine, threads, load, commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "torch": torch.__version__,
        "device": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": os.getloadavg(),  # > cpu_count: timings are disturbed
        "git_commit": commit,
    }
