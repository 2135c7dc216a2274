"""Pinhole cameras: the one place that fixes the plugin's camera conventions.

Conventions (used by the mesh renderer, the NeRF-synthetic reader/writer, voxelization and the
Gaussian renderers alike):

- **World**: right-handed; an asset is normalised into the cube ``[-0.5, 0.5]^3`` (the AToken /
  TRELLIS voxel box). ``+z`` is up for the default orbits (as in Blender, where NeRF-synthetic
  and TRELLIS renders come from).
- **Camera-to-world** ``c2w`` (``[4, 4]``): the NeRF-synthetic / Blender / OpenGL convention that
  ``transforms.json`` stores: camera ``+x`` right, ``+y`` up, the camera looks along ``-z``.
- **Intrinsics**: square pixels, principal point at the image centre; the horizontal field of
  view ``fov_x`` (radians; ``camera_angle_x`` of ``transforms.json``) gives
  ``fx = fy = 0.5 * width / tan(fov_x / 2)``. Pixel ``(u, v)`` has its centre at
  ``(u + 0.5, v + 0.5)``; ``v`` grows downwards (row index).
- **Depth**: z-depth, the distance along the viewing axis (not along the ray), positive in front
  of the camera; background is ``inf`` in memory (``0`` in depth files).
- `Camera.viewmat` is the world-to-camera matrix in the OpenCV convention (``+x`` right, ``+y``
  down, looking along ``+z``) that gsplat and most rasterizers take.

References: NeRF-synthetic ``transforms.json`` layout (Mildenhall et al., 2020); TRELLIS render
set-up (radius 2, FoV 40°); Hammersley point sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: OpenGL camera axes -> OpenCV camera axes (flip y and z)
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass(frozen=True)
class Camera:
    """One pinhole camera.

    Attributes:
        c2w: ``[4, 4]`` camera-to-world matrix (OpenGL axes, see the module docstring).
        fov_x: horizontal field of view in radians.
        width: image width in pixels.
        height: image height in pixels.
    """

    c2w: Tensor
    fov_x: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if tuple(self.c2w.shape) != (4, 4):
            raise ValueError(f"c2w must be [4, 4], got {list(self.c2w.shape)}")
        if not torch.isfinite(self.c2w).all():
            raise ValueError("c2w holds NaN or infinite values")
        if not 0.0 < self.fov_x < math.pi:
            raise ValueError(f"fov_x must be in (0, pi) radians, got {self.fov_x}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def focal(self) -> float:
        """Focal length in pixels (``fx = fy``)."""
        return 0.5 * self.width / math.tan(0.5 * self.fov_x)

    @property
    def K(self) -> Tensor:  # noqa: N802 - the usual name of the intrinsics matrix
        """``[3, 3]`` intrinsics (float32)."""
        f = self.focal
        return torch.tensor(
            [[f, 0.0, 0.5 * self.width], [0.0, f, 0.5 * self.height], [0.0, 0.0, 1.0]]
        )

    @property
    def position(self) -> Tensor:
        """``[3]`` camera centre in world coordinates."""
        return self.c2w[:3, 3].float()

    @property
    def viewmat(self) -> Tensor:
        """``[4, 4]`` world-to-camera matrix in OpenCV axes (float32)."""
        c2w_cv = self.c2w.double() @ _GL_TO_CV
        return torch.linalg.inv(c2w_cv).float()

    def resized(self, width: int, height: int) -> Camera:
        """The same camera rendering at another resolution (same field of view)."""
        return Camera(self.c2w, self.fov_x, width, height)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """World points ``[N, 3]`` -> pixel coordinates ``[N, 2]`` (u, v) and z-depth ``[N]``.

        Points behind the camera get a depth <= 0 (their pixel coordinates are meaningless).
        """
        view = self.viewmat.to(points.device, points.dtype)
        cam = points @ view[:3, :3].T + view[:3, 3]
        z = cam[:, 2]
        safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
        f = self.focal
        u = f * cam[:, 0] / safe + 0.5 * self.width
        v = f * cam[:, 1] / safe + 0.5 * self.height
        return torch.stack([u, v], dim=-1), z

    def rays(self) -> tuple[Tensor, Tensor, Tensor]:
        """Rays through every pixel centre, row-major ``[H * W]``.

        Returns:
            origins ``[H*W, 3]``, unit directions ``[H*W, 3]`` and, per ray, the z-depth of a
            point at ray distance 1 (``cos`` of the angle to the axis) so that
            ``z_depth = ray_distance * scale``.
        """
        v, u = torch.meshgrid(
            torch.arange(self.height, dtype=torch.float64) + 0.5,
            torch.arange(self.width, dtype=torch.float64) + 0.5,
            indexing="ij",
        )
        f = self.focal
        # OpenGL camera space: x right, y up, looking along -z
        d_cam = torch.stack(
            [(u - 0.5 * self.width) / f, -(v - 0.5 * self.height) / f, -torch.ones_like(u)], -1
        ).reshape(-1, 3)
        norm = d_cam.norm(dim=-1, keepdim=True)
        d_cam = d_cam / norm
        rot = self.c2w[:3, :3].double()
        dirs = d_cam @ rot.T
        origins = self.c2w[:3, 3].double().expand_as(dirs)
        return origins.float(), dirs.float(), (1.0 / norm[:, 0]).float()


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """``[4, 4]`` camera-to-world (OpenGL axes) of a camera at ``eye`` looking at ``target``."""
    eye = eye.double()
    target = torch.zeros(3, dtype=torch.float64) if target is None else target.double()
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) if up is None else up.double()
    back = eye - target
    if back.norm() < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    back = back / back.norm()
    right = torch.linalg.cross(up, back)
    if right.norm() < 1e-9:  # looking straight along `up`: pick any perpendicular
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), back)
    right = right / right.norm()
    true_up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, back, eye
    return c2w.float()


def _radical_inverse_2(i: int) -> float:
    out, f = 0.0, 0.5
    while i:
        out += f * (i & 1)
        i >>= 1
        f *= 0.5
    return out


def sphere_cameras(
    count: int,
    *,
    radius: float = 2.0,
    fov_deg: float = 40.0,
    size: int = 256,
    offset: float = 0.0,
) -> list[Camera]:
    """``count`` cameras spread evenly over a sphere (Hammersley), all looking at the origin.

    TRELLIS' set-up: radius 2, FoV 40° (the unit cube fills most of the frame).
    ``offset`` in [0, 1) rotates the point set (held-out views that differ from training ones).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    cams = []
    for i in range(count):
        phi = 2.0 * math.pi * ((i + 0.5) / count + offset)  # azimuth
        cos_theta = 1.0 - 2.0 * _radical_inverse_2(i + 1)  # z in (-1, 1)
        sin_theta = math.sqrt(max(0.0, 1.0 - cos_theta * cos_theta))
        eye = torch.tensor(
            [
                radius * sin_theta * math.cos(phi),
                radius * sin_theta * math.sin(phi),
                radius * cos_theta,
            ]
        )
        cams.append(Camera(look_at(eye), math.radians(fov_deg), size, size))
    return cams


def turntable_cameras(
    count: int,
    *,
    radius: float = 2.0,
    elevation_deg: float = 20.0,
    fov_deg: float = 40.0,
    size: int = 256,
) -> list[Camera]:
    """``count`` cameras on a horizontal circle (constant elevation) around the ``z`` axis."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    el = math.radians(elevation_deg)
    cams = []
    for i in range(count):
        az = 2.0 * math.pi * i / count
        eye = torch.tensor(
            [
                radius * math.cos(el) * math.cos(az),
                radius * math.cos(el) * math.sin(az),
                radius * math.sin(el),
            ]
        )
        cams.append(Camera(look_at(eye), math.radians(fov_deg), size, size))
    return cams
