"""Voxel tokens from posed views: occupancy, nearest visible view, patch order, voxel files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from atoken.plugin import InputError, patchify

from atoken_plugin_3d.cameras import Camera, look_at, sphere_cameras
from atoken_plugin_3d.mesh import load_mesh, mesh_from_trimesh
from atoken_plugin_3d.render_mesh import render_views
from atoken_plugin_3d.samples import bunny_path
from atoken_plugin_3d.views import Views
from atoken_plugin_3d.voxel_file import check_voxels, load_voxel_file, save_voxel_file
from atoken_plugin_3d.voxelize import extract_patches, voxelize, voxelize_detailed

R = 64
HALF_DIAGONAL = math.sqrt(3) / 2 / R


def occupancy(coords: torch.Tensor) -> torch.Tensor:
    grid = torch.zeros(R, R, R, dtype=torch.bool)
    c = coords.long()
    grid[c[:, 0], c[:, 1], c[:, 2]] = True
    return grid


def voxel_of(points: torch.Tensor) -> torch.Tensor:
    return ((points + 0.5) * R).floor().long().clamp(0, R - 1)


def camera(eye: tuple[float, float, float], size: int = 128) -> Camera:
    return Camera(look_at(torch.tensor(eye)), math.radians(40), size, size)


# ---------------------------------------------------------------- occupancy


def test_sphere_occupancy_is_the_analytic_shell() -> None:
    mesh = mesh_from_trimesh(trimesh.creation.icosphere(subdivisions=4))  # radius 0.5
    feats, coords = voxelize(render_views(mesh, sphere_cameras(16, size=128)))
    assert feats.shape == (len(coords), 768) and coords.dtype == torch.int32
    lo, hi = coords.double() / R - 0.5, (coords.double() + 1) / R - 0.5
    nearest = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo))).norm(dim=1)
    farthest = torch.maximum(lo.abs(), hi.abs()).norm(dim=1)
    assert bool(((nearest <= 0.5 + 1e-3) & (farthest >= 0.5 - 1e-3)).all())  # all cut the shell
    grid = torch.stack(torch.meshgrid(*[torch.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3)
    glo, ghi = grid.double() / R - 0.5, (grid.double() + 1) / R - 0.5
    gnear = torch.where(glo > 0, glo, torch.where(ghi < 0, -ghi, torch.zeros_like(glo))).norm(dim=1)
    shell = int(((gnear <= 0.5) & (torch.maximum(glo.abs(), ghi.abs()).norm(dim=1) >= 0.5)).sum())
    assert 0.8 * shell < len(coords) <= shell  # missed ones only touch the sphere at a corner
    samples = torch.from_numpy(trimesh.sample.sample_surface(mesh.trimesh, 20000, seed=0)[0])
    idx = voxel_of(samples)
    assert float(occupancy(coords)[idx[:, 0], idx[:, 1], idx[:, 2]].float().mean()) > 0.98


def test_bunny_occupancy_matches_its_surface() -> None:
    mesh = load_mesh(bunny_path())
    views = render_views(mesh, sphere_cameras(16, size=128))
    coords = voxelize(views)[1]
    centres = (coords.double() + 0.5) / R - 0.5
    _, dist, _ = trimesh.proximity.closest_point(mesh.trimesh, centres.numpy())
    assert dist.max() <= HALF_DIAGONAL + 1e-6  # every occupied voxel holds surface
    # every surface sample seen by some camera lies in an occupied voxel (or, at a pixel's
    # footprint from a voxel boundary, next to one)
    samples = torch.from_numpy(trimesh.sample.sample_surface(mesh.trimesh, 20000, seed=1)[0])
    visible = torch.zeros(len(samples), dtype=torch.bool)
    for i, cam in enumerate(views.cameras):
        uv, z = cam.project(samples)
        u, v = (uv.floor().long().clamp(0, 127)).unbind(1)
        visible |= (views.depth[i][v, u].double() - z).abs() < 0.25 / R
    assert float(visible.float().mean()) > 0.9  # most of the bunny is seen from 16 views
    idx = voxel_of(samples[visible])
    grid = occupancy(coords)
    assert float(grid[idx[:, 0], idx[:, 1], idx[:, 2]].float().mean()) > 0.97
    dilated = F.max_pool3d(grid[None, None].float(), 3, 1, 1)[0, 0] > 0
    assert bool(dilated[idx[:, 0], idx[:, 1], idx[:, 2]].all())


def test_coords_are_lexicographic_and_unique() -> None:
    mesh = mesh_from_trimesh(trimesh.creation.box(extents=(1.0, 0.6, 0.3)))
    coords = voxelize(render_views(mesh, sphere_cameras(6, size=64)))[1].long()
    lin = (coords[:, 0] * R + coords[:, 1]) * R + coords[:, 2]
    assert bool((lin[1:] > lin[:-1]).all())
    assert int(coords.min()) == 0 and int(coords.max()) == R - 1  # the box touches the cube


# ---------------------------------------------------------------- nearest visible view


def cube_views(eyes: list[tuple[float, float, float]], colours: list[tuple[float, ...]]) -> Views:
    """A cube of side 0.7 seen from ``eyes``; each view's image painted one flat colour."""
    mesh = mesh_from_trimesh(trimesh.creation.box(extents=(1.0, 1.0, 1.0)), fill=0.7)
    views = render_views(mesh, [camera(e) for e in eyes])
    paint = torch.tensor(colours, dtype=torch.float32)[:, None, None, :]
    rgb = torch.where(torch.isfinite(views.depth)[..., None], paint, torch.zeros(()))
    return Views(rgb, views.depth, views.cameras)


