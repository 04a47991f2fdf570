"""ERA for RL fine-tuning of language models: a drop-in for TRL's GRPO trainer (spec §3).

``ERAGRPOConfig`` / ``ERAGRPOTrainer`` subclass TRL's ``GRPOConfig`` / ``GRPOTrainer``; see
:mod:`era.llm.trl`. They are imported on first use, so the rest of ``era.llm`` does not pay for
importing TRL.
"""

__all__ = ["ERAGRPOConfig", "ERAGRPOTrainer", "era_lm_head"]


def __getattr__(name: str):
    if name in __all__:
        from era.llm import trl

        return getattr(trl, name)
    raise AttributeError(f"module 'era.llm' has no attribute {name!r}")
