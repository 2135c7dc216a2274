"""Training the Gaussian decoder (`atoken train` with ``trainer = "gaussian-decoder"``).

A tiny set-up keeps every run to a few seconds: a generated cube, an 8³ voxel grid, 2 Gaussians
per voxel, 32² renders, a 1-block decoder of width 32, L1 + SSIM (LPIPS, seconds per call on a
busy CPU, is exercised by configs/3d-gs.toml; the loss term is plain `LPIPSLoss.distance`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from atoken.plugin import ConfigError

from atoken_plugin_3d.convert import load_gaussian_decoder, save_gaussian_decoder
from atoken_plugin_3d.gaussian_decoder import GaussianDecoder, GaussianDecoderConfig
from atoken_plugin_3d.gaussians import RepresentationConfig
from atoken_plugin_3d.train_gs import GaussianDecoderTrainer
from atoken_plugin_3d.train_gs_config import load_gs_config, validate_gs_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


def tiny(steps: int = 6, *, init: str = "default", **run) -> dict:
    return {
        "trainer": "gaussian-decoder",
        "tokenizer": {"preset": "atoken-tiny", "init": init},
        "gaussian_decoder": {
            "resolution": 8,
            "model_channels": 32,
            "num_blocks": 1,
            "num_heads": 2,
            "mlp_channels": 64,
            "num_gaussians": 2,
            "scaling_bias": 0.06,
        },
        "data": {
            "assets": ["builtin:cube"],
            "views": 4,
            "held_out": 1,
            "image_size": 32,
            "voxel_image_size": 64,
            "views_per_step": 1,
        },
        "loss": {"lpips": 0.0},  # LPIPS costs seconds per call on a busy 2-core CPU
        "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1},
        "run": {
            "steps": steps,
            "log_every": 1,
            "checkpoint_every": 2,
            "sample_every": 100,
            "eval_lpips": False,
            **run,
        },
    }


def train(config: dict, out: Path, **kwargs):
    trainer = GaussianDecoderTrainer(progress=False, **kwargs)
    return trainer.fit_config(validate_gs_config(config), out, resume=False)


# --------------------------------------------------------------------------- config


def test_unknown_keys_and_bad_values_name_their_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'trainer = "gaussian-decoder"\n[gaussian_decoder]\nwidht = 3\n[data]\nviews = 0\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_gs_config(path)
    text = str(err.value)
    assert "gaussian_decoder.widht: unknown key" in text
    assert "data.views" in text and str(path) in text


@pytest.mark.parametrize(
    ("section", "values", "needle"),
    [
        ("gaussian_decoder", {"model_channels": 30, "num_heads": 4}, "not divisible"),
        ("gaussian_decoder", {"from_pretrained": "x", "num_blocks": 2}, "remove num_blocks"),
        ("tokenizer", {"from_pretrained": "x", "init": "pca"}, "init = 'pca'"),
        ("tokenizer", {"preset": "atoken-huge"}, "unknown preset"),
        ("data", {"assets": ["builtin:teapot"]}, "unknown built-in asset 'teapot'"),
        ("data", {"views": 2, "views_per_step": 3}, "views_per_step 3 exceeds"),
        ("data", {"voxel_image_size": 100}, "multiple of 16"),
        ("loss", {"l1": 0, "lpips": 0, "ssim": 0}, "all loss weights are 0"),
    ],
)
def test_invalid_sections_are_explained(section: str, values: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=section) as err:
        validate_gs_config({"trainer": "gaussian-decoder", section: values})
    assert needle in str(err.value)


def test_wrong_trainer_name_and_defaults() -> None:
    with pytest.raises(ConfigError, match="trainer"):
        validate_gs_config({"trainer": "tokenizer"})
    cfg = validate_gs_config({"trainer": "gaussian-decoder"})
    built = cfg.gaussian_decoder.build()
    assert (built.num_blocks, built.model_channels, built.representation.num_gaussians) == (
        12,
        768,
        32,
    )
    assert (cfg.loss.l1, cfg.loss.lpips, cfg.loss.ssim) == (1.0, 0.2, 0.2)
    assert cfg.with_steps(7).run.steps == 7


def test_repository_config_validates() -> None:
    path = Path(__file__).resolve().parents[3] / "configs" / "3d-gs.toml"
    if not path.is_file():
        pytest.skip("configs/3d-gs.toml lives in the atoken repository")
    cfg = load_gs_config(path)
    assert cfg.trainer == "gaussian-decoder"
    assert cfg.gaussian_decoder.build().resolution == cfg.gaussian_decoder.resolution


# --------------------------------------------------------------------------- save / load


def test_save_load_decoder_round_trip(tmp_path: Path) -> None:
    cfg = GaussianDecoderConfig(
        resolution=16,
        model_channels=32,
        num_blocks=2,
        num_heads=2,
        mlp_channels=48,
        representation=RepresentationConfig(num_gaussians=4, scaling_bias=0.02),
        attn_softcap=None,
    )
    torch.manual_seed(0)
    model = GaussianDecoder(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    out = save_gaussian_decoder(model, tmp_path / "dec", info={"step": 3})
    loaded = load_gaussian_decoder(out)
    assert loaded.config == cfg
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    feats = torch.randn(10, 768)
    coords = torch.cat([torch.zeros(10, 1, dtype=torch.int32), torch.randint(0, 16, (10, 3))], 1)
    assert torch.equal(model(feats, coords), loaded(feats, coords))
    doc = json.loads((out / "config.json").read_text())
    assert doc["trained_by"] == {"step": 3}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


# --------------------------------------------------------------------------- training


def test_training_reduces_the_loss_and_writes_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(tiny(steps=8, init="pca", sample_every=8), out)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # held-out metrics before and after, written to eval.jsonl
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 8]
    assert evals[1]["psnr"] > evals[0]["psnr"]
    assert {"psnr", "ssim"} <= set(evals[1]) and "lpips" not in evals[1]
    for name in ("metrics.jsonl", "loss_curve.png", "samples/step-00000008.png"):
        assert (out / name).is_file(), name
    # the model folder: a from_pretrained tokenizer with the decoder beside it
    from atoken import Tokenizer

    tok = Tokenizer.from_pretrained(out / "model")
    assert tok.source_dir == out / "model"
    dec = load_gaussian_decoder(tok.source_dir / "gaussian_decoder")
    assert dec.config.resolution == 8 and dec.config.representation.num_gaussians == 2
    # a second fit into the same folder must be told to resume
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny(steps=8), out)


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    full = train(tiny(steps=3), tmp_path / "full")
    assert full.steps == 3
    cut = train(tiny(steps=3), tmp_path / "cut", stop_at=2)  # as if killed after step 2
    assert cut.steps == 2 and cut.model_dir is None
    resumed = GaussianDecoderTrainer(progress=False).fit_config(
        validate_gs_config(tiny(steps=3)), tmp_path / "cut", resume=True
    )
    assert resumed.steps == 3
    a = load_gaussian_decoder(tmp_path / "full" / "model" / "gaussian_decoder").state_dict()
    b = load_gaussian_decoder(tmp_path / "cut" / "model" / "gaussian_decoder").state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_nerf_folder_asset_splits_held_out_frames(tmp_path: Path) -> None:
    from atoken_plugin_3d.cameras import sphere_cameras
    from atoken_plugin_3d.nerf import write_nerf_folder
    from atoken_plugin_3d.render_mesh import render_views
    from atoken_plugin_3d.train_gs_data import builtin_mesh, prepare_asset

    views = render_views(builtin_mesh("cube", 0.9), sphere_cameras(6, size=64))
    write_nerf_folder(views, tmp_path / "cube", depth_format="npy")
    data = validate_gs_config(tiny()).data.model_copy(
        update={"assets": [str(tmp_path / "cube")], "held_out": 2}
    )
    asset = prepare_asset(str(tmp_path / "cube"), data, 8, tmp_path / "cache", 0)
    assert asset.train_rgb.shape == (4, 32, 32, 3) and asset.held_rgb.shape == (2, 32, 32, 3)
    held = {tuple(c.c2w[:3, 3].tolist()) for c in asset.held_cameras}
    train_pos = {tuple(c.c2w[:3, 3].tolist()) for c in asset.train_cameras}
    assert not held & train_pos  # held-out frames are never trained on (nor voxelized)
    assert len(asset.coords) > 0 and int(asset.coords.max()) < 8
    again = prepare_asset(str(tmp_path / "cube"), data, 8, tmp_path / "cache", 0)
    assert torch.equal(again.feats, asset.feats)  # read back from the cache
