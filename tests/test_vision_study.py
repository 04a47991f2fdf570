"""The vision study's evaluation: the offline corruptions, the bootstrap scores against the
library's metrics, the summary cells, and the refusal to mix runs of other settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import vision_study  # noqa: E402

from era.vision.metrics import expected_calibration_error, nll, topk_accuracy  # noqa: E402


def _images(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(1)).to(
        torch.uint8
    )


@pytest.mark.parametrize("kind", vision_study.SHIFTS)
def test_corruptions_are_fixed_uint8_images_of_the_same_shape(kind):
    images = _images()
    first, second = vision_study.corrupt(images, kind), vision_study.corrupt(images, kind)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, second)  # the same corrupted test set for every run
    if kind == "clean":
        assert torch.equal(first, images)
    else:
        assert not torch.equal(first, images)


def test_contrast_halves_the_distance_to_the_image_mean():
    images = _images(2)
    x = images.double() / 255
    mean = x.mean((1, 2, 3), keepdim=True)
    expected = ((mean + 0.5 * (x - mean)) * 255).round()
    got = vision_study.corrupt(images, "contrast").double()
    assert (got - expected).abs().max() <= 1  # float32 rounding may move a pixel by one level


def test_blur_keeps_a_constant_image_inside_the_border():
    flat = torch.full((1, 1, 28, 28), 100, dtype=torch.uint8)
    blurred = vision_study.corrupt(flat, "blur")
    assert torch.equal(blurred[..., 2:-2, 2:-2], flat[..., 2:-2, 2:-2])
    assert blurred[0, 0, 0, 0] < 100  # zero padding darkens the corners


def test_unknown_corruption_is_refused_by_name():
    with pytest.raises(ValueError, match="'fog'"):
        vision_study.corrupt(_images(), "fog")


def test_scores_agree_with_the_library_metrics_and_their_intervals_cover_them():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(400, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (400,), generator=generator)
    logp = torch.log_softmax(logits, -1)
    out = vision_study.scores(logp, labels, resamples=200)
    expected = {
        "top1": topk_accuracy(logits, labels),
        "nll": nll(logits, labels),
        "ece": expected_calibration_error(logits, labels),
    }
    for key, value in expected.items():
        assert out[key]["value"] == pytest.approx(value, rel=1e-12, abs=1e-12)
        low, high = out[key]["ci95"]
        assert low < value < high
    assert sum(out["reliability"]["count"]) == 400


def test_cells_show_an_interval_for_one_seed_and_mean_and_sample_std_for_several():
    assert vision_study._cell([0.9], 100, 2, [0.89, 0.91]) == "90.00 [89.00, 91.00]"
    assert vision_study._cell([0.1, 0.2, 0.3], 1, 3, None) == "0.200 ± 0.100"


def test_a_finished_run_of_other_settings_is_not_mixed_in(tmp_path):
    args = vision_study.Args(
        regimes=("full",), methods=("ce",), seeds=(0,), results=tmp_path, runs_dir=tmp_path / "runs"
    )
    name, config = vision_study.configs(args)[0]
    result = tmp_path / f"{name}.json"
    result.parent.mkdir(parents=True)
    done = {"model": config.model, "epochs": config.epochs + 1, "train_subset": 0}
    result.write_text(json.dumps({"config": done | {"eval_every": config.eval_every}}))
    with pytest.raises(ValueError, match="epochs"):
        vision_study.run_one((name, config, args))
    result.write_text(json.dumps({"config": done | {"epochs": config.epochs, "eval_every": 0}}))
    vision_study.run_one((name, config, args))  # finished with these settings: skipped
    assert not Path(config.out).exists()
