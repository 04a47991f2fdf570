"""ERA for RL fine-tuning of language models: a drop-in for TRL's GRPO trainer.

``ERAGRPOConfig`` / ``ERAGRPOTrainer`` subclass TRL's ``GRPOConfig`` / ``GRPOTrainer`` (see
:mod:`era.llm.trl`); ``era_lm_head`` is their tiled LM head (:mod:`era.llm.head`, pure torch). They
are imported on first use, so the rest of ``era.llm`` does not pay for importing TRL. The maths is
in ``docs/activations.md`` (section 3).
"""

__all__ = ["ERAGRPOConfig", "ERAGRPOTrainer", "era_lm_head"]


def __getattr__(name: str):
    if name == "era_lm_head":
        from era.llm.head import era_lm_head

        return era_lm_head
    if name in __all__:
        from era.llm import trl

        return getattr(trl, name)
    raise AttributeError(f"module 'era.llm' has no attribute {name!r}")
