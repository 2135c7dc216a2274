"""Mesh files, CPU ray-cast rendering and NeRF-synthetic folders (the 3D inputs a and b)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from atoken.plugin import InputError
from PIL import Image
from pydantic import ValidationError

from atoken_plugin_3d.cameras import Camera, look_at, sphere_cameras
from atoken_plugin_3d.mesh import NEUTRAL_GREY, load_mesh, mesh_from_trimesh
from atoken_plugin_3d.nerf import read_nerf_folder, write_nerf_folder
from atoken_plugin_3d.render_mesh import (
    AMBIENT,
    FILL,
    KEY,
    KEY_LIGHT,
    RenderOptions,
    render_views,
)
from atoken_plugin_3d.samples import bunny_path
from atoken_plugin_3d.views import Views
from atoken_plugin_3d.voxelize import surface_points


def axis_camera(eye: tuple[float, float, float], size: int = 64, fov_deg: float = 40.0) -> Camera:
    return Camera(look_at(torch.tensor(eye)), math.radians(fov_deg), size, size)


# ---------------------------------------------------------------- loading


def test_bunny_is_normalised_into_the_unit_cube() -> None:
    mesh = load_mesh(bunny_path())
    raw = trimesh.load(bunny_path(), process=False)
    assert mesh.vertices.shape == raw.vertices.shape and len(mesh.faces) == len(raw.faces)
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    np.testing.assert_allclose(lo + hi, 0.0, atol=1e-9)  # bounding box centred
    assert (hi - lo).max() == pytest.approx(1.0)
    np.testing.assert_allclose(mesh.normalization.invert(mesh.vertices), raw.vertices, atol=1e-9)
    assert not mesh.colored
    smaller = load_mesh(bunny_path(), fill=0.8)
    assert np.ptp(smaller.vertices, axis=0).max() == pytest.approx(0.8)


def test_vertex_colours_are_interpolated_at_the_hit(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    colours = np.rint((box.vertices + 0.5) * 255).astype(np.uint8)
    box = trimesh.Trimesh(box.vertices, box.faces, vertex_colors=colours)
    box.export(tmp_path / "box.ply")
    mesh = load_mesh(tmp_path / "box.ply")
    assert mesh.colored and mesh.parts[0].kind == "vertex"
    views = render_views(mesh, [axis_camera((1.5, -1.2, 0.9)), axis_camera((-1.0, 1.4, -1.2))])
    points, owner = surface_points(views)
    colours = views.rgb.reshape(-1, 3)[torch.isfinite(views.depth.reshape(-1))]
    expected = (points + 0.5).clamp(0, 1)  # colour = position (longest side 1: not rescaled)
    assert len(points) > 1000
    torch.testing.assert_close(colours.double(), expected, atol=2.5 / 255, rtol=0)


@pytest.mark.parametrize("factor", [(255, 255, 255), (255, 51, 102)])
def test_texture_is_sampled_at_the_uv(tmp_path: Path, factor: tuple[int, int, int]) -> None:
    """A textured quad in a GLB: each screen quadrant shows its texture quadrant (v points up),
    times the material's base colour factor."""
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[:32, :32], tex[:32, 32:], tex[32:, :32], tex[32:, 32:] = (
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 255),
    )
    quad = trimesh.Trimesh(
        [[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]],
        [[0, 1, 2], [0, 2, 3]],
        visual=trimesh.visual.TextureVisuals(
            uv=[[0, 0], [1, 0], [1, 1], [0, 1]],
            material=trimesh.visual.material.PBRMaterial(
                baseColorTexture=Image.fromarray(tex), baseColorFactor=[*factor, 255]
            ),
        ),
        process=False,
    )
    trimesh.Scene(quad).export(tmp_path / "quad.glb")
    mesh = load_mesh(tmp_path / "quad.glb")
    assert mesh.parts[0].kind == "texture"
    rgb = render_views(mesh, [axis_camera((0.0, 0.0, 2.0), size=32)]).rgb[0]
    quadrants = {"top left": rgb[12, 12], "top right": rgb[12, 19], "bottom left": rgb[19, 12]}
    quadrants["bottom right"] = rgb[19, 19]
    expected = {"top left": (1, 0, 0), "top right": (0, 1, 0), "bottom left": (0, 0, 1)}
    expected["bottom right"] = (1, 1, 1)
    scale = np.array(factor) / 255
    for name, colour in quadrants.items():
        assert colour.tolist() == pytest.approx(expected[name] * scale, abs=1e-3), name


