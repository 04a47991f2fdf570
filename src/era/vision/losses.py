"""The training losses compared with ERA, all computed on the model's (possibly ERA) logits.

ERA itself needs only plain cross-entropy. Label smoothing (Szegedy et al., 2016) and the
confidence penalty (Pereyra et al., 2017: ``CE − β·H(p)``) are the baselines that also fight
overconfidence, but through the loss, so they act only on training inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def classification_loss(
    logits: Tensor,
    target: Tensor,
    *,
    label_smoothing: float = 0.0,
    confidence_penalty: float = 0.0,
) -> Tensor:
    """Mean cross-entropy, optionally label-smoothed, minus ``confidence_penalty``·mean entropy.

    ``target`` holds class indices ``[B]`` or class probabilities ``[B, C]`` (the soft targets of
    mixup / cutmix, e.g. from ``timm.data.Mixup``, which already include its label smoothing).
    Computed in float32 whatever the logits' dtype.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    if confidence_penalty < 0.0:
        raise ValueError(f"confidence_penalty must be >= 0, got {confidence_penalty!r}")
    logits = logits.float()
    target = target.float() if target.is_floating_point() else target
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if confidence_penalty:
        logp = torch.log_softmax(logits, dim=-1)
        loss = loss + confidence_penalty * (logp.exp() * logp).sum(-1).mean()
    return loss
