"""Token-level ERA inside TRL's GRPO trainer (ERA paper, arXiv 2510.08549).

Switching an existing TRL script to ERA changes three names::

    from era.llm import ERAGRPOConfig, ERAGRPOTrainer  # was: from trl import GRPOConfig, ...
    args = ERAGRPOConfig(output_dir="out", era_low=0.45, era_high=3.0, era_k=2.0)
    trainer = ERAGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data)

Rollouts are TRL's own, sampled from the unmodified policy. ERA acts only inside the update
(``docs/activations.md``, section 3):

* **Loss pass.** TRL's ``_compute_loss`` asks ``_get_per_token_logps_and_entropies`` for the
  log-probs. Ours runs the policy through the ERA LM head (:func:`era.llm.head.era_lm_head`) that,
  in one pass over the vocabulary, returns the entropy of the unmodified policy and the
  log-normaliser of ``softmax(s·z)`` for each candidate scale ``s`` in ``(1, k, 1/k)`` (the extra
  ones only for responses with A > 0, the only ones ERA may rescale). The response entropy puts
  each response below, inside or above the band; a positive-advantage response below gets
  ``s = k``, above ``s = 1/k``; its log-probs are read off for ``s`` and the advantages handed on
  to TRL's loss are rescaled by ``1/s``.
* **Old-log-prob pass**, when TRL runs one (several updates per rollout, or vLLM importance
  sampling): the old log-probs are recomputed under the activation and the decision is frozen for
  that batch, so the PPO ratio compares the same activated distribution before and after.
"""

from __future__ import annotations

import functools
import math
import types
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from accelerate.utils import is_peft_model
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import maybe_gather_lm_head_ctx

from era.llm.head import HeadOutput, era_lm_head
from era.llm.settings import ERASettings
from era.token import ABOVE, BELOW, INSIDE, band_side, response_entropy


@dataclass(frozen=True)
class _HeadRequest:
    """What the patched forward should compute; passed as ``model(..., era_head=request)``."""

    scales: tuple[float, ...]
    temperature: float
    top_k: int | None
    fp32: bool  # TRL's cast_lm_head_to_fp32
    may_scale: Tensor | None = None
    """bool ``[B]``: responses that may read a scale other than 1 (None: all)."""

    def __call__(self, hidden: Tensor, labels: Tensor, lm_head: torch.nn.Module) -> HeadOutput:
        """Score the positions whose label is not -100; the others read as zeros."""
        mask = labels != -100
        weight, bias = lm_head.weight, lm_head.bias
        if hasattr(weight, "full_tensor"):  # FSDP2 DTensor shards
            weight = weight.full_tensor()
            bias = None if bias is None else bias.full_tensor()
        h = hidden[mask].to(weight.device)
        scaled_rows = None
        if self.may_scale is not None:
            scaled_rows = self.may_scale[:, None].expand(mask.shape)[mask].to(weight.device)
        # TRL's cast_lm_head_to_fp32 runs the head in float32, outside autocast.
        autocast = torch.autocast(h.device.type, enabled=False) if self.fp32 else nullcontext()
        with autocast, maybe_gather_lm_head_ctx(lm_head.weight, lm_head.bias):
            out = era_lm_head(
                h.float() if self.fp32 else h,
                weight,
                bias,
                labels[mask].to(weight.device),
                scales=self.scales,
                temperature=self.temperature,
                top_k=self.top_k,
                scaled_rows=scaled_rows,
            )
        full = []
        for x in out:
            # kth_logit is -inf without top-k; 0 marks "not scored" like the other fields.
            grid = x.new_zeros(mask.shape + x.shape[1:])
            grid[mask.to(x.device)] = x
            full.append(grid)
        return HeadOutput(*full)


def _add_era_head(model) -> None:
    """Let ``model(..., labels=..., era_head=request)`` return the ERA head's :class:`HeadOutput`.

    Wraps the forward TRL already patched, so every other call (generation, TRL's fused head, the
    reference model) is unchanged. Going through ``model(...)`` rather than the backbone directly
    keeps DDP, PEFT and gradient checkpointing in the loop.
    """
    inner = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, era_head: _HeadRequest | None = None, **kwargs):
        if era_head is None:
            return inner(*args, **kwargs)
        labels = kwargs.pop("labels")
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        # The hidden state at position t scores the token at t + 1.
        return era_head(hidden[:, :-1], labels[:, 1:], self.get_output_embeddings())

    model.forward = types.MethodType(forward, model)


