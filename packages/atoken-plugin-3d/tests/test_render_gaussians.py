"""The Gaussian renderers: analytic single-Gaussian cases, compositing, gradients, fitting, gsplat."""

from __future__ import annotations

import math
import time

import pytest
import torch
from atoken.plugin import InputError

from atoken_plugin_3d.cameras import Camera, look_at, sphere_cameras
from atoken_plugin_3d.gaussians import Gaussians
from atoken_plugin_3d.render_gaussians import (
    available_backends,
    project_gaussians,
    psnr,
    rasterize,
    render,
    render_tensors,
    render_views,
    sh0_to_rgb,
)

W, H, FOV = 64, 48, math.radians(40.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


IDENTITY = torch.tensor([[1.0, 0.0, 0.0, 0.0]])


def front_camera(z: float = 2.0, width: int = W, height: int = H) -> Camera:
    """Camera at (0, 0, z) looking at the origin; world +x is image right, world +y image up."""
    return Camera(
        look_at(torch.tensor([0.0, 0.0, z]), up=torch.tensor([0.0, 1.0, 0.0])), FOV, width, height
    )


def world_at_pixel(cam: Camera, u: float, v: float, depth: float) -> torch.Tensor:
    """World point seen at pixel coordinate (u, v) at z-depth ``depth`` by `front_camera`."""
    f = 0.5 * cam.width / math.tan(0.5 * cam.fov_x)
    x = (u - 0.5 * cam.width) * depth / f
    y = -(v - 0.5 * cam.height) * depth / f
    return torch.tensor([[x, y, float(cam.c2w[2, 3]) - depth]])


def one(mean, scale, *, opacity=0.8, color=(1.0, 0.5, 0.25), quat=IDENTITY, cam=None, **kw):
    cam = cam or front_camera()
    scales = torch.as_tensor(scale, dtype=torch.float32).expand(1, 3)
    return render_tensors(
        mean,
        scales,
        quat,
        torch.tensor([opacity]),
        torch.tensor([color]),
        cam,
        backend="torch",
        **kw,
    )


def sigma_px(alpha_row: torch.Tensor, centre: int, offset: int) -> float:
    """Gaussian sigma from the alpha ratio at ``offset`` pixels from the peak."""
    ratio = float(alpha_row[centre + offset] / alpha_row[centre])
    return math.sqrt(offset * offset / (-2.0 * math.log(ratio)))


def test_single_gaussian_position_peak_and_depth() -> None:
    cam = front_camera()
    mean = world_at_pixel(cam, 40.5, 20.5, depth=2.0)  # exactly at pixel (row 20, col 40)
    out = one(mean, 0.01, opacity=0.8)
    assert out.rgb.shape == (H, W, 3) and out.alpha.shape == (H, W) and out.depth.shape == (H, W)
    peak = int(torch.argmax(out.alpha))
    assert divmod(peak, W) == (20, 40)
    uv, z = cam.project(mean)  # the camera's own projection agrees
    assert (
        torch.allclose(uv, torch.tensor([[40.5, 20.5]]), atol=1e-3) and abs(float(z) - 2.0) < 1e-5
    )
    assert out.alpha[20, 40] == pytest.approx(0.8, abs=1e-5)  # peak alpha = opacity
    assert torch.allclose(out.rgb[20, 40], 0.8 * torch.tensor([1.0, 0.5, 0.25]), atol=1e-5)
    assert out.depth[20, 40] == pytest.approx(2.0, abs=1e-4)
    assert out.alpha[0, 0] == 0 and out.depth[0, 0] == 0  # far corner untouched


@pytest.mark.parametrize("depth", [1.5, 3.0])
def test_footprint_sigma_is_focal_scale_over_depth(depth: float) -> None:
    cam = front_camera(z=3.5)
    scale = 0.03
    out = one(world_at_pixel(cam, 32.5, 24.5, depth), scale, opacity=0.5, cam=cam)
    focal = cam.focal
    expect = math.sqrt((focal * scale / depth) ** 2 + 0.3)  # EWA + the 0.3 px² low-pass
    row, col = out.alpha[24], out.alpha[:, 32]
    assert sigma_px(row, 32, 2) == pytest.approx(expect, rel=2e-3)
    assert sigma_px(col, 24, 2) == pytest.approx(expect, rel=2e-3)
    undilated = math.sqrt(sigma_px(row, 32, 2) ** 2 - 0.3)
    assert undilated == pytest.approx(focal * scale / depth, rel=5e-3)


def test_anisotropic_scale_and_rotation() -> None:
    cam = front_camera()
    mean = world_at_pixel(cam, 32.5, 24.5, 2.0)
    focal = cam.focal
    scales = torch.tensor([[0.01, 0.025, 0.01]])  # long along world y = image vertical

    def sigmas(quat: torch.Tensor) -> tuple[float, float]:
        out = render_tensors(
            mean, scales, quat, torch.tensor([0.6]), torch.ones(1, 3), cam, backend="torch"
        )
        return sigma_px(out.alpha[24], 32, 1), sigma_px(out.alpha[:, 32], 24, 2)

    sx, sy = sigmas(IDENTITY)
    assert sx == pytest.approx(math.hypot(focal * 0.01 / 2, math.sqrt(0.3)), rel=5e-3)
    assert sy == pytest.approx(math.hypot(focal * 0.025 / 2, math.sqrt(0.3)), rel=5e-3)
    half = math.sqrt(0.5)  # 90 degrees about z (w, x, y, z): the long axis turns horizontal
    rx, ry = sigmas(torch.tensor([[half, 0.0, 0.0, half]]))
    assert rx == pytest.approx(sy, rel=5e-3) and ry == pytest.approx(sx, rel=5e-3)


@pytest.mark.parametrize("flip", [False, True])
def test_front_gaussian_wins_whatever_the_input_order(flip: bool) -> None:
    cam = front_camera()
    near, far = world_at_pixel(cam, 32.5, 24.5, 1.8), world_at_pixel(cam, 32.5, 24.5, 2.4)
    means = torch.cat([near, far])
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    order = [1, 0] if flip else [0, 1]
    out = render_tensors(
        means[order], torch.full((2, 3), 0.02), IDENTITY.expand(2, 4),
        torch.tensor([0.9, 0.9]), colors[order], cam, backend="torch",
    )  # fmt: skip
    rgb = out.rgb[24, 32]
    assert rgb[0] == pytest.approx(0.9, abs=1e-5)  # red in front: alpha 0.9
    assert rgb[2] == pytest.approx(0.1 * 0.9, abs=1e-5)  # blue behind: T = 0.1
    assert out.alpha[24, 32] == pytest.approx(0.99, abs=1e-5)
    assert out.depth[24, 32] == pytest.approx((0.9 * 1.8 + 0.09 * 2.4) / 0.99, abs=1e-4)


def test_early_termination_and_alpha_clamp() -> None:
    cam = front_camera()
    depths = [1.6, 1.8, 2.0, 2.2]
    means = torch.cat([world_at_pixel(cam, 32.5, 24.5, d) for d in depths])
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0], [0, 0, 1.0]])
    out = render_tensors(
        means, torch.full((4, 3), 0.02), IDENTITY.expand(4, 4), torch.tensor([0.95] * 4), colors,
        cam, backend="torch",
    )  # fmt: skip
    # T: 0.05, 2.5e-3, 1.25e-4, then 6.25e-6 <= 1e-4: the fourth (blue) one is never composited
    assert out.rgb[24, 32, 2] == 0.0
    assert out.alpha[24, 32] == pytest.approx(1 - 1.25e-4, abs=1e-6)
    assert out.rgb[24, 32, 0] == pytest.approx(0.95 + 0.05 * 0.05 * 0.95, abs=1e-5)
    # opacity 1 is clamped at 0.99 per Gaussian
    solo = one(means[:1], 0.02, opacity=1.0, color=(1.0, 1.0, 1.0))
    assert solo.alpha[24, 32] == pytest.approx(0.99, abs=1e-6)


