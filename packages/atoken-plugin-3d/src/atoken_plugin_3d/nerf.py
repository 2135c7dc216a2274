"""Folders of posed renders in the NeRF-synthetic layout: reading them and writing them.

Layout (Blender / NeRF-synthetic, as 3D datasets ship it)::

    folder/transforms.json     {"camera_angle_x": ..., "frames": [{"file_path": "./images/r_000",
                                 "transform_matrix": [[4 x 4 camera-to-world]],
                                 "depth_file_path": "./depth/r_000.png"}, ...],
                                 "depth_scale": 0.0001}
    folder/images/r_000.png    RGB or RGBA (RGBA is composited onto black)
    folder/depth/r_000.png     z-depth

``transform_matrix`` is camera-to-world in the OpenGL / Blender convention of
`atoken_plugin_3d.cameras` (camera looks along ``-z``, ``+y`` up). ``file_path`` may omit the
extension (NeRF-synthetic does; ``.png`` is then appended). Intrinsics come from
``camera_angle_x`` (top level or per frame) or, as instant-ngp writes them, from ``fl_x`` and
``w``; non-square pixels or an off-centre principal point are refused.

Accepted depth encodings (``depth_file_path`` per frame; depth is optional on reading, but
`atoken_plugin_3d.voxelize` needs it):

- **16-bit PNG**: ``depth = value * depth_scale`` with ``depth_scale`` from ``transforms.json``
  (default ``0.001``, nerfstudio's millimetre convention); ``0`` is background.
- **.npy**: a float ``[H, W]`` array of z-depth in scene units, ``0`` or ``inf`` for background,
  read with ``allow_pickle=False``.

8-bit depth PNGs (NeRF-synthetic's visualisation images) and EXR are refused with a clear
error. The writer stores RGBA PNGs (alpha = coverage) and 16-bit PNG depth with
``depth_scale = 1e-4`` (0.1 mm of a unit asset; raised automatically if the farthest depth
would not fit) or float32 ``.npy``. Every file is written atomically and ``transforms.json``
last, so a reader never sees a ``transforms.json`` whose files are missing.

References: NeRF (Mildenhall et al., 2020) synthetic dataset layout; instant-ngp and nerfstudio
``transforms.json`` extensions (``fl_x``, ``w``, ``depth_file_path``).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from atoken.plugin import (
    CheckpointError,
    InputError,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
)
from PIL import Image, UnidentifiedImageError

from atoken_plugin_3d.cameras import Camera
from atoken_plugin_3d.views import Views

DepthFormat = Literal["png16", "npy"]

#: default ``depth_scale`` when ``transforms.json`` names none (nerfstudio: millimetres)
READ_DEPTH_SCALE = 1e-3
#: ``depth_scale`` the writer prefers (0.1 mm at the scale of the unit cube)
WRITE_DEPTH_SCALE = 1e-4


def _image_path(folder: Path, rel: str) -> Path:
    path = folder / rel
    return path if path.suffix else path.with_name(path.name + ".png")


def _read_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` float32 in [0, 1]; RGBA is composited onto black."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise InputError(f"NeRF folder: image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"NeRF folder: {str(path)!r} is not a readable image ({exc})") from None
    if arr.shape[-1] == 4:
        return arr[..., :3] * arr[..., 3:]
    return arr


def _read_depth(path: Path, scale: float) -> np.ndarray:
    """``[H, W]`` float32 z-depth with ``inf`` for background."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"NeRF folder: depth {str(path)!r} does not exist") from None
        except (ValueError, OSError) as exc:
            raise InputError(
                f"NeRF folder: {str(path)!r} is not a plain .npy array ({exc})"
            ) from None
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise InputError(
                f"NeRF folder: depth {str(path)!r} must be a float [H, W] array, got"
                f" {arr.dtype} {list(arr.shape)}"
            )
        depth = arr.astype(np.float32)
        if np.isnan(depth).any() or (depth < 0).any():
            raise InputError(f"NeRF folder: depth {str(path)!r} holds NaN or negative values")
    elif path.suffix.lower() == ".png":
        try:
            with Image.open(path) as im:
                mode, raw = im.mode, np.array(im)
        except FileNotFoundError:
            raise InputError(f"NeRF folder: depth {str(path)!r} does not exist") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"NeRF folder: {str(path)!r} is not a readable PNG ({exc})") from None
        if mode not in ("I;16", "I;16B", "I") or raw.ndim != 2:
            raise InputError(
                f"NeRF folder: depth {str(path)!r} is a {mode} image; a 16-bit single-channel"
                " PNG (value * depth_scale = z-depth) or a float .npy is needed"
            )
        depth = raw.astype(np.float32) * np.float32(scale)
    else:
        raise InputError(
            f"NeRF folder: depth {str(path)!r} has an unsupported format; use a 16-bit PNG or .npy"
        )
    depth[depth == 0] = np.inf
    return depth


def _fov_x(meta: Mapping[str, Any], frame: Mapping[str, Any], width: int, height: int) -> float:
    spec = {**meta, **frame}
    if "camera_angle_x" in spec:
        fov = float(spec["camera_angle_x"])
    elif "fl_x" in spec:
        fov = 2.0 * math.atan(0.5 * width / float(spec["fl_x"]))
    else:
        raise InputError("NeRF folder: transforms.json gives no camera_angle_x (nor fl_x)")
    fx = 0.5 * width / math.tan(0.5 * fov)
    if "fl_y" in spec and abs(float(spec["fl_y"]) - fx) > 1e-3 * fx:
        raise InputError("NeRF folder: fl_x != fl_y; only square pixels are supported")
    for key, centre in (("cx", 0.5 * width), ("cy", 0.5 * height)):
        if key in spec and abs(float(spec[key]) - centre) > 0.5:
            raise InputError(
                f"NeRF folder: principal point {key}={spec[key]} is not the image centre"
                f" {centre}; off-centre cameras are not supported"
            )
    return fov


