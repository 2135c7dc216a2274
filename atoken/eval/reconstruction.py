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
224 x 224 resizes (a 720p frame at native size costs seconds on a CPU). rFID compares the
FID Inception-v3 pool3 features of the evaluated images with those of their originals
(`atoken.eval.fid`) when the weights are found locally (atoken never downloads them); otherwise
it is reported as unavailable with the reason and the fix. Files that cannot be read are listed
under ``skipped``.

The result's ``protocol`` records how the numbers were made, because comparisons across papers
fail on exactly these: the resolution policy and the compared sizes, the crop, N, the reference
set (always the originals of the same N items: reconstruction metrics have no external
reference), the pixel convention, and for rFID/rFVD the feature extractor (name, file and
SHA-256) with whether N is too small for an unbiased FID (N < 2048).

References: PSNR/SSIM (Wang et al., 2004); LPIPS (Zhang et al., 2018); rFID (Heusel et al.,
2017); FVD (Unterthiner et al., 2018).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
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
from atoken.eval.fid import FIDAccumulator, ImageFeatureExtractor
from atoken.eval.fvd import FVDAccumulator, VideoFeatureExtractor


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


def _accumulator(
    enabled: bool, extractor: Any, load: Callable[[], Any], make: Callable[[Any], Any]
) -> tuple[Any, str | None]:
    """``make(extractor)`` (``extractor`` or, if None, ``load()``), or ``(None, reason)``: rFID
    or rFVD disabled, or no weights found (`InceptionUnavailable` / `I3DUnavailable`). A file
    that was named but is missing or broken stays an error."""
    from atoken.eval.fid import InceptionUnavailable
    from atoken.eval.i3d import I3DUnavailable

    if not enabled:
        return None, "disabled"
    if extractor is None:
        try:
            extractor = load()
        except (InceptionUnavailable, I3DUnavailable) as exc:
            return None, str(exc)
    return make(extractor), None


def _sizes(shapes: list[tuple[int, ...]]) -> dict[str, int]:
    """``{"HxW": count}`` of the compared sizes, most common first."""
    counts = Counter(f"{s[0]}x{s[1]}" for s in shapes)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _protocol(
    *,
    patch: tuple[int, int],
    max_res: int | None,
    image_sizes: list[tuple[int, ...]],
    video_sizes: list[tuple[int, ...]],
    fid: FIDAccumulator | None,
    fid_error: str | None,
    fvd: FVDAccumulator | None,
    assets: int,
) -> dict[str, Any]:
    """The evaluation protocol recorded beside the numbers (see the module docstring)."""
    from atoken.eval.fid import FID_MIN_SAMPLES, n_limited_note

    rows, cols = patch
    n_img, n_vid = len(image_sizes), len(video_sizes)
    out: dict[str, Any] = {
        "n": {"images": n_img, "videos": n_vid, "assets": assets},
        "resolution": (
            "native size"
            + (f"; a longer side above {max_res} is downscaled to {max_res}" if max_res else "")
            + "; a side below the adapter's min_res (16) is upscaled"
        ),
        "crop": f"centre crop of each side to the largest multiple of the {rows}x{cols} patch",
        "reference": (
            f"the originals of the same {n_img} image(s) and {n_vid} clip(s), resized and"
            " cropped as the inputs (no external reference set)"
        ),
        "pixels": METRIC_CONVENTION["pixels"],
    }
    if image_sizes:
        out["image_sizes"] = _sizes(image_sizes)
        rfid: dict[str, Any] = {"n": fid.real.n if fid is not None else n_img}
        if fid is not None:
            rfid["feature_extractor"] = {"name": fid.extractor.name, **fid.extractor.info}
            rfid["frechet"] = (
                "float64 moments; tr sqrt(S1 S2) from eigh of S1^1/2 S2 S1^1/2 (no scipy sqrtm)"
            )
        else:
            rfid["feature_extractor"] = None
            rfid["unavailable"] = fid_error
        rfid["n_limited"] = rfid["n"] < FID_MIN_SAMPLES
        rfid["note"] = n_limited_note(rfid["n"])
        out["rfid"] = rfid
    if video_sizes:
        out["video_sizes"] = _sizes(video_sizes)
        out["video_lpips"] = "frames resized to 224 x 224"
        out["rfvd"] = (
            {"feature_extractor": fvd.extractor.name, "window": fvd.window, "n": fvd.real.n}
            if fvd is not None
            else None
        )
    return out