def test_background() -> None:
    cam = front_camera()
    bg = (0.2, 0.4, 0.6)
    out = one(
        world_at_pixel(cam, 32.5, 24.5, 2.0),
        0.01,
        opacity=0.5,
        color=(1.0, 1.0, 1.0),
        background=bg,
    )
    assert torch.allclose(out.rgb[0, 0], torch.tensor(bg))
    assert torch.allclose(out.rgb[24, 32], 0.5 + 0.5 * torch.tensor(bg), atol=1e-5)
    with pytest.raises(InputError, match="background"):
        one(world_at_pixel(cam, 32.5, 24.5, 2.0), 0.01, background=(1.0, 0.0))


def random_scene(n: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    scales = torch.rand(n, 3, generator=g) * 0.06 + 0.01
    quats = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    return [t.to(dtype) for t in (means, scales, quats, opac, colors)]


def test_tiles_and_memory_bound_do_not_change_the_image() -> None:
    scene = random_scene(400)
    orbit = sphere_cameras(3, size=40)[1]
    cam = Camera(orbit.c2w, orbit.fov_x, 41, 27)  # non-square, no tile size divides it
    ref = render_tensors(*scene, cam, backend="torch", tile=16)
    for tile in (5, 8, 32):
        out = render_tensors(*scene, cam, backend="torch", tile=tile)
        assert torch.allclose(out.rgb, ref.rgb, atol=2e-5), tile
        assert torch.allclose(out.alpha, ref.alpha, atol=2e-5), tile
    proj = project_gaussians(*scene[:4], cam.viewmat, cam.K, cam.width, cam.height)
    small = rasterize(proj, scene[3], scene[4], cam.width, cam.height, chunk=7, max_elements=1)
    assert torch.allclose(small.rgb, ref.rgb, atol=2e-5)
    assert ref.alpha.max() > 0.9 and ref.alpha.min() < 0.5  # the scene is non-trivial


def test_gradcheck_tiny_scene() -> None:
    means, scales, quats, opac, colors = random_scene(3, seed=1, dtype=torch.float64)
    scales = scales * 2
    cam = Camera(look_at(torch.tensor([1.6, 0.3, 0.5])), math.radians(40.0), 10, 8)
    inputs = [t.clone().requires_grad_() for t in (means, scales, quats, opac, colors)]

    def fn(m, s, q, o, c):
        out = render_tensors(m, s, q, o, c, cam, backend="torch", tile=4)
        return out.rgb, out.alpha

    assert fn(*inputs)[1].max() > 0.3
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_gradcheck_through_early_termination() -> None:
    cam = front_camera(width=8, height=6)
    d = torch.float64
    means = torch.cat([world_at_pixel(cam, 4.5, 2.5, z) for z in (1.6, 1.8, 2.0, 2.2)]).to(d)
    inputs = [
        means,
        torch.full((4, 3), 0.1, dtype=d),
        torch.tensor([[1.0, 0.1, 0.0, 0.0]], dtype=d).repeat(4, 1),
        torch.tensor([0.95, 0.96, 0.97, 0.94], dtype=d),
        torch.rand(4, 3, generator=torch.Generator().manual_seed(0), dtype=d),
    ]
    inputs = [t.clone().requires_grad_() for t in inputs]

    def fn(m, s, q, o, c):
        out = render_tensors(m, s, q, o, c, cam, backend="torch", tile=4)
        return out.rgb, out.alpha

    rgb, alpha = fn(*inputs)
    # the centre pixel stops at the third Gaussian (T would fall to 6e-5), its neighbours do not
    assert float(alpha[2, 4].detach()) == pytest.approx(1 - 0.05 * 0.04, abs=1e-9)
    assert float(alpha[2, 5].detach()) < 0.999
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_gaussians_object_and_views() -> None:
    g = torch.Generator().manual_seed(3)
    p = 64
    gs = Gaussians(
        xyz=torch.rand(p, 3, generator=g) * 0.6 + 0.2,
        features_dc=torch.randn(p, 1, 3, generator=g),
        scaling=torch.randn(p, 3, generator=g),
        rotation=torch.randn(p, 4, generator=g) * 0.3,
        opacity=torch.randn(p, 1, generator=g) + 2.0,
    )
    cams = sphere_cameras(2, size=24)
    out = render(gs, cams[0], backend="torch")
    manual = render_tensors(
        gs.get_xyz, gs.get_scaling, gs.get_rotation, gs.get_opacity, sh0_to_rgb(gs.features_dc),
        cams[0], backend="torch",
    )  # fmt: skip
    assert torch.equal(out.rgb, manual.rgb) and out.alpha.max() > 0.5
    views = render_views(gs, cams, backend="torch")
    assert views.shape == (2, 24, 24, 3) and torch.equal(views[0], out.rgb)
    gs.features_dc.requires_grad_()
    render(gs, cams[1], backend="torch").rgb.sum().backward()
    assert gs.features_dc.grad is not None and gs.features_dc.grad.abs().sum() > 0
    with pytest.raises(InputError, match="share one image size"):
        render_views(gs, [cams[0], cams[1].resized(16, 16)])


def test_bad_inputs() -> None:
    scene = random_scene(4)
    cam = front_camera()
    with pytest.raises(InputError, match=r"scales must be \[P, 3\]"):
        render_tensors(scene[0], scene[1][:2], *scene[2:], cam)
    with pytest.raises(InputError, match="colors"):
        render_tensors(*scene[:4], scene[4][:, :2], cam)
    with pytest.raises(InputError, match="backend"):
        render_tensors(*scene, cam, backend="opengl")
    if "gsplat" not in available_backends():
        with pytest.raises(InputError, match="gsplat"):
            render_tensors(*scene, cam, backend="gsplat")
    assert "torch" in available_backends()
    behind = render_tensors(scene[0] + torch.tensor([0.0, 0.0, 5.0]), *scene[1:], cam)
    assert behind.alpha.sum() == 0  # everything behind the camera is culled


@pytest.mark.slow
def test_fit_gaussians_to_sphere_renders() -> None:
    """Gaussians fitted to ray-cast renders of a shaded sphere reach a high PSNR on CPU."""
    trimesh = pytest.importorskip("trimesh")
    from atoken_plugin_3d.mesh import mesh_from_trimesh
    from atoken_plugin_3d.render_mesh import render_views as render_mesh_views

    mesh = mesh_from_trimesh(trimesh.creation.icosphere(subdivisions=3), fill=0.8)
    cams = sphere_cameras(FIT_VIEWS, size=FIT_SIZE)
    target = render_mesh_views(mesh, cams).rgb
    g = torch.Generator().manual_seed(0)
    means = ((torch.rand(FIT_N, 3, generator=g) - 0.5) * 0.7).requires_grad_()
    log_s = torch.full((FIT_N, 3), math.log(0.04)).requires_grad_()
    quats = torch.randn(FIT_N, 4, generator=g).requires_grad_()
    logit_o = torch.zeros(FIT_N).requires_grad_()
    col = torch.zeros(FIT_N, 3).requires_grad_()
    opt = torch.optim.Adam(
        [
            {"params": [means], "lr": 0.01}, {"params": [log_s], "lr": 0.02},
            {"params": [quats], "lr": 0.02}, {"params": [logit_o], "lr": 0.1},
            {"params": [col], "lr": 0.05},
        ]
    )  # fmt: skip

    def draw(cam: Camera) -> torch.Tensor:
        return render_tensors(
            means,
            log_s.exp(),
            quats,
            torch.sigmoid(logit_o),
            torch.sigmoid(col),
            cam,
            backend="torch",
        ).rgb

    with torch.no_grad():
        before = sum(psnr(draw(c), target[i]) for i, c in enumerate(cams)) / len(cams)
    start = time.perf_counter()
    for step in range(FIT_STEPS):
        i = step % len(cams)
        loss = (draw(cams[i]) - target[i]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        after = sum(psnr(draw(c), target[i]) for i, c in enumerate(cams)) / len(cams)
    print(
        f"fit: {FIT_STEPS} steps, {FIT_N} Gaussians, {seconds:.1f} s, PSNR {before:.1f} -> {after:.1f} dB"
    )
    assert after > FIT_PSNR and after > before + 10


FIT_VIEWS, FIT_SIZE, FIT_N, FIT_STEPS, FIT_PSNR = 8, 32, 200, 100, 28.0


def test_gsplat_backend_plumbing_with_a_stand_in(monkeypatch) -> None:
    """render_gsplat passes gsplat.rasterization's documented arguments and reads its outputs.

    The stand-in implements the documented contract (positional means, quats, scales,
    opacities, colors; batched viewmats/Ks; RGB+ED output with alpha-normalised depth; alphas
    [C, H, W, 1]) with the torch backend, so this checks the plumbing on machines without CUDA;
    `test_gsplat_matches_torch` checks the real library.
    """
    import sys
    import types

    from atoken_plugin_3d.render_gsplat import render_gsplat

    calls = {}

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw):
        calls.update(kw, viewmats=viewmats.shape, Ks=Ks.shape)
        assert kw["render_mode"] == "RGB+ED" and colors.shape == (len(means), 3)
        cam_k = Ks[0]
        proj = project_gaussians(means, scales, quats, opacities, viewmats[0], cam_k, width, height)
        out = rasterize(proj, opacities, colors, width, height, tile=kw["tile_size"])
        render = torch.cat([out.rgb, out.depth[..., None]], -1)[None]  # black background
        return render, out.alpha[None, ..., None], {}

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=rasterization))
    scene = random_scene(200, seed=5)
    cam = sphere_cameras(2, size=32)[1]
    bg = torch.tensor([0.3, 0.2, 0.1])
    got = render_gsplat(*scene, cam, background=bg, tile=8)
    ref = render_tensors(*scene, cam, background=bg, backend="torch")
    assert calls["viewmats"] == (1, 4, 4) and calls["Ks"] == (1, 3, 3) and calls["eps2d"] == 0.3
    assert torch.allclose(got.rgb, ref.rgb, atol=1e-5)
    assert torch.allclose(got.alpha, ref.alpha, atol=1e-5)
    assert torch.allclose(got.depth, ref.depth, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(
    "gsplat" not in available_backends(), reason="needs CUDA and the gsplat package"
)
def test_gsplat_matches_torch() -> None:
    scene = [t.cuda() for t in random_scene(500, seed=4)]
    for cam in sphere_cameras(3, size=64):
        ref = render_tensors(*scene, cam, backend="torch")
        out = render_tensors(*scene, cam, backend="gsplat")
        assert (out.rgb - ref.rgb).abs().max() < 2e-2
        assert (out.rgb - ref.rgb).abs().mean() < 1e-3
        assert (out.alpha - ref.alpha).abs().mean() < 1e-3
        assert out.depth.shape == ref.depth.shape
        means = scene[0].clone().requires_grad_()
        render_tensors(means, *scene[1:], cam, backend="gsplat").rgb.sum().backward()
        assert means.grad is not None and torch.isfinite(means.grad).all()
