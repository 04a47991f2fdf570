"""Token-level ERA inside verl (0.9.x) — a plugin, loaded in every Ray worker by import.

ERA scales a response's *logits* before the log-softmax (``k·z`` when its entropy is below the
band, ``z/k`` above it, only where the advantage is positive) and rescales its advantage by the
inverse; see ``docs/activations.md`` and :mod:`era.token`. verl's policy-loss registry only sees
log-probs, so the plugin has two halves that meet once per micro-batch:

* :class:`ERAFSDPEngineWithLMHead` — verl's FSDP language-model engine with the logits→log-probs
  step of the update pass replaced: from the detached entropy of the unmodified policy (at the
  sampling temperature) it computes each response's entropy (mean of its top 20% token entropies),
  decides the logit scale from it and the advantage's sign, and returns the log-probs of the
  activated policy ``softmax(s·z)``. Registered for the ``fsdp``/``fsdp2`` backends under the
  engine vendor ``"era"`` (select it with ``VERL_ENGINE_VENDOR=era``).
* the ``"era"`` policy loss — verl's clipped PPO objective with the advantage rescaled to
  ``A / s``. For tokens whose logits were scaled, the "old" log-prob is the activated log-prob
  itself (detached), because verl computes old log-probs before advantages exist, so the
  activated old log-prob cannot be known then (see ``docs/verl.md``).

The engine hands its decision to the loss through :func:`_put_decision` / :func:`_take_decision`:
verl's engine calls ``prepare_model_outputs`` and then the loss on the same micro-batch in the
same process, and the loss refuses to run without a fresh decision, so a run with the ``"era"``
loss but the stock engine fails at its first step instead of training plain PPO.

Settings come from ``actor_rollout_ref.actor.policy_loss`` (an :class:`ERAPolicyLossConfig`,
picked by its Hydra ``_target_``); the engine reads them from the actor config that verl binds
into its loss function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, register_policy_loss
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.dataset_utils import DatasetPadMode
from verl.workers.config import PolicyLossConfig
from verl.workers.engine import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.padding import no_padding_2_padding

from era.token import (
    BAND_HIGH,
    BAND_K,
    BAND_LOW,
    check_band,
    era_scales,
    response_entropy,
    token_entropy,
    token_logprobs,
)

LOSS_MODE = "era"
"""The policy loss name: ``actor_rollout_ref.actor.policy_loss.loss_mode=era``."""
ENGINE_VENDOR = "era"
"""The engine registry's vendor key for the ERA engine: ``VERL_ENGINE_VENDOR=era``."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class ERAPolicyLossConfig(PolicyLossConfig):
    """verl's policy-loss config plus ERA's band (Hydra ``_target_`` of ``actor.policy_loss``)."""

    loss_mode: str = LOSS_MODE
    era_low: float = BAND_LOW
    """Lower edge of the response-entropy band (nats): below it, logits ×k where A > 0."""
    era_high: float = BAND_HIGH
    """Upper edge of the band (nats): above it, logits ÷k where A > 0."""
    era_k: float = BAND_K
    """Logit scale factor k > 1 (era_low=-inf, era_high=inf turn ERA off)."""
    era_top_fraction: float = 0.2
    """A response's entropy is the mean of its top ``max(1, floor(f·L))`` token entropies."""

    def __post_init__(self):
        if self.loss_mode != LOSS_MODE:
            raise ValueError(
                f"ERAPolicyLossConfig needs loss_mode={LOSS_MODE!r}, got {self.loss_mode!r}"
            )
        check_band(self.era_low, self.era_high, self.era_k, prefix="era_")
        if not 0.0 < self.era_top_fraction <= 1.0:
            raise ValueError(f"era_top_fraction must be in (0, 1], got {self.era_top_fraction!r}")


def _settings(loss_function) -> ERAPolicyLossConfig | None:
    """ERA's settings from the loss verl passes to the engine (``partial(ppo_loss, config=...)``),
    or None when the run does not use the ``"era"`` loss (then the engine is verl's own)."""
    config = getattr(loss_function, "keywords", {}).get("config")
    policy_loss = None if config is None else config.get("policy_loss")
    if policy_loss is None or policy_loss.get("loss_mode") != LOSS_MODE:
        return None
    if not isinstance(policy_loss, ERAPolicyLossConfig):
        raise TypeError(
            "loss_mode=era needs ERA's settings: set "
            "actor_rollout_ref.actor.policy_loss._target_=era.llm.verl.ERAPolicyLossConfig"
        )
    return policy_loss