def describe_protocol(results: dict[str, Any]) -> list[str]:
    """Human-readable lines of a reconstruction result's ``protocol`` (what `atoken eval` prints)."""
    p = results.get("protocol")
    if not p:
        return []
    n = p["n"]
    lines = [
        f"protocol: N = {n['images']} image(s), {n['videos']} clip(s), {n['assets']} asset(s);"
        f" reference = {p['reference']}",
        f"  resolution: {p['resolution']}; crop: {p['crop']}",
    ]
    if "image_sizes" in p:
        sizes = ", ".join(f"{k} ({v})" for k, v in p["image_sizes"].items())
        lines.append(f"  image sizes HxW (count): {sizes}")
    rfid = p.get("rfid")
    if rfid is not None:
        fe = rfid["feature_extractor"]
        if fe is None:
            lines.append(f"  rFID: not computed ({rfid['unavailable']})")
        else:
            where = f", {fe['file']} sha256 {fe['sha256'][:16]}" if "sha256" in fe else ""
            lines.append(f"  rFID features: {fe['name']}{where}; input: {fe.get('input', '?')}")
        if rfid["note"]:
            lines.append(f"  rFID {rfid['note']}")
    return lines


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
    rfid: bool = True,
    inception: str | os.PathLike[str] | None = None,
    image_feature_extractor: ImageFeatureExtractor | None = None,
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
        rfid: compute rFID for images when FID Inception weights (or
            ``image_feature_extractor``) are available.
        inception: FID Inception weights file (else ``$ATOKEN_INCEPTION`` or the cache
            directories, see `atoken.eval.fid.find_inception`).
        image_feature_extractor: replaces the Inception for rFID (images ``[B, H, W, 3]`` ->
            ``[B, D]``, with ``name`` and ``info``).

    Files claimed by other installed adapters (e.g. meshes, by atoken-plugin-3d's ``mesh3d``)
    run through that adapter's ``to_tokens``/``from_tokens``/``target``/``metrics`` (its
    numbers, e.g. PSNR/SSIM/LPIPS over held-out views); they are reported per modality under
    ``modalities`` (count and means) and per file in ``per_asset``.

    Returns:
        A JSON-ready dict (non-finite floats such as a perfect frame's PSNR stay ``inf``):
        ``images``/``videos`` counts; for images the means ``psnr``, ``ssim``, ``lpips`` and
        ``rfid`` (with ``rfid_samples``, ``rfid_features`` and ``rfid_n_limited``); for clips
        ``video`` (means over clips, worst frame and percentiles over frames) and ``rfvd``;
        ``*_unavailable`` reasons; ``protocol`` (resolution, crop, N, reference set, feature
        extractors; see `describe_protocol`); ``skipped``; ``per_image`` rows and
        ``per_video`` rows with ``per_frame`` lists.

    Raises:
        InputError: ``root`` is not a directory or holds no readable image or video.
        CheckpointError: the I3D file named (``i3d`` or ``$ATOKEN_I3D``) or the Inception file
            named (``inception`` or ``$ATOKEN_INCEPTION``) is missing or is not usable
            safetensors/TorchScript (checked before any file is evaluated).
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
    has_image = "image" in kind_of.values()

    lp: LPIPSFn | None
    lp, lpips_error = load_lpips(model.device) if lpips else (None, "disabled")
    from atoken.eval.fid import load_inception
    from atoken.eval.i3d import load_i3d

    fvd: FVDAccumulator | None
    fid: FIDAccumulator | None
    fvd, fvd_error = (
        _accumulator(
            rfvd,
            feature_extractor,
            lambda: load_i3d(i3d, device=model.device),
            lambda ex: FVDAccumulator(ex, window=fvd_window),
        )
        if has_video
        else (None, None)
    )
    fid, fid_error = (
        _accumulator(
            rfid,
            image_feature_extractor,
            lambda: load_inception(inception, device=model.device),
            FIDAccumulator,
        )
        if has_image
        else (None, None)
    )
    image_sizes: list[tuple[int, ...]] = []
    video_sizes: list[tuple[int, ...]] = []
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
                if fid is not None:
                    fid.add(result.reference, result.reconstruction)
                image_sizes.append(tuple(result.reference.shape[:2]))
                image_rows.append(row)
            elif kind != "video":
                asset_rows.append(
                    {"asset": name, "modality": kind, "tokens": result.tokens, **result.metrics}
                )
                del sample, result
            else:
                frames = per_frame_metrics(reference, recon, lp, device=model.device)
                videos.add(frames)
                video_sizes.append(tuple(reference.shape[1:3]))
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
        if fid is not None:
            out.update(fid.result())
        else:
            out.update(rfid=None, rfid_unavailable=fid_error)
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
    out["protocol"] = _protocol(
        patch=tuple(context.geometry.patch[1:]),
        max_res=max_res,
        image_sizes=image_sizes,
        video_sizes=video_sizes,
        fid=fid,
        fid_error=fid_error,
        fvd=fvd,
        assets=len(asset_rows),
    )
    out.update(skipped=skipped, per_image=image_rows, per_video=video_rows, per_asset=asset_rows)
    return out
