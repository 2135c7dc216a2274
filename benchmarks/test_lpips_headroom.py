"""What "held-out LPIPS <= 0.8 x PCA-48's" asks of a reconstruction, measured on the data.

The main job's LPIPS target (issue "Training that learns", item 2) is a perceptual target, but a
decoder trained for fidelity (L1, as the quickstart is) only lowers LPIPS by getting more of the
image right. This benchmark measures how much more, in two ways, on the built-in ``tune`` and
``final`` photos (held out of training; `atoken.plugins.image.samples`):

* **the linear family**: a k-component patch PCA fitted on the training photos, for k = 48 (the
  baseline, the latent's width) up to 128 values per patch. The PSNR at which its LPIPS crosses
  0.8 x PCA-48's is what a *faithful* code of that quality scores;
* **the model, corrected in a band**: ``R + lowpass_sigma(X - R)`` for the model's reconstruction
  ``R`` of the reference ``X`` -- a hypothetical model exact on the frequencies below the Gaussian
  cut-off and equal to the model above it -- and ``R`` plus the residual with its phase randomised
  per 16x16 patch (the right texture energy in the wrong place; scaled 0.5 and 1).

Each row is printed beside the model (``ATOKEN_HEADROOM_MODEL``: a name or a model directory,
default the shipped ``atoken-tiny-photo``) and written to ``.benchmarks/lpips_headroom.json``.
Protocol: as `atoken demo` (longer side <= 512, centre crop to multiples of 16; PSNR and SSIM on
uint8 levels in [0, 1]; LPIPS v0.1 VGG16 at the crop's resolution). About 3 minutes on 2 cores.

References: R. Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric" (LPIPS), CVPR 2018.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from atoken.core.metrics import _gaussian_window, shared_lpips
from atoken.core.plugins import default_components
from atoken.core.reconstruct import reconstruct_sample
from atoken.core.tokenizer import Tokenizer
from atoken.eval.heldout import EVAL_MAX_RES, fit_pca_baseline
from atoken.plugins.image.samples import SampleImagesSource

ROOT = Path(__file__).resolve().parents[1]
LPIPS_TARGET = 0.8
COMPONENTS = (48, 56, 64, 80, 96, 128)
SIGMAS = (4.0, 2.0, 1.0)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``[H, W, 3]`` blurred with a separable Gaussian (reflect padding; SSIM's window)."""
    radius = int(3 * sigma)
    g = _gaussian_window(2 * radius + 1, sigma, x.dtype, x.device)
    y = x.permute(2, 0, 1)[:, None]  # [3, 1, H, W]
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), g.view(1, 1, -1, 1))
    return y[:, 0].permute(1, 2, 0)


