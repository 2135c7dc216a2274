"""`atoken eval` (reconstruction task): PSNR/SSIM/LPIPS over a folder, clear errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from atoken import InputError
from atoken.cli import cli
from atoken.eval.reconstruction import reconstruction_metrics
from tests.conftest import SKIMAGE_DATA


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "nested").mkdir(parents=True)
    with Image.open(SKIMAGE_DATA / "chelsea.png") as im:
        im.crop((0, 0, 96, 64)).save(root / "cat.png")
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((0, 0, 64, 80)).save(root / "nested" / "cup.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_metrics_per_image_and_mean(tiny, folder) -> None:
    out = reconstruction_metrics(tiny, folder, lpips=False)
    assert out["images"] == 2 and [r["image"] for r in out["per_image"]] == [
        "cat.png",
        "nested/cup.jpg",
    ]
    assert out["psnr"] == pytest.approx(sum(r["psnr"] for r in out["per_image"]) / 2)
    assert out["per_image"][0]["tokens"] == 4 * 6
    assert "Inception" in out["rfid_unavailable"] and out["rfid"] is None
    (folder / "empty").mkdir()
    with pytest.raises(InputError, match="no files any adapter reads"):
        reconstruction_metrics(tiny, folder / "empty", lpips=False)


def test_eval_cli_default_task_writes_json(folder, tmp_path) -> None:
    out = tmp_path / "res.json"
    result = CliRunner().invoke(
        cli, ["eval", "--data", str(folder), "-o", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["task"] == "reconstruction" and data["images"] == 2
    assert ("lpips" in data) != (data["lpips_unavailable"] is not None)
    bad = CliRunner().invoke(cli, ["eval", "--data", str(tmp_path / "nope")])
    assert bad.exit_code == 1 and "not a directory" in bad.output
