"""Gaussian rendering throughput (views/s) for a decoded-asset-sized set of Gaussians.

Run with ``pytest packages/atoken-plugin-3d/benchmarks/bench_render.py`` (pytest-benchmark).
The Gaussians are those the Gaussian decoder emits for the Stanford bunny's surface voxels when
its output layer is zero (its initial state): ~13k occupied voxels of the 64³ grid x 32 Gaussians
= ~417k Gaussians at the release's biases (scale 0.004, opacity 0.1, grey). ``count`` takes the
first ``n`` of them (voxel-major, so a subset still covers part of the asset). Rendered from the
release's orbit (radius 2, FoV 40°). Each row records ``views_per_s`` in ``extra_info``; CUDA rows
(gsplat) run only with a GPU and end the timed call with ``torch.cuda.synchronize()``.

On a CPU shared with other jobs, compare ``OMP_NUM_THREADS=1`` with the default: intra-op
threads that wait on descheduled siblings made this renderer 5-10x slower on a busy 2-core box.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atoken_plugin_3d.cameras import sphere_cameras
from atoken_plugin_3d.gaussians import (
    Gaussians,
    RepresentationConfig,
    offset_perturbation,
    to_representation,
)
from atoken_plugin_3d.mesh import load_mesh
from atoken_plugin_3d.render_gaussians import available_backends, gaussian_tensors, render_tensors
from atoken_plugin_3d.samples import bunny_path

VIEWS = 2


@pytest.fixture(scope="module")
def bunny_gaussians() -> Gaussians:
    mesh = load_mesh(bunny_path())
    points = np.asarray(mesh.trimesh.sample(400_000))
    voxels = np.unique(np.clip(np.floor((points + 0.5) * 64), 0, 63).astype(np.int64), axis=0)
    coords = torch.cat([torch.zeros(len(voxels), 1, dtype=torch.long), torch.from_numpy(voxels)], 1)
    config = RepresentationConfig()
    raw = torch.zeros(len(voxels), config.out_channels)
    gaussians = to_representation(raw, coords, offset_perturbation(config), config, 64)[0]
    _render_all(_tensors(gaussians, 2000, "cpu"), sphere_cameras(1, size=64), "torch", 8)  # warm-up
    return gaussians


def _tensors(gaussians: Gaussians, count: int, device: str) -> list[torch.Tensor]:
    return [t[:count].detach().to(device) for t in gaussian_tensors(gaussians)]


def _render_all(tensors, cams, backend: str, tile: int) -> torch.Tensor:
    with torch.no_grad():
        out = [render_tensors(*tensors, c, backend=backend, tile=tile).rgb for c in cams]
    if tensors[0].is_cuda:
        torch.cuda.synchronize()
    return torch.stack(out)


@pytest.mark.bench
@pytest.mark.parametrize("tile", [8, 16], ids="tile={}".format)
@pytest.mark.parametrize("size", [256, 512], ids="size={}".format)
@pytest.mark.parametrize("count", [50_000, 1_000_000], ids=["50k", "all"])
def test_render_torch_cpu(benchmark, bunny_gaussians: Gaussians, count: int, size: int, tile: int):
    """Forward rendering with the pure-PyTorch backend on the CPU."""
    tensors = _tensors(bunny_gaussians, count, "cpu")
    cams = sphere_cameras(VIEWS, size=size)
    out = benchmark.pedantic(
        _render_all, args=(tensors, cams, "torch", tile), rounds=1, warmup_rounds=0
    )
    assert out.shape == (VIEWS, size, size, 3) and out.mean() > 0.01
    benchmark.extra_info["gaussians"] = len(tensors[0])
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["views_per_s"] = VIEWS / benchmark.stats.stats.median


@pytest.mark.bench
@pytest.mark.parametrize("size", [256], ids="size={}".format)
def test_render_torch_cpu_backward(benchmark, bunny_gaussians: Gaussians, size: int) -> None:
    """Forward + backward (training step cost) for 50k Gaussians."""
    tensors = _tensors(bunny_gaussians, 50_000, "cpu")
    cams = sphere_cameras(VIEWS, size=size)

    def step() -> None:
        leaves = [t.clone().requires_grad_() for t in tensors]
        loss = sum(render_tensors(*leaves, c, backend="torch", tile=8).rgb.sum() for c in cams)
        loss.backward()

    benchmark.pedantic(step, rounds=1, warmup_rounds=0)
    benchmark.extra_info["views_per_s"] = VIEWS / benchmark.stats.stats.median


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.skipif("gsplat" not in available_backends(), reason="needs CUDA and gsplat")
@pytest.mark.parametrize("backend", ["gsplat", "torch"])
@pytest.mark.parametrize("size", [256, 512], ids="size={}".format)
def test_render_cuda(benchmark, bunny_gaussians: Gaussians, size: int, backend: str) -> None:
    """Both backends on the GPU, all Gaussians."""
    tensors = _tensors(bunny_gaussians, 1_000_000, "cuda")
    cams = sphere_cameras(16, size=size)
    benchmark.pedantic(_render_all, args=(tensors, cams, backend, 16), rounds=5, warmup_rounds=1)
    benchmark.extra_info["views_per_s"] = 16 / benchmark.stats.stats.median
    benchmark.extra_info["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