def _phase_randomised(d: Tensor, generator: torch.Generator, patch: int = 16) -> Tensor:
    """``d`` with each 16x16 patch's Fourier amplitudes kept and its phases taken from noise."""
    h, w, _ = d.shape
    x = d.permute(2, 0, 1).reshape(3, h // patch, patch, w // patch, patch).permute(1, 3, 0, 2, 4)
    noise = torch.randn(x.shape[0], x.shape[1], 1, patch, patch, generator=generator)
    phase = torch.angle(torch.fft.fft2(noise.expand_as(x)))  # Hermitian: the inverse stays real
    y = torch.fft.ifft2(torch.fft.fft2(x).abs() * torch.exp(1j * phase)).real
    return y.permute(2, 0, 3, 1, 4).reshape(3, h, w).permute(1, 2, 0)


@pytest.fixture(scope="module")
def headroom() -> dict:
    lpips, why = shared_lpips()
    if lpips is None:
        pytest.skip(f"LPIPS cannot run here: {why}")
    splits = {s: list(SampleImagesSource(s)) for s in ("tune", "final")}
    if len(splits["final"]) < 2:
        pytest.skip("the 'final' photos need scikit-learn (pip install 'atoken[samples]')")
    train = [image for _, image in SampleImagesSource("train")]
    pcas = {k: fit_pca_baseline(train, k=k) for k in COMPONENTS}
    model_name = os.environ.get("ATOKEN_HEADROOM_MODEL", "atoken-tiny-photo")
    model = Tokenizer.from_pretrained(model_name).eval()
    # the crops, reconstructions and metrics of `atoken demo` (compare_on_held_out's adapter)
    adapter = default_components().adapters.build("image", {"max_res": EVAL_MAX_RES})

    def score(pairs: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
        rows = [adapter.metrics(x, y) for x, y in pairs]
        return {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim", "lpips")}

    result: dict = {"model": model_name, "protocol": _PROTOCOL, "splits": {}}
    for split, images in splits.items():
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            done = [reconstruct_sample(model, adapter, image, name) for name, image in images]
        refs = [r.reference for r in done]
        recs = [r.reconstruction.clamp(-1, 1) for r in done]
        rows: dict[str, dict[str, float]] = {"model": score(list(zip(refs, recs, strict=True)))}
        for k, pca in pcas.items():
            rows[f"PCA-{k}"] = score([(x, pca(x)) for x in refs])
        for sigma in SIGMAS:
            rows[f"model + residual below sigma {sigma:g} px"] = score(
                [(x, r + _gaussian_blur(x - r, sigma)) for x, r in zip(refs, recs, strict=True)]
            )
        for scale in (0.5, 1.0):
            rows[f"model + {scale:g} x phase-randomised residual"] = score(
                [
                    (x, r + scale * _phase_randomised(x - r, generator))
                    for x, r in zip(refs, recs, strict=True)
                ]
            )
        result["splits"][split] = {"N": len(refs), "rows": rows, **_crossing(rows)}
        print("\n" + "\n".join(_table(split, result["splits"][split])))
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / "lpips_headroom.json").write_text(json.dumps(result, indent=2))
    return result


_PROTOCOL = (
    "longer side <= 512, centre crop to multiples of 16; PSNR/SSIM on uint8 levels in [0, 1];"
    " LPIPS v0.1 VGG16 at the crop's resolution; PCA-k fitted on the train photos at <= 256"
)


def _crossing(rows: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """Where PCA-k's LPIPS crosses 0.8 x PCA-48's: k and PSNR, interpolated linearly in k."""
    target = LPIPS_TARGET * rows["PCA-48"]["lpips"]
    for a, b in zip(COMPONENTS, COMPONENTS[1:], strict=False):
        la, lb = rows[f"PCA-{a}"]["lpips"], rows[f"PCA-{b}"]["lpips"]
        if la > target >= lb:
            t = (la - target) / (la - lb)
            pa, pb = rows[f"PCA-{a}"]["psnr"], rows[f"PCA-{b}"]["psnr"]
            psnr = pa + t * (pb - pa)
            return {
                "lpips_target": target,
                "k_at_target": a + t * (b - a),
                "psnr_at_target": psnr,
                "psnr_gain_at_target": psnr - rows["PCA-48"]["psnr"],
            }
    return {"lpips_target": target, "k_at_target": None, "psnr_at_target": None}


def _table(split: str, block: dict) -> list[str]:
    lines = [f"{split} photos (N = {block['N']}): {_PROTOCOL}"]
    lines.append(f"{'':48s} {'PSNR dB':>8s} {'SSIM':>7s} {'LPIPS':>7s}")
    for name, m in block["rows"].items():
        lines.append(f"{name:48s} {m['psnr']:8.2f} {m['ssim']:7.4f} {m['lpips']:7.4f}")
    if block.get("k_at_target") is not None:
        lines.append(
            f"LPIPS {LPIPS_TARGET} x PCA-48's = {block['lpips_target']:.4f}: PCA-"
            f"{block['k_at_target']:.0f}, at {block['psnr_at_target']:.2f} dB"
            f" (+{block['psnr_gain_at_target']:.2f} dB over PCA-48)"
        )
    return lines


@pytest.mark.parametrize("split", ["tune", "final"])
def test_more_components_give_higher_psnr_and_lower_lpips(headroom, split) -> None:
    rows = headroom["splits"][split]["rows"]
    psnr = [rows[f"PCA-{k}"]["psnr"] for k in COMPONENTS]
    lpips = [rows[f"PCA-{k}"]["lpips"] for k in COMPONENTS]
    assert psnr == sorted(psnr) and lpips == sorted(lpips, reverse=True), rows


@pytest.mark.parametrize("split", ["tune", "final"])
def test_restoring_more_of_the_residual_lowers_lpips(headroom, split) -> None:
    rows = headroom["splits"][split]["rows"]
    lpips = [rows["model"]["lpips"]]
    lpips += [rows[f"model + residual below sigma {s:g} px"]["lpips"] for s in SIGMAS]
    assert lpips == sorted(lpips, reverse=True), rows


@pytest.mark.parametrize("split", ["tune", "final"])
def test_the_lpips_target_is_crossed_within_the_components_measured(headroom, split) -> None:
    block = headroom["splits"][split]
    assert block["k_at_target"] is not None, block