def centre_pixel(feats: torch.Tensor) -> torch.Tensor:
    """Colour at the projected voxel centre (the middle of a centred 16 x 16 window)."""
    return feats.reshape(-1, 16, 16, 3)[:, 8, 8]


def painted_with(feats: torch.Tensor, colour: tuple[float, float, float]) -> bool:
    """Every pixel of every patch is ``colour`` or background black, and the centre ``colour``."""
    pix = feats.reshape(-1, 3)
    ok = (pix == torch.tensor(colour)).all(1) | (pix == 0).all(1)
    return bool(ok.all()) and bool((centre_pixel(feats) == torch.tensor(colour)).all())


def test_hidden_voxels_take_the_view_that_sees_them() -> None:
    """The +x camera is nearer to every voxel, but only the -x camera sees the -x face."""
    views = cube_views([(2.0, 0.0, 0.0), (-4.0, 0.0, 0.0)], [(1, 0, 0), (0, 0, 1)])
    out = voxelize_detailed(views, image_size=128, mode="nearest", align="centered")
    front = out.coords[:, 0] >= R // 2
    assert int(front.sum()) > 500 and int((~front).sum()) > 500
    assert bool((out.seen_by.sum(1) == 1).all())  # on-axis cameras see one face each
    assert bool((out.view[front] == 0).all()) and bool((out.view[~front] == 1).all())
    assert painted_with(out.feats[front], (1.0, 0.0, 0.0))
    assert painted_with(out.feats[~front], (0.0, 0.0, 1.0))


def test_nearest_of_two_seeing_views_wins_and_average_mixes() -> None:
    views = cube_views([(4.0, 0.0, 0.0), (2.0, 0.0, 0.0)], [(0, 0, 1), (1, 0, 0)])
    nearest = voxelize_detailed(views, image_size=128, align="centered")
    both = nearest.seen_by.all(1)
    assert bool(both.all())  # the far view's pixels miss voxels, but its depth test passes
    assert bool((nearest.view == 1).all())
    assert painted_with(nearest.feats[both], (1.0, 0.0, 0.0))
    average = voxelize_detailed(views, image_size=128, mode="average", align="centered")
    assert torch.equal(average.coords, nearest.coords) and bool((average.view == -1).all())
    inner = (average.coords[:, 1:] - R / 2 + 0.5).abs().amax(1) < 12  # centre in both views
    expected = torch.tensor([[0.5, 0.0, 0.5]]).expand(int((both & inner).sum()), 3)
    torch.testing.assert_close(centre_pixel(average.feats[both & inner]), expected)


