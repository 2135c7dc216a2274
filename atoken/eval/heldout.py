"""A tokenizer against the PCA-48 and bicubic x4 baselines on held-out photos, in one run.

Used by `atoken demo` and by the time-to-quality benchmark: the same crops go through the model,
a 48-component patch PCA fitted on training photos (`PatchPCA`) and bicubic x4, and PSNR, SSIM
and LPIPS are computed as `atoken.core.metrics.METRIC_CONVENTION` says.

References: TRAINING_NOTES.md (the two baselines at 48 values per patch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from atoken.core.plugins import Components, default_components
from atoken.core.tokenizer import Tokenizer
from atoken.eval.baselines import PatchPCA, bicubic

#: the evaluation protocol shared by the demo, the monitor default and the benchmark
EVAL_MAX_RES = 512
#: the resolution the PCA baseline is fitted at (the quickstart's training resolution bound)
PCA_FIT_MAX_RES = 256

CODECS = ("model", "pca48", "bicubic4")


@dataclass
class HeldOutReport:
    """Per-image metrics of each codec and their means."""

    protocol: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[tuple[str, Tensor, Tensor]] = field(default_factory=list)

    def means(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for codec in CODECS:
            rows = [r[codec] for r in self.rows if codec in r]
            if rows:
                keys = [k for k in ("psnr", "ssim", "lpips") if all(k in r for r in rows)]
                out[codec] = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "means": self.means(), "images": self.rows}


def fit_pca_baseline(
    train: Sequence[Tensor],
    *,
    max_res: int = PCA_FIT_MAX_RES,
    components: Components | None = None,
    k: int = 48,
) -> PatchPCA:
    """`PatchPCA` (``k`` components; 48: the latent's width) of training images, centre-cropped
    and scaled as training does."""
    adapter = (components or default_components()).adapters.build(
        "image", {"max_res": max_res, "lpips": False}
    )
    crops = []
    for image in train:
        tokens = adapter.to_tokens(image)
        crops.append(adapter.target(image, tokens.meta))
    return PatchPCA(crops, k=k)


@torch.no_grad()
def compare_on_held_out(
    model: Tokenizer,
    images: Sequence[tuple[str, Tensor]],
    pca: PatchPCA,
    *,
    max_res: int | None = EVAL_MAX_RES,
    lpips: bool = True,
    components: Components | None = None,
    split: str = "held-out",
) -> HeldOutReport:
    """Reconstruct ``images`` with ``model``, ``pca`` and bicubic x4 and compare each with the crop.

    Args:
        model: the tokenizer (eval mode is set).
        images: ``(name, [H, W, 3] in [-1, 1])``.
        pca: the PCA baseline, fitted on training photos.
        max_res: longer sides above this are downscaled first (then centre crop to 16 multiples).
        lpips: include LPIPS when its weights exist.
        split: what ``images`` are, for the protocol line.
    """
    from atoken.core.reconstruct import reconstruct_sample

    comps = components or default_components()
    adapter = comps.adapters.build("image", {"max_res": max_res, "lpips": lpips})
    model = model.eval()
    report = HeldOutReport(
        protocol=(
            f"{split}: {len(images)} images, longer side <= {max_res or 'native'}, centre crop to"
            " multiples of 16; PSNR/SSIM on uint8 levels in [0, 1]; LPIPS VGG16 at the crop's"
            " resolution"
        )
    )
    for name, image in images:
        result = reconstruct_sample(model, adapter, image, name)
        ref = result.reference
        row: dict[str, Any] = {"image": name, "size": list(ref.shape[:2]), "tokens": result.tokens}
        row["model"] = result.metrics
        row["pca48"] = adapter.metrics(ref, pca(ref))
        row["bicubic4"] = adapter.metrics(ref, bicubic(ref))
        report.rows.append(row)
        report.pairs.append((name, ref, result.reconstruction))
    return report


def format_table(report: HeldOutReport) -> list[str]:
    """Lines of a small table: codec, PSNR, SSIM, LPIPS (means), and the model's standing."""
    means = report.means()
    lines = [report.protocol, f"{'':10s} {'PSNR dB':>8s} {'SSIM':>7s} {'LPIPS':>7s}"]
    label = {"model": "model", "pca48": "PCA-48", "bicubic4": "bicubic x4"}
    for codec in CODECS:
        m = means.get(codec, {})
        lp = f"{m['lpips']:7.4f}" if "lpips" in m else f"{'-':>7s}"
        lines.append(
            f"{label[codec]:10s} {m.get('psnr', float('nan')):8.2f} {m.get('ssim', float('nan')):7.4f} {lp}"
        )
    if "model" in means and "pca48" in means:
        d = means["model"]["psnr"] - means["pca48"]["psnr"]
        msg = f"model - PCA-48: {d:+.2f} dB PSNR"
        if "lpips" in means["model"] and "lpips" in means["pca48"]:
            msg += f", LPIPS x{means['model']['lpips'] / means['pca48']['lpips']:.3f}"
        lines.append(msg)
    return lines