# ---------------------------------------------------------------------------------------------
# The engine's decision, handed to the loss
# ---------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """ERA's choice for one micro-batch, in the loss's response layout ``[B, R]``."""

    logit_scale: Tensor
    """Per token: k, 1 or 1/k (1 at padding)."""
    response_entropy: Tensor
    """[B]: each response's entropy (top fraction of its tokens, unmodified policy)."""
    token_entropy: Tensor
    """[B, R]: the unmodified policy's entropy at each response position."""
    response_mask: Tensor
    """[B, R] bool."""


_pending: Decision | None = None


def _put_decision(decision: Decision) -> None:
    global _pending
    _pending = decision


def _take_decision(shape: torch.Size) -> Decision:
    global _pending
    decision, _pending = _pending, None
    if decision is None:
        raise RuntimeError(
            "the 'era' policy loss found no ERA decision for this micro-batch: the actor must run "
            f"ERA's engine (set VERL_ENGINE_VENDOR={ENGINE_VENDOR} in the workers' environment and "
            "load era.llm.verl with actor_rollout_ref.model.external_lib=era.llm.verl)"
        )
    if decision.logit_scale.shape != shape:
        raise RuntimeError(
            f"ERA decision of shape {tuple(decision.logit_scale.shape)} does not match the "
            f"loss's advantages {tuple(shape)}"
        )
    return decision


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


@EngineRegistry.register(
    model_type="language_model",
    backend=["fsdp", "fsdp2"],
    device=["cuda", "npu"],
    vendor=ENGINE_VENDOR,
)
class ERAFSDPEngineWithLMHead(FSDPEngineWithLMHead):
    """verl's FSDP actor engine whose update pass scores tokens under ERA's activated logits.

    Passes without the ``"era"`` loss (old log-probs, the reference policy, other losses) are
    verl's own, so the old-log-prob pass returns the unmodified policy's log-probs and entropy.
    """

    def prepare_model_outputs(
        self, output, output_args, micro_batch: TensorDict, logits_processor_func
    ):
        settings = _settings(logits_processor_func)
        if settings is None:
            return super().prepare_model_outputs(
                output, output_args, micro_batch, logits_processor_func
            )
        self._check_supported(micro_batch)

        logits = output.logits.squeeze(0)  # [packed tokens (+ pad), vocab]
        if hasattr(logits, "full_tensor"):  # tensor-parallel DTensor shards
            logits = logits.full_tensor()
        logits = logits / output_args["temperature_rmpad"].clamp(min=1e-8)[:, None].to(logits.dtype)
        labels = output_args["input_ids_rmpad_rolled"]
        pad_size = output_args["pad_size"]
        chunk = self.engine_config.entropy_from_logits_chunk_size
        calculate_entropy = tu.get_non_tensor_data(micro_batch, "calculate_entropy", False)

        if calculate_entropy:  # an entropy bonus needs its gradient
            entropy = token_entropy(logits, chunk_size=chunk)
        else:
            with torch.no_grad():
                entropy = token_entropy(logits.detach(), chunk_size=chunk)
        decision = decide(entropy.detach(), micro_batch, settings, pad_size)
        scale = _packed_scale(decision, micro_batch, labels.shape[0])
        log_probs = token_logprobs(logits, labels, scale=scale.to(logits.device), chunk_size=chunk)
        _put_decision(decision)

        offsets = micro_batch["input_ids"].offsets()
        strip = slice(0, labels.shape[0] - pad_size)
        model_output = {
            "log_probs": torch.nested.nested_tensor_from_jagged(log_probs[strip], offsets)
        }
        if calculate_entropy:
            model_output["entropy"] = torch.nested.nested_tensor_from_jagged(
                entropy[strip], offsets
            )
        return model_output

    def _check_supported(self, micro_batch: TensorDict) -> None:
        """The update pass's layouts this engine implements; the others fail here, by name."""
        unsupported = {
            "use_remove_padding=False": not tu.get_non_tensor_data(
                micro_batch, "use_remove_padding", True
            ),
            "use_fused_kernels=True": tu.get_non_tensor_data(
                micro_batch, "use_fused_kernels", False
            ),
            "Ulysses sequence parallelism": self.use_ulysses_sp,
            "distillation": tu.get_non_tensor_data(micro_batch, "distillation_use_topk", False),
            "calculate_sum_pi_squared": tu.get_non_tensor_data(
                micro_batch, "calculate_sum_pi_squared", False
            ),
            "a pad mode other than NO_PADDING": tu.get_non_tensor_data(
                micro_batch, "pad_mode", DatasetPadMode.NO_PADDING
            )
            != DatasetPadMode.NO_PADDING,
        }
        named = [name for name, present in unsupported.items() if present]
        if named:
            raise NotImplementedError(f"ERA's verl engine does not support {', '.join(named)}")
        if "advantages" not in micro_batch.keys():
            raise RuntimeError("the 'era' loss pass needs 'advantages' in the micro-batch")


