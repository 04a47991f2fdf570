"""Token-level ERA's settings: one dataclass shared by the TRL config and the ``era llm`` CLI.

:class:`~era.llm.trl.ERAGRPOConfig` inherits these fields and ``era llm train`` takes them as
its ``--era-*`` flags, so their defaults (:data:`era.token.BAND_LOW` and friends), help texts and
validation (:func:`era.token.check_band`) live here once. ``docs/activations.md`` (section 3)
gives the maths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from era.token import BAND_HIGH, BAND_K, BAND_LOW, check_band


@dataclass
class ERASettings:
    """The band, the logit scale and how a response's entropy and log-probs are measured."""

    era_low: float = field(
        default=BAND_LOW,
        metadata={
            "help": "Lower edge of the response-entropy band (nats): below it, positive-advantage "
            "responses are scored with sharpened logits `era_k * z`. `-inf` disables this side."
        },
    )
    era_high: float = field(
        default=BAND_HIGH,
        metadata={
            "help": "Upper edge of the response-entropy band (nats): above it, positive-advantage "
            "responses are scored with flattened logits `z / era_k`. `inf` disables this side."
        },
    )
    era_k: float = field(
        default=BAND_K,
        metadata={"help": "Logit scale factor `k > 1` applied outside the band."},
    )
    era_top_fraction: float = field(
        default=0.2,
        metadata={
            "help": "A response's entropy is the mean of its top `max(1, floor(fraction * L))` "
            "token entropies, L its length. In (0, 1]."
        },
    )
    era_advantage_scaling: bool = field(
        default=True,
        metadata={
            "help": "Divide the advantage by the logit scale (A/k where logits were multiplied by "
            "k, k*A where divided), as in the paper."
        },
    )
    era_top_k_logprobs: int | None = field(
        default=None,
        metadata={
            "help": "If set (the authors used 20), log-probs are renormalised over the top-k "
            "activated logits; a token outside them gets a constant -1e4 (no gradient)."
        },
    )

    def __post_init__(self):
        self.check_era()

    def check_era(self) -> None:
        """Raise a ``ValueError`` naming the first invalid field."""
        check_band(self.era_low, self.era_high, self.era_k, prefix="era_")
        if not 0 < self.era_top_fraction <= 1:
            raise ValueError(f"era_top_fraction must be in (0, 1], got {self.era_top_fraction!r}")
        top_k = self.era_top_k_logprobs
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"era_top_k_logprobs must be None or an integer >= 1, got {top_k!r}")

    def era_settings(self) -> dict:
        """These fields as keyword arguments (for building an ``ERAGRPOConfig``)."""
        return {name: getattr(self, name) for name in ERASettings.__dataclass_fields__}
