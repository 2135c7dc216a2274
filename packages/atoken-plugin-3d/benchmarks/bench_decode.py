"""Gaussian decoding throughput (voxels/s and Gaussians/s) on the Stanford bunny's voxels.

Run with ``pytest packages/atoken-plugin-3d/benchmarks/bench_decode.py`` (pytest-benchmark).
The voxel tokens are the bunny's (16 Embree views at 256², nearest-view patches, ~13k occupied
voxels of the 64³ grid); the decoder is the release's configuration (12 blocks, width 768, 3D
windows of 8, 32 Gaussians per voxel) with random weights (the cost does not depend on them)
and the CPU demo configuration of ``configs/3d-gs.toml``. Each row records ``voxels_per_s`` and
``gaussians_per_s`` in ``extra_info``; CUDA rows run only with a GPU.

References: AToken release ``3d_decode_gs`` configuration; TRELLIS SLat Gaussian decoder.
"""

from __future__ import annotations

import pytest
import torch

from atoken_plugin_3d.gaussian_decoder import GaussianDecoder, GaussianDecoderConfig
from atoken_plugin_3d.gaussians import RepresentationConfig
from atoken_plugin_3d.mesh import load_mesh
from atoken_plugin_3d.render_mesh import RenderOptions, render_views
from atoken_plugin_3d.samples import bunny_path
from atoken_plugin_3d.voxelize import voxelize

CONFIGS = {
    "release": GaussianDecoderConfig(),
    "cpu-demo": GaussianDecoderConfig(
        model_channels=96,
        num_blocks=2,
        num_heads=4,
        mlp_channels=384,
        representation=RepresentationConfig(num_gaussians=4),
    ),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def bunny_voxels() -> tuple[torch.Tensor, torch.Tensor]:
    """``(feats [N, 768] in [0, 1], coords [N, 4] (b, x, y, z))`` of the bunny at 64³."""
    views = render_views(load_mesh(bunny_path()), RenderOptions(views=16, size=256).cameras())
    feats, coords = voxelize(views, resolution=64)
    bxyz = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords.long()], 1)
    return feats * 2 - 1, bxyz


@pytest.mark.bench
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_gaussians(benchmark, bunny_voxels, name: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    decoder = GaussianDecoder(CONFIGS[name]).eval().to(device)
    feats, coords = (t.to(device) for t in bunny_voxels)

    def run():
        with torch.inference_mode():
            (g,) = decoder.decode(feats, coords)
        if device == "cuda":
            torch.cuda.synchronize()
        return g

    rounds = 2 if name == "release" and device == "cpu" else 5
    gaussians = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1 if device == "cuda" else 0)
    seconds = benchmark.stats.stats.min
    benchmark.extra_info.update(
        voxels=len(feats),
        gaussians=len(gaussians),
        voxels_per_s=len(feats) / seconds,
        gaussians_per_s=len(gaussians) / seconds,
    )
    assert len(gaussians) == len(feats) * CONFIGS[name].representation.num_gaussians
