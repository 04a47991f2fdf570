"""``era llm``: warm-start, train (GRPO with or without ERA) and evaluate language models.

    era llm warm-start --out runs/llm/init          # tiny model + tokenizer + supervised phase
    era llm train --model runs/llm/init --out runs/llm/era --era
    era llm train --model runs/llm/init --out runs/llm/grpo --no-era
    era llm eval --model runs/llm/era/final

The flags are the fields of :mod:`era.llm.config`; the runs are :mod:`era.llm.runner`.
"""

from __future__ import annotations

from era.llm.config import EvalConfig, TrainConfig, WarmStartConfig


def main(argv: list[str]) -> None:
    import tyro

    config = tyro.extras.subcommand_cli_from_dict(
        {"warm-start": WarmStartConfig, "train": TrainConfig, "eval": EvalConfig},
        args=argv,
        prog="era llm",
    )
    from era.llm import runner

    run = {
        WarmStartConfig: runner.warm_start,
        TrainConfig: runner.train,
        EvalConfig: runner.evaluate_model,
    }
    run[type(config)](config)
