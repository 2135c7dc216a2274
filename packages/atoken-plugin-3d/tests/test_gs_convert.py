"""The converter for the official ``3d_decode_gs`` checkpoint: round trip and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from atoken.plugin import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from safetensors.torch import load_file, save_file

from atoken_plugin_3d.convert import (
    check_state,
    convert_gaussian_decoder,
    load_gaussian_decoder,
    resolve_config,
)
from atoken_plugin_3d.gaussian_decoder import GaussianDecoder, GaussianDecoderConfig

SMALL = {
    "resolution": 64,
    "model_channels": 16,
    "latent_channels": 8,
    "num_blocks": 2,
    "num_heads": 2,
    "mlp_channels": 24,
    "attn_mode": "swin",
    "window_size": 8,
}


def small_checkpoint(tmp_path: Path, **edits) -> Path:
    """An official-layout checkpoint of a small decoder, as a weights-only ``.pt`` file."""
    torch.manual_seed(0)
    model = GaussianDecoder(GaussianDecoderConfig.from_official(SMALL))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in edits.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    path = tmp_path / "3d_decode_gs.pt"
    torch.save({"state_dict": state}, path)
    return path


def small_config(tmp_path: Path) -> Path:
    path = tmp_path / "decoder_gs.json"
    path.write_text(json.dumps({"args": SMALL}))
    return path


def test_round_trip_of_a_pt_checkpoint(tmp_path):
    ckpt = small_checkpoint(tmp_path)
    out = convert_gaussian_decoder(ckpt, tmp_path / "out", config=small_config(tmp_path))
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    model = load_gaussian_decoder(out)
    want = torch.load(ckpt, weights_only=True)["state_dict"]
    got = model.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    coords = torch.tensor([[0, 1, 2, 3], [0, 9, 2, 3], [1, 0, 0, 0]], dtype=torch.int32)
    assert model(torch.randn(3, 8), coords).shape == (3, 448)
    assert load_gaussian_decoder(out, attn_softcap=None).config.attn_softcap is None


def test_training_metric_keys_are_dropped(tmp_path):
    ckpt = small_checkpoint(tmp_path, **{"lpips_loss.net.slice1.0.weight": torch.zeros(2)})
    out = convert_gaussian_decoder(ckpt, tmp_path / "out", config=small_config(tmp_path))
    doc = json.loads((out / CONFIG_NAME).read_text())
    assert doc["converted_from"]["dropped_training_keys"] == 1
    assert "lpips_loss.net.slice1.0.weight" not in load_file(str(out / WEIGHTS_NAME))


def test_dtype_cast(tmp_path):
    ckpt = small_checkpoint(tmp_path)
    out = convert_gaussian_decoder(
        ckpt, tmp_path / "out", config=small_config(tmp_path), dtype=torch.bfloat16
    )
    assert {v.dtype for v in load_file(str(out / WEIGHTS_NAME)).values()} == {torch.bfloat16}


def test_missing_unexpected_and_misshaped_keys_are_all_listed(tmp_path):
    ckpt = small_checkpoint(
        tmp_path,
        **{
            "blocks.1.norm2.weight": None,
            "blocks.0.attn.to_qkv.bias": torch.zeros(48),
            "out_layer.bias": torch.zeros(447),
        },
    )
    with pytest.raises(CheckpointError) as err:
        convert_gaussian_decoder(ckpt, tmp_path / "out", config=small_config(tmp_path))
    msg = str(err.value)
    assert "missing: blocks.1.norm2.weight" in msg
    assert "unexpected: blocks.0.attn.to_qkv.bias" in msg
    assert "out_layer.bias: [447] vs expected [448]" in msg
    assert not (tmp_path / "out" / WEIGHTS_NAME).exists()


def test_release_default_config_rejects_a_small_checkpoint(tmp_path):
    with pytest.raises(
        CheckpointError,
        match=r"wrong shape: .*input_layer\.weight: \[16, 8\] vs expected \[768, 768\]",
    ):
        convert_gaussian_decoder(small_checkpoint(tmp_path), tmp_path / "out")


def test_unreadable_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_gaussian_decoder(tmp_path / "nope.pt", tmp_path / "out")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        convert_gaussian_decoder(junk, tmp_path / "out")
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({"args": {**SMALL, "attn_mode": "full"}}))
    with pytest.raises(CheckpointError, match="attn_mode"):
        resolve_config(bad_cfg)
    with pytest.raises(CheckpointError, match="no SLatGaussianDecoder arguments"):
        resolve_config({"something": 1})


def test_loader_refuses_foreign_directories(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"format": "atoken"}))
    with pytest.raises(CheckpointError, match="not an atoken-plugin-3d"):
        load_gaussian_decoder(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_gaussian_decoder(tmp_path / "missing")


def test_loader_checks_weights_against_config(tmp_path):
    out = convert_gaussian_decoder(
        small_checkpoint(tmp_path), tmp_path / "out", config=small_config(tmp_path)
    )
    state = load_file(str(out / WEIGHTS_NAME))
    state.pop("input_layer.weight")
    save_file(state, str(out / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="missing: input_layer.weight"):
        load_gaussian_decoder(out)


def test_check_state_accepts_the_release_schema_on_meta():
    with torch.device("meta"):
        state = GaussianDecoder().state_dict()
    check_state(state, GaussianDecoderConfig())


def test_tiny_release_weights_convert_and_reproduce_the_fixture(tmp_path, official_files):
    weights, cfg, gs, vox = official_files(
        "tiny-gs.safetensors", "tiny-gs.json", "fixture-gs.safetensors", "fixture-3d.safetensors"
    )
    out = convert_gaussian_decoder(weights, tmp_path / "tiny", config=cfg)
    model = load_gaussian_decoder(out)
    fx = load_file(str(gs))
    feats = load_file(str(vox))["vox.dec_mean"][:, :768]
    with torch.no_grad():
        raw = model(feats, fx["gs.in_coords"])
    assert (raw - fx["gs.raw_out"]).abs().max() <= 1e-5
