"""Turntables of decoded Gaussians: N views on a circle, saved as a PNG grid and an MP4.

Cameras come from `atoken_plugin_3d.cameras.turntable_cameras` (constant elevation around the
``z`` axis, looking at the origin). The frames are tiled row-major into one PNG (``cols`` per row;
``cols = views`` gives a strip) and, when PyAV is installed, encoded as an H.264 MP4 (yuv420p, so
the frame size is rounded down to even numbers). Both files are written atomically.

`turntable_file` is ``atoken turntable FILE -o OUT``: a Gaussian ``.ply``, a mesh or a
``builtin:NAME`` mesh rendered around, each frame under a band saying its azimuth, as one MP4
(or GIF).

References: TRELLIS render set-up (radius 2, FoV 40°); PyAV (FFmpeg bindings) for encoding.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from atoken.plugin import InputError, atomic_write_bytes, outputs_together
from PIL import Image
from torch import Tensor

from atoken_plugin_3d.cameras import turntable_cameras
from atoken_plugin_3d.gaussians import Gaussians
from atoken_plugin_3d.render_gaussians import gaussian_tensors, render_tensors

logger = logging.getLogger("atoken_plugin_3d.turntable")


@dataclass(frozen=True)
class Turntable:
    """What `write_turntable` produced.

    Attributes:
        frames: ``[N, H, W, 3]`` uint8 rendered views.
        png: path of the grid image.
        mp4: path of the video, or ``None`` when no video was written.
    """

    frames: Tensor
    png: Path
    mp4: Path | None


def _atomic_write(out: Path, data: bytes) -> None:
    atomic_write_bytes(out, data)  # temp file beside it, fsync, rename; creates the folder


def grid_image(frames: Tensor, cols: int) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 -> ``[rows * H, cols * W, 3]`` row-major grid (black padding)."""
    n, h, w, _ = frames.shape
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, frame in enumerate(frames.numpy()):
        r, c = divmod(i, cols)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = frame
    return canvas


def encode_mp4(frames: Tensor, fps: int) -> bytes:
    """H.264 MP4 bytes of ``[N, H, W, 3]`` uint8 frames (cropped to even sizes), via PyAV."""
    import av

    n, h, w, _ = frames.shape
    h2, w2 = h - h % 2, w - w % 2
    if h2 < 2 or w2 < 2:
        raise InputError(f"turntable: frames of {w}x{h} are too small for an MP4")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames[:, :h2, :w2].numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def render_turntable(
    tensors: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    views: int,
    *,
    size: int = 256,
    radius: float = 2.0,
    elevation_deg: float = 20.0,
    fov_deg: float = 40.0,
    background: Sequence[float] = (0.0, 0.0, 0.0),
    backend: str = "auto",
) -> Tensor:
    """``[views, size, size, 3]`` uint8 renders of activated Gaussians (``gaussian_tensors``:
    means, scales, quats, opacities, colours) from `turntable_cameras` (azimuth ``360 i / views``
    degrees)."""
    cams = turntable_cameras(
        views, radius=radius, elevation_deg=elevation_deg, fov_deg=fov_deg, size=size
    )
    frames = []
    with torch.no_grad():
        for i, cam in enumerate(cams):
            rgb = render_tensors(*tensors, cam, background=background, backend=backend).rgb
            frames.append((rgb.float().cpu() * 255.0 + 0.5).clamp(0, 255).to(torch.uint8))
            logger.info("turntable: rendered view %d/%d", i + 1, views)
    return torch.stack(frames)  # [V, size, size, 3]


def write_turntable(
    gaussians: Gaussians,
    out_dir: str | os.PathLike[str],
    *,
    views: int = 24,
    size: int = 256,
    radius: float = 2.0,
    elevation_deg: float = 20.0,
    fov_deg: float = 40.0,
    cols: int | None = None,
    fps: int = 12,
    mp4: bool | None = None,
    stem: str = "turntable",
    background: Sequence[float] = (0.0, 0.0, 0.0),
    backend: str = "auto",
) -> Turntable:
    """Render ``views`` turntable frames of ``gaussians`` and save ``{stem}.png`` (and ``.mp4``).

    Args:
        gaussians: decoded Gaussians.
        out_dir: output folder (created when missing; removed again if writing fails).
        views: number of frames around the circle.
        size: frame width and height in pixels.
        radius, elevation_deg, fov_deg: the orbit (`turntable_cameras`).
        cols: frames per PNG row (default ``ceil(sqrt(views))``; ``views`` for a strip).
        fps: MP4 frame rate.
        mp4: write the MP4: ``True`` (PyAV required), ``False``, or ``None`` (when PyAV exists).
        stem: file name stem.
        background: colour behind the asset.
        backend: renderer backend (see `render_gaussians.render`).
    """
    if views < 1:
        raise InputError(f"turntable: views must be >= 1, got {views}")
    if size < 2:
        raise InputError(f"turntable: size must be >= 2 pixels, got {size}")
    cols = math.ceil(math.sqrt(views)) if cols is None else cols
    if cols < 1:
        raise InputError(f"turntable: cols must be >= 1, got {cols}")
    has_av = importlib.util.find_spec("av") is not None
    if mp4 and not has_av:
        raise InputError("turntable: mp4=True needs PyAV (pip install av)")
    want_mp4 = has_av if mp4 is None else mp4
    out = Path(out_dir)
    with torch.no_grad():
        tensors = gaussian_tensors(gaussians)
    stack = render_turntable(
        tensors,
        views,
        size=size,
        radius=radius,
        elevation_deg=elevation_deg,
        fov_deg=fov_deg,
        background=background,
        backend=backend,
    )
    png = out / f"{stem}.png"
    buf = io.BytesIO()
    Image.fromarray(grid_image(stack, cols)).save(buf, format="PNG")
    video = out / f"{stem}.mp4" if want_mp4 else None
    mp4_bytes = encode_mp4(stack, fps) if video is not None else None
    with outputs_together():  # the PNG and the MP4 appear together, or neither
        _atomic_write(png, buf.getvalue())
        if video is not None:
            _atomic_write(video, mp4_bytes)
    logger.info("turntable: wrote %s%s", png, f" and {video}" if video else "")
    return Turntable(frames=stack, png=png, mp4=video)


