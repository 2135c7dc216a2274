"""`atoken convert official`: reading release checkpoints safely and mapping their configs."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

import atoken
from atoken import CheckpointError
from atoken.convert.official import (
    OFFICIAL_CONFIGS,
    ConversionError,
    convert_official,
    model_config_from_official,
    read_official_state,
    resolve_official_config,
)
from tests.official_set import FIXTURES, pixel_samples, release_temporal, sample_ids, setting


class Payload:
    """A class a weights-only loader must refuse to rebuild."""


def _tiny_files():
    ckpt, cfg = FIXTURES / "tiny-soc.safetensors", FIXTURES / "tiny-soc.json"
    if not (ckpt.is_file() and cfg.is_file()):
        pytest.skip(f"official tiny model not in {FIXTURES}")
    return ckpt, cfg


def test_release_configs_map_to_atoken() -> None:
    soc = model_config_from_official(OFFICIAL_CONFIGS["So/C"])
    assert (soc.encoder.width, soc.encoder.depth, soc.encoder.num_heads, soc.encoder.mlp_width) == (
        1152,
        27,
        16,
        4304,
    )
    assert soc.quantizer.name == "kl" and soc.latent_channels == 48
    sod = model_config_from_official(OFFICIAL_CONFIGS["So/D"])
    assert sod.quantizer.name == "fsq" and sod.quantizer.options == {"levels": [4] * 6, "groups": 8}
    assert model_config_from_official(OFFICIAL_CONFIGS["So/C-s1"]).latent_channels == 32
    with pytest.raises(ConversionError, match="encoder_attn_mode='swin' is not supported"):
        model_config_from_official({**OFFICIAL_CONFIGS["So/C"], "encoder_attn_mode": "swin"})
    with pytest.raises(ConversionError, match="atoken-plugin-3d"):
        resolve_official_config("3D-GS")
    with pytest.raises(ConversionError, match="unknown official config 'So/X'"):
        resolve_official_config("So/X")


@pytest.mark.parametrize("name", ["So/C", "So/D", "So/C-s1"])
def test_release_layout_equals_the_key_schema(name) -> None:
    tsv = (
        FIXTURES
        / {
            "So/C": "keys-atoken-soc.tsv",
            "So/D": "keys-atoken-sod.tsv",
            "So/C-s1": "keys-atoken-soc-s1.tsv",
        }[name]
    )
    if not tsv.is_file():
        pytest.skip(f"{tsv.name} not in {FIXTURES}")
    expected = []
    for line in tsv.read_text().splitlines():
        key, shape, _ = line.split("\t")
        expected.append((key, list(map(int, shape.strip("[]").split(",")))))
    with torch.device("meta"):
        model = atoken.build_tokenizer(
            model_config_from_official(OFFICIAL_CONFIGS[name]), init=False
        )
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert sorted(got) == sorted(expected)


@pytest.mark.official
def test_converted_tiny_model_reproduces_release_tensors(tmp_path) -> None:
    ckpt, cfg = _tiny_files()
    fixture = FIXTURES / "fixture-images-video.safetensors"
    if not fixture.is_file():
        pytest.skip("fixture-images-video.safetensors missing")
    out = convert_official(ckpt, tmp_path / "tiny", config=cfg)
    model = atoken.Tokenizer.from_pretrained(out).eval()
    assert model.config.temporal == release_temporal()  # the set's tiling travels with it
    ref = load_file(str(fixture))
    b = ref["main.coords_in"][:, 0]
    kinds = {i: "image" if px.ndim == 3 else "video" for i, px in pixel_samples(ref, "main")}
    samples = [
        atoken.PatchTokens(
            ref["main.feats_in"][b == i], ref["main.coords_in"][b == i, 1:], kinds.get(i, "video")
        )
        for i in sample_ids(ref["main.coords_in"])
    ]
    with torch.inference_mode():
        dense = model.encode_dense(samples)
        torch.testing.assert_close(dense.feats, ref["main.dense"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.project(dense), ref["main.z_proj"], atol=1e-5, rtol=1e-5)


def test_pt_checkpoints_load_without_unpickling_objects(tmp_path) -> None:
    ckpt, cfg = _tiny_files()
    state = load_file(str(ckpt))
    wrapped = tmp_path / "wrapped.pt"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}, "step": torch.tensor(3)},
        wrapped,
    )
    got = read_official_state(wrapped)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    convert_official(wrapped, tmp_path / "m", config=cfg, dtype=torch.bfloat16)
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert stored["proj.weight"].dtype == torch.bfloat16

    evil = tmp_path / "evil.pt"  # an arbitrary pickled object must never be executed or accepted
    torch.save({"state_dict": state, "obj": Payload()}, evil)
    with pytest.raises(CheckpointError, match="never unpickles"):
        read_official_state(evil)


def test_mismatched_checkpoints_list_their_keys(tmp_path) -> None:
    ckpt, cfg = _tiny_files()
    state = load_file(str(ckpt))
    del state["proj.weight"]
    state["extra.bias"] = torch.zeros(3)
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(
        CheckpointError, match=r"missing: proj\.weight[\s\S]*unexpected: extra\.bias"
    ):
        convert_official(broken, tmp_path / "out", config=cfg)
    assert not (tmp_path / "out").exists()
    gamma = "decoder.blocks.0.attn.q_rms_norm.gamma"  # [heads, head dim] of the fixture's model
    shape = list(load_file(str(ckpt))[gamma].shape)
    with pytest.raises(
        CheckpointError,
        match=rf"wrong shape: .*{re.escape(f'{gamma}: checkpoint {shape}')} vs So/C \[16, 72\]",
    ):
        convert_official(ckpt, tmp_path / "out", config="So/C")
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_official(tmp_path / "nope.pt", tmp_path / "out")


@pytest.mark.official
def test_converted_tiny_model_embeds_and_ranks_labels_end_to_end(tmp_path) -> None:
    """`atoken embed` and `atoken zeroshot` on real photos with the converted official model."""
    pytest.importorskip("transformers")
    from click.testing import CliRunner
    from PIL import Image
    from safetensors import safe_open

    from atoken.cli import cli
    from tests.conftest import SKIMAGE_DATA
    from tests.tiny_siglip2 import make_tiny_siglip2

    ckpt, cfg = _tiny_files()
    model_dir = convert_official(ckpt, tmp_path / "tiny", config=cfg)
    photos = []
    for name in ("chelsea.png", "coffee.png"):
        with Image.open(SKIMAGE_DATA / name) as im:
            im.convert("RGB").resize((im.width // 4, im.height // 4)).save(tmp_path / name)
        photos.append(str(tmp_path / name))
    runner = CliRunner()
    out = tmp_path / "emb.safetensors"
    res = runner.invoke(cli, ["embed", *photos, "-o", str(out), "--model", str(model_dir)])
    assert res.exit_code == 0, res.output
    with safe_open(str(out), "pt") as fh:
        emb = fh.get_tensor("embeddings")
    width = setting("tiny-soc.json", "arch_cfg", "encoder_model_channels")
    assert emb.shape == (2, width)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    text_dir = make_tiny_siglip2(tmp_path / "siglip2", hidden=width)  # the model's width
    res = runner.invoke(
        cli,
        [
            "zeroshot",
            *photos,
            "--labels",
            "a cat,a dog,a cup of coffee",
            "--text-model",
            str(text_dir),
            "--model",
            str(model_dir),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"{photos[0]}:" and len(lines) == 8
    scores = [float(line.split()[-1]) for line in lines[1:4]]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=2e-4)
