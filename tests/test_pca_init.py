"""PCA start: at step 0 the AToken architecture computes a PCA patch tokenizer (~27 dB)."""

from __future__ import annotations

import pytest
import torch

import atoken
from atoken.pipeline import reconstruct_sample
from atoken.plugins.image.samples import sample_photos
from atoken.train.pca_init import PCAInitError, fit_patch_pca, pca_init


@pytest.fixture(scope="module")
def fitted():
    from atoken.plugins.image.io import read_image

    comps = atoken.default_components()
    adapter = comps.adapters.build("image", {"max_res": 256})
    train = [p for p in sample_photos() if p.stem not in {"astronaut", "coffee", "chelsea"}]
    feats = [adapter.to_tokens(read_image(p)).feats for p in train]
    model = atoken.build_tokenizer("atoken-tiny", components=comps).eval()
    info = pca_init(model, feats)
    return model, info, torch.cat(feats)


def test_pca_of_patches_is_orthonormal_and_sorted() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    mean, comps, stds = fit_patch_pca(x, 3)
    torch.testing.assert_close(comps.T @ comps, torch.eye(3), atol=1e-5, rtol=0)
    assert stds.tolist() == sorted(stds.tolist(), reverse=True)
    assert stds[0] == pytest.approx(5.0, rel=0.15)
    with pytest.raises(PCAInitError, match="needs more than 3 patches"):
        fit_patch_pca(x[:3], 3)


