"""Camera conventions: projection, rays through pixel centres, look_at and NeRF's c2w matrices."""

from __future__ import annotations

import math

import pytest
import torch

from atoken_plugin_3d.cameras import Camera, look_at, sphere_cameras, turntable_cameras


def pts(*rows: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture
def front() -> Camera:
    """Camera on the -y axis looking at the origin, z up; 90° FoV on a 100 x 80 image (f = 50)."""
    return Camera(look_at(torch.tensor([0.0, -2.0, 0.0])), math.pi / 2, 100, 80)


def test_projection_of_known_points(front: Camera) -> None:
    assert front.focal == pytest.approx(50.0)
    uv, z = front.project(pts((0, 0, 0), (0.5, 0, 0), (0, 0, 0.5), (0, -1, 0), (0.4, 1.0, -0.3)))
    expected_uv = [
        (50, 40),
        (62.5, 40),
        (50, 27.5),
        (50, 40),
        (50 + 50 * 0.4 / 3, 40 + 50 * 0.3 / 3),
    ]
    torch.testing.assert_close(
        uv, torch.tensor(expected_uv, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(z, torch.tensor([2.0, 2.0, 2.0, 1.0, 3.0], dtype=torch.float64))
    _, behind = front.project(pts((0, -3, 0)))
    assert float(behind) == pytest.approx(-1.0)


def test_viewmat_uses_opencv_axes(front: Camera) -> None:
    view = front.viewmat.double()
    cam = pts((0, 0, 0), (0.5, 0, 0), (0, 0, 0.5)) @ view[:3, :3].T + view[:3, 3]
    torch.testing.assert_close(cam[0], pts((0, 0, 2))[0])  # in front: +z
    assert cam[1, 0] > 0 and cam[2, 1] < 0  # world +x is image right, world up is image -y
    torch.testing.assert_close(front.K[0], torch.tensor([50.0, 0.0, 50.0]))


def test_rays_pass_through_pixel_centres_row_major() -> None:
    cam = sphere_cameras(5, size=24)[3].resized(24, 16)
    origins, dirs, zscale = cam.rays()
    assert origins.shape == dirs.shape == (16 * 24, 3)
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(16 * 24))
    torch.testing.assert_close(origins, cam.position.expand(16 * 24, 3))
    distance = torch.linspace(0.5, 3.0, 16 * 24, dtype=torch.float64)
    points = origins.double() + dirs.double() * distance[:, None]
    uv, z = cam.project(points)
    v, u = torch.meshgrid(torch.arange(16.0), torch.arange(24.0), indexing="ij")
    centres = torch.stack([u.flatten(), v.flatten()], -1).double() + 0.5
    torch.testing.assert_close(uv, centres, atol=1e-4, rtol=0)
    torch.testing.assert_close(z, distance * zscale.double(), atol=1e-5, rtol=1e-5)
    assert float(zscale.max()) == pytest.approx(1.0, abs=2e-3)  # the central rays
    assert float(zscale.min()) < 0.95  # corner rays are oblique


@pytest.mark.parametrize("eye", [(2.0, 0.3, 0.5), (-1.0, -1.5, -0.7), (0.0, 0.0, 3.0), (0, 0, -2)])
def test_look_at_is_a_rigid_camera_facing_the_target(eye: tuple[float, float, float]) -> None:
    target = torch.tensor([0.1, -0.2, 0.05])
    c2w = look_at(torch.tensor(eye), target).double()
    rot = c2w[:3, :3]
    torch.testing.assert_close(rot.T @ rot, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(torch.linalg.det(rot)) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(
        c2w[:3, 3], torch.tensor(eye, dtype=torch.float64), atol=1e-6, rtol=0
    )
    to_target = target.double() - c2w[:3, 3]
    torch.testing.assert_close(-rot[:, 2], to_target / to_target.norm(), atol=1e-6, rtol=0)
    if abs(eye[0]) + abs(eye[1]) > 0:  # not looking straight along the up axis
        assert float(rot[2, 1]) > 0  # the camera's up has a positive world z
        assert abs(float(rot[2, 0])) < 1e-6  # no roll: the right axis is horizontal
    cam = Camera(c2w.float(), 0.8, 32, 32)
    uv, z = cam.project(target[None].double())
    torch.testing.assert_close(
        uv[0], torch.tensor([16.0, 16.0], dtype=torch.float64), atol=1e-4, rtol=0
    )
    assert float(z) == pytest.approx(float(to_target.norm()), abs=1e-5)


def test_nerf_synthetic_transform_matrix_convention() -> None:
    """A Blender camera: rotated 90° about x, placed at (0, -4, 0) looks at the origin along +y."""
    c2w = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, -4.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )  # columns: camera x -> world x, camera y (up) -> world z, camera z (back) -> world -y
    torch.testing.assert_close(look_at(torch.tensor([0.0, -4.0, 0.0])), c2w)
    cam = Camera(c2w, math.radians(40), 64, 64)
    uv, z = cam.project(pts((0, 0, 0), (0.3, 0, 0), (0, 0, 0.3), (0, -1, 0)))
    assert uv[0].tolist() == pytest.approx([32.0, 32.0], abs=1e-4)
    assert uv[1, 0] > 32 and uv[1, 1] == pytest.approx(32.0, abs=1e-4)  # world +x: right
    assert uv[2, 1] < 32 and uv[2, 0] == pytest.approx(32.0, abs=1e-4)  # world +z: up
    assert z.tolist() == pytest.approx([4.0, 4.0, 4.0, 3.0], abs=1e-5)
    # the identity c2w of a camera lifted to z = 4 looks straight down at the origin
    down = torch.eye(4)
    down[2, 3] = 4.0
    uv, z = Camera(down, 1.0, 10, 10).project(pts((0, 0, 0), (0, 0.2, 0)))
    assert uv[0].tolist() == pytest.approx([5.0, 5.0]) and float(z[0]) == pytest.approx(4.0)
    assert uv[1, 1] < 5.0  # camera +y is image up


def test_sphere_cameras_spread_around_the_origin() -> None:
    cams = sphere_cameras(16, radius=2.0, fov_deg=40.0, size=32)
    pos = torch.stack([c.position for c in cams])
    torch.testing.assert_close(pos.norm(dim=1), torch.full((16,), 2.0), atol=1e-5, rtol=0)
    assert torch.cdist(pos, pos).add(torch.eye(16) * 9).min() > 0.5  # no two nearly coincide
    assert (pos[:, 2] > 0.2).sum() >= 4 and (pos[:, 2] < -0.2).sum() >= 4  # both hemispheres
    assert float(pos.mean(0).norm()) < 0.3  # balanced around the asset
    for cam in cams:
        uv, z = cam.project(torch.zeros(1, 3, dtype=torch.float64))
        assert uv[0].tolist() == pytest.approx([16.0, 16.0], abs=1e-3)
        assert float(z) == pytest.approx(2.0, abs=1e-5)
        assert cam.fov_x == pytest.approx(math.radians(40))
    shifted = torch.stack([c.position for c in sphere_cameras(16, offset=0.5, size=32)])
    assert torch.cdist(shifted, pos).min() > 1e-3  # held-out views differ from these


def test_turntable_keeps_its_elevation() -> None:
    cams = turntable_cameras(8, radius=3.0, elevation_deg=30.0)
    pos = torch.stack([c.position for c in cams])
    torch.testing.assert_close(pos[:, 2], torch.full((8,), 1.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos.norm(dim=1), torch.full((8,), 3.0), atol=1e-5, rtol=0)


def test_resized_camera_scales_pixel_coordinates(front: Camera) -> None:
    uv, z = front.project(pts((0.3, 0.5, -0.2)))
    uv2, z2 = front.resized(200, 160).project(pts((0.3, 0.5, -0.2)))
    torch.testing.assert_close(uv2, uv * 2)
    torch.testing.assert_close(z2, z)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c2w": torch.eye(3)}, r"\[4, 4\]"),
        ({"c2w": torch.full((4, 4), float("nan"))}, "NaN"),
        ({"fov_x": 0.0}, "fov_x"),
        ({"fov_x": 4.0}, "fov_x"),
        ({"width": 0}, "size"),
    ],
)
def test_bad_cameras_are_refused(kwargs: dict, match: str) -> None:
    args = {"c2w": torch.eye(4), "fov_x": 1.0, "width": 8, "height": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        Camera(**args)
