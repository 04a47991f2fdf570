"""Datasets, augmentations and the sampler of the vision trainer. Nothing is ever downloaded.

Two choices make runs reproducible across resumes and process counts:

* the augmentation of a training image is seeded by ``(seed, epoch, index)`` rather than drawn
  from a global random stream, so it does not depend on which process or data-loader worker
  loads the image, nor on where a run was interrupted;
* :class:`ShardedSampler` shuffles with ``(seed, epoch)`` and gives process ``r`` of ``W`` the
  positions ``r, r+W, ...`` of each global batch, so ``W`` processes with batch ``B/W`` see
  exactly the images of one process with batch ``B``; a resumed epoch skips what was done.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, Subset

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_STATS = {  # per-channel mean and std of the training images
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, dims as big-endian int32, then uint8 data)."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
        data = f.read()
    ndim = data[3]
    shape = np.frombuffer(data, ">i4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR, train: bool = True):
    """Images ``uint8 [N, 1, 28, 28]`` and labels ``int64 [N]`` from the (gzipped) IDX files."""
    prefix = "train" if train else "t10k"
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = (root / f"{prefix}-{kind}.gz", root / f"{prefix}-{kind}")
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise FileNotFoundError(
                f"Fashion-MNIST file {prefix}-{kind}(.gz) not found in {root}; install the Debian "
                "package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) or pass "
                "--data-dir to a folder holding the four IDX files"
            )
        paths.append(found[0])
    images = torch.from_numpy(_read_idx(paths[0]).copy()).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(paths[1]).astype(np.int64))
    return images, labels


def sample_randomness(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """64 random bits per image, a fixed function of ``(seed, epoch, index)`` (splitmix64)."""

    def splitmix64(x: np.ndarray) -> np.ndarray:
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    key = splitmix64(splitmix64(np.array([seed], np.uint64)) ^ np.uint64(epoch))
    return splitmix64(key ^ np.asarray(index, np.uint64))


class TensorImages(Dataset):
    """Small images held in memory as one uint8 tensor ``[N, C, H, W]``, served a batch at a time.

    Indexed by the ``(index, epoch)`` pairs of :class:`ShardedSampler`. ``__getitems__`` (which
    torch's DataLoader calls with a whole batch of keys) slices the tensor once instead of
    building ``N`` single-image tensors; :class:`SmallImageBatch` then augments and normalises
    the batch with tensor operations.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 images [N, C, H, W] and N labels, got {images.dtype} "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]):
        index, _ = key
        return self.images[index], int(self.labels[index])

    def __getitems__(self, keys: list[tuple[int, int]]):
        """``(images uint8 [B, C, H, W], labels [B], indices [B], epoch)`` of one batch."""
        index = torch.tensor([k[0] for k in keys], dtype=torch.int64)
        epochs = {k[1] for k in keys}
        if len(epochs) != 1:
            raise ValueError(f"a batch must come from one epoch, got epochs {sorted(epochs)}")
        return self.images[index], self.labels[index], index, epochs.pop()


class SmallImageBatch:
    """Collates a :class:`TensorImages` batch: pad-and-crop + horizontal flip, then normalise.

    The standard small-image augmentation (pad by 1/8 of the side, random crop back, flip with
    probability 1/2), with each image's offsets and flip taken from :func:`sample_randomness`.
    Crop and flip are one gather over the padded batch (no per-image Python loop).
    """

    def __init__(self, mean: tuple, std: tuple, *, augment: bool, seed: int):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment, self.seed = augment, seed

    def __call__(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, index, epoch = batch
        if self.augment:
            images = self.crop_and_flip(images, sample_randomness(self.seed, epoch, index.numpy()))
        return (images.float() / 255 - self.mean) / self.std, labels

    @staticmethod
    def crop_and_flip(images: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
        """Image ``k`` cropped at offsets drawn from ``bits[k]`` of its zero-padded self, and
        mirrored when bit 32 is set."""
        height, width = images.shape[-2:]
        pad = height // 8
        span = np.uint64(2 * pad + 1)
        dy = torch.from_numpy((bits % span).astype(np.int64))
        dx = torch.from_numpy(((bits >> np.uint64(16)) % span).astype(np.int64))
        flip = torch.from_numpy(((bits >> np.uint64(32)) & np.uint64(1)).astype(bool))
        rows = dy[:, None] + torch.arange(height)
        columns = torch.arange(width).expand(len(images), width)
        columns = dx[:, None] + torch.where(flip[:, None], width - 1 - columns, columns)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        batch = torch.arange(len(images))[:, None, None]
        # Advanced indices around a slice put their dimensions first: [B, H, W, C].
        crops = padded[batch, :, rows[:, :, None], columns[:, None, :]]
        return crops.permute(0, 3, 1, 2).contiguous()


class SeededTransform(Dataset):
    """Applies a per-image ``transform`` with the random stream seeded by ``(seed, epoch, index)``.

    For datasets of files (ImageFolder), where decoding dominates; indexed by ``(index, epoch)``.
    """

    def __init__(self, base: Dataset, transform: Callable, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        image, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(sample_randomness(self.seed, epoch, np.array([index]))[0] >> 1))
            return self.transform(image), label


class ShardedSampler(Sampler):
    """Yields ``(index, epoch)`` for this process's share of each global batch.

    Each epoch is a permutation seeded by ``(seed, epoch)`` (or the natural order when
    ``shuffle=False``); with ``drop_last`` the incomplete last global batch is dropped.
    ``set_epoch(epoch, skip_batches)`` starts the next pass ``skip_batches`` batches in.
    """

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def _positions(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._positions()[: self.batches_per_epoch() * self.batch_size]
        order = order[self.skip_batches * self.batch_size :]
        for index in order[self.rank :: self.world_size].tolist():
            yield index, self.epoch

    def __len__(self) -> int:
        total = min(self.size, self.batches_per_epoch() * self.batch_size)
        total -= min(total, self.skip_batches * self.batch_size)
        return len(range(self.rank, total, self.world_size))


@dataclass
class DataSpec:
    """What the trainer needs to know about a dataset."""

    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    train_collate: Callable | None = None
    test_collate: Callable | None = None


def _folder_transform(*, train: bool, augment: bool, image_size: int):
    """Random-resized crop + flip for training, resize + centre crop for evaluation."""
    from torchvision.transforms import v2

    if train and augment:
        steps = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(round(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]
    mean, std = _STATS["imagefolder"]
    return v2.Compose(
        [v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )


def _load_cifar(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 or CIFAR-100 (fine labels) from the extracted python version of the archive."""
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset, folder, archive = {
        "cifar10": (CIFAR10, "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        "cifar100": (CIFAR100, "cifar-100-python", "cifar-100-python.tar.gz"),
    }[name]
    if not (root / folder).is_dir():
        raise FileNotFoundError(
            f"{name} not found: expected {root / folder} (the extracted python version, "
            f"{archive}); nothing is downloaded"
        )
    data = dataset(str(root), train=train, download=False)
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(data.targets)


def build_datasets(
    name: str,
    data_dir: Path | None = None,
    *,
    augment: bool = True,
    image_size: int = 224,
    train_subset: int = 0,
    seed: int = 0,
) -> DataSpec:
    """Train and test sets of ``name`` (one of :data:`DATASETS`) from local files only.

    ``train_subset > 0`` keeps that many training images, the same ones for every run (a fixed
    shuffle), so seeds and methods are compared on the same data.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if train_subset < 0:
        raise ValueError(f"train_subset must be >= 0 (0 = all images), got {train_subset!r}")
    if name != "fashion-mnist" and data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir (nothing is downloaded)")
    if name == "imagefolder":
        from torchvision.datasets import ImageFolder

        missing = [s for s in ("train", "val") if not (Path(data_dir) / s).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"an ImageFolder dataset needs {data_dir}/train/<class>/<images> and "
                f"{data_dir}/val/<class>/<images>; missing: {missing}"
            )
        train, test = (ImageFolder(str(Path(data_dir) / s)) for s in ("train", "val"))
        if train_subset:
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
            train = Subset(train, keep[:train_subset].tolist())
        options = dict(augment=augment, image_size=image_size)
        return DataSpec(
            train=SeededTransform(train, _folder_transform(train=True, **options), seed),
            test=SeededTransform(test, _folder_transform(train=False, **options), seed),
            num_classes=len(test.classes),
            in_chans=3,
        )
    if name == "fashion-mnist":
        root = Path(data_dir) if data_dir else FASHION_MNIST_DIR
        (train_x, train_y), test = (load_fashion_mnist(root, t) for t in (True, False))
    else:
        (train_x, train_y), test = (_load_cifar(name, Path(data_dir), t) for t in (True, False))
    if train_subset:
        keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))
        train_x, train_y = train_x[keep[:train_subset]], train_y[keep[:train_subset]]
    mean, std = _STATS[name]
    return DataSpec(
        train=TensorImages(train_x, train_y),
        test=TensorImages(*test),
        num_classes=100 if name == "cifar100" else 10,
        in_chans=train_x.shape[1],
        train_collate=SmallImageBatch(mean, std, augment=augment, seed=seed),
        test_collate=SmallImageBatch(mean, std, augment=False, seed=seed),
    )