def test_each_face_of_a_coloured_cube_gets_its_own_colour() -> None:
    """Real renders of a cube with six face colours from the six axis directions."""
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    palette = np.array(
        [
            [230, 25, 25],
            [25, 230, 25],
            [25, 25, 230],
            [230, 230, 25],
            [25, 230, 230],
            [230, 25, 230],
        ],
        np.uint8,
    )
    axis = np.argmax(np.abs(box.face_normals), 1)
    sign = box.face_normals[np.arange(12), axis] > 0
    box.visual.face_colors = palette[axis * 2 + sign]
    mesh = mesh_from_trimesh(box, fill=0.7)
    eyes = [
        (s * 2.0 * (a == 0), s * 2.0 * (a == 1), s * 2.0 * (a == 2))
        for a in range(3)
        for s in (-1, 1)
    ]
    views = render_views(
        mesh,
        [
            Camera(look_at(torch.tensor(e, dtype=torch.float32)), math.radians(40), 256, 256)
            for e in eyes
        ],
    )
    out = voxelize_detailed(views)
    centred = out.coords.double() - R / 2 + 0.5
    for a in range(3):
        for s in (-1, 1):
            others = [b for b in range(3) if b != a]
            on_face = (centred[:, a] * s > 10) & (centred[:, others].abs().amax(1) < 16)
            assert int(on_face.sum()) > 100
            colour = torch.tensor(palette[a * 2 + (s > 0)] / 255.0, dtype=torch.float32)
            assert bool((out.view[on_face] == a * 2 + (s > 0)).all())
            torch.testing.assert_close(
                out.feats[on_face].reshape(-1, 256, 3), colour.expand(int(on_face.sum()), 256, 3)
            )


# ---------------------------------------------------------------- patch order


