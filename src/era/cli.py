"""The ``era`` command: one subcommand per domain, each with its own tyro CLI.

``era rl ...``, ``era vision ...``, ``era llm ...`` import only their own domain, so the RL
command never pays for importing transformers (and works without the ``llm`` extra).
"""

from __future__ import annotations

import importlib
import sys

DOMAINS = {
    "rl": (
        "era.rl.cli",
        "continuous control: SAC / PPO with ERA on Gymnasium MuJoCo and dm_control",
    ),
    "vision": ("era.vision.cli", "image classification: ERA softmax head for timm / torchvision"),
    "llm": ("era.llm.cli", "LLM RL fine-tuning: token-level ERA in TRL's GRPO trainer"),
    "demo": ("era.demo", "the README's main job: a short, real demonstration of ERA"),
}

USAGE = (
    "usage: era {"
    + ",".join(DOMAINS)
    + "} ...\n\n"
    + "\n".join(f"  {name:<8} {help_}" for name, (_, help_) in DOMAINS.items())
    + "\n\nRun `era DOMAIN --help` for the commands of a domain."
)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] not in DOMAINS:
        sys.exit(f"era: unknown command {argv[0]!r}; choose one of {', '.join(DOMAINS)}\n\n{USAGE}")
    module = importlib.import_module(DOMAINS[argv[0]][0])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
