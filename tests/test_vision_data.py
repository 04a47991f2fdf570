"""Data pipeline of the vision trainer: sharding, resumable order, seeded augmentation."""

import numpy as np
import pytest
import torch

from era.vision.data import (
    FASHION_MNIST_DIR,
    ShardedSampler,
    SmallImageBatch,
    TensorImages,
    build_datasets,
    load_fashion_mnist,
    sample_randomness,
)


def _batches(sampler, per_rank_batch):
    items = [index for index, _ in sampler]
    return [items[i : i + per_rank_batch] for i in range(0, len(items), per_rank_batch)]


def test_two_shards_hold_exactly_the_one_process_batches():
    one = ShardedSampler(100, batch_size=8, seed=3)
    two = [ShardedSampler(100, batch_size=8, rank=r, world_size=2, seed=3) for r in range(2)]
    for sampler in (one, *two):
        sampler.set_epoch(5)
    whole = _batches(one, 8)
    halves = [_batches(s, 4) for s in two]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 12  # drop_last: 100 // 8
    for k, batch in enumerate(whole):
        assert sorted(halves[0][k] + halves[1][k]) == sorted(batch)
    assert len(one) == 96 and len(two[1]) == 48
    assert sorted(i for b in whole for i in b) != list(range(96))  # shuffled


def test_epochs_differ_and_skipping_resumes_mid_epoch():
    sampler = ShardedSampler(50, batch_size=5, seed=0)
    sampler.set_epoch(0)
    epoch0 = [i for i, _ in sampler]
    sampler.set_epoch(1)
    epoch1 = [i for i, _ in sampler]
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1) == list(range(50))
    sampler.set_epoch(1, skip_batches=3)
    assert [i for i, _ in sampler] == epoch1[15:]
    assert len(sampler) == 35
    assert {e for _, e in sampler} == {1}


def test_evaluation_shards_cover_every_image_once():
    shards = [
        ShardedSampler(11, batch_size=11, rank=r, world_size=3, shuffle=False, drop_last=False)
        for r in range(3)
    ]
    seen = [i for s in shards for i, _ in s]
    assert sorted(seen) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_sample_randomness_is_a_fixed_function_of_seed_epoch_index():
    index = np.arange(1000)
    a = sample_randomness(0, 1, index)
    assert np.array_equal(a, sample_randomness(0, 1, index))
    assert np.mean(a == sample_randomness(0, 2, index)) < 0.01
    assert np.mean(a == sample_randomness(1, 1, index)) < 0.01
    assert len(np.unique(a)) == 1000
    assert 0.45 < np.mean(a & np.uint64(1)) < 0.55  # the low bit is a fair coin


def test_augmentation_depends_only_on_the_image_key():
    torch.manual_seed(0)
    data = TensorImages(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8), torch.arange(6))
    collate = SmallImageBatch((0.5,), (0.25,), augment=True, seed=7)
    batch, labels = collate(data.__getitems__([(i, 2) for i in range(6)]))
    alone, _ = collate(data.__getitems__([(4, 2)]))
    torch.testing.assert_close(batch[4], alone[0], rtol=0, atol=0)
    assert labels.tolist() == list(range(6))
    other_epoch, _ = collate(data.__getitems__([(i, 3) for i in range(6)]))
    assert not torch.equal(batch, other_epoch)
    # Without augmentation: exactly the normalised image.
    plain, _ = SmallImageBatch((0.5,), (0.25,), augment=False, seed=7)(data.__getitems__([(1, 0)]))
    torch.testing.assert_close(plain[0], (data.images[1].float() / 255 - 0.5) / 0.25)
    # Each augmented image is a crop of the zero-padded original (8 // 8 = 1 pixel of padding),
    # possibly mirrored.
    padded = torch.nn.functional.pad(data.images.float() / 255, (1, 1, 1, 1))
    for k in range(6):
        image = batch[k] * 0.25 + 0.5
        crops = [
            padded[k, :, y : y + 8, x : x + 8].flip(-1) if f else padded[k, :, y : y + 8, x : x + 8]
            for y in range(3)
            for x in range(3)
            for f in (0, 1)
        ]
        assert min((image - c).abs().max().item() for c in crops) < 1e-6


def test_batched_crop_and_flip_equals_the_per_image_loop():
    """The one-gather augmentation gives exactly the images of cropping and mirroring each image
    on its own (uint8, so bit-for-bit), for 28 px images (3 px padding) and 3 channels."""
    for shape in ((64, 1, 28, 28), (32, 3, 32, 32)):
        images = torch.randint(0, 256, shape, dtype=torch.uint8)
        bits = sample_randomness(3, 5, np.arange(shape[0]))
        height, width = shape[-2:]
        pad = height // 8
        span = np.uint64(2 * pad + 1)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        expected = []
        for k in range(shape[0]):
            y, x = int(bits[k] % span), int((bits[k] >> np.uint64(16)) % span)
            crop = padded[k, :, y : y + height, x : x + width]
            expected.append(crop.flip(-1) if int(bits[k] >> np.uint64(32)) & 1 else crop)
        got = SmallImageBatch.crop_and_flip(images, bits)
        assert torch.equal(got, torch.stack(expected))


def test_a_batch_comes_from_one_epoch():
    data = TensorImages(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4))
    with pytest.raises(ValueError, match="one epoch"):
        data.__getitems__([(0, 1), (1, 2)])


def test_tensor_images_rejects_bad_shapes():
    with pytest.raises(ValueError, match="uint8"):
        TensorImages(torch.zeros(4, 28, 28), torch.zeros(4))


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DIR}",
)
def test_fashion_mnist_files_and_fixed_subset():
    images, labels = load_fashion_mnist(train=False)
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [1000] * 10
    a = build_datasets("fashion-mnist", train_subset=100, seed=0)
    b = build_datasets("fashion-mnist", train_subset=100, seed=5)
    assert len(a.train) == 100 and len(a.test) == 10_000
    assert torch.equal(a.train.images, b.train.images)  # same subset whatever the run's seed
    assert (a.num_classes, a.in_chans) == (10, 1)