# ---------------------------------------------------------------------------------------------
# Config and trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class ERAGRPOConfig(ERASettings, GRPOConfig):
    r"""[`~trl.GRPOConfig`] plus token-level ERA's settings (`era.llm.settings.ERASettings`).

    Where a response with a positive advantage has a response entropy (mean of its top
    `era_top_fraction` token entropies) below `era_low`, its logits are scored as `era_k · z` in
    the loss (pushing entropy up); above `era_high`, as `z / era_k` (pushing it down). Everything
    else of GRPOConfig keeps its meaning. ERA replaces the entropy bonus, so `entropy_coef` must
    stay 0.
    """

    def __post_init__(self):
        self.check_era()
        if self.entropy_coef != 0 or self.use_adaptive_entropy:
            raise ValueError(
                "ERA replaces the entropy bonus: set entropy_coef=0 and use_adaptive_entropy=False "
                f"(got entropy_coef={self.entropy_coef!r}, "
                f"use_adaptive_entropy={self.use_adaptive_entropy!r})"
            )
        GRPOConfig.__post_init__(self)  # ERASettings first in the MRO keeps output_dir first


class ERAGRPOTrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] with token-level ERA in the loss; a drop-in replacement.

    Takes an :class:`ERAGRPOConfig`. Logs, next to TRL's metrics: ``era/frac_below``,
    ``era/frac_in_band``, ``era/frac_above`` (responses by response entropy against the band),
    ``era/frac_scaled`` (responses whose logits were rescaled: positive advantage, out of band),
    ``era/response_entropy`` (mean response entropy) and ``era/token_entropy`` (token-mean entropy
    of the unmodified policy, which is also TRL's ``entropy``).
    """

    def __init__(self, model, reward_funcs, args: ERAGRPOConfig | None = None, **kwargs):
        if args is None:  # TRL's default, with ERA's defaults
            name = model if isinstance(model, str) else model.config._name_or_path
            args = ERAGRPOConfig(f"{name.split('/')[-1]}-ERA-GRPO")
        if not isinstance(args, ERAGRPOConfig):
            raise TypeError(
                f"ERAGRPOTrainer needs args=ERAGRPOConfig(...), got {type(args).__name__}"
            )
        super().__init__(model, reward_funcs, args, **kwargs)
        a = self.args
        # Only the scales a response can actually receive get a log-normaliser; _era_column maps
        # a band side (BELOW, INSIDE, ABOVE) + 1 to the head's column of that side's scale.
        scales, column = [1.0], [0, 0, 0]
        if a.era_low > -math.inf:
            column[BELOW + 1], scales = len(scales), [*scales, a.era_k]
        if a.era_high < math.inf:
            column[ABOVE + 1], scales = len(scales), [*scales, 1.0 / a.era_k]
        self._era_head = _HeadRequest(
            tuple(scales), self.temperature, a.era_top_k_logprobs, a.cast_lm_head_to_fp32
        )
        self._era_column = torch.tensor(column)
        base = self.model.get_base_model() if is_peft_model(self.model) else self.model
        _check_plain_head(base.config.get_text_config())
        _add_era_head(base)
        self._era_batch = None

    # -- the decision ---------------------------------------------------------------------------

    def _era_decide(self, head: HeadOutput, mask: Tensor, advantages: Tensor, resp_entropy=None):
        """The band decision and what follows from it.

        Returns the response entropies ``[B]``, their band sides (int8 ``[B]``), the column of the
        head's scales shaped like ``advantages`` (0, i.e. scale 1, wherever A <= 0 or the side is
        INSIDE), and the per-token log-probs under those scales.
        """
        a = self.args
        if resp_entropy is None:
            resp_entropy = response_entropy(head.entropy, mask, a.era_top_fraction)
        side = band_side(resp_entropy, a.era_low, a.era_high)
        column = self._era_column.to(side.device)[side.long() + 1]
        column = column if advantages.dim() == 1 else column[:, None].expand(advantages.shape)
        column = column.masked_fill(advantages <= 0, 0)
        per_token = column[:, None] if column.dim() == 1 else column
        logps = head.logprobs(self._era_head.scales, per_token.expand(mask.shape))
        return resp_entropy, side, column, logps

    def _era_head_pass(self, model, input_ids, attention_mask, logits_to_keep, advantages):
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, :-logits_to_keep] = -100
        positive = advantages > 0
        request = replace(
            self._era_head, may_scale=positive if positive.dim() == 1 else positive.any(dim=1)
        )
        with self.accelerator.autocast():
            out = model(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, era_head=request
            )
        return HeadOutput(*(x[:, -logits_to_keep:] for x in out))

    # -- TRL hooks --------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if "old_per_token_logps" not in output:
            return output
        # TRL scored the old policy without ERA (that is what vLLM's importance ratio needs). The
        # PPO ratio needs the old log-probs under the activation: decide the scales now, from the
        # policy that sampled, and keep the decision for every update on this batch.
        mask = _loss_mask(output)
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        mode = "train" if self.model.training else "eval"
        size = (
            self.args.per_device_train_batch_size
            if mode == "train"
            else self.args.per_device_eval_batch_size
        )
        entropies, logps = [], []
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], size):
                rows = slice(start, start + size)
                advantages = output["advantages"][rows]
                head = self._era_head_pass(
                    self.model,
                    input_ids[rows],
                    attention_mask[rows],
                    output["completion_ids"].shape[1],
                    advantages,
                )
                h, _, _, lp = self._era_decide(head, mask[rows], advantages)
                entropies.append(h)
                logps.append(lp)
        output["era_response_entropy"] = torch.cat(entropies)
        output["old_per_token_logps"] = torch.cat(logps)
        return output

    def _compute_loss(self, model, inputs):
        # TRL reads the advantages after asking for the log-probs, and ERA can only rescale them
        # once the log-prob pass has measured the entropies: hand TRL a copy that the pass below
        # updates (a copy, so that a batch reused for several updates is never rescaled twice).
        self._era_batch = dict(inputs)
        try:
            return super()._compute_loss(model, self._era_batch)
        finally:
            self._era_batch = None

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        batch = self._era_batch
        if batch is None:  # rollout-side passes (old, reference) are plain TRL
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **multimodal,
            )
        if compute_aux_loss or any(v is not None for v in multimodal.values()):
            raise NotImplementedError(
                "ERAGRPOTrainer supports text-only models without a MoE load-balancing loss"
            )
        advantages = batch["advantages"]
        head = self._era_head_pass(model, input_ids, attention_mask, logits_to_keep, advantages)
        mask = _loss_mask(batch)
        resp_entropy, side, column, logps = self._era_decide(
            head, mask, advantages, batch.get("era_response_entropy")
        )
        if self.args.era_advantage_scaling:
            scales = torch.tensor(self._era_head.scales, device=column.device)
            batch["advantages"] = advantages / scales[column].to(advantages.dtype)  # A' = A / s
        self._era_log(resp_entropy, side, column, head.entropy, mask)
        return logps, head.entropy, None

    def _era_log(self, resp_entropy: Tensor, side: Tensor, column: Tensor, entropy, mask: Tensor):
        scored = mask.sum(dim=1) > 0  # a response with no tokens has no entropy to classify
        scaled = column != 0 if column.dim() == 1 else (column != 0).any(dim=1)
        counts = torch.stack(
            [
                (scored & (side == BELOW)).sum(),
                (scored & (side == INSIDE)).sum(),
                (scored & (side == ABOVE)).sum(),
                (scored & scaled).sum(),
                scored.sum(),
            ]
        ).float()
        sums = torch.stack(
            [(resp_entropy * scored).sum(), (entropy * mask).sum(), mask.sum()]
        ).float()
        counts, sums = self.accelerator.reduce(torch.cat([counts, sums]), reduction="sum").split(5)
        n = counts[-1].clamp(min=1)
        metrics = self._metrics["train" if self.model.training else "eval"]
        names = ("frac_below", "frac_in_band", "frac_above", "frac_scaled")
        for name, value in zip(names, counts[:-1], strict=True):
            metrics[f"era/{name}"].append((value / n).item())
        metrics["era/response_entropy"].append((sums[0] / n).item())
        metrics["era/token_entropy"].append((sums[1] / sums[2].clamp(min=1)).item())


def _check_plain_head(config) -> None:
    """The ERA head computes ``hidden @ W.T + b``; refuse models whose logits are transformed."""
    transforms = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                  "lm_head_multiplier", "logits_scaling")  # fmt: skip
    found = {name: getattr(config, name) for name in transforms if getattr(config, name, None)}
    if any(v != 1.0 or name == "final_logit_softcapping" for name, v in found.items()):
        raise NotImplementedError(
            f"ERAGRPOTrainer supports LM heads without logit soft-capping or scaling; this model "
            f"has {found}"
        )


def _loss_mask(batch) -> Tensor:
    """The tokens TRL's loss counts: completion tokens, minus tool output when there is any."""
    mask = batch["completion_mask"]
    return mask if "tool_mask" not in batch else mask * batch["tool_mask"]
