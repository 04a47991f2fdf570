"""The ERA head on timm and torchvision classifiers: attachment, floor on real images, errors."""

import math

import pytest
import torch
from torch import nn

from era.vision.data import FASHION_MNIST_DIR, build_datasets
from era.vision.head import ERAClassifier, create_model, infer_num_classes, with_era
from era.vision.metrics import predictive_entropy
from era.vision.train import TrainConfig

torchvision = pytest.importorskip("torchvision")
needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install "
    "dataset-fashion-mnist)",
)


def test_attaches_to_timm_model():
    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=10, in_chans=1, era_min_entropy=0.5)
    assert isinstance(model, ERAClassifier) and model.num_classes == 10
    x = torch.randn(6, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (6, 10)
    assert (predictive_entropy(logits) >= 0.5 - 1e-5).all()
    # ERA is a function of the backbone's logits, and gradients reach the backbone.
    assert torch.allclose(logits, model.era(model.model(x)))
    nn.functional.cross_entropy(logits, torch.arange(6)).backward()
    assert model.model.conv1[0].weight.grad.abs().sum() > 0
    assert all(k.startswith("model.") for k in model.state_dict())


@pytest.mark.parametrize(
    ("factory", "classes"),
    [
        (lambda: torchvision.models.resnet18(num_classes=10), 10),  # .fc
        (lambda: torchvision.models.mobilenet_v3_small(num_classes=7), 7),  # .classifier[-1]
    ],
)
def test_attaches_to_torchvision_model(factory, classes):
    torch.manual_seed(0)
    model = factory().eval()
    assert infer_num_classes(model) == classes
    wrapped = with_era(model, 0.4)
    logits = wrapped(torch.randn(2, 3, 64, 64) * 5)
    assert logits.shape == (2, classes)
    assert (predictive_entropy(logits) >= 0.4 - 1e-5).all()


def test_model_without_a_known_head_needs_num_classes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    with pytest.raises(ValueError, match="num_classes"):
        with_era(model, 0.3)
    wrapped = with_era(model, 0.3, num_classes=5)
    assert wrapped(torch.randn(4, 3, 2, 2)).shape == (4, 5)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: with_era(torchvision.models.resnet18(num_classes=10), 2.5), r"min_entropy.*\["),
        (lambda: with_era(torchvision.models.resnet18(num_classes=10), 0.3, tau=2.0), "tau"),
        (lambda: with_era(torchvision.models.resnet18(num_classes=10), 0.3, floor="x"), "floor"),
        (lambda: create_model("no_such_model", num_classes=10), "timm model name"),
        (lambda: create_model("resnet10t", num_classes=10, drop_rate=1.0), "drop_rate"),
        (lambda: TrainConfig(lr=-1.0), "--lr -1.0 is out of range: it must be > 0"),
        (lambda: TrainConfig(label_smoothing=1.0), "--label-smoothing 1.0 is out of range"),
        (lambda: TrainConfig(warmup_epochs=20.0, epochs=10), "--warmup-epochs"),
        (lambda: TrainConfig(device="tpu"), "device"),
        (lambda: build_datasets("mnist"), "dataset must be one of"),
        (lambda: build_datasets("cifar10"), "needs --data-dir"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_missing_dataset_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        build_datasets("fashion-mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_datasets("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="train"):
        build_datasets("imagefolder", tmp_path)


def _images(spec, n, *, train):
    dataset = spec.train if train else spec.test
    collate = spec.train_collate if train else spec.test_collate
    return collate(dataset.__getitems__([(i, 0) for i in range(n)]))


@needs_fashion_mnist
def test_floor_holds_on_real_images_untrained_and_trained():
    """On Fashion-MNIST, an untrained and a briefly (over)trained small ResNet: no test image's
    predictive entropy goes below the floor, while the same network without ERA goes below it."""
    floor = 0.5
    spec = build_datasets("fashion-mnist", augment=False)
    train_x, train_y = _images(spec, 128, train=True)
    test_x, _ = _images(spec, 256, train=False)
    entropies = {}
    for era in (True, False):
        torch.manual_seed(0)
        model = create_model(
            "test_resnet", num_classes=10, in_chans=1, era_min_entropy=floor if era else None
        )
        model.eval()
        with torch.no_grad():
            untrained = predictive_entropy(model(test_x))
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step in range(60):
            batch = slice(step % 2 * 64, step % 2 * 64 + 64)
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            entropies[era] = (untrained, predictive_entropy(model(test_x)), loss.item())
    (era_untrained, era_trained, _), (_, plain_trained, _) = entropies[True], entropies[False]
    assert era_untrained.min() >= floor - 1e-5
    assert era_trained.min() >= floor - 1e-5
    assert era_trained.mean() < 0.8 * math.log(10)  # it did learn to be confident ...
    assert era_trained.min() < floor + 0.25  # ... down towards the floor,
    assert plain_trained.min() < floor  # where the same network without ERA goes below it
