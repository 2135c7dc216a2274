"""The ``mesh3d`` modality adapter: 3D assets -> AToken voxel tokens -> 3D Gaussians.

Inputs (`Mesh3DAdapter.load` -> `Asset3D`):

- a **mesh file** (``.obj .ply .glb .gltf .stl .off``): normalised into ``[-0.5, 0.5]^3``
  (`atoken_plugin_3d.mesh`), rendered with depth from ``views`` cameras spread on a sphere (the
  input) and from ``heldout_views`` other cameras (the reference the reconstruction is judged on);
- a **NeRF-synthetic folder** (``transforms.json`` + RGB + depth; or ``transforms_train.json`` /
  ``transforms_test.json``): the last ``heldout_views`` frames (or the test split) are held out,
  the rest (which need depth) are voxelized. A folder has no suffix, so it needs
  ``--modality mesh3d``; its ``transforms.json`` path is recognised by the ``.json`` suffix;
- a **voxel file** (``.safetensors`` with ``feats [N, 768]`` in [0, 1] and ``coords [N, 3]``,
  `atoken_plugin_3d.voxel_file`): tokens directly, no reference views (no metrics).

Tokens (`to_tokens`): the voxelization of `atoken_plugin_3d.voxelize` (64³ grid, one RGB patch
of the model's token geometry per occupied voxel: AToken's 16 x 16 x 3 = 768 values), features
``2 f - 1`` in the first frame of the token (channels ``0..767``) and zero after (frames 1-3 of
a 4-frame patch), coords ``(t, x, y, z)`` int32 with ``t = 1`` as in the release. The geometry
comes from the adapter's `AdapterContext`; a model whose patches are not square RGB is refused
when the adapter is built.

Decoding (`from_tokens`): the first frame of the decoded rows goes through the Gaussian decoder
(`atoken_plugin_3d.gaussian_decoder`) -> `Gaussians` (32 per voxel), found from the
``gaussian_decoder`` option, else the model's ``gaussian_decoder`` companion (the
``gaussian_decoder/`` folder of its pretrained directory, handed over in the context), else an
untrained decoder (logged once: the output is then meaningless). Reconstructions are written as
3D Gaussian Splatting ``.ply`` files (normalised asset space) and compared with the held-out
views rendered from the Gaussians (``side_by_side.png``: ground truth above, reconstruction
below, each view labelled, the renders with their PSNR; PSNR / SSIM / LPIPS with images in
[0, 1]).

References: AToken (Lu et al., 2025) 3D tokens and evaluation on held-out renders; TRELLIS
(Xiang et al., 2024) asset normalisation, render set-up and Gaussian decoding; 3D Gaussian
Splatting (Kerbl et al., 2023) ``.ply`` layout.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from atoken.plugin import AdapterContext, InputError, PatchTokens, atomic_write_bytes
from torch import Tensor

from atoken_plugin_3d.asset import (
    BUILTIN,
    MESH_EXTENSIONS,
    NERF_EXTENSIONS,
    SAMPLES,
    VOXEL_EXTENSIONS,
    Asset3D,
    load_asset,
)
from atoken_plugin_3d.gaussians import Gaussians
from atoken_plugin_3d.options import Mesh3DOptions

if TYPE_CHECKING:
    from atoken_plugin_3d.gaussian_decoder import GaussianDecoder
    from atoken_plugin_3d.views import Views

logger = logging.getLogger("atoken_plugin_3d.adapter")

#: voxels per side of the AToken 3D grid
RESOLUTION = 64
#: colour channels of a voxel's patch (the geometry's channels must match)
CHANNELS = 3
#: the companion name (and folder inside a model directory) of the Gaussian decoder
DECODER_DIR = "gaussian_decoder"

_WARNED: set[str] = set()


@dataclass
class DecodedGaussians(Gaussians):
    """`Gaussians` decoded from tokens; ``shape`` is ``(P,)`` (P Gaussians) for CLI messages."""

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)


class Mesh3DAdapter:
    """3D assets as `Asset3D` samples, reconstructions as `Gaussians` (see the module docstring)."""

    name = "mesh3d"
    extensions = MESH_EXTENSIONS + VOXEL_EXTENSIONS + NERF_EXTENSIONS
    output_suffix = ".ply"
    #: optional capabilities (`atoken.core.capabilities`), verified when first built
    capabilities = frozenset({"comparison_suffix", "sample_assets", "save_labelled_comparison"})
    comparison_suffix = ".png"

    def __init__(
        self, options: Mesh3DOptions | None = None, context: AdapterContext | None = None
    ) -> None:
        self.options = options or Mesh3DOptions()
        self.context = context = context or AdapterContext()
        g = context.geometry.require(self.name, channels=CHANNELS)
        if g.rows != g.cols:
            raise InputError(
                f"adapter 'mesh3d' cannot serve a model of patch geometry {g.describe()}; voxel"
                " patches are square (rows = cols) RGB patches"
            )
        #: the model's token geometry: one voxel's patch is the first frame of a token
        self.geometry = g
        self.device = context.device
        self._decoder: GaussianDecoder | None = None
        self._decoder_from: str | None = None
        self._rendered: tuple[object, tuple, Tensor] | None = None
        self._lpips: Any = None

    # ------------------------------------------------------------------ model
    def decoder_location(self) -> Path | None:
        """The Gaussian decoder directory to load, or None (an untrained decoder is used)."""
        if self.options.gaussian_decoder is not None:
            path = Path(self.options.gaussian_decoder)
            if not (path / "config.json").is_file():
                raise InputError(
                    f"gaussian_decoder {str(path)!r} is not a Gaussian decoder directory"
                    " (config.json + model.safetensors, written by `atoken convert-gs`)"
                )
            return path
        return self.context.companion(DECODER_DIR)

    def resolution(self) -> int:
        """Voxel grid side: the option, else the decoder directory's, else 64 (the release)."""
        if self.options.resolution is not None:
            return self.options.resolution
        where = self.decoder_location()
        if where is not None:
            from atoken_plugin_3d.convert import read_decoder_config

            return read_decoder_config(where).resolution
        return RESOLUTION

    def gaussian_decoder(self) -> GaussianDecoder:
        """The Gaussian decoder (loaded once per location), on the model's device."""
        from atoken_plugin_3d.convert import load_gaussian_decoder
        from atoken_plugin_3d.gaussian_decoder import GaussianDecoder

        where = self.decoder_location()
        key = str(where) if where is not None else "<untrained>"
        if self._decoder is None or self._decoder_from != key:
            if where is not None:
                decoder = load_gaussian_decoder(where)
            else:
                if key not in _WARNED:
                    _WARNED.add(key)
                    logger.warning(
                        "mesh3d: no trained Gaussian decoder (set -O gaussian_decoder=DIR or put"
                        " one in <model dir>/%s, reconstruct with --model DIR); using an"
                        " untrained one, so the Gaussians and"
                        " their metrics are meaningless until it is trained",
                        DECODER_DIR,
                    )
                decoder = GaussianDecoder().eval()
            self._decoder, self._decoder_from = decoder, key
        return self._decoder.to(self.device)

    # ------------------------------------------------------------------ files
    def load(self, path: str | os.PathLike[str]) -> Asset3D:
        """Read a mesh file, a NeRF folder (or its ``transforms*.json``), a voxel file or a
        bundled ``builtin:NAME`` asset (see `atoken_plugin_3d.asset.load_asset`)."""
        return load_asset(path, self.options, voxel_resolution=self.resolution)

    def sample_assets(self) -> list[tuple[str, str, str]]:
        """Bundled assets for training sources (``samples`` of atoken's 3D tasks).

        ``(key, what load reads, caption)``: the pymeshfix bunny scan and generated,
        position-coloured primitives (made in memory, nothing downloaded or written).
        """
        return [(f"builtin/{name}", f"{BUILTIN}{name}", caption) for name, caption in SAMPLES]

    def save(self, sample: Gaussians, path: str | os.PathLike[str]) -> None:
        """Write Gaussians as a 3D Gaussian Splatting ``.ply`` (atomically)."""
        from atoken_plugin_3d.ply import write_ply

        path = Path(path)
        if not isinstance(sample, Gaussians):
            raise InputError(f"mesh3d saves Gaussians, got {type(sample).__name__}")
        if path.suffix.lower() != ".ply":
            raise InputError(f"mesh3d writes Gaussians as .ply files, got {str(path)!r}")
        write_ply(path, sample)

    def save_comparison(
        self, reference: Views | None, reconstruction: Gaussians, path: str | os.PathLike[str]
    ) -> None:
        """PNG grid: held-out ground truth (top row) over the Gaussians rendered there (bottom),
        labelled per view (`save_labelled_comparison`)."""
        self.save_labelled_comparison(reference, reconstruction, path)

    def save_labelled_comparison(
        self,
        reference: Views | None,
        reconstruction: Gaussians,
        path: str | os.PathLike[str],
        *,
        metrics: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """PNG grid: a "ground truth" row of the held-out views over a "render" row of the
        Gaussians rendered there, each view under a label band, each render's label with that
        view's PSNR (dB; images in [0, 1], as `metrics`). ``metrics`` (the means) is not drawn.

        Without reference views (voxel-file inputs) only the renders from four turntable cameras
        are shown (``reference`` is then None in the layout).

        Returns:
            The layout: ``label_band`` (the height of each row's band), the ``[x0, y0, x1, y1]``
            boxes of the ``reference`` row and the ``reconstruction`` row (white gaps between
            views included), and each view's boxes (``reference_views``,
            ``reconstruction_views``).
        """
        from atoken.plugin import psnr

        from atoken_plugin_3d.cameras import turntable_cameras

        if reference is None:
            o = self.options
            cams = turntable_cameras(4, radius=o.radius, fov_deg=o.fov_deg, size=o.heldout_size)
            rows = [self.render(reconstruction, cams)]
            captions = [[("render",)] * len(cams)]
        else:
            ref = reference.rgb.float().cpu()
            rendered = self.render(reconstruction, reference.cameras)
            rows = [ref, rendered]
            per_view = psnr(ref, rendered, data_range=1.0).reshape(-1).tolist()
            captions = [
                [("ground truth",)] * len(per_view),
                [("render", f"PSNR {p:.2f} dB") for p in per_view],
            ]
        image, boxes, band = _labelled_grid(rows, captions)
        atomic_write_bytes(path, _png(image))

        def span(views: list[list[int]]) -> list[int]:
            return [views[0][0], views[0][1], views[-1][2], views[-1][3]]

        if reference is None:
            return {
                "label_band": band,
                "reference": None,
                "reconstruction": span(boxes[0]),
                "reference_views": None,
                "reconstruction_views": boxes[0],
            }
        return {
            "label_band": band,
            "reference": span(boxes[0]),
            "reconstruction": span(boxes[1]),
            "reference_views": boxes[0],
            "reconstruction_views": boxes[1],
        }

    # ------------------------------------------------------------------ tokens
    def to_tokens(self, sample: Asset3D, *, train: bool = False, generator=None) -> PatchTokens:
        """Voxelize -> tokens ``[N, token_dim]`` (``2 f - 1`` then zeros) at ``(t, x, y, z)``."""
        if not isinstance(sample, Asset3D):
            got = tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
            raise InputError(
                f"mesh3d: a sample is what Mesh3DAdapter.load returns (Asset3D), got {got}"
            )
        o = self.options
        g = self.geometry
        res = self.resolution()
        key = (o.voxel_mode, o.t, res, g.patch)
        if key in sample.cache:
            return sample.cache[key]
        if sample.voxels is not None:
            feats01, coords = sample.voxels
        elif ("voxels", o.voxel_mode, res, g.rows) in sample.cache:
            feats01, coords = sample.cache[("voxels", o.voxel_mode, res, g.rows)]
        else:
            from atoken_plugin_3d.voxelize import voxelize

            feats01, coords = voxelize(
                sample.views, resolution=res, mode=o.voxel_mode, patch=g.rows
            )
            sample.cache[("voxels", o.voxel_mode, res, g.rows)] = (feats01, coords)
        n = feats01.shape[0]
        if feats01.shape[1] != g.frame_dim:
            raise InputError(
                f"mesh3d: voxel features have {feats01.shape[1]} values per voxel, this model's"
                f" patch frame holds {g.frame_dim} ({g.describe()})"
            )
        feats = torch.zeros(n, g.token_dim)
        feats[:, : g.frame_dim] = 2.0 * feats01.float() - 1.0
        t = torch.full((n, 1), o.t, dtype=torch.int32)
        norm = sample.normalization
        meta = {
            "kind": sample.kind,
            "source": Path(sample.source).name,
            "t": o.t,
            "resolution": res,
            "voxels": int(n),
            "heldout_views": 0 if sample.heldout is None else len(sample.heldout),
            "normalization": None
            if norm is None
            else {"center": list(norm.center), "scale": norm.scale},
        }
        tokens = PatchTokens(feats, torch.cat([t, coords.to(torch.int32)], 1), self.name, meta)
        sample.cache[key] = tokens
        return tokens

    def from_tokens(self, tokens: PatchTokens) -> DecodedGaussians:
        """Decoded rows ``[N, >=768]`` at ``(t, x, y, z)`` -> Gaussians (32 per voxel)."""
        feats, coords = tokens.feats, tokens.coords
        dim = self.geometry.frame_dim
        if feats.shape[1] < dim:
            raise InputError(
                f"mesh3d: decoded features must have at least {dim} channels, got {feats.shape[1]}"
            )
        if len(coords) == 0:
            raise InputError("mesh3d: no voxels to decode")
        xyz = coords[:, 1:].long()
        decoder = self.gaussian_decoder()
        if decoder.config.latent_channels != dim:
            raise InputError(
                f"mesh3d: the Gaussian decoder reads {decoder.config.latent_channels} channels"
                f" per voxel, this model's patch frame holds {dim} ({self.geometry.describe()})"
            )
        res = decoder.config.resolution
        if int(xyz.min()) < 0 or int(xyz.max()) >= res:
            raise InputError(
                f"mesh3d: voxel coordinates must lie in 0..{res - 1} (the Gaussian decoder's"
                f" {res}³ grid), got {int(xyz.min())}..{int(xyz.max())}; voxelize at the"
                " decoder's grid (-O resolution=...)"
            )
        bxyz = torch.cat([torch.zeros_like(xyz[:, :1]), xyz], 1).to(self.device)  # [N, 4]
        with torch.no_grad():
            (g,) = decoder.decode(feats[:, :dim].float().to(self.device), bxyz)
        return DecodedGaussians(**{f.name: getattr(g, f.name) for f in fields(g)})

    def target(self, sample: Asset3D, meta: Mapping[str, Any]) -> Views | None:
        """The held-out views (what the reconstruction is compared with); None for voxel files."""
        return sample.heldout

    # ------------------------------------------------------------------ evaluation
    def render(self, gaussians: Gaussians, cameras) -> Tensor:
        """``[V, H, W, 3]`` float32 CPU renders in [0, 1] on black (cached for the last call)."""
        from atoken_plugin_3d.render_gaussians import render_views

        cams = tuple(cameras)
        last = self._rendered
        if last is not None and last[0] is gaussians and last[1] == tuple(map(id, cams)):
            return last[2]
        with torch.no_grad():
            out = render_views(
                gaussians, cams, background=(0.0, 0.0, 0.0), backend=self.options.renderer
            )
        out = out.detach().float().clamp(0.0, 1.0).cpu()
        self._rendered = (gaussians, tuple(map(id, cams)), out)
        return out

    def metrics(self, reference: Views | None, reconstruction: Gaussians) -> dict[str, float]:
        """Mean PSNR / SSIM (images in [0, 1]) and LPIPS over the held-out views; {} without."""
        from atoken.plugin import psnr, ssim

        if reference is None:
            return {}
        rendered = self.render(reconstruction, reference.cameras)  # [V, H, W, 3]
        ref = reference.rgb.float().cpu()
        out = {
            "psnr": float(psnr(ref, rendered, data_range=1.0).mean()),
            "ssim": float(ssim(ref, rendered, data_range=1.0).mean()),
        }
        lpips = self._lpips_fn()
        if lpips is not None:
            from atoken.plugin import lpips_input

            with torch.no_grad():
                d = lpips(lpips_input(rendered * 2 - 1, None), lpips_input(ref * 2 - 1, None))
            out["lpips"] = float(d.mean())
        return out

    def _lpips_fn(self):
        if not self.options.lpips:
            return None
        if self._lpips is None:
            from atoken.plugin import load_lpips

            fn, why = load_lpips(self.device)
            if fn is None:
                logger.info("mesh3d: LPIPS is not reported (%s)", why)
            self._lpips = fn if fn is not None else False
        return self._lpips or None


def _labelled_grid(
    rows: list[Tensor], captions: list[list[tuple[str, ...]]], gap: int = 4
) -> tuple[np.ndarray, list[list[list[int]]], int]:
    """Rows of ``[V, H, W, 3]`` images in [0, 1] -> one uint8 grid, white gaps, a label band
    above each row (``captions[row][view]``).

    Returns:
        ``(image, boxes[row][view] = [x0, y0, x1, y1], band height)``.
    """
    from atoken.plugin import LabelBand, label_font_size

    v, h, w = rows[0].shape[:3]
    width = v * w + (v - 1) * gap
    columns = [(c * (w + gap), c * (w + gap) + w) for c in range(v)]
    # one band height for every row: planned on each column's widest caption
    widest = [max((row[c] for row in captions), key=lambda p: len(" ".join(p))) for c in range(v)]
    labels = LabelBand(width, columns, widest, label_font_size(h, w))
    band = labels.height
    block = band + h
    out = np.full((len(rows) * block + (len(rows) - 1) * gap, width, 3), 255, dtype=np.uint8)
    boxes = []
    for r, row in enumerate(rows):
        top = r * (block + gap)
        out[top : top + band] = labels.draw(captions[r])
        img = (row.float().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        y = top + band
        for c, (x0, x1) in enumerate(columns):
            out[y : y + h, x0:x1] = img[c]
        boxes.append([[x0, y, x1, y + h] for x0, x1 in columns])
    return out, boxes, band


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def build_adapter(
    options: Mesh3DOptions | None = None, context: AdapterContext | None = None
) -> Mesh3DAdapter:
    """Registry factory of ``mesh3d``."""
    return Mesh3DAdapter(options, context)
