"""Mesh rendering and voxelization throughput on the Stanford bunny (CPU).

Run with ``pytest packages/atoken-plugin-3d/benchmarks/bench_voxelize.py`` (pytest-benchmark).
Rendering is Embree ray casting (`render_mesh`), reported in views/s; voxelization is
`voxelize` of the release's default view set (16 views, 256², radius 2, FoV 40°), reported in
seconds per asset. Each row records its rates in ``extra_info``.
"""

from __future__ import annotations

import pytest

from atoken_plugin_3d.cameras import sphere_cameras
from atoken_plugin_3d.mesh import Mesh, load_mesh
from atoken_plugin_3d.render_mesh import render_views
from atoken_plugin_3d.samples import bunny_path
from atoken_plugin_3d.views import Views
from atoken_plugin_3d.voxelize import voxelize

VIEWS = 16


@pytest.fixture(scope="module")
def bunny() -> Mesh:
    return load_mesh(bunny_path())


@pytest.fixture(scope="module")
def bunny_views(bunny: Mesh) -> Views:
    return render_views(bunny, sphere_cameras(VIEWS, size=256))


@pytest.mark.parametrize("size", [256, 512], ids="size={}".format)
def test_render_bunny(benchmark, bunny: Mesh, size: int) -> None:
    """16 views with depth of the 50k-vertex bunny (Lambert-shaded grey)."""
    cams = sphere_cameras(VIEWS, size=size)
    views = benchmark.pedantic(render_views, args=(bunny, cams), rounds=3, warmup_rounds=1)
    assert views.rgb.shape == (VIEWS, size, size, 3)
    benchmark.extra_info["views_per_s"] = VIEWS / benchmark.stats.stats.median
    benchmark.extra_info["mpix_per_s"] = VIEWS * size * size / benchmark.stats.stats.median / 1e6


@pytest.mark.parametrize("mode", ["nearest", "average"])
def test_voxelize_bunny(benchmark, bunny_views: Views, mode: str) -> None:
    """Occupancy + visibility + 16x16 patches from 16 rendered 256² views."""
    feats, coords = benchmark.pedantic(
        voxelize, args=(bunny_views,), kwargs={"mode": mode}, rounds=5, warmup_rounds=1
    )
    assert feats.shape == (len(coords), 768)
    benchmark.extra_info["voxels"] = len(coords)


def test_render_and_voxelize_bunny(benchmark, bunny: Mesh) -> None:
    """The whole mesh -> voxel tokens path for one asset at the default settings."""
    cams = sphere_cameras(VIEWS, size=256)

    def run():
        return voxelize(render_views(bunny, cams))

    feats, coords = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["voxels"] = len(coords)
    benchmark.extra_info["assets_per_s"] = 1.0 / benchmark.stats.stats.median
