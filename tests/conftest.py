"""Test-wide settings.

Hypothesis runs derandomized and without per-example deadlines: the suite must give the same
verdict on every run of CI, and timing on a shared 2-core machine is too noisy for deadlines.

Every test runs in its own temporary folder, and the session fails if the checkout gained an
untracked file or folder: libraries write to the current directory (MuJoCo its
``MUJOCO_LOG.TXT``, TRL its ``output_dir``), and a test must leave nothing behind.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("era", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("era")

_CHECKOUT = Path(__file__).resolve().parent.parent
_untracked_before: set[str] | None = None


# Relative import paths (PYTHONPATH=src) would point elsewhere once a test changes directory:
# make them absolute, for this process and the subprocesses tests start.
sys.path[:] = [os.path.abspath(p) if p else p for p in sys.path]
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p
    )


@pytest.fixture(autouse=True, scope="session")
def _fresh_compile_cache(tmp_path_factory):
    """torch.compile's on-disk kernel cache does not key on ``ATEN_CPU_CAPABILITY``: a cache
    written under another setting made the compiled-vs-eager tests fail here, so every session
    compiles into a cache of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
        yield


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _untracked() -> set[str] | None:
    """Untracked, not ignored files and folders (empty ones too); None outside a git checkout."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "--others", "--directory", "--exclude-standard"],
            cwd=_CHECKOUT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(listing.stdout.splitlines())


def pytest_sessionstart(session):
    global _untracked_before
    _untracked_before = _untracked()


def pytest_sessionfinish(session, exitstatus):
    after = _untracked()
    if _untracked_before is None or after is None:
        return
    new = sorted(after - _untracked_before)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the tests left new files in the checkout {_CHECKOUT}: {', '.join(new)}"
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