def test_patches_follow_the_release_order_of_image_tokens() -> None:
    """A voxel's 768 values are the first frame of the image token its centre projects into."""
    mesh = mesh_from_trimesh(trimesh.creation.icosphere(subdivisions=2), fill=0.8)
    views = render_views(mesh, [camera((1.5, -1.0, 0.8), size=256)])
    noise = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(0))
    views = Views(noise, views.depth, views.cameras)
    feats, coords = voxelize(views)
    tokens, token_coords = patchify(noise, (1, 16, 16))  # (row, col, channel) per patch
    assert torch.equal(
        token_coords[:, 1] * 16 + token_coords[:, 2], torch.arange(256, dtype=torch.int32)
    )
    uv, _ = views.cameras[0].project((coords.double() + 0.5) / R - 0.5)
    patch_index = (uv[:, 1] // 16).long() * 16 + (uv[:, 0] // 16).long()
    assert torch.equal(feats, tokens[patch_index])


def test_extract_patches_grid_and_centred_windows() -> None:
    image = torch.arange(64 * 48 * 3, dtype=torch.float32).reshape(64, 48, 3)
    uv = torch.tensor([[20.5, 40.2], [1.0, 1.0], [47.9, 63.9]], dtype=torch.float64)
    grid = extract_patches(image, uv, 16, "grid").reshape(3, 16, 16, 3)
    assert torch.equal(grid[0], image[32:48, 16:32]) and torch.equal(grid[2], image[48:64, 32:48])
    centred = extract_patches(image, uv, 16, "centered").reshape(3, 16, 16, 3)
    assert torch.equal(centred[0], image[32:48, 12:28])
    assert torch.equal(centred[1], image[0:16, 0:16]) and torch.equal(
        centred[2], image[48:64, 32:48]
    )


def test_views_are_resized_to_256_before_cutting_patches() -> None:
    mesh = mesh_from_trimesh(trimesh.creation.icosphere(subdivisions=2), fill=0.8)
    small = render_views(mesh, sphere_cameras(4, size=256), shading="lambert")
    large = render_views(mesh, sphere_cameras(4, size=512), shading="lambert")
    fs, cs = voxelize(small)
    fl, cl = voxelize(large)
    common = np.intersect1d(*(((c[:, 0] * R + c[:, 1]) * R + c[:, 2]).numpy() for c in (cs, cl)))
    assert len(common) > 0.9 * len(cs)
    lin_s, lin_l = ((c.long()[:, 0] * R + c.long()[:, 1]) * R + c.long()[:, 2] for c in (cs, cl))
    a = fs[torch.isin(lin_s, torch.from_numpy(common))]
    b = fl[torch.isin(lin_l, torch.from_numpy(common))]
    assert float((a - b).abs().mean()) < 0.03  # same 256² patches up to resampling


# ---------------------------------------------------------------- errors


def test_voxelize_refuses_unusable_views() -> None:
    mesh = mesh_from_trimesh(trimesh.creation.box())
    views = render_views(mesh, sphere_cameras(2, size=32))
    with pytest.raises(InputError, match="no depth"):
        voxelize(Views(views.rgb, None, views.cameras))
    wide = [c.resized(48, 32) for c in views.cameras]
    wide_views = render_views(mesh, wide)
    with pytest.raises(InputError, match="square"):
        voxelize(wide_views)
    empty = Views(views.rgb, torch.full_like(views.depth, math.inf), views.cameras)
    with pytest.raises(InputError, match="no surface point"):
        voxelize(empty)
    with pytest.raises(InputError, match="mode"):
        voxelize(views, mode="mean")  # type: ignore[arg-type]


# ---------------------------------------------------------------- packed voxel files


def test_voxel_file_round_trip_sorts_rows(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    coords = torch.randperm(R**3, generator=gen)[:50]
    coords = torch.stack([coords // (R * R), coords // R % R, coords % R], 1).to(torch.int64)
    feats = torch.rand(50, 768, generator=gen, dtype=torch.float64)
    save_voxel_file(tmp_path / "v.safetensors", feats, coords)
    f2, c2 = load_voxel_file(tmp_path / "v.safetensors")
    assert f2.dtype == torch.float32 and c2.dtype == torch.int32
    order = torch.argsort((coords[:, 0] * R + coords[:, 1]) * R + coords[:, 2])
    assert torch.equal(c2.long(), coords[order])
    torch.testing.assert_close(f2, feats[order].float())


BAD_VOXELS = {
    "feats shape": (torch.rand(4, 700), torch.zeros(4, 3, dtype=torch.int32), r"\[N, 768\]"),
    "coords shape": (torch.rand(4, 768), torch.zeros(4, 4, dtype=torch.int32), r"\[N, 3\]"),
    "rows": (torch.rand(4, 768), torch.arange(9, dtype=torch.int32).reshape(3, 3), "rows"),
    "float coords": (torch.rand(1, 768), torch.zeros(1, 3), "integers"),
    "int feats": (
        torch.ones(1, 768, dtype=torch.int32),
        torch.zeros(1, 3, dtype=torch.int32),
        "floating",
    ),
    "range": (torch.rand(1, 768), torch.tensor([[0, 64, 3]]), r"0\.\.63"),
    "negative": (torch.rand(1, 768), torch.tensor([[0, -1, 3]]), r"0\.\.63"),
    "duplicate": (
        torch.rand(3, 768),
        torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3]]),
        r"\(1, 2, 3\) is listed",
    ),
    "nan": (torch.full((1, 768), float("nan")), torch.zeros(1, 3, dtype=torch.int32), "NaN"),
    "over one": (torch.full((1, 768), 1.5), torch.zeros(1, 3, dtype=torch.int32), r"\[0, 1\]"),
    "empty": (torch.rand(0, 768), torch.zeros(0, 3, dtype=torch.int32), "no voxels"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOXELS))
def test_bad_voxel_files_are_refused(tmp_path: Path, case: str) -> None:
    from atoken.plugin import save_tensors

    feats, coords, match = BAD_VOXELS[case]
    save_tensors(tmp_path / "v.safetensors", {"feats": feats, "coords": coords})
    with pytest.raises(InputError, match=match):
        load_voxel_file(tmp_path / "v.safetensors")


def test_voxel_file_missing_or_foreign(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_voxel_file(tmp_path / "none.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_voxel_file(tmp_path / "x.safetensors")
    from atoken.plugin import save_tensors

    save_tensors(tmp_path / "y.safetensors", {"feats": torch.rand(1, 768)})
    with pytest.raises(InputError, match=r"lacks \['coords'\]"):
        load_voxel_file(tmp_path / "y.safetensors")


def test_official_fixture_voxels_are_valid_input(official_files) -> None:
    from atoken.plugin import load_tensors

    (path,) = official_files("fixture-3d.safetensors")
    data = load_tensors(path)
    feats, coords = check_voxels(data["vox.feats_01"], data["vox.coords_xyz"])
    assert torch.equal(coords, data["vox.coords_xyz"])  # already in our (lexicographic) order
    assert torch.equal(feats, data["vox.feats_01"])
