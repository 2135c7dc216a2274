"""PSNR and SSIM against scikit-image's reference implementations on real photos.

Measured (astronaut/chelsea/coffee; Gaussian blur, Gaussian noise, both): |ssim - skimage| is
below 1e-14 for float64 inputs (same algorithm, same valid region) and below 5e-6 for float32
inputs (float32 accumulation); PSNR differs by < 3e-6 dB in float32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from atoken.core.errors import InputError
from atoken.core.metrics import psnr, ssim
from atoken.plugins.image.io import read_image

skimage = pytest.importorskip("skimage")
from skimage.filters import gaussian  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")


def sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    return float(
        structural_similarity(
            a,
            b,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=data_range,
        )
    )


def degrade(img: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = img
    if kind in ("blur", "both"):
        out = gaussian(out, sigma=1.5, channel_axis=-1)
    if kind in ("noise", "both"):
        out = np.clip(out + rng.normal(0.0, 0.1, out.shape), -1.0, 1.0)
    return out


@pytest.fixture(scope="module")
def photos64() -> dict[str, np.ndarray]:
    return {n: read_image(SKIMAGE_DATA / n).double().numpy() for n in PHOTOS}


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("kind", ["blur", "noise", "both"])
def test_against_skimage_on_real_photos(photos64, name: str, kind: str) -> None:
    a = photos64[name]
    b = degrade(a, kind)
    ref_ssim, ref_psnr = sk_ssim(a, b), peak_signal_noise_ratio(a, b, data_range=2.0)
    assert 0.2 < ref_ssim < 0.95  # a real, non-trivial degradation
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    # float64: same computation, agreement to rounding
    assert abs(float(ssim(ta, tb)) - ref_ssim) < 1e-10
    assert abs(float(psnr(ta, tb)) - ref_psnr) < 1e-9
    # float32 (what read_image returns): within the documented tolerance
    s32, p32 = ssim(ta.float(), tb.float()), psnr(ta.float(), tb.float())
    assert s32.dtype == torch.float32 and s32.ndim == 0
    assert abs(float(s32) - ref_ssim) < 2e-5
    assert abs(float(p32) - ref_psnr) < 1e-4


def test_ssim_orders_degradations(photos64) -> None:
    a = torch.from_numpy(photos64["astronaut.png"])
    light = torch.from_numpy(degrade(photos64["astronaut.png"], "blur"))
    heavy = torch.from_numpy(degrade(photos64["astronaut.png"], "both"))
    assert ssim(a, light) > ssim(a, heavy)
    assert psnr(a, light) > psnr(a, heavy)


def test_identical_images(photos64) -> None:
    a = torch.from_numpy(photos64["chelsea.png"]).float()
    assert abs(float(ssim(a, a.clone())) - 1.0) < 1e-6
    value = psnr(a, a.clone())
    assert math.isinf(float(value)) and float(value) > 0


def test_psnr_known_value() -> None:
    x = torch.zeros(4, 5, 3)
    y = torch.full((4, 5, 3), 0.1)
    assert float(psnr(x, y)) == pytest.approx(10 * math.log10(4.0 / 0.01), abs=1e-4)
    assert float(psnr(x, y, data_range=1.0)) == pytest.approx(20.0, abs=1e-4)


def test_data_range_on_uint8_scale(photos64) -> None:
    a = (photos64["coffee.png"] + 1) * 127.5  # [0, 255] as float
    b = degrade(photos64["coffee.png"], "noise") * 127.5 + 127.5
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert abs(float(ssim(ta, tb, data_range=255.0)) - sk_ssim(a, b, 255.0)) < 1e-10
    ref = peak_signal_noise_ratio(a, b, data_range=255.0)
    assert abs(float(psnr(ta, tb, data_range=255.0)) - ref) < 1e-9


def test_single_channel_and_minimum_size() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(11, 11, 1, generator=gen, dtype=torch.float64) * 2 - 1
    b = (a + 0.2 * torch.randn(11, 11, 1, generator=gen, dtype=torch.float64)).clamp(-1, 1)
    assert abs(float(ssim(a, b)) - sk_ssim(a.numpy(), b.numpy())) < 1e-10  # one window position


def test_batch_matches_per_image(photos64) -> None:
    crops = [photos64[n][:64, :80] for n in PHOTOS]
    x = torch.from_numpy(np.stack(crops)).float()  # [3, 64, 80, 3]
    y = torch.from_numpy(np.stack([degrade(c, "both", seed=i) for i, c in enumerate(crops)]))
    y = y.float()
    s, p = ssim(x, y), psnr(x, y)
    assert s.shape == (3,) and p.shape == (3,)
    for i in range(3):
        assert float(s[i]) == pytest.approx(float(ssim(x[i], y[i])), abs=1e-6)
        assert float(p[i]) == pytest.approx(float(psnr(x[i], y[i])), abs=1e-5)
        assert float(s[i]) == pytest.approx(
            sk_ssim(x[i].double().numpy(), y[i].double().numpy()), abs=2e-5
        )
    # identical pairs inside a batch give inf only where identical
    y[1] = x[1]
    p = psnr(x, y)
    assert math.isinf(float(p[1])) and math.isfinite(float(p[0])) and math.isfinite(float(p[2]))


def test_mismatched_shapes_name_both() -> None:
    with pytest.raises(InputError) as exc:
        ssim(torch.zeros(16, 16, 3), torch.zeros(16, 17, 3))
    assert "[16, 16, 3]" in str(exc.value) and "[16, 17, 3]" in str(exc.value)
    with pytest.raises(InputError, match=r"\[2, 16, 16, 3\].*\[16, 16, 3\]"):
        psnr(torch.zeros(2, 16, 16, 3), torch.zeros(16, 16, 3))


@pytest.mark.parametrize("shape", [(10, 32, 3), (32, 10, 3), (2, 10, 10, 1)])
def test_ssim_too_small(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match="at least 11x11"):
        ssim(torch.zeros(shape), torch.zeros(shape))


def test_psnr_allows_small_images() -> None:
    assert float(psnr(torch.zeros(1, 1, 3), torch.ones(1, 1, 3))) == pytest.approx(
        10 * math.log10(4.0), abs=1e-5
    )


@pytest.mark.parametrize(
    ("x", "y", "kwargs"),
    [
        (torch.zeros(16, 16), torch.zeros(16, 16), {}),
        (torch.zeros(1, 2, 16, 16, 3), torch.zeros(1, 2, 16, 16, 3), {}),
        (np.zeros((16, 16, 3)), np.zeros((16, 16, 3)), {}),
        (torch.zeros(16, 16, 3), torch.zeros(16, 16, 3), {"data_range": 0.0}),
        (torch.zeros(16, 16, 3), torch.zeros(16, 16, 3), {"data_range": float("nan")}),
    ],
)
@pytest.mark.parametrize("metric", [psnr, ssim])
def test_bad_inputs(metric, x, y, kwargs) -> None:
    with pytest.raises(InputError):
        metric(x, y, **kwargs)


def test_differentiable() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 13, 2, generator=gen, dtype=torch.float64) * 2 - 1
    y = (torch.rand(12, 13, 2, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ssim(x, t), (y,))
    assert torch.autograd.gradcheck(lambda t: psnr(x, t), (y,))
    # and gradient ascent on SSIM moves the test image towards the reference
    z = y.detach().float().clone().requires_grad_()
    before = float(ssim(x.float(), z.detach()))
    ssim(x.float(), z).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    with torch.no_grad():
        z += 50.0 * z.grad
    assert float(ssim(x.float(), z.detach())) > before


def test_half_precision_inputs_computed_in_float32(photos64) -> None:
    a = torch.from_numpy(photos64["astronaut.png"][:64, :64])
    b = torch.from_numpy(degrade(photos64["astronaut.png"][:64, :64], "noise"))
    out = ssim(a.half(), b.half())
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(
        sk_ssim(a.half().double().numpy(), b.half().double().numpy()), abs=2e-5
    )


def _uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("name", PHOTOS)
def test_image_quality_is_the_fields_psnr_and_ssim_on_uint8(photos64, name: str) -> None:
    """`image_quality` (what every metrics.json reports) equals scikit-image on the uint8 images,
    for a reconstruction that is not on the 8-bit grid and leaves [-1, 1]."""
    from atoken.core.metrics import image_quality

    ref = torch.from_numpy(photos64[name]).float()
    rec = torch.from_numpy(degrade(photos64[name], "both", seed=3)).float() * 1.05
    got = image_quality(ref, rec)
    a, b = _uint8(ref), _uint8(rec)
    assert got["ssim"] == pytest.approx(sk_ssim(a, b, data_range=255), abs=2e-5)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-4)
    # and it is not the [-1, 1] / data_range 2 figure the project used to report
    assert abs(got["ssim"] - float(ssim(ref, rec.clamp(-1, 1)))) > 1e-3


def test_reconstruct_metrics_json_matches_skimage_on_the_written_pngs(tmp_path) -> None:
    """metrics.json's PSNR and SSIM are what scikit-image measures on the PNGs written beside
    it (reference = the left half of side_by_side.png, its box in metrics.json's
    ``side_by_side_layout``), and the convention is recorded."""
    from click.testing import CliRunner
    from PIL import Image

    from atoken.cli import cli

    src = tmp_path / "coffee.png"
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((40, 60, 40 + 200, 60 + 150)).save(src)  # 150x200: crops to 144x192
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["reconstruct", str(src), "--out", str(out), "-m", "atoken-tiny", "-O", "lpips=false"]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "coffee" / "metrics.json").read_text())
    rec = np.asarray(Image.open(out / "coffee" / "reconstruction.png").convert("RGB"))
    h, w = rec.shape[:2]
    x0, y0, x1, y1 = meta["side_by_side_layout"]["reference"]  # below the label band
    ref = np.asarray(Image.open(out / "coffee" / "side_by_side.png").convert("RGB"))[y0:y1, x0:x1]
    assert (h, w) == (144, 192)
    assert meta["ssim"] == pytest.approx(sk_ssim(ref, rec, data_range=255), abs=2e-5)
    assert meta["psnr"] == pytest.approx(
        peak_signal_noise_ratio(ref, rec, data_range=255), abs=1e-4
    )
    assert "uint8" in meta["convention"]["pixels"] and "data_range 1" in meta["convention"]["ssim"]
