"""Reconstruction quality over a folder of images and video clips: PSNR, SSIM, LPIPS, rFVD, rFID.

Every supported image and video file under a directory tree is evaluated (sorted; images and
clips may be mixed), one file at a time, so a folder of long clips never holds more than one
clip, its reconstruction and its per-frame values:

* **images** are centre-cropped to multiples of 16 by the image adapter (optionally downscaled
  to ``max_res``), encoded, decoded and compared with the cropped input (PSNR, SSIM, LPIPS).
* **clips** go through the video adapter and the model's temporal tiling; every frame is
  compared (`atoken.core.frame_metrics`: per-frame PSNR/SSIM/LPIPS, summarised per clip and
  over the folder) and the clip's 16-frame windows feed rFVD (`atoken.eval.fvd`) when I3D
  weights are found locally (`atoken.eval.i3d`); otherwise rFVD is reported as unavailable
  with the reason and where the weights may go.

PSNR and SSIM are computed on the uint8 levels in [0, 1] (`atoken.core.metrics.METRIC_CONVENTION`,
recorded in the result as ``convention``). LPIPS uses the VGG network of the ``lpips`` loss with
ImageNet weights found offline: images at the compared (cropped) resolution, video frames on
224 x 224 resizes (a 720p frame at native size costs seconds on a CPU). rFID needs Inception weights, which atoken never downloads; it is reported
as unavailable. Files that cannot be read are listed under ``skipped``.

References: PSNR/SSIM (Wang et al., 2004); LPIPS (Zhang et al., 2018); rFID (Heusel et al.,
2017); FVD (Unterthiner et al., 2018).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from atoken.core.adapter_context import AdapterContext
from atoken.core.errors import InputError
from atoken.core.frame_metrics import VideoMetricsSummary, per_frame_metrics
from atoken.core.metrics import METRIC_CONVENTION, LPIPSFn, load_lpips
from atoken.core.modality import ModalityAdapter
from atoken.core.plugins import Components, default_components
from atoken.core.tokenizer import Tokenizer
from atoken.eval.fvd import FVDAccumulator, VideoFeatureExtractor

INCEPTION_HINT = (
    "rFID needs the FID Inception weights (pt_inception-2015-12-05-6726825d.pth) in"
    " $TORCH_HOME/hub/checkpoints; atoken does not download them"
)


def _media_files(root: Path, kinds: dict[str, tuple[str, ...]]) -> list[Path]:
    if not root.is_dir():
        raise InputError(
            f"evaluation data {str(root)!r} is not a directory of images, videos or assets"
        )
    suffixes = {s for exts in kinds.values() for s in exts}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        what = "; ".join(f"{k}: {' '.join(v)}" for k, v in kinds.items())
        raise InputError(f"no files any adapter reads ({what}) under {root}")
    return files


def _reconstruct(model: Tokenizer, adapter: ModalityAdapter, sample: torch.Tensor):
    """``(reference, reconstruction, tokens)`` of one sample (no metrics: the caller measures)."""
    tokens = adapter.to_tokens(sample)
    with torch.inference_mode():
        decoded = model.decode(model.encode([tokens]))
    patch = decoded.split()[0]
    rec = adapter.from_tokens(patch.replace(feats=patch.feats.float().cpu()))
    return adapter.target(sample, tokens.meta), rec, len(tokens)


def _fvd(
    model: Tokenizer,
    enabled: bool,
    i3d: str | os.PathLike[str] | None,
    extractor: VideoFeatureExtractor | None,
    window: int,
) -> tuple[FVDAccumulator | None, str | None]:
    """The rFVD accumulator, or ``(None, reason)``; a missing or broken file named is an error."""
    from atoken.eval.i3d import I3DUnavailable, load_i3d

    if not enabled:
        return None, "disabled"
    if extractor is None:
        try:
            extractor = load_i3d(i3d, device=model.device)
        except I3DUnavailable as exc:
            return None, str(exc)
    return FVDAccumulator(extractor, window=window), None


class _Bars:
    """Progress over files and over video frames (a no-op without a terminal)."""

    def __init__(self, bar, files: int) -> None:
        self.bar = bar
        if bar is not None:
            self.files = bar.add_task("files", total=files)
            self.frames = bar.add_task("video frames", total=None)

    def file_done(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.files)

    def frames_done(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.frames, n)


@torch.no_grad()
def _modality_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{modality: {"count": n, metric: mean, ...}}`` over the numeric metrics of each row."""
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({r["modality"] for r in rows}):
        mine = [r for r in rows if r["modality"] == kind]
        keys = [
            k
            for k, v in mine[0].items()
            if k not in ("asset", "modality", "tokens") and isinstance(v, int | float)
        ]
        out[kind] = {"count": len(mine)}
        for k in keys:
            vals = [float(r[k]) for r in mine if isinstance(r.get(k), int | float)]
            out[kind][k] = sum(vals) / len(vals)
    return out


