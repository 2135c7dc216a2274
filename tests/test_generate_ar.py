"""examples/generate-ar, run tiny: an FSQ atoken-tiny (from atoken-tiny-photo, fine-tuned one
step), an AR prior over its 8 codes per position trained a few steps on real crops, samples
decoded through atoken, the grid PNG and metrics.json written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "generate-ar"
SIZE = 32


def _load_train():
    spec = importlib.util.spec_from_file_location("generate_ar_train", EXAMPLE / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("skimage")
    train = _load_train()
    out = tmp_path_factory.mktemp("generate-ar")
    argv = ["--out", str(out), "--tokenizer-steps", "1", "--tokenizer-tokens", "256"]
    argv += ["--tokenizer-eval-res", "128"]
    argv += ["--size", str(SIZE), "--crops", "48", "--batch", "16", "--steps", "12"]
    argv += ["--width", "32", "--spatial-depth", "1", "--depth-depth", "1", "--samples", "3"]
    argv += ["--log-every", "4"]
    return train, out, train.main(argv)


def test_indices_are_eight_codes_per_position_in_range(run):
    train, out, result = run
    tokenizer = train.atoken.Tokenizer.from_pretrained(out / "fsq-tokenizer" / "run" / "model")
    assert tokenizer.config.quantizer.name == "fsq"
    adapter = train.atoken.default_components().adapters.build("image", {"lpips": False})
    crop = torch.rand(SIZE, SIZE, 3) * 2 - 1
    with torch.no_grad():
        latents = tokenizer.encode([adapter.to_tokens(crop)])
    positions = (SIZE // 16) ** 2
    assert tuple(latents.indices.shape) == (positions, 8)
    assert int(latents.indices.min()) >= 0 and int(latents.indices.max()) < 4096
    data = result["_train"]  # [crops, P, 8] of the real training crops
    assert tuple(data.shape) == (48, positions, 8)
    assert int(data.min()) >= 0 and int(data.max()) < tokenizer.quantizer.codebook_size
    assert len(data.unique()) > 8  # real crops use many code values, not a constant


def test_loss_decreases_on_real_data(run):
    _, _, result = run
    prior = result["prior"]
    before, after = prior["loss_per_code_before"]["train"], prior["loss_per_code_after"]["train"]
    assert len(before) == len(after) == 8
    assert sum(after) / 8 < sum(before) / 8 - 0.1, (before, after)
    curve = [r["loss"] for r in prior["curve"]]
    assert curve[-1] < curve[0]


def test_samples_decode_to_finite_images_and_files_are_written(run):
    _, out, result = run
    sampled = result["_sampled"]
    assert tuple(sampled.shape) == (3, (SIZE // 16) ** 2, 8)
    assert int(sampled.min()) >= 0 and int(sampled.max()) < 4096
    for image in result["_images"]:
        assert tuple(image.shape) == (SIZE, SIZE, 3)
        assert bool(torch.isfinite(image).all())
    with Image.open(out / "samples.png") as png:
        assert png.width > 2 * SIZE and png.height > SIZE
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sampling"]["decoded_size"] == [SIZE, SIZE, 3]
    assert metrics["sampling"]["all_finite"] is True
    assert metrics["sampling"]["samples_per_second"] > 0
    assert metrics["tokenizer"]["steps"] == 1