# --------------------------------------------------------------------- `atoken turntable FILE`
#: what `turntable_file` writes, by the output's suffix
TURNTABLE_SUFFIXES = (".mp4", ".gif")


def azimuths(views: int) -> list[float]:
    """Azimuth in degrees of each `turntable_cameras` view (``360 i / views``)."""
    return [360.0 * i / views for i in range(views)]


def _load_frames(source: str, views: int, size: int, elevation_deg: float) -> Tensor:
    """``[views, size, size, 3]`` uint8 turntable renders of a Gaussian ``.ply``, a mesh file or
    a ``builtin:NAME`` mesh."""
    from atoken_plugin_3d.builtin_assets import BUILTIN_PREFIX, builtin_mesh
    from atoken_plugin_3d.mesh import load_mesh

    kw = {"size": size, "elevation_deg": elevation_deg}
    if source.startswith(BUILTIN_PREFIX):
        mesh = builtin_mesh(source[len(BUILTIN_PREFIX) :], 1.0)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"turntable: input {source!r} is not a file")
        mesh = None
        if path.suffix.lower() == ".ply":
            from atoken_plugin_3d.ply import read_ply
            from atoken_plugin_3d.render_gaussians import sh0_to_rgb

            try:
                g = read_ply(path)
            except InputError as splat_error:
                try:
                    mesh = load_mesh(path)
                except InputError as mesh_error:
                    raise InputError(
                        f"turntable: {source!r} is neither a 3D Gaussian Splatting .ply"
                        f" ({splat_error}) nor a mesh ({mesh_error})"
                    ) from None
            else:
                tensors = (g.means, g.scales, g.quats, g.opacities, sh0_to_rgb(g.features_dc))
                return render_turntable(tensors, views, **kw)
        else:
            mesh = load_mesh(path)
    from atoken_plugin_3d.render_mesh import render_views

    cams = turntable_cameras(views, size=size, elevation_deg=elevation_deg)
    rgb = render_views(mesh, cams).rgb  # [V, H, W, 3] in [0, 1]
    return (rgb.float() * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def label_frames(frames: Tensor) -> Tensor:
    """Each ``[N, H, W, 3]`` uint8 frame under a white band saying its azimuth (``azimuth 45°``,
    on two lines when the frame is narrow): ``[N, band + H, W, 3]``."""
    from atoken.plugin import LabelBand, label_font_size

    n, h, w, _ = frames.shape
    captions = [[("azimuth", f"{a:.0f}°" if a == round(a) else f"{a:.1f}°")] for a in azimuths(n)]
    widest = max(captions, key=lambda c: len(" ".join(c[0])))  # the band fits every frame's
    band = LabelBand(w, [(0, w)], widest, label_font_size(h, w))
    bands = np.stack([band.draw(c) for c in captions])
    return torch.cat([torch.from_numpy(bands), frames], 1)


def encode_gif(frames: Tensor, fps: int) -> bytes:
    """Looping GIF bytes of ``[N, H, W, 3]`` uint8 frames, via Pillow."""
    images = [Image.fromarray(f) for f in frames.numpy()]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
    )
    return buf.getvalue()


def turntable_file(
    source: str,
    output: str | os.PathLike[str],
    *,
    frames: int = 48,
    size: int = 256,
    elevation_deg: float = 20.0,
    fps: int = 24,
) -> Path:
    """Render ``frames`` views of ``source`` around it and write them, each labelled with its
    azimuth, as an MP4 (H.264 via PyAV) or a GIF, chosen by ``output``'s suffix (atomically).

    Args:
        source: a 3D Gaussian Splatting ``.ply`` (what ``atoken reconstruct`` writes), a mesh file
            (OBJ / PLY / GLB / glTF / STL / OFF) or ``builtin:NAME``.
        output: ``.mp4`` or ``.gif`` path.
        frames: views on the circle.
        size: width and height of the rendered view in pixels (the label band is added above).
        elevation_deg: camera elevation.
        fps: frame rate.
    """
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix not in TURNTABLE_SUFFIXES:
        raise InputError(f"turntable: output {str(out)!r} must end in .mp4 or .gif")
    if frames < 1:
        raise InputError(f"turntable: frames must be >= 1, got {frames}")
    if size < 16:
        raise InputError(f"turntable: size must be >= 16 pixels, got {size}")
    if suffix == ".mp4" and importlib.util.find_spec("av") is None:
        raise InputError("turntable: an MP4 needs PyAV (pip install av); or write a .gif")
    stack = label_frames(_load_frames(source, frames, size, elevation_deg))
    data = encode_mp4(stack, fps) if suffix == ".mp4" else encode_gif(stack, fps)
    _atomic_write(out, data)
    logger.info("turntable: wrote %s (%d frames)", out, frames)
    return out
