"""Posed views of one asset: the common currency of mesh rendering, NeRF folders and voxelization.

A `Views` value holds ``V`` images of one asset, their z-depth maps and their cameras, in the
conventions fixed by `atoken_plugin_3d.cameras` (black background, depth ``inf`` where nothing
was hit). Renderers and readers produce it; `atoken_plugin_3d.voxelize` consumes it.

References: NeRF-synthetic layout (Mildenhall et al., 2020); AToken / TRELLIS multi-view input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from atoken.plugin import InputError
from torch import Tensor

from atoken_plugin_3d.cameras import Camera


@dataclass(frozen=True)
class Views:
    """``V`` posed views of one asset.

    Attributes:
        rgb: ``[V, H, W, 3]`` float32 in ``[0, 1]``, black background.
        depth: ``[V, H, W]`` float32 z-depth (distance along the viewing axis), ``inf`` where the
            ray hit nothing; ``None`` when the source had no depth (then the views can supervise
            rendering but cannot be voxelized).
        cameras: ``V`` cameras, each of size ``W x H``.
    """

    rgb: Tensor
    depth: Tensor | None
    cameras: tuple[Camera, ...]

    def __post_init__(self) -> None:
        rgb, depth = self.rgb, self.depth
        if not isinstance(rgb, Tensor) or rgb.ndim != 4 or rgb.shape[-1] != 3:
            got = tuple(rgb.shape) if isinstance(rgb, Tensor) else type(rgb).__name__
            raise InputError(f"views: rgb must be a [V, H, W, 3] tensor, got {got}")
        if not rgb.dtype.is_floating_point:
            raise InputError(f"views: rgb must be float in [0, 1], got {rgb.dtype}")
        v, h, w = rgb.shape[:3]
        if v < 1:
            raise InputError("views: at least one view is needed, got 0")
        if depth is not None:
            if not isinstance(depth, Tensor) or tuple(depth.shape) != (v, h, w):
                got = tuple(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
                raise InputError(f"views: depth must be [V, H, W] = {(v, h, w)}, got {got}")
            if torch.isnan(depth).any() or (depth <= 0).any():
                raise InputError("views: depth must be positive (inf for background), no NaN")
        if len(self.cameras) != v:
            raise InputError(f"views: {v} images but {len(self.cameras)} cameras")
        for i, cam in enumerate(self.cameras):
            if (cam.width, cam.height) != (w, h):
                raise InputError(
                    f"views: camera {i} is {cam.width}x{cam.height} but the images are {w}x{h}"
                )

    @classmethod
    def of(cls, rgb: Tensor, depth: Tensor | None, cameras: Sequence[Camera]) -> Views:
        """Build from any sequence of cameras."""
        return cls(rgb, depth, tuple(cameras))

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of every view."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[2])

    def select(self, index: Sequence[int]) -> Views:
        """The views at ``index`` (e.g. a train / held-out split)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        depth = None if self.depth is None else self.depth[idx]
        return Views(self.rgb[idx], depth, tuple(self.cameras[int(i)] for i in idx))

    @property
    def mask(self) -> Tensor:
        """``[V, H, W]`` bool: pixels that show the asset (finite depth)."""
        if self.depth is None:
            raise InputError("views: these views carry no depth, so no coverage mask")
        return torch.isfinite(self.depth)
