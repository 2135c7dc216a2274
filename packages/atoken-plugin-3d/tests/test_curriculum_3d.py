"""The 3D tasks in atoken's curriculum (stage 3): ``3d_rec`` / ``3d_und`` batches of voxel tokens
from a folder of meshes (atoken's ``files`` source through the ``mesh3d`` adapter), mixed with
image reconstruction by `atoken.train.Trainer`.

Small settings keep it to seconds: generated primitives at ``fill = 0.2`` (about 80-160 voxel
tokens each), 4 input views of 48², one held-out view, the tiny model, L1 only, a bag-of-words
text tower.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from atoken import build_plugin_manager, collect_components
from atoken.testing import BagOfWordsPlugin
from atoken.train import Trainer, validate_train_config

ADAPTER = {"views": 4, "size": 48, "heldout_views": 1, "fill": 0.2, "lpips": False}
SHAPES = {
    "sphere": (lambda: trimesh.creation.icosphere(subdivisions=2), "a colourful ball"),
    "box": (lambda: trimesh.creation.box(extents=(1.0, 0.8, 0.6)), "a rainbow coloured box"),
    "torus": (lambda: trimesh.creation.torus(0.35, 0.15, 24, 12), "a ring shaped like a donut"),
}


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def coloured(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Vertex colours = normalised position (a smooth colour field the tokens must carry)."""
    v = np.asarray(mesh.vertices)
    rgb = 0.15 + 0.8 * (v - v.min(0)) / np.maximum(np.ptp(v, 0), 1e-9)
    rgba = np.concatenate([rgb, np.ones((len(v), 1))], 1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=(rgba * 255).astype(np.uint8))
    return mesh


@pytest.fixture(scope="module")
def mesh_dir(tmp_path_factory) -> Path:
    """Three coloured primitives (PLY) with captions in subfolders, and a corrupt mesh file."""
    root = tmp_path_factory.mktemp("meshes")
    (root / "shapes").mkdir()
    for name, (make, caption) in SHAPES.items():
        coloured(make()).export(root / "shapes" / f"{name}.ply")
        (root / "shapes" / f"{name}.txt").write_text(caption + "\n")
    (root / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2")
    (root / "broken.txt").write_text("never read: the mesh is corrupt")
    return root


def components():
    """Installed plugins (mesh3d comes from this distribution's entry point) plus ``bag``."""
    pm = build_plugin_manager()
    pm.register(BagOfWordsPlugin(), name="test-text")
    return collect_components(pm)


def stage3_config(mesh_dir: Path, steps: int = 2) -> dict:
    files = {"name": "files", "path": str(mesh_dir), "options": {"adapter": ADAPTER}}
    return {
        "model": {"preset": "atoken-tiny"},
        "data": [
            {"name": "samples", "task": "image_rec", "options": {"video_frames": False}},
            {**files, "task": "3d_rec"},
            {**files, "task": "3d_und"},
        ],
        "stages": [
            {
                "name": "3d",
                "steps": steps,
                "min_res": 32,
                "max_res": 64,
                "tokens_per_batch": 256,
                "tasks": {"image_rec": 1, "3d_rec": 1, "3d_und": 1},
                "losses": [{"name": "l1", "weight": 1.0}],
            }
        ],
        "semantic": {"mesh3d": {"text_model": "bag", "loss": "siglip_sigmoid"}},
        "optimizer": {"lr": 1e-3, "warmup_steps": 1, "grad_accum": 3},
        "run": {"log_every": 1, "checkpoint_every": 100, "sample_every": 100, "eval_images": 1},
    }


def test_stage3_mix_trains_on_meshes_and_skips_a_corrupt_one(mesh_dir, tmp_path, caplog):
    cfg = validate_train_config(stage3_config(mesh_dir))
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="atoken.train.data"):
        trainer = Trainer(cfg, run, components=components(), progress=False)
        result = trainer.fit()
    assert result.steps == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tasks = [t for r in records for t in r["task"].split("+")]
    assert {"image_rec", "3d_rec", "3d_und"} <= set(tasks)
    assert all(math.isfinite(r["loss"]) and r["tokens"] <= 3 * 256 for r in records)
    assert any("sem" in r and math.isfinite(r["sem"]) for r in records)  # the caption loss ran
    for task in ("3d_rec", "3d_und"):
        source = trainer.streams[task].source
        assert len(source) == 4 and source.skipped == 1
        assert "broken" in source.skip_reasons[0]
    assert "skipping sample 'broken'" in caplog.text
    # voxel tokens reached the model: (t = 1, x, y, z) coordinates inside the 64³ grid
    batch = next(trainer.streams["3d_rec"])
    for tokens in batch:
        assert tokens.modality == "mesh3d" and tokens.feats.shape[1] == 3072
        assert bool((tokens.coords[:, 0] == 1).all()) and int(tokens.coords[:, 1:].max()) < 64