def test_scene_is_flattened_with_its_transforms(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    for x, colour in ((-1.0, (255, 0, 0, 255)), (1.0, (0, 0, 255, 255))):
        box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
        box.visual.face_colors = colour
        scene.add_geometry(box, transform=trimesh.transformations.translation_matrix((x, 0, 0)))
    scene.export(tmp_path / "two.glb")
    mesh = load_mesh(tmp_path / "two.glb")
    assert len(mesh.faces) == 24 and len(mesh.parts) == 2
    np.testing.assert_allclose(np.ptp(mesh.vertices, axis=0), [1.0, 0.2, 0.2], atol=1e-6)
    rgb = render_views(mesh, [axis_camera((0.0, -3.0, 0.0), size=64)]).rgb[0]
    left, right = rgb[32, :32].amax(0), rgb[32, 32:].amax(0)  # world -x box left, +x box right
    assert left.tolist() == pytest.approx([1, 0, 0], abs=1e-3)
    assert right.tolist() == pytest.approx([0, 0, 1], abs=1e-3)


@pytest.mark.parametrize("ext", ["stl", "obj", "off"])
def test_plain_formats_load(tmp_path: Path, ext: str) -> None:
    trimesh.creation.box(extents=(2.0, 1.0, 4.0)).export(tmp_path / f"box.{ext}")
    mesh = load_mesh(tmp_path / f"box.{ext}")
    assert len(mesh.faces) == 12
    np.testing.assert_allclose(np.ptp(mesh.vertices, axis=0), [0.5, 0.25, 1.0], atol=1e-6)
    assert mesh.normalization.scale == pytest.approx(0.25)


BAD_FILES = {
    "missing.obj": (None, "does not exist"),
    "readme.ply": (b"# atoken\nnot a mesh\n", "could not be read as a mesh"),
    "photo.png": ("png", "could not be read as a mesh"),
    "text.obj": (b"hello world\n", "no vertices"),
    "empty.stl": (b"", "no vertices"),
    "points.ply": ("cloud", "no faces"),
    "loose.obj": (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
    "nan.obj": (b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite"),
    "inf.obj": (b"v 0 0 0\nv inf 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite"),
    "point.obj": (b"v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n", "zero size"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_meshes_give_one_line_errors(tmp_path: Path, name: str) -> None:
    content, match = BAD_FILES[name]
    path = tmp_path / name
    if content == "png":
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    elif content == "cloud":
        trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        load_mesh(path)
    assert "\n" not in str(info.value) and name in str(info.value)


# ---------------------------------------------------------------- rendering


def test_box_depth_and_silhouette_match_the_geometry() -> None:
    mesh = mesh_from_trimesh(trimesh.creation.box(extents=(1.0, 1.0, 1.0)))
    cam = axis_camera((2.0, 0.0, 0.0), size=64)
    views = render_views(mesh, [cam])
    depth, rgb = views.depth[0], views.rgb[0]
    finite = torch.isfinite(depth)
    torch.testing.assert_close(depth[finite], torch.full_like(depth[finite], 1.5))  # face x=0.5
    half = cam.focal * 0.5 / 1.5  # projected half-side of that face, in pixels
    assert int(finite.sum()) == pytest.approx((2 * half) ** 2, rel=0.06)
    assert (rgb[~finite] == 0).all() and (rgb[finite] > 0).all()  # black background


def test_sphere_depth_silhouette_and_lambert_shading() -> None:
    mesh = mesh_from_trimesh(trimesh.creation.icosphere(subdivisions=4))
    cams = [axis_camera((0.0, -2.0, 0.0), size=96), axis_camera((1.2, 0.9, 1.3), size=96)]
    views = render_views(mesh, cams)
    points, owner = surface_points(views)
    radius = points.norm(dim=1)
    assert float((radius - 0.5).abs().max()) < 2e-3  # every depth lands on the sphere
    angular = math.asin(0.5 / 2.0)  # silhouette of a radius-0.5 sphere seen from 2
    area = math.pi * (cams[0].focal * math.tan(angular)) ** 2
    assert int(torch.isfinite(views.depth[0]).sum()) == pytest.approx(area, rel=0.04)
    # uncoloured: grey albedo times the fixed world lights (same in every view)
    cos = (points / radius[:, None]) @ torch.from_numpy(KEY_LIGHT)
    expected = NEUTRAL_GREY * (AMBIENT + KEY * cos.clamp(min=0) + FILL * (-cos).clamp(min=0))
    colours = views.rgb.reshape(-1, 3)[torch.isfinite(views.depth.reshape(-1))].double()
    torch.testing.assert_close(colours[:, 0], expected, atol=0.04, rtol=0)
    assert (colours[:, 0] == colours[:, 2]).all()
    flat = render_views(mesh, cams[:1], shading="albedo").rgb[0]
    assert torch.unique(flat[torch.isfinite(views.depth[0])]).tolist() == pytest.approx(
        [NEUTRAL_GREY]
    )


def test_render_options_make_the_default_orbit() -> None:
    cams = RenderOptions().cameras()
    assert len(cams) == 16 and {(c.width, c.height) for c in cams} == {(256, 256)}
    assert {round(float(c.position.norm()), 5) for c in cams} == {2.0}
    assert {round(math.degrees(c.fov_x), 5) for c in cams} == {40.0}
    with pytest.raises(ValidationError, match="view"):
        RenderOptions(view=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="radius"):
        RenderOptions(radius=0.5)  # the camera would sit inside the asset's cube


def test_embree_and_numpy_ray_casters_agree() -> None:
    mesh = mesh_from_trimesh(trimesh.creation.icosphere(subdivisions=1))
    cams = sphere_cameras(2, size=24)
    a = render_views(mesh, cams, backend="embree")
    b = render_views(mesh, cams, backend="numpy")
    assert torch.equal(torch.isfinite(a.depth), torch.isfinite(b.depth))
    torch.testing.assert_close(a.depth, b.depth, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-3, rtol=0)


def test_bunny_default_views() -> None:
    views = render_views(load_mesh(bunny_path()), sphere_cameras(4, size=48))
    assert views.rgb.shape == (4, 48, 48, 3) and views.depth.shape == (4, 48, 48)
    coverage = torch.isfinite(views.depth).float().mean((1, 2))
    assert ((coverage > 0.1) & (coverage < 0.6)).all()  # the bunny fills part of each view
    finite = views.depth[torch.isfinite(views.depth)]
    assert float(finite.min()) > 2.0 - math.sqrt(3) / 2 and float(finite.max()) < 2.0 + 0.87


# ---------------------------------------------------------------- NeRF-synthetic folders


@pytest.fixture(scope="module")
def bunny_views() -> Views:
    return render_views(load_mesh(bunny_path()), sphere_cameras(3, size=40))


@pytest.mark.parametrize("depth_format", ["png16", "npy"])
def test_nerf_folder_round_trip(tmp_path: Path, bunny_views: Views, depth_format: str) -> None:
    path = write_nerf_folder(bunny_views, tmp_path / "scene", depth_format=depth_format)
    meta = json.loads(path.read_text())
    assert meta["frames"][0]["file_path"] == "./images/r_000"  # NeRF-synthetic: no extension
    with Image.open(tmp_path / "scene" / "images" / "r_000.png") as im:
        assert im.mode == "RGBA"
    back = read_nerf_folder(tmp_path / "scene")
    assert len(back) == 3 and back.size == (40, 40)
    torch.testing.assert_close(back.rgb, bunny_views.rgb, atol=0.5 / 255 + 1e-6, rtol=0)
    assert torch.equal(torch.isfinite(back.depth), torch.isfinite(bunny_views.depth))
    finite = torch.isfinite(back.depth)
    tol = meta["depth_scale"] / 2 + 1e-6 if depth_format == "png16" else 0.0
    torch.testing.assert_close(back.depth[finite], bunny_views.depth[finite], atol=tol, rtol=0)
    for a, b in zip(back.cameras, bunny_views.cameras, strict=True):
        assert torch.equal(a.c2w, b.c2w) and a.fov_x == pytest.approx(b.fov_x)


def test_nerf_folder_with_instant_ngp_intrinsics_and_rgb_only(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / "a.jpg")
    c2w = look_at(torch.tensor([0.0, -3.0, 1.0])).tolist()
    meta = {"fl_x": 40.0, "fl_y": 40.0, "cx": 15.0, "cy": 10.0, "w": 30, "h": 20}
    meta["frames"] = [{"file_path": "a.jpg", "transform_matrix": c2w}]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    views = read_nerf_folder(tmp_path)
    assert views.depth is None and views.size == (20, 30)
    assert views.cameras[0].focal == pytest.approx(40.0)


def _scene(tmp_path: Path, depth_name: str, depth_bytes: bytes, **extra: object) -> Path:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "r.png")
    (tmp_path / depth_name).write_bytes(depth_bytes)
    frame = {"file_path": "./r", "transform_matrix": torch.eye(4).tolist()}
    frame["depth_file_path"] = depth_name
    meta = {"camera_angle_x": 0.7, "frames": [frame], **extra}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    return tmp_path


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_nerf_depth_png_scale_default_is_millimetres(tmp_path: Path) -> None:
    depth = np.zeros((8, 8), np.uint16)
    depth[2:5, 3:6] = 1500
    views = read_nerf_folder(_scene(tmp_path, "d.png", _png(depth)))
    assert views.depth[0, 3, 4] == pytest.approx(1.5) and torch.isinf(views.depth[0, 0, 0])


@pytest.mark.parametrize(
    ("name", "data", "extra", "match"),
    [
        ("d.png", _png(np.full((8, 8), 9, np.uint8)), {}, "16-bit"),
        ("d.npy", _npy(np.array([{"a": 1}], dtype=object)), {}, "plain .npy"),
        ("d.npy", _npy(np.full((8, 8), np.nan, np.float32)), {}, "NaN"),
        ("d.exr", b"\x76\x2f\x31\x01", {}, "unsupported format"),
        ("d.png", _png(np.ones((8, 8), np.uint16)), {"cx": 2.0}, "principal point"),
        ("d.png", _png(np.ones((4, 8), np.uint16)), {}, "depth is"),
    ],
)
def test_bad_nerf_folders_give_clear_errors(
    tmp_path: Path, name: str, data: bytes, extra: dict, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        read_nerf_folder(_scene(tmp_path, name, data, **extra))


def test_nerf_folder_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_nerf_folder(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": []}))
    with pytest.raises(InputError, match="no 'frames'"):
        read_nerf_folder(tmp_path)
    frame = {"file_path": "./gone", "transform_matrix": torch.eye(4).tolist()}
    (tmp_path / "transforms.json").write_text(
        json.dumps({"camera_angle_x": 0.5, "frames": [frame]})
    )
    with pytest.raises(InputError, match="gone.png' does not exist"):
        read_nerf_folder(tmp_path)