def test_model_encodes_whitened_pca_coefficients(fitted) -> None:
    model, info, feats = fitted
    assert info["values"] == 768 and info["explained_variance"] > 0.95
    mean, comps, stds = fit_patch_pca(feats[:, :768], 48)
    sample = atoken.PatchTokens(feats[:50], torch.zeros(50, 4, dtype=torch.int32), "image")
    sample = sample.replace(
        coords=torch.stack(
            [torch.zeros(50), torch.arange(50) // 10, torch.arange(50) % 10, torch.zeros(50)], 1
        ).int()
    )
    with torch.inference_mode():
        lat = model.encode([sample])
    expected = (feats[:50, :768] - mean) @ comps / stds  # [50, 48]
    torch.testing.assert_close(
        lat.mean.abs(), expected.abs(), atol=2e-3, rtol=2e-3
    )  # eigenvector sign is free
    assert lat.logvar.mean().item() == pytest.approx(-8.0, abs=0.01)


def test_held_out_photos_reconstruct_like_a_linear_tokenizer(fitted) -> None:
    from atoken.plugins.image.io import read_image
    from tests.conftest import SKIMAGE_DATA

    model, _, _ = fitted
    adapter = atoken.default_components().adapters.build("image")
    psnr = [
        reconstruct_sample(model, adapter, read_image(SKIMAGE_DATA / n)).metrics["psnr"]
        for n in ("astronaut.png", "coffee.png", "chelsea.png")
    ]
    # TRAINING_NOTES: 48-component PCA ~27 dB, bicubic x4 ~25 dB on held-out photos
    assert min(psnr) > 25.0 and sum(psnr) / 3 > 27.0, psnr


def test_step_zero_is_exactly_an_independent_patch_pca(fitted) -> None:
    """The start reconstructs like `PatchPCA` (a separate implementation) fitted on the same
    patches: the whole transformer computes the linear code, spare channels and all."""
    from atoken.eval.baselines import PatchPCA
    from atoken.plugins.image.io import read_image
    from tests.conftest import SKIMAGE_DATA

    model, info, feats = fitted
    assert info["spare_components"] == model.encoder.width - 2 * 48 - 2
    rows = feats[:, :768].reshape(-1, 16, 16, 3)  # each patch as a 16x16 image
    pca = PatchPCA(list(rows))
    adapter = atoken.default_components().adapters.build("image", {"lpips": False})
    image = read_image(SKIMAGE_DATA / "chelsea.png")
    result = reconstruct_sample(model, adapter, image)
    expected = pca(result.reference)
    err = (result.reconstruction - expected).abs().max().item()
    assert err < 2e-3, err  # float32 through LayerNorm/RMSNorm of a ±1000 constant pair


def test_blocks_see_the_coefficients_not_the_constant(fitted) -> None:
    """The pre-norms drop the constant pair and hand the blocks the coefficients at unit scale:
    tokens differ from each other as much as their patches do (the lead of the issue: with the
    constant in, every block saw ~the same token)."""
    model, _, feats = fitted
    n = 64
    coords = torch.stack(
        [torch.zeros(n), torch.arange(n) // 8, torch.arange(n) % 8, torch.zeros(n)], 1
    ).int()
    rows = feats[torch.linspace(0, len(feats) - 1, n).long()]  # patches from every photo
    tokens = atoken.collate([atoken.PatchTokens(rows, coords, "image")])
    with torch.no_grad():
        x = model.encoder.input_layer(tokens.feats) + model.encoder.pos_embedder(tokens)
        seen = model.encoder.blocks[0].norm1(x)  # [n, D]: what attention reads
    hi, lo = 2 * 48, 2 * 48 + 1
    assert seen[:, hi].abs().max() < 1e-6 and seen[:, lo].abs().max() < 1e-6
    # the coefficient channels reach the blocks as they are in the stream (unit scale) ...
    torch.testing.assert_close(seen[:, :96], x[:, :96], rtol=2e-3, atol=1e-4)
    # ... which is the PCA coefficient in units of the RMS coefficient: O(1), not O(1e-2)
    rms = seen[:, :48].square().mean().sqrt().item()
    assert 0.05 < rms < 20, rms
    cos = torch.nn.functional.cosine_similarity(seen[:1], seen[1:], dim=-1)
    stale = torch.nn.functional.cosine_similarity(x[:1], x[1:], dim=-1)
    # distinct patches look distinct to the blocks; in the raw stream the constant pair makes
    # every token point the same way (what the blocks saw before the norms dropped it)
    assert (1 - cos.mean()) > 1000 * (1 - stale.mean()), (cos.mean(), stale.mean())
    assert cos.mean() < 0.9


def test_pca_init_refuses_narrow_models() -> None:
    narrow = atoken.build_tokenizer(
        "atoken-tiny", encoder={"width": 64, "num_heads": 1}, decoder={"width": 64, "num_heads": 1}
    )
    with pytest.raises(PCAInitError, match="width >= 98"):
        pca_init(narrow, [torch.randn(200, 3072)])


def test_pca_start_from_config_fits_on_the_first_reconstruction_task_with_data() -> None:
    """Understanding tasks are passed over (they are first in the mix here); the task's own
    adapter tokenizes its samples; no reconstruction data is an error naming the tasks."""
    from atoken.core.config import ConfigError
    from atoken.train.config import TrainConfig
    from atoken.train.pca_init import pca_init_from_config

    comps = atoken.default_components()
    raw = {
        "model": {"preset": "atoken-tiny", "init": "pca", "pca_images": 4},
        "data": [
            {"name": "samples", "task": "image_und"},
            {"name": "samples", "task": "image_rec", "options": {"video_frames": False}},
        ],
        "stages": [
            {"name": "s", "steps": 1, "min_res": 96, "max_res": 128,
             "tasks": {"image_und": 1, "image_rec": 1}},
        ],
    }  # fmt: skip
    config = TrainConfig.model_validate(raw)  # (phase one only: image_und's teacher is absent)
    model = atoken.build_tokenizer("atoken-tiny", components=comps)
    info = pca_init_from_config(model, config, comps)
    assert info["task"] == "image_rec" and info["images"] == config.model.pca_images
    assert info["patches"] >= config.model.pca_images * (96 // 16) ** 2  # at >= min_res
    raw["data"] = raw["data"][:1]
    with pytest.raises(ConfigError, match=r"reconstruction task .*\['image_und'\]"):
        pca_init_from_config(model, TrainConfig.model_validate(raw), comps)