def decide(
    packed_entropy: Tensor, micro_batch: TensorDict, settings: ERAPolicyLossConfig, pad_size: int
) -> Decision:
    """ERA's logit scales from the packed token entropies ``[tokens + pad_size]`` (unmodified
    policy, detached) and the micro-batch's advantages, in the loss's ``[B, R]`` layout."""
    data = micro_batch.select("response_mask", "advantages").to_padded_tensor()
    mask = data["response_mask"].bool()
    advantages = data["advantages"]
    unpadded = packed_entropy[: packed_entropy.shape[0] - pad_size]
    entropy = no_padding_2_padding(unpadded, micro_batch)[:, : mask.shape[1]]
    entropy = entropy.to(advantages.device).masked_fill(~mask, 0.0)
    h = response_entropy(entropy, mask, settings.era_top_fraction)
    logit_scale, _ = era_scales(
        h, advantages, low=settings.era_low, high=settings.era_high, k=settings.era_k
    )
    return Decision(logit_scale.masked_fill(~mask, 1.0), h, entropy, mask)


def _packed_scale(decision: Decision, micro_batch: TensorDict, n_packed: int) -> Tensor:
    """The per-token logit scale in the engine's packed layout (1 at prompts and padding).

    The packed position of each response token is found by sending position numbers through
    verl's own response slicer, so the two layouts cannot drift apart.
    """
    n_tokens = micro_batch["input_ids"].values().shape[0]
    positions = torch.arange(1, n_tokens + 1, device=decision.logit_scale.device)
    index = no_padding_2_padding(positions, micro_batch)[:, : decision.logit_scale.shape[1]] - 1
    valid = index >= 0  # F.pad filled past-the-end positions with 0, hence -1 here
    scale = torch.ones(n_packed, dtype=decision.logit_scale.dtype, device=index.device)
    scale[index[valid]] = decision.logit_scale[valid]
    return scale


# ---------------------------------------------------------------------------------------------
# The policy loss
# ---------------------------------------------------------------------------------------------


@register_policy_loss(LOSS_MODE)
def compute_policy_loss_era(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config=None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """verl's clipped PPO objective on ERA's activated log-probs with ``A' = A / s``.

    Where the logits were scaled (s != 1) the ratio is taken against the detached activated
    log-prob (ratio 1): verl's old log-probs are those of the unmodified policy, computed before
    the advantages that decide the scale exist. With one update per batch (the recipe) this is
    exactly PPO with activated old log-probs; with several mini-batches those tokens go unclipped.
    """
    decision = _take_decision(advantages.shape)
    scale = decision.logit_scale.to(device=advantages.device, dtype=advantages.dtype)
    scaled = scale != 1.0
    old_log_prob = torch.where(scaled, log_prob.detach(), old_log_prob)
    pg_loss, metrics = compute_policy_loss_vanilla(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages / scale,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )
    metrics.update(_band_metrics(decision, config.policy_loss))
    return pg_loss, metrics


def _band_metrics(decision: Decision, settings: ERAPolicyLossConfig) -> dict[str, float]:
    """Where the responses sit relative to the band, and how many were scaled (TRL's names)."""
    has_tokens = decision.response_mask.any(dim=1)  # an empty response has no entropy
    n = max(int(has_tokens.sum()), 1)
    h = decision.response_entropy
    below = (h < settings.era_low) & has_tokens
    above = (h > settings.era_high) & has_tokens
    scaled = (decision.logit_scale != 1.0).any(dim=1) & has_tokens
    mask = decision.response_mask
    n_tokens = max(int(mask.sum()), 1)
    return {
        "era/frac_below": float(below.sum()) / n,
        "era/frac_in_band": float((has_tokens & ~below & ~above).sum()) / n,
        "era/frac_above": float(above.sum()) / n,
        "era/frac_scaled": float(scaled.sum()) / n,
        "era/response_entropy": float(h[has_tokens].sum()) / n,
        "era/token_entropy": float(decision.token_entropy[mask].sum()) / n_tokens,
    }