def reconstruction_metrics(
    model: Tokenizer,
    root: str | os.PathLike[str],
    *,
    max_res: int | None = None,
    lpips: bool = True,
    limit: int | None = None,
    components: Components | None = None,
    progress: bool = False,
    rfvd: bool = True,
    i3d: str | os.PathLike[str] | None = None,
    fvd_window: int = 16,
    feature_extractor: VideoFeatureExtractor | None = None,
    adapter_options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Reconstruction quality of ``model`` on the images, clips and plugin assets under ``root``.

    Args:
        model: the tokenizer (on the device to run on).
        root: a directory; every image/video file under it is used (sorted by path).
        max_res: downscale inputs whose longer side exceeds this.
        lpips: compute LPIPS (reported unavailable, not fatal, when it cannot run here).
        limit: use only the first ``limit`` files.
        components: registries; default: the installed plugins.
        progress: show progress bars (files, and video frames) on a terminal.
        rfvd: compute rFVD for clips when an I3D (or ``feature_extractor``) is available.
        i3d: I3D weights file (else ``$ATOKEN_I3D`` or the cache directory, see `load_i3d`).
        fvd_window: frames per rFVD sample (16 as in FVD).
        feature_extractor: replaces I3D for rFVD (clips ``[B, T, H, W, 3]`` -> ``[B, D]``).
        adapter_options: options per adapter name (e.g. ``{"mesh3d": {"views": 8}}``).

    Files claimed by other installed adapters (e.g. meshes, by atoken-plugin-3d's ``mesh3d``)
    run through that adapter's ``to_tokens``/``from_tokens``/``target``/``metrics`` (its
    numbers, e.g. PSNR/SSIM/LPIPS over held-out views); they are reported per modality under
    ``modalities`` (count and means) and per file in ``per_asset``.

    Returns:
        A JSON-ready dict (non-finite floats such as a perfect frame's PSNR stay ``inf``):
        ``images``/``videos`` counts; for images the means ``psnr``, ``ssim``, ``lpips`` and
        ``rfid``; for clips ``video`` (means over clips, worst frame and percentiles over
        frames) and ``rfvd``; ``*_unavailable`` reasons; ``skipped``; ``per_image`` rows and
        ``per_video`` rows with ``per_frame`` lists.

    Raises:
        InputError: ``root`` is not a directory or holds no readable image or video.
        CheckpointError: the I3D file named (``i3d`` or ``$ATOKEN_I3D``) is missing or is not
            usable safetensors/TorchScript (checked before any file is evaluated).
    """
    from atoken.core.progress import progress_bar
    from atoken.core.reconstruct import reconstruct_sample

    root = Path(root)
    comps = components or default_components()
    opts = {"max_res": max_res} if max_res else None
    per_adapter = dict(adapter_options or {})

    def options_for(name: str) -> dict[str, Any] | None:
        return {**(opts or {}), **per_adapter.get(name, {})} or None

    context = AdapterContext.of(model)  # the model's geometry, device and companions
    image_options = {"lpips": lpips, **(options_for("image") or {})}
    adapters: dict[str, ModalityAdapter] = {
        "image": comps.adapters.build("image", image_options, context=context)
    }
    if "video" in comps.adapters.names():
        adapters["video"] = comps.adapters.build("video", options_for("video"), context=context)
    for name in comps.adapters.names():
        if name in adapters:
            continue
        try:  # a plugin adapter that cannot be built here (missing extra) is left out
            adapters[name] = comps.adapters.build(
                name, per_adapter.get(name) or None, context=context
            )
        except Exception:  # noqa: BLE001
            if name in per_adapter:
                raise
    kinds = {name: tuple(a.extensions) for name, a in adapters.items()}
    claimed: set[str] = set()
    for name in list(kinds):  # a suffix belongs to the first adapter claiming it
        kinds[name] = tuple(e for e in kinds[name] if e not in claimed)
        claimed.update(kinds[name])
    files = _media_files(root, kinds)[:limit]
    kind_of = {p: next(k for k, ext in kinds.items() if p.suffix.lower() in ext) for p in files}
    has_video = "video" in kind_of.values()

    lp: LPIPSFn | None
    lp, lpips_error = load_lpips(model.device) if lpips else (None, "disabled")
    fvd, fvd_error = (
        _fvd(model, rfvd, i3d, feature_extractor, fvd_window) if has_video else (None, None)
    )
    model = model.eval()
    image_rows: list[dict[str, Any]] = []
    video_rows: list[dict[str, Any]] = []
    asset_rows: list[dict[str, Any]] = []
    videos = VideoMetricsSummary()
    skipped: list[str] = []
    with progress_bar(progress) as bar:
        bars = _Bars(bar, len(files))
        for path in files:
            kind, adapter = kind_of[path], adapters[kind_of[path]]
            name = str(path.relative_to(root))
            try:
                sample = adapter.load(path)
                if kind == "video":
                    reference, recon, tokens = _reconstruct(model, adapter, sample)
                else:
                    result = reconstruct_sample(model, adapter, sample, path)
            except InputError as exc:
                skipped.append(f"{path}: {exc}")
                bars.file_done()
                continue
            if kind == "image":
                row: dict[str, Any] = {"image": name, "tokens": result.tokens, **result.metrics}
                if lp is None:  # the adapter's LPIPS (option lpips) is off in this evaluation
                    row.pop("lpips", None)
                image_rows.append(row)
            elif kind != "video":
                asset_rows.append(
                    {"asset": name, "modality": kind, "tokens": result.tokens, **result.metrics}
                )
                del sample, result
            else:
                frames = per_frame_metrics(reference, recon, lp, device=model.device)
                videos.add(frames)
                row = {"video": name, "tokens": tokens, **frames.summary()}
                if fvd is not None:
                    row["rfvd_windows"] = fvd.add(reference, recon)
                video_rows.append({**row, "frames": frames.frames, "per_frame": frames.per_frame})
                bars.frames_done(frames.frames)
                del sample, reference, recon  # one clip at a time
            bars.file_done()
    if not image_rows and not video_rows and not asset_rows:
        raise InputError(f"none of the {len(files)} files under {root} could be read")

    out: dict[str, Any] = {
        "task": "reconstruction",
        "convention": {**METRIC_CONVENTION, "video_lpips": "frames resized to 224 x 224"},
        "images": len(image_rows),
    }
    if image_rows:
        keys = [k for k in ("psnr", "ssim", "lpips") if k in image_rows[0]]
        out.update({k: sum(r[k] for r in image_rows) / len(image_rows) for k in keys})
        out.update(rfid=None, rfid_unavailable=INCEPTION_HINT)
    out["videos"] = len(video_rows)
    if video_rows:
        out["video"] = videos.summary()
        if fvd is not None:
            out.update(fvd.result())
        else:
            out.update(rfvd=None, rfvd_unavailable=fvd_error)
    if asset_rows:
        out["modalities"] = _modality_means(asset_rows)
    out["lpips_unavailable"] = None if lp is not None else lpips_error
    out.update(skipped=skipped, per_image=image_rows, per_video=video_rows, per_asset=asset_rows)
    return out
