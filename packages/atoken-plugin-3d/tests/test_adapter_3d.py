"""The ``mesh3d`` adapter end to end: bunny -> voxel tokens -> AToken -> Gaussians -> .ply + metrics.

CPU time is kept low with a saved ``atoken-tiny`` model whose ``gaussian_decoder/`` holds a tiny
decoder (width 48, 1 block, 4 Gaussians per voxel) and a bunny scaled to ``fill = 0.3`` of the cube
(a few hundred surface voxels instead of ~11k).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from atoken import Tokenizer, build_tokenizer
from atoken.cli import cli
from atoken.plugin import (
    AdapterContext,
    CheckpointError,
    InputError,
    OptionsError,
    TokenGeometry,
    adapter_for,
)
from click.testing import CliRunner
from PIL import Image

from atoken_plugin_3d.adapter import Asset3D, Mesh3DAdapter
from atoken_plugin_3d.gaussian_decoder import GaussianDecoder, GaussianDecoderConfig
from atoken_plugin_3d.gaussians import RepresentationConfig
from atoken_plugin_3d.options import Mesh3DOptions
from atoken_plugin_3d.ply import read_ply
from atoken_plugin_3d.samples import bunny_path
from atoken_plugin_3d.voxelize import voxelize

FAST = {"views": 6, "size": 64, "fill": 0.3, "heldout_views": 2, "eval_size": 32, "lpips": False}
FAST_ARGS = [a for k, v in FAST.items() for a in ("-O", f"{k}={json.dumps(v)}")]
GAUSSIANS_PER_VOXEL = 4


@pytest.fixture(scope="module")
def bunny() -> Path:
    try:
        return bunny_path()
    except InputError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def asset(bunny) -> Asset3D:
    """The bunny loaded once with the fast options (6 + 2 views)."""
    return Mesh3DAdapter(Mesh3DOptions(**FAST)).load(bunny)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved atoken-tiny with a tiny (random, non-zero output) Gaussian decoder beside it (a
    companion the model's config.json declares)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("model")
    cfg = GaussianDecoderConfig(
        resolution=32,  # a grid other than the release's: the adapter must voxelize at it
        model_channels=48,
        num_blocks=1,
        num_heads=2,
        mlp_channels=96,
        representation=RepresentationConfig(num_gaussians=GAUSSIANS_PER_VOXEL),
    )
    decoder = GaussianDecoder(cfg)
    torch.nn.init.normal_(decoder.out_layer.weight, std=0.02)  # colours that depend on the input
    build_tokenizer("atoken-tiny").save_pretrained(root, companions={"gaussian_decoder": decoder})
    return root


@pytest.fixture(scope="module")
def reconstructed(bunny, model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec")
    result = CliRunner().invoke(
        cli, ["reconstruct", str(bunny), "--out", str(out), "-m", str(model_dir), *FAST_ARGS]
    )
    assert result.exit_code == 0, result.output
    return out / bunny.stem


def _run(args: list[str]):
    return CliRunner().invoke(cli, args)


# --------------------------------------------------------------------------- registration


def test_adapter_is_chosen_by_suffix_and_validates_options(tmp_path) -> None:
    for name in ("a.ply", "b.OBJ", "c.glb", "d.stl", "e.off", "v.safetensors", "transforms.json"):
        assert adapter_for(tmp_path / name).name == "mesh3d"
    with pytest.raises(InputError, match="--modality"):
        adapter_for(tmp_path / "scene_folder")  # a NeRF folder has no suffix
    assert adapter_for(tmp_path / "scene", "mesh3d").name == "mesh3d"
    with pytest.raises(OptionsError, match="views"):
        adapter_for(tmp_path / "a.ply", None, {"views": 0})
    with pytest.raises(OptionsError, match="colour"):
        adapter_for(tmp_path / "a.ply", None, {"colour": 1})


# --------------------------------------------------------------------------- tokens


def test_tokens_are_voxel_patches_at_t1(asset) -> None:
    adapter = Mesh3DAdapter(Mesh3DOptions(**FAST))
    assert isinstance(asset, Asset3D) and asset.kind == "mesh"
    assert len(asset.views) == 6 and len(asset.heldout) == 2
    assert asset.heldout.size == (32, 32)
    held_pos = torch.stack([c.position for c in asset.heldout.cameras])
    in_pos = torch.stack([c.position for c in asset.views.cameras])
    assert torch.cdist(held_pos, in_pos).min() > 0.1  # held-out cameras are new viewpoints
    tokens = adapter.to_tokens(asset)
    feats01, coords = voxelize(asset.views)
    n = len(coords)
    assert tokens.feats.shape == (n, 3072) and tokens.coords.dtype == torch.int32
    assert torch.equal(tokens.coords[:, 0], torch.ones(n, dtype=torch.int32))
    assert torch.equal(tokens.coords[:, 1:], coords)
    xyz = tokens.coords[:, 1:]
    # fill = 0.3: the bunny spans 0.3 of the cube around its centre -> voxels 22..41
    assert int(xyz.min()) >= 64 // 2 - 10 and int(xyz.max()) <= 64 // 2 + 10
    assert int(xyz.max()) - int(xyz.min()) >= 17
    torch.testing.assert_close(tokens.feats[:, :768], 2 * feats01 - 1, rtol=0, atol=1e-6)
    assert torch.count_nonzero(tokens.feats[:, 768:]) == 0
    assert float(tokens.feats[:, :768].min()) >= -1 and float(tokens.feats[:, :768].max()) <= 1
    assert tokens.feats[:, :768].std() > 0.05  # real colours, not a constant
    assert tokens.meta["voxels"] == n and tokens.meta["t"] == 1
    json.dumps(dict(tokens.meta))  # latents files store it as JSON
    assert adapter.to_tokens(asset) is tokens  # voxelized once per asset and options
    t0 = Mesh3DAdapter(Mesh3DOptions(**FAST, t=0)).to_tokens(asset)
    assert torch.equal(t0.coords[:, 0], torch.zeros(n, dtype=torch.int32))
    with pytest.raises(InputError, match="Asset3D"):
        adapter.to_tokens(torch.zeros(4, 4, 3))


def test_voxel_file_and_nerf_folder_inputs(asset, tmp_path) -> None:
    from atoken_plugin_3d.nerf import write_nerf_folder
    from atoken_plugin_3d.voxel_file import save_voxel_file

    adapter = Mesh3DAdapter(Mesh3DOptions(**FAST))
    ref = adapter.to_tokens(asset)
    feats01, coords = ref.feats[:, :768] * 0.5 + 0.5, ref.coords[:, 1:]
    save_voxel_file(tmp_path / "bunny.safetensors", feats01, coords)
    vox = adapter.load(tmp_path / "bunny.safetensors")
    assert vox.kind == "voxels" and adapter.target(vox, {}) is None
    torch.testing.assert_close(adapter.to_tokens(vox).feats, ref.feats, rtol=0, atol=1e-6)
    assert adapter.metrics(None, None) == {}  # no reference views, nothing to measure

    folder = tmp_path / "scene"
    write_nerf_folder(asset.views, folder)
    nerf = adapter.load(folder)  # 6 frames: 4 voxelized, 2 held out
    assert nerf.kind == "nerf" and (len(nerf.views), len(nerf.heldout)) == (4, 2)
    assert adapter.load(folder / "transforms.json").kind == "nerf"
    got = adapter.to_tokens(nerf).coords[:, 1:]  # 4 of the 6 views: a subset of the voxels
    lin = lambda c: set(((c[:, 0] * 64 + c[:, 1]) * 64 + c[:, 2]).tolist())  # noqa: E731
    assert len(got) > 0.5 * len(ref) and len(lin(got) - lin(ref.coords[:, 1:])) <= 0.02 * len(got)
    with pytest.raises(InputError, match="heldout_views"):
        Mesh3DAdapter(Mesh3DOptions(heldout_views=6)).load(folder)
    with pytest.raises(InputError, match="transforms.json"):
        adapter.load(tmp_path)  # a folder that is not a NeRF folder


# --------------------------------------------------------------------------- CLI end to end


def test_reconstruct_bunny_writes_ply_comparison_and_metrics(reconstructed) -> None:
    metrics = json.loads((reconstructed / "metrics.json").read_text())
    assert metrics["modality"] == "mesh3d"
    assert math.isfinite(metrics["psnr"]) and 3.0 < metrics["psnr"] < 60.0
    assert -1.0 <= metrics["ssim"] <= 1.0
    assert "lpips" not in metrics  # -O lpips=false
    voxels = metrics["tokens"]
    assert 100 < voxels < 3000
    ply = reconstructed / "reconstruction.ply"
    head = ply.read_bytes()[:400]
    assert head.startswith(b"ply\nformat binary_little_endian 1.0\n")
    assert f"element vertex {voxels * GAUSSIANS_PER_VOXEL}\n".encode() in head
    for prop in ("x", "f_dc_0", "opacity", "scale_0", "rot_0"):
        assert f"property float {prop}\n".encode() in head
    g = read_ply(ply)
    assert g.means.shape == (voxels * GAUSSIANS_PER_VOXEL, 3)
    assert float(g.means.abs().max()) < 0.25  # around the fill-0.3 bunny, inside the cube
    png = np.asarray(Image.open(reconstructed / "side_by_side.png"))
    layout = metrics["side_by_side_layout"]  # a label band above each row of 2 views
    b = layout["label_band"]
    assert png.shape == (2 * (b + 32) + 4, 2 * 32 + 4, 3)  # ground truth over reconstruction
    assert layout["reference"] == [0, b, 68, b + 32]
    assert layout["reconstruction"] == [0, 2 * b + 36, 68, 2 * b + 68]
    assert layout["reconstruction_views"] == [
        [0, 2 * b + 36, 32, 2 * b + 68],
        [36, 2 * b + 36, 68, 2 * b + 68],
    ]
    gt, rec = png[b : b + 32, :32].astype(float), png[2 * b + 36 :, :32].astype(float)
    assert gt.std() > 5 and rec.std() > 5  # both rows show the asset on black
    for top in (0, b + 36):  # "ground truth" / "render" + PSNR: dark text on the white bands
        assert (png[top : top + b].max(-1) < 160).sum() > 5  # small antialiased text
    assert sorted(p.name for p in reconstructed.iterdir()) == [
        "metrics.json",
        "reconstruction.ply",
        "side_by_side.png",
    ]


def test_encode_then_decode_gives_the_reconstructed_gaussians(
    bunny, model_dir, reconstructed, tmp_path
) -> None:
    latents = tmp_path / "bunny.safetensors"
    res = _run(["encode", str(bunny), "-o", str(latents), "-m", str(model_dir), *FAST_ARGS])
    assert res.exit_code == 0, res.output
    out = tmp_path / "bunny.ply"
    res = _run(["decode", str(latents), "-o", str(out)])
    assert res.exit_code == 0, res.output
    a, b = read_ply(out), read_ply(reconstructed / "reconstruction.ply")
    torch.testing.assert_close(a.means, b.means, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.features_dc, b.features_dc, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("empty.ply", b"", "could not be read|no vertices"),
        ("nan.obj", b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN"),
        ("cloud.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces|no vertices"),
        ("text.glb", b"this is not a mesh at all\n" * 4, "could not be read|no vertices"),
    ],
)
def test_bad_meshes_fail_in_one_line_and_write_nothing(model_dir, tmp_path, name, content, why):
    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "out"
    res = _run(["reconstruct", str(bad), "--out", str(out), "-m", str(model_dir), *FAST_ARGS])
    assert res.exit_code == 1
    (line,) = [ln for ln in res.output.splitlines() if ln.strip()]
    assert line.startswith("atoken: error:") and name in line
    assert re.search(why, line), line
    assert not out.exists()


def test_decoder_is_found_from_option_then_model_dir(model_dir, tmp_path) -> None:
    adapter = Mesh3DAdapter(Mesh3DOptions(**FAST))
    assert adapter.decoder_location() is None  # built without a model: the untrained fallback
    doc = json.loads((model_dir / "config.json").read_text())
    assert doc["companions"] == {"gaussian_decoder": "atoken-plugin-3d/gaussian-decoder"}
    model = Tokenizer.from_pretrained(model_dir)
    assert dict(model.companions) == {"gaussian_decoder": model_dir / "gaussian_decoder"}
    served = adapter_for("bunny.ply", None, FAST, model=model)
    assert served.context.companions == model.companions
    assert served.decoder_location() == model_dir / "gaussian_decoder"
    assert served.gaussian_decoder().config.model_channels == 48
    # a directory written before companions were declared: its subfolder is still found
    legacy = tmp_path / "legacy"
    shutil.copytree(model_dir, legacy)
    (legacy / "config.json").write_text(
        json.dumps({k: v for k, v in doc.items() if k != "companions"})
    )
    assert dict(Tokenizer.from_pretrained(legacy).companions) == {
        "gaussian_decoder": legacy / "gaussian_decoder"
    }
    # a declared companion that is missing is an error naming it
    shutil.rmtree(legacy / "gaussian_decoder")
    (legacy / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="declares the companion 'gaussian_decoder'"):
        Tokenizer.from_pretrained(legacy)
    explicit = Mesh3DAdapter(Mesh3DOptions(gaussian_decoder=str(model_dir / "gaussian_decoder")))
    assert explicit.decoder_location() == model_dir / "gaussian_decoder"
    with pytest.raises(InputError, match="not a Gaussian decoder directory"):
        Mesh3DAdapter(Mesh3DOptions(gaussian_decoder=str(tmp_path))).decoder_location()


def test_eval_3d_over_a_folder_of_assets(asset, model_dir, tmp_path) -> None:
    from atoken_plugin_3d.evaluate import find_assets
    from atoken_plugin_3d.nerf import write_nerf_folder

    data = tmp_path / "data"
    write_nerf_folder(asset.views, data / "scene")
    (data / "junk.obj").write_text("not a mesh\n")
    assert [p.name for p in find_assets(data)] == ["junk.obj", "scene"]  # NeRF images not assets
    out = tmp_path / "results.json"
    args = ["eval-3d", "--data", str(data), "-m", str(model_dir), "-o", str(out), *FAST_ARGS]
    res = _run(args)
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    assert results["assets"] == 1 and results["task"] == "reconstruction-3d"
    (skipped,) = results["skipped"]
    assert "junk.obj" in skipped
    (row,) = results["per_asset"]
    assert row["asset"] == "scene" and row["tokens"] > 100
    assert math.isfinite(results["psnr"]) and results["psnr"] == row["psnr"]
    with pytest.raises(InputError, match="no 3D assets"):
        find_assets(tmp_path / "data" / "scene" / "images")


def test_untrained_decoder_fallback_warns_once(monkeypatch, caplog) -> None:
    import atoken_plugin_3d.adapter as adapter_mod
    import atoken_plugin_3d.gaussian_decoder as gd

    small = GaussianDecoderConfig(model_channels=24, num_blocks=1, num_heads=2, mlp_channels=48)
    built: list[object] = []

    def fake(config=None):  # stands in for the release-size network (85M parameters)
        built.append(config)
        return GaussianDecoder(small)

    monkeypatch.setattr(gd, "GaussianDecoder", fake)
    monkeypatch.setattr(adapter_mod, "_WARNED", set())
    with caplog.at_level("WARNING", logger="atoken_plugin_3d.adapter"):
        a, b = Mesh3DAdapter(), Mesh3DAdapter()
        a.gaussian_decoder(), a.gaussian_decoder(), b.gaussian_decoder()
    assert built == [None, None]  # the release's config, once per adapter
    (record,) = [r for r in caplog.records if "untrained" in r.getMessage()]
    assert "gaussian_decoder" in record.getMessage()


def test_voxel_grid_follows_the_gaussian_decoder(asset, model_dir) -> None:
    adapter = Mesh3DAdapter(Mesh3DOptions(**FAST))
    assert adapter.resolution() == 64  # no decoder known: the release's grid
    context = AdapterContext(companions={"gaussian_decoder": model_dir / "gaussian_decoder"})
    adapter = Mesh3DAdapter(Mesh3DOptions(**FAST), context)
    assert adapter.resolution() == 32
    tokens = adapter.to_tokens(asset)
    assert tokens.meta["resolution"] == 32 and int(tokens.coords[:, 1:].max()) < 32
    fine = Mesh3DAdapter(Mesh3DOptions(**FAST)).to_tokens(asset)
    assert len(tokens) < len(fine)  # coarser grid, fewer surface voxels
    forced = Mesh3DAdapter(Mesh3DOptions(**FAST, resolution=64), context)
    with pytest.raises(InputError, match="decoder's 32³ grid"):
        forced.from_tokens(forced.to_tokens(asset))


def test_atoken_eval_reports_3d_assets_per_modality(bunny, model_dir, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(bunny, data / "bunny.ply")
    (data / "junk.stl").write_text("not a mesh\n")
    out = tmp_path / "results.json"
    options = [a for k, v in FAST.items() for a in ("-O", f"mesh3d.{k}={json.dumps(v)}")]
    res = _run(
        ["eval", "--data", str(data), "-m", str(model_dir), "-o", str(out), "--no-lpips", *options]
    )
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    assert results["images"] == 0 and results["videos"] == 0
    summary = results["modalities"]["mesh3d"]
    (row,) = results["per_asset"]
    assert summary["count"] == 1 and row["asset"] == "bunny.ply" and row["tokens"] > 100
    assert math.isfinite(summary["psnr"]) and summary["psnr"] == pytest.approx(row["psnr"])
    (skipped,) = results["skipped"]
    assert "junk.stl" in skipped
    bad = _run(["eval", "--data", str(data), "-m", str(model_dir), "-O", "views=8"])
    assert bad.exit_code != 0 and "ADAPTER.KEY=VALUE" in bad.output


def test_tokens_follow_the_models_geometry_or_are_refused(asset) -> None:
    # two frames of 16 x 16 RGB: the voxel patch is the first frame, the rest zero
    two = Mesh3DAdapter(Mesh3DOptions(**FAST), AdapterContext(TokenGeometry((2, 16, 16), 3)))
    tokens = two.to_tokens(asset)
    assert tokens.feats.shape[1] == 2 * 768
    assert bool((tokens.feats[:, 768:] == 0).all()) and float(tokens.feats[:, :768].std()) > 0
    release = Mesh3DAdapter(Mesh3DOptions(**FAST)).to_tokens(asset)
    assert torch.equal(tokens.feats[:, :768], release.feats[:, :768])
    assert torch.equal(tokens.coords, release.coords)
    # 8 x 8 patches: 192 values per voxel, cut from the same views
    small = Mesh3DAdapter(Mesh3DOptions(**FAST), AdapterContext(TokenGeometry((4, 8, 8), 3)))
    assert small.to_tokens(asset).feats.shape[1] == 4 * 8 * 8 * 3
    for patch, channels in (((4, 16, 16), 1), ((4, 16, 8), 3)):
        with pytest.raises(InputError, match="cannot serve a model of patch geometry"):
            Mesh3DAdapter(Mesh3DOptions(**FAST), AdapterContext(TokenGeometry(patch, channels)))
