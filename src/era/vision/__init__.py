"""Image classification with ERA: a head for any timm / torchvision classifier, a trainer.

``with_era(model, min_entropy)`` puts :class:`~era.softmax.SoftmaxERA` on a classifier's
logits; ``create_model(name, ...)`` does the same for a freshly built timm model;
``train(TrainConfig(...))`` (the ``era vision train`` command) trains and evaluates one.
"""

from era.vision.head import ERAClassifier, create_model, infer_num_classes, with_era
from era.vision.losses import classification_loss
from era.vision.metrics import (
    EvalAccumulator,
    expected_calibration_error,
    nll,
    predictive_entropy,
    reliability_bins,
    topk_accuracy,
)
from era.vision.train import TrainConfig, train

__all__ = [
    "ERAClassifier",
    "EvalAccumulator",
    "TrainConfig",
    "classification_loss",
    "create_model",
    "expected_calibration_error",
    "infer_num_classes",
    "nll",
    "predictive_entropy",
    "reliability_bins",
    "topk_accuracy",
    "train",
    "with_era",
]
