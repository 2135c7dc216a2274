"""Reconstruction quality over a folder of images: PSNR, SSIM, LPIPS (and rFID when possible).

Images are read from a directory tree (every supported image file, sorted), centre-cropped to
multiples of 16 by the image adapter (optionally downscaled to ``max_res``), encoded and decoded
one at a time, and compared with the cropped input. LPIPS uses the VGG network of the ``lpips``
loss with ImageNet weights found offline; rFID needs Inception weights, which atoken never
downloads — without a local copy it is reported as unavailable, with the reason.

References: PSNR/SSIM (Wang et al., 2004); LPIPS (Zhang et al., 2018); rFID (Heusel et al., 2017).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from atoken.core.errors import InputError
from atoken.core.plugins import Components, default_components
from atoken.core.tokenizer import Tokenizer

INCEPTION_HINT = (
    "rFID needs the FID Inception weights (pt_inception-2015-12-05-6726825d.pth) in"
    " $TORCH_HOME/hub/checkpoints; atoken does not download them"
)


def _image_files(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    if not root.is_dir():
        raise InputError(f"evaluation data {str(root)!r} is not a directory of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise InputError(f"no image files ({' '.join(extensions)}) under {root}")
    return files


def _lpips_model(device: torch.device):
    from atoken.plugins.losses.options import PerceptualOptions
    from atoken.plugins.losses.perceptual import LPIPSLoss

    try:
        return LPIPSLoss(PerceptualOptions()).to(device), None
    except Exception as exc:  # noqa: BLE001 - any reason LPIPS cannot run is reported, not fatal
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


@torch.no_grad()
def reconstruction_metrics(
    model: Tokenizer,
    root: str | os.PathLike[str],
    *,
    max_res: int | None = None,
    lpips: bool = True,
    limit: int | None = None,
    components: Components | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean and per-image PSNR / SSIM / LPIPS of ``model`` on the images under ``root``."""
    from atoken.pipeline import reconstruct_sample
    from atoken.plugins.losses.perceptual import resize_batch

    comps = components or default_components()
    adapter = comps.adapters.build("image", {"max_res": max_res} if max_res else None)
    files = _image_files(Path(root), adapter.extensions)[:limit]
    lp, lpips_error = _lpips_model(model.device) if lpips else (None, "disabled")
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("evaluating", total=len(files))
    try:
        for path in files:
            try:
                sample = adapter.load(path)
                result = reconstruct_sample(model.eval(), adapter, sample, path)
            except InputError as exc:
                skipped.append(f"{path}: {exc}")
                continue
            row: dict[str, Any] = {
                "image": str(path.relative_to(root)),
                "tokens": result.tokens,
                **result.metrics,
            }
            if lp is not None:
                ref = resize_batch([result.reference.to(model.device)])
                rec = resize_batch([result.reconstruction.clamp(-1, 1).to(model.device)])
                row["lpips"] = float(lp.distance(rec, ref)[0])
            rows.append(row)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    if not rows:
        raise InputError(f"none of the {len(files)} images under {root} could be read")
    keys = [k for k in ("psnr", "ssim", "lpips") if k in rows[0]]
    means = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    return {
        "task": "reconstruction",
        "images": len(rows),
        **means,
        "lpips_unavailable": None if lp is not None else lpips_error,
        "rfid": None,
        "rfid_unavailable": INCEPTION_HINT,
        "skipped": skipped,
        "per_image": rows,
    }
