"""The ``era`` command: one subcommand per domain, each with its own tyro CLI.

``era rl ...``, ``era vision ...``, ``era llm ...`` import only their own domain, so the RL
command never pays for importing transformers (and works without the ``llm`` extra).

Errors a user can fix (a refused run folder, a bad setting, a missing file, a diverged run) are
printed as one line ``era: error: ...``; ``era --debug ...`` or ``ERA_DEBUG=1`` adds the
traceback. A run stopped by Ctrl-C or SIGTERM saves and exits 130 or 143.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Iterator

DOMAINS = {
    "rl": (
        "era.rl.cli",
        "continuous control: SAC / PPO / FastSAC / OBAC / TD-MPC2 with ERA, MuJoCo / dm_control",
    ),
    "vision": ("era.vision.cli", "image classification: ERA softmax head for timm / torchvision"),
    "llm": ("era.llm.cli", "LLM RL fine-tuning: token-level ERA in TRL's GRPO trainer"),
    "demo": ("era.demo", "the README's main job: a short, real demonstration of ERA"),
}

USAGE = (
    "usage: era [--debug] {"
    + ",".join(DOMAINS)
    + "} ...\n\n"
    + "\n".join(f"  {name:<8} {help_}" for name, (_, help_) in DOMAINS.items())
    + "\n\nRun `era DOMAIN --help` for the commands of a domain. --debug (or ERA_DEBUG=1) shows "
    "the traceback of an error."
)

# Exit status: 2 for a setting or run folder to fix (as for a command-line error), 1 when the
# run itself failed.
USAGE_ERROR, RUN_FAILED = 2, 1


@contextlib.contextmanager
def user_errors(prog: str = "era", debug: bool | None = None) -> Iterator[None]:
    """Turn the errors a user can act on into one line on stderr and an exit status.

    ``RunError``/``ValueError`` exit 2, ``OSError``/``DivergenceError`` exit 1, a stop signal
    exits ``128 + signal`` (130 Ctrl-C, 143 SIGTERM). Anything else is a bug: its traceback shows.
    """
    from era.runs import DivergenceError, Interrupted, RunError

    debug = os.environ.get("ERA_DEBUG", "") not in ("", "0") if debug is None else debug
    try:
        yield
    except Interrupted as e:
        print(f"{prog}: {e}; the run saved its state, --resume continues it", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (RunError, ValueError, OSError, DivergenceError) as e:
        if debug:
            traceback.print_exc()
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        code = USAGE_ERROR if isinstance(e, (RunError, ValueError)) else RUN_FAILED
        raise SystemExit(code) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = None
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] not in DOMAINS:
        sys.exit(f"era: unknown command {argv[0]!r}; choose one of {', '.join(DOMAINS)}\n\n{USAGE}")
    with user_errors(f"era {argv[0]}", debug):
        module = importlib.import_module(DOMAINS[argv[0]][0])
        module.main(argv[1:])


if __name__ == "__main__":
    main()
