"""Attach the ERA softmax activation to any image classifier (timm, torchvision, your own).

ERA sits after the classifier's last linear layer and is part of the model: it is applied in
training *and* evaluation, the loss stays plain cross-entropy on the ERA logits, and
``softmax(model(x))`` has entropy at least ``min_entropy`` for every input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from era.softmax import SoftmaxERA


class ERAClassifier(nn.Module):
    """A classifier whose output logits pass through :class:`~era.softmax.SoftmaxERA`.

    The wrapped model is ``.model`` (load pretrained weights into it before wrapping: the
    wrapper's state dict keys start with ``model.``); the activation is ``.era``.
    """

    def __init__(self, model: nn.Module, era: SoftmaxERA):
        super().__init__()
        self.model = model
        self.era = era

    @property
    def num_classes(self) -> int:
        return self.era.num_classes

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        # Under bf16 autocast the activation still runs in float32, where its floor is exact.
        with torch.autocast(x.device.type, enabled=False):
            return self.era(logits.to(torch.promote_types(logits.dtype, torch.float32)))


def infer_num_classes(model: nn.Module) -> int:
    """The number of outputs of a timm or torchvision classifier.

    timm models expose ``num_classes`` and ``get_classifier()``; torchvision ones end in ``fc``
    (ResNet family), ``classifier`` (VGG, MobileNet, EfficientNet, ...) or ``heads`` (ViT).
    """
    count = getattr(model, "num_classes", None)
    if isinstance(count, int) and count > 0:
        return count
    heads = [getattr(model, "get_classifier", lambda: None)()]
    heads += [getattr(model, name, None) for name in ("fc", "classifier", "head", "heads")]
    for head in heads:
        if not isinstance(head, nn.Module):
            continue
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if linears:
            return linears[-1].out_features
    raise ValueError(
        f"cannot tell how many classes {type(model).__name__} predicts (no int `num_classes`, "
        "no linear `get_classifier()`, `fc`, `classifier`, `head` or `heads`); pass "
        "num_classes=... to with_era"
    )


def with_era(
    model: nn.Module,
    min_entropy: float = 0.6,
    *,
    tau: float = 4.0,
    floor: str = "tight",
    num_classes: int | None = None,
) -> ERAClassifier:
    """Wrap ``model`` (images → logits) so that its outputs go through ERA.

    ``num_classes`` is read from the model when not given (see :func:`infer_num_classes`).
    ``min_entropy`` must lie in ``[0, log num_classes)`` for the default tight floor; it is
    checked here, so a bad value fails before any training.
    """
    if num_classes is None:
        num_classes = infer_num_classes(model)
    return ERAClassifier(model, SoftmaxERA(num_classes, min_entropy, tau=tau, floor=floor))


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    era_min_entropy: float | None = None,
    tau: float = 4.0,
    floor: str = "tight",
    drop_rate: float = 0.0,
    **timm_kwargs,
) -> nn.Module:
    """A freshly initialised timm model, with ERA on its outputs when ``era_min_entropy`` is set.

    Besides timm's own models, ``resnet20`` (:mod:`era.vision.resnet`) for small images.

    ``drop_rate`` is timm's dropout before the classifier (the dropout baseline). Weights are
    never downloaded: ``pretrained=False`` always (load your own checkpoint into ``.model``).
    """
    import timm

    import era.vision.resnet  # noqa: F401  (registers resnet20 with timm)

    if not timm.is_model(name):
        raise ValueError(
            f"model must be a timm model name, got {name!r} (list them with timm.list_models())"
        )
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must lie in [0, 1), got {drop_rate!r}")
    model = timm.create_model(
        name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        **timm_kwargs,
    )
    if era_min_entropy is None:
        return model
    return with_era(model, era_min_entropy, tau=tau, floor=floor, num_classes=num_classes)
