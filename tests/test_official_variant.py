"""The official tests hold on a second fixture set in the same layout, not only on the shipped one.

`tests.official_variant` writes a set with other image sizes, frame counts, crops, sample order,
model widths, head dims, temporal tile and KV-cache mode; every ``official`` test then runs
against it in a subprocess (``ATOKEN_OFFICIAL_FIXTURES`` pointed at it). The variant's expected
tensors are atoken's own (no official code is available offline), so this checks that the tests
read every size and setting from the set they are given (none tuned to one fixture), not
equivalence with the release; equivalence is what the shipped set checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.official_set import FIXTURES

pytestmark = pytest.mark.official

REPO = Path(__file__).resolve().parents[1]
GUARD = "ATOKEN_OFFICIAL_VARIANT_RUN"  # set in the subprocess, so this module does not recurse


@pytest.fixture(scope="module")
def variant(tmp_path_factory) -> Path:
    if os.environ.get(GUARD):
        pytest.skip("already running against the variant set")
    if not (FIXTURES / "tiny-soc.json").is_file():
        pytest.skip(f"the official fixture set is not in {FIXTURES} (its arch JSON is the base)")
    from tests.official_variant import write_variant_set

    return write_variant_set(FIXTURES, tmp_path_factory.mktemp("official-variant"))


def shapes(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path), "pt") as fh:
        return {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}


def test_variant_set_differs_where_the_tests_could_assume(variant: Path) -> None:
    """Sizes, frame counts, crops, sample order, widths, tiling and cache all differ."""
    settings = {}
    for root in (FIXTURES, variant):
        doc = json.loads((root / "tiny-soc.json").read_text())
        px = {
            **shapes(root / "fixture-images-video.safetensors"),
            **shapes(root / "fixture-crop-tiling.safetensors"),
        }
        pixels = {k: v for k, v in px.items() if ".pixels_" in k}
        settings[root] = {
            "pixels": pixels,
            "video_at": sorted(k for k, v in pixels.items() if len(v) == 4),
            "frames": sorted(v[0] for v in pixels.values() if len(v) == 4),
            "width": doc["arch_cfg"]["encoder_model_channels"],
            "heads": doc["arch_cfg"]["encoder_num_heads"],
            "tile": doc["runtime_settings"]["num_sample_frames_batch_size"],
            "kv": doc["spec"]["kv"],
            "rope_dim": shapes(root / "fixture-rope-pe.safetensors")["rope.q_in"][-1],
        }
    shipped, ours = settings[FIXTURES], settings[variant]
    for key in ("video_at", "frames", "width", "tile", "kv", "rope_dim"):
        assert shipped[key] != ours[key], key
    assert not set(map(tuple, shipped["pixels"].values())) & set(
        map(tuple, ours["pixels"].values())
    )
    assert all(t % 4 not in (0, 1) for t in ours["frames"])  # the frame cut drops 2 or 3 frames


def test_official_suite_passes_on_the_variant_set(variant: Path, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    env = {**os.environ, "ATOKEN_OFFICIAL_FIXTURES": str(variant), GUARD: "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "pytest", "-m", "official", str(REPO / "tests"), "-q"]
    cmd += ["-p", "no:cacheprovider", f"--junitxml={report}", "-W", "ignore::DeprecationWarning"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert report.is_file(), proc.stdout[-4000:] + proc.stderr[-2000:]
    cases = list(ET.parse(report).getroot().iter("testcase"))
    outcome = {
        f"{c.get('classname')}::{c.get('name')}": next(
            (child.tag for child in c if child.tag in ("failure", "error", "skipped")), "passed"
        )
        for c in cases
    }
    skipped = sorted(k for k, v in outcome.items() if v == "skipped")
    # only this module's own tests skip there (the guard); everything else must run and pass
    assert all("test_official_variant" in k for k in skipped), skipped
    bad = sorted(k for k, v in outcome.items() if v in ("failure", "error"))
    assert bad == [], proc.stdout[-6000:]
    assert proc.returncode == 0, proc.stdout[-4000:]
    ran = [k for k, v in outcome.items() if v == "passed"]
    assert len(ran) >= 60, ran  # the RoPE/PE/FSQ, patching, model output and schema cases
    assert any("test_pixel_patchify" in k and "main-1" in k for k in ran)  # its video is b=1
