"""Training the Gaussian decoder: the ``3d_gs`` task of atoken's trainer (``gaussian_render``).

Runs go through the public entry, ``atoken train`` (a plugin imports only ``atoken`` and
``atoken.plugin``). A tiny set-up keeps every run to seconds: the plugin's built-in assets at an
8³ voxel grid, 2 Gaussians per voxel, 32² renders, a 1-block decoder of width 32, L1 + SSIM
(LPIPS, seconds per call on a busy CPU, is exercised by configs/3d-gs.toml), a frozen
atoken-tiny tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from atoken.plugin import load_tensors

from atoken_plugin_3d.convert import load_gaussian_decoder, save_gaussian_decoder
from atoken_plugin_3d.gaussian_decoder import GaussianDecoder, GaussianDecoderConfig
from atoken_plugin_3d.gaussians import RepresentationConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest

ADAPTER = {
    "resolution": 8,
    "views": 4,
    "size": 64,
    "heldout_views": 1,
    "eval_size": 32,
    "fill": 0.9,
    "lpips": False,
}


def tiny(steps: int = 6, *, init: str = "default", **run) -> dict:
    return {
        "model": {"preset": "atoken-tiny", "init": init},
        "data": [{"name": "samples", "task": "3d_gs", "options": {"adapter": ADAPTER}}],
        "objectives": {
            "gaussian_render": {
                "decoder": {
                    "resolution": 8,
                    "model_channels": 32,
                    "num_blocks": 1,
                    "num_heads": 2,
                    "mlp_channels": 64,
                    "num_gaussians": 2,
                    "scaling_bias": 0.06,
                },
                "lpips": 0.0,  # LPIPS costs seconds per call on a busy 2-core CPU
                "eval_lpips": False,
                "image_size": 32,
                "views_per_step": 1,
            }
        },
        "stages": [{"steps": steps, "tasks": {"3d_gs": 1.0}, "train": [], "tokens_per_batch": 400}],
        "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1, "weight_decay": 0.0},
        "ema": {"decay": 0.5},
        "run": {
            "log_every": 1,
            "checkpoint_every": 2,
            "sample_every": 100,
            "eval_images": 2,
            **run,
        },
    }


def _toml(value) -> str:
    """``value`` as a TOML value (inline tables and arrays; enough for these configs)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def train(config: dict, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``atoken train`` of ``config`` (written beside ``out`` as TOML) into ``out``."""
    path = out.with_name(f"{out.name}.toml")
    path.write_text("".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in config.items()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "atoken", "train", str(path), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def trained(config: dict, out: Path, *args: str) -> subprocess.CompletedProcess:
    result = train(config, out, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# --------------------------------------------------------------------------- config


def _with(section: dict) -> dict:
    cfg = tiny()
    cfg["objectives"]["gaussian_render"] = {**cfg["objectives"]["gaussian_render"], **section}
    return cfg


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"decoder": {"model_channels": 30, "num_heads": 4}}, "not divisible"),
        ({"decoder": {"from_pretrained": "x", "num_blocks": 2}}, "remove num_blocks"),
        ({"l1": 0, "lpips": 0, "ssim": 0}, "all loss weights are 0"),
        ({"widht": 3}, "widht"),
    ],
)
def test_invalid_objective_options_are_explained(
    tmp_path: Path, section: dict, needle: str
) -> None:
    result = train(_with(section), tmp_path / "run")
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("atoken: error:")]
    assert "gaussian_render" in line and needle in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_objective_table_no_task_uses_is_refused(tmp_path: Path) -> None:
    cfg = tiny()
    cfg["objectives"]["gaussian_rendr"] = {}
    result = train(cfg, tmp_path / "run")
    assert result.returncode == 1
    assert "[objectives.gaussian_rendr] is the objective of no task" in result.stderr


def test_defaults_follow_the_paper_and_the_release() -> None:
    from atoken_plugin_3d.gs_options import GaussianRenderOptions

    opts = GaussianRenderOptions()
    built = opts.decoder.build()
    assert (built.num_blocks, built.model_channels, built.representation.num_gaussians) == (
        12,
        768,
        32,
    )
    assert (opts.l1, opts.lpips, opts.ssim) == (1.0, 0.2, 0.2)


def test_repository_config_validates() -> None:
    path = Path(__file__).resolve().parents[3] / "configs" / "3d-gs.toml"
    if not path.is_file():
        pytest.skip("configs/3d-gs.toml lives in the atoken repository")
    import tomllib

    from atoken_plugin_3d.gs_options import GaussianRenderOptions

    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    opts = GaussianRenderOptions.model_validate(doc["objectives"]["gaussian_render"])
    assert list(doc["stages"][0]["tasks"]) == ["3d_gs"] and doc["stages"][0]["train"] == []
    assert doc["data"][0]["options"]["adapter"]["resolution"] == opts.decoder.build().resolution


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


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_training_raises_held_out_psnr_and_writes_the_run(tmp_path: Path) -> None:
    from atoken import Tokenizer

    out = tmp_path / "run"
    trained(tiny(steps=10, init="pca", sample_every=10), out)
    records = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11))
    assert all({"l1", "dssim", "kl", "loss", "grad_norm"} <= set(r) for r in records)
    # held-out metrics before and after, on the held-out views of the first two assets
    evals = _rows(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 10]
    assert evals[1]["psnr"] > evals[0]["psnr"] + 0.5
    assert {"psnr", "ssim"} <= set(evals[1]) and "lpips" not in evals[1]
    assert [r["image"] for r in evals[1]["images"]] == ["builtin/bunny", "builtin/cube"]
    for name in ("loss_curve.png", "samples/step-00000010.png"):
        assert (out / name).is_file(), name
    # the frozen tokenizer did not move; the decoder did (its own AdamW group)
    start = Tokenizer.from_pretrained(out / "checkpoints" / "step-00000006")
    end = Tokenizer.from_pretrained(out / "model")
    for (k, a), (_, b) in zip(start.state_dict().items(), end.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    first = load_tensors(out / "checkpoints" / "step-00000006" / "objectives.safetensors")
    last = load_tensors(out / "checkpoints" / "step-00000010" / "objectives.safetensors")
    assert any(not torch.equal(first[k], last[k]) for k in first)
    # the model folder: the tokenizer with the (EMA) decoder beside it
    ema = load_tensors(out / "checkpoints" / "step-00000010" / "objectives_ema.safetensors")
    dec = load_gaussian_decoder(out / "model" / "gaussian_decoder")
    assert dec.config.resolution == 8 and dec.config.representation.num_gaussians == 2
    for key, value in dec.state_dict().items():
        assert torch.equal(value, ema[f"gaussian_render.decoder.{key}"].to(value.dtype)), key
    # a second fit into the same folder must be told to resume
    again = train(tiny(steps=10), out)
    assert again.returncode == 1 and "--resume" in again.stderr


def test_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    import shutil

    trained(tiny(steps=3), tmp_path / "full")
    cut = tmp_path / "cut"
    trained(tiny(steps=3), cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000003")  # as if killed after step 2's save
    resumed = trained(tiny(steps=3), cut, "--resume")
    assert "step 2" in resumed.stdout + resumed.stderr  # it resumed from step 2
    for name in ("objectives.safetensors", "objectives_ema.safetensors"):
        a = load_tensors(tmp_path / "full" / "checkpoints" / "step-00000003" / name)
        b = load_tensors(cut / "checkpoints" / "step-00000003" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert [r["step"] for r in _rows(cut / "metrics.jsonl")] == [1, 2, 3]
    assert [r["loss"] for r in _rows(cut / "metrics.jsonl")] == [
        r["loss"] for r in _rows(tmp_path / "full" / "metrics.jsonl")
    ]


def test_the_model_folder_reconstructs_a_mesh(tmp_path: Path) -> None:
    from atoken_plugin_3d.ply import read_ply
    from atoken_plugin_3d.samples import bunny_path

    trained(tiny(steps=2), tmp_path / "run")
    opts = {k: v for k, v in ADAPTER.items() if k != "resolution"}  # the grid: the decoder's
    args = [a for k, v in opts.items() for a in ("-O", f"{k}={json.dumps(v)}")]
    out = tmp_path / "rec"
    model = str(tmp_path / "run" / "model")
    res = subprocess.run(
        [sys.executable, "-m", "atoken", "reconstruct", str(bunny_path()), "--out", str(out)]
        + ["-m", model, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (ply,) = list(out.rglob("*.ply"))
    gaussians = read_ply(ply)
    assert len(gaussians) > 0 and len(gaussians) % 2 == 0  # 2 Gaussians per voxel of the 8³ grid