def read_nerf_folder(
    folder: str | os.PathLike[str], *, transforms: str = "transforms.json"
) -> Views:
    """Read posed RGB (+ depth) renders in the NeRF-synthetic layout.

    Args:
        folder: the folder holding ``transforms`` (or the path of the JSON file itself).
        transforms: name of the JSON file (``transforms_train.json`` etc. for split datasets).

    Returns:
        `Views` (depth ``None`` when no frame names a depth file; all frames or none must).

    Raises:
        InputError: missing files, malformed JSON, unsupported intrinsics or depth encoding.
    """
    folder = Path(folder)
    json_path = folder if folder.is_file() else folder / transforms
    try:
        meta = read_json(json_path, what="NeRF transforms file")
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise InputError(f"NeRF folder: {str(json_path)!r} has no 'frames' list")
    root = json_path.parent
    scale = float(meta.get("depth_scale", READ_DEPTH_SCALE))
    with_depth = ["depth_file_path" in f for f in frames]
    if any(with_depth) and not all(with_depth):
        raise InputError("NeRF folder: some frames name a depth_file_path and others do not")
    rgbs, depths, cams = [], [], []
    for i, frame in enumerate(frames):
        try:
            rel, matrix = frame["file_path"], frame["transform_matrix"]
        except (KeyError, TypeError):
            raise InputError(
                f"NeRF folder: frame {i} needs 'file_path' and 'transform_matrix'"
            ) from None
        rgb = _read_rgb(_image_path(root, rel))
        h, w = rgb.shape[:2]
        c2w = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
        if tuple(c2w.shape) == (3, 4):
            c2w = torch.cat([c2w, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=c2w.dtype)])
        try:
            cams.append(Camera(c2w.float(), _fov_x(meta, frame, w, h), w, h))
        except ValueError as exc:
            raise InputError(f"NeRF folder: frame {i}: {exc}") from None
        if all(with_depth):
            depth = _read_depth(root / frame["depth_file_path"], scale)
            if depth.shape != (h, w):
                raise InputError(
                    f"NeRF folder: frame {i} depth is {depth.shape[::-1]} but its image {(w, h)}"
                )
            depths.append(depth)
        rgbs.append(rgb)
    if len({r.shape for r in rgbs}) != 1:
        raise InputError("NeRF folder: all images must have the same size")
    depth_t = torch.from_numpy(np.stack(depths)) if depths else None
    return Views.of(torch.from_numpy(np.stack(rgbs)), depth_t, cams)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_nerf_folder(
    views: Views,
    folder: str | os.PathLike[str],
    *,
    depth_format: DepthFormat = "png16",
    depth_scale: float | None = None,
) -> Path:
    """Write ``views`` in the NeRF-synthetic layout (read back by `read_nerf_folder`).

    Args:
        views: the views; all cameras must share one field of view.
        folder: target folder (created; files of the same names are replaced).
        depth_format: ``png16`` (16-bit PNG, ``value * depth_scale``) or ``npy`` (float32).
        depth_scale: PNG depth unit; default ``1e-4`` or larger if the farthest depth needs it.

    Returns:
        The path of the written ``transforms.json``.
    """
    if depth_format not in ("png16", "npy"):
        raise InputError(
            f"write_nerf_folder: depth_format must be 'png16' or 'npy', got {depth_format!r}"
        )
    folder = Path(folder)
    fovs = {round(c.fov_x, 9) for c in views.cameras}
    if len(fovs) != 1:
        raise InputError("write_nerf_folder: all views must share one field of view")
    rgb = (views.rgb.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    meta: dict[str, Any] = {"camera_angle_x": views.cameras[0].fov_x, "frames": []}
    depth = None if views.depth is None else views.depth.numpy()
    if depth is not None and depth_format == "png16":
        far = float(depth[np.isfinite(depth)].max(initial=0.0))
        scale = depth_scale or max(WRITE_DEPTH_SCALE, far / 65000.0)
        if far / scale > 65535:
            raise InputError(f"write_nerf_folder: depth {far} does not fit 16 bits at {scale}")
        meta["depth_scale"] = scale
    for i, cam in enumerate(views.cameras):
        name = f"r_{i:03d}"
        frame: dict[str, Any] = {
            "file_path": f"./images/{name}",
            "transform_matrix": cam.c2w.double().tolist(),
        }
        image = rgb[i]
        if depth is not None:
            alpha = np.where(np.isfinite(depth[i]), 255, 0).astype(np.uint8)
            image = np.concatenate([image, alpha[..., None]], axis=-1)
            if depth_format == "png16":
                d = np.where(np.isfinite(depth[i]), depth[i] / meta["depth_scale"], 0.0)
                d = np.where(np.isfinite(depth[i]), np.clip(np.rint(d), 1, 65535), 0)
                rel, data = f"./depth/{name}.png", _png_bytes(d.astype(np.uint16))
            else:
                buf = io.BytesIO()
                np.save(buf, np.where(np.isfinite(depth[i]), depth[i], 0.0).astype(np.float32))
                rel, data = f"./depth/{name}.npy", buf.getvalue()
            atomic_write_bytes(folder / rel, data)
            frame["depth_file_path"] = rel
        atomic_write_bytes(_image_path(folder, frame["file_path"]), _png_bytes(image))
        meta["frames"].append(frame)
    return atomic_write_json(folder / "transforms.json", meta)
