"""Image file I/O: every format and pixel mode decodes to the documented values; clear errors."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atoken.core.errors import InputError
from atoken.core.pictures import side_by_side, to_uint8
from atoken.plugins.image import io as image_io
from atoken.plugins.image.io import IMAGE_EXTENSIONS, read_image, write_png

SKIMAGE_DATA = Path(pytest.importorskip("skimage").__file__).parent / "data"
RNG_SEED = 1234


def expected8(arr: np.ndarray) -> np.ndarray:
    """8-bit samples -> [-1, 1], computed independently in float64."""
    return arr.astype(np.float64) / 255.0 * 2.0 - 1.0


def expected16(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float64) / 65535.0 * 2.0 - 1.0


def over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour and alpha in [0, 1] composited over white, mapped to [-1, 1]."""
    a = alpha[..., None]
    return (color * a + (1.0 - a)) * 2.0 - 1.0


def assert_image(t: torch.Tensor, expected: np.ndarray, atol: float = 1e-6) -> None:
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert t.ndim == 3 and t.shape[-1] == 3
    exp = np.broadcast_to(expected if expected.ndim == 3 else expected[..., None], t.shape)
    np.testing.assert_allclose(t.numpy(), exp, rtol=0, atol=atol)


def pil_mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def pil_array(path: Path, mode: str | None = None) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert(mode) if mode else img)


def random_u8(shape: tuple[int, ...], seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def random_u16(shape: tuple[int, ...], seed: int = RNG_SEED) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    arr.flat[:4] = [0, 65535, 257, 1]  # the extremes and values whose low byte matters
    return arr


def write_png16(path: Path, arr: np.ndarray) -> None:
    """Minimal 16-bit PNG encoder (Pillow cannot write 16-bit RGB/RGBA/LA PNGs).

    Rows cycle through all five PNG filter types so that the decoder's unfiltering, which
    depends on the bytes per pixel, is exercised.
    """
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = 2 * c
    rows = arr.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    out = []
    prior = np.zeros(w * bpp, np.int32)
    for y in range(h):
        raw = rows[y]
        left = np.concatenate([np.zeros(bpp, np.int32), raw[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        ftype = y % 5
        if ftype == 0:
            pred = np.zeros_like(raw)
        elif ftype == 1:
            pred = left
        elif ftype == 2:
            pred = prior
        elif ftype == 3:
            pred = (left + prior) // 2
        else:
            p = left + prior - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
        out.append(bytes([ftype]) + ((raw - pred) % 256).astype(np.uint8).tobytes())
        prior = raw

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(out)))
        + chunk(b"IEND", b"")
    )


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims a size, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF
    body = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", crc)
    idat = zlib.compress(b"\x00" * 64)
    crc = zlib.crc32(b"IDAT" + idat) & 0xFFFFFFFF
    body += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", crc)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


# ----------------------------------------------------------------------------------- 8-bit RGB
@pytest.mark.parametrize(
    ("suffix", "save_kwargs"),
    [
        (".png", {}),
        (".bmp", {}),
        (".tif", {}),
        (".tiff", {"compression": "tiff_lzw"}),
        (".webp", {"lossless": True}),
    ],
)
def test_lossless_rgb8_roundtrip_exact(tmp_path: Path, suffix: str, save_kwargs: dict) -> None:
    arr = random_u8((23, 37, 3))
    path = tmp_path / f"rgb{suffix}"
    Image.fromarray(arr).save(path, **save_kwargs)
    out = read_image(path)
    assert out.shape == (23, 37, 3)
    assert_image(out, expected8(arr))


def test_jpeg_matches_decoder_and_source(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:48, 0:64]
    arr = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)  # smooth ramps
    path = tmp_path / "ramp.jpg"
    Image.fromarray(arr).save(path, quality=95)
    out = read_image(path)
    decoded = pil_array(path, "RGB")
    assert_image(out, expected8(decoded))
    # and the decoded JPEG is close to what was saved (lossy, so a few levels)
    assert np.abs(out.numpy() - expected8(arr)).mean() < 3 * 2 / 255


def test_all_listed_extensions_are_readable(tmp_path: Path) -> None:
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} <= set(IMAGE_EXTENSIONS)
    arr = np.full((16, 16, 3), 200, np.uint8)
    for ext in IMAGE_EXTENSIONS:
        path = tmp_path / f"x{ext}"
        Image.fromarray(arr).save(path)  # Pillow picks the format from the extension
        np.testing.assert_allclose(read_image(path).numpy(), 200 / 255 * 2 - 1, atol=2 / 255)


# ----------------------------------------------------------------------------------- grayscale
@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_gray8_replicated_to_three_channels(tmp_path: Path, suffix: str) -> None:
    arr = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))  # [8, 64], flat per column
    path = tmp_path / f"gray{suffix}"
    Image.fromarray(arr, mode="L").save(path)
    out = read_image(path)
    assert out.shape == (8, 64, 3)
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 0], out[..., 2])
    tol = 1e-6 if suffix != ".jpg" else 3 * 2 / 255
    assert_image(out, expected8(arr), atol=tol)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_bilevel_mode_1(tmp_path: Path, suffix: str) -> None:
    bits = np.zeros((9, 10), bool)
    bits[::2, 1::3] = True
    path = tmp_path / f"bits{suffix}"
    Image.fromarray(bits).convert("1").save(path)
    assert pil_mode(path) == "1"
    assert_image(read_image(path), np.where(bits, 1.0, -1.0))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_gray16_full_precision(tmp_path: Path, suffix: str) -> None:
    arr = random_u16((12, 17))
    path = tmp_path / f"gray16{suffix}"
    Image.fromarray(arr).save(path)  # mode I;16
    assert pil_mode(path).startswith("I;16")
    out = read_image(path)
    assert out[0, 0, 0] == -1.0 and out[0, 1, 0] == 1.0  # 0 -> -1, 65535 -> 1 exactly
    assert_image(out, expected16(arr), atol=2e-7)
    # 257 and 256 differ only in the low byte: 16-bit precision is really kept
    assert out[0, 2, 0] > expected16(np.array(256.0))


def test_gray16_big_endian_tiff(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    arr = random_u16((8, 9))
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, arr, byteorder=">")
    assert_image(read_image(path), expected16(arr), atol=2e-7)


def test_mode_I_is_read_as_16bit_and_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 65535, 32768, 70000, -5]], dtype=np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(arr, mode="I").save(path)
    assert pil_mode(path) == "I"
    clipped = np.clip(arr, 0, 65535)
    assert_image(read_image(path), expected16(clipped), atol=2e-7)


def test_mode_F_is_read_as_unit_range_and_clipped(tmp_path: Path) -> None:
    arr = np.array([[0.0, 0.25, 1.0, 1.5, -0.5]], dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(arr, mode="F").save(path)
    assert pil_mode(path) == "F"
    assert_image(read_image(path), np.array([[-1.0, -0.5, 1.0, 1.0, -1.0]]))


def test_mode_F_with_nan_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.5, np.nan]], dtype=np.float32), mode="F").save(path)
    with pytest.raises(InputError, match="NaN"):
        read_image(path)


# -------------------------------------------------------------------------------- 16-bit colour
@pytest.mark.parametrize("channels", [3, 4])
def test_rgb16_png_full_precision(tmp_path: Path, channels: int) -> None:
    arr = random_u16((19, 23, channels))
    path = tmp_path / "rgb16.png"
    write_png16(path, arr)
    out = read_image(path)
    unit = arr.astype(np.float64) / 65535
    exp = unit * 2 - 1 if channels == 3 else over_white(unit[..., :3], unit[..., 3])
    assert_image(out, exp, atol=3e-7)
    # an 8-bit reading would be off by up to 1/255 in [0, 1] units; this is far tighter
    if channels == 3:
        assert out[0, 0, 0] == -1.0 and out[0, 0, 1] == 1.0


def test_gray_alpha16_png_full_precision(tmp_path: Path) -> None:
    arr = random_u16((11, 13, 2))
    path = tmp_path / "la16.png"
    write_png16(path, arr)
    unit = arr.astype(np.float64) / 65535
    assert_image(read_image(path), over_white(unit[..., :1], unit[..., 1]), atol=3e-7)


@pytest.mark.parametrize(
    "kwargs", [{}, {"compression": "zlib"}, {"byteorder": ">"}, {"tile": (16, 16)}]
)
def test_rgb16_tiff_full_precision(tmp_path: Path, kwargs: dict) -> None:
    tifffile = pytest.importorskip("tifffile")
    arr = random_u16((21, 35, 3))
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, arr, photometric="rgb", **kwargs)
    assert_image(read_image(path), expected16(arr), atol=3e-7)


def test_rgba16_tiff_full_precision(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    arr = random_u16((10, 12, 4))
    path = tmp_path / "rgba16.tif"
    tifffile.imwrite(path, arr, photometric="rgb", extrasamples=["unassalpha"])
    unit = arr.astype(np.float64) / 65535
    assert_image(read_image(path), over_white(unit[..., :3], unit[..., 3]), atol=3e-7)


# ------------------------------------------------------------------------------ alpha, palette
@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])
def test_rgba_composited_over_white(tmp_path: Path, suffix: str) -> None:
    arr = np.array(
        [[[255, 0, 0, 128], [0, 0, 255, 0], [10, 200, 30, 255], [0, 0, 0, 64]]], dtype=np.uint8
    )
    path = tmp_path / f"rgba{suffix}"
    Image.fromarray(arr, mode="RGBA").save(
        path, **({"lossless": True, "exact": True} if suffix == ".webp" else {})
    )
    out = read_image(path)
    unit = arr.astype(np.float64) / 255
    assert_image(out, over_white(unit[..., :3], unit[..., 3]))
    assert torch.equal(out[0, 1], torch.ones(3))  # fully transparent -> white
    np.testing.assert_allclose(
        out[0, 0].numpy(), [1.0, 1 - 2 * 128 / 255, 1 - 2 * 128 / 255], atol=1e-6
    )


def test_la_composited_over_white(tmp_path: Path) -> None:
    arr = np.array([[[0, 255], [0, 0], [100, 51], [255, 10]]], dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(arr, mode="LA").save(path)
    unit = arr.astype(np.float64) / 255
    assert_image(read_image(path), over_white(unit[..., :1], unit[..., 1]))


def _palette_image(index: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    colors = np.array([[255, 0, 0], [0, 128, 255], [12, 34, 56], [250, 250, 0]], np.uint8)
    img = Image.fromarray(index.astype(np.uint8), mode="P")
    img.putpalette(colors.flatten().tolist())
    return img, colors


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_palette_maps_to_palette_colours(tmp_path: Path, suffix: str) -> None:
    index = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    img, colors = _palette_image(index)
    path = tmp_path / f"pal{suffix}"
    img.save(path)
    assert pil_mode(path) == "P"
    assert_image(read_image(path), expected8(colors[index]))


def test_palette_with_transparent_index(tmp_path: Path) -> None:
    index = np.array([[0, 1, 2, 3]])
    img, colors = _palette_image(index)
    path = tmp_path / "pal_t.png"
    img.save(path, transparency=1)  # index 1 fully transparent
    exp = expected8(colors[index])
    exp[0, 1] = 1.0  # white
    assert_image(read_image(path), exp)


def test_palette_with_per_entry_alpha(tmp_path: Path) -> None:
    index = np.array([[0, 1, 2, 3]])
    img, colors = _palette_image(index)
    alphas = np.array([255, 0, 100, 200])
    path = tmp_path / "pal_alpha.png"
    img.save(path, transparency=bytes(alphas.tolist()))
    unit = colors[index].astype(np.float64) / 255
    assert_image(read_image(path), over_white(unit, alphas[index] / 255))


# ---------------------------------------------------------------------------------------- CMYK
CMYK = np.array([[[255, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 0], [0, 255, 255, 0]]], np.uint8)
CMYK_AS_RGB = np.array([[[0, 255, 255], [0, 0, 0], [255, 255, 255], [255, 0, 0]]], np.uint8)


def test_cmyk_tiff(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    Image.fromarray(CMYK, mode="CMYK").save(path)
    assert pil_mode(path) == "CMYK"
    assert_image(read_image(path), expected8(CMYK_AS_RGB))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    blocks = np.repeat(np.repeat(CMYK, 16, axis=0), 16, axis=1)  # [16, 64, 4] flat blocks
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(blocks, mode="CMYK").save(path, quality=100)
    assert pil_mode(path) == "CMYK"
    out = read_image(path)
    exp = expected8(np.repeat(np.repeat(CMYK_AS_RGB, 16, axis=0), 16, axis=1))
    centres = (slice(4, 12), np.r_[4:12, 20:28, 36:44, 52:60])  # away from block edges
    np.testing.assert_allclose(out.numpy()[centres], exp[centres], atol=6 * 2 / 255)


# ----------------------------------------------------------------------------------- EXIF
def _two_halves() -> np.ndarray:
    arr = np.zeros((24, 40, 3), np.uint8)  # stored: 40 wide, 24 tall
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    return arr


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_exif_orientation_6_rotates(tmp_path: Path, suffix: str) -> None:
    img = Image.fromarray(_two_halves())
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / f"rot{suffix}"
    img.save(path, exif=exif, **({"quality": 95} if suffix == ".jpg" else {}))
    out = read_image(path)
    assert out.shape == (40, 24, 3)  # dims swapped
    # clockwise rotation brings the stored left (red) half to the top
    top, bottom = out[4:16, 4:20].mean(dim=(0, 1)), out[24:36, 4:20].mean(dim=(0, 1))
    np.testing.assert_allclose(top.numpy(), [1, -1, -1], atol=0.05)
    np.testing.assert_allclose(bottom.numpy(), [-1, -1, 1], atol=0.05)


def test_exif_orientation_3_flips(tmp_path: Path) -> None:
    arr = random_u8((6, 7, 3))
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 3  # rotate 180
    path = tmp_path / "flip.png"
    img.save(path, exif=exif)
    assert_image(read_image(path), expected8(arr[::-1, ::-1]))


def test_16bit_rgb_tiff_orientation_applied(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    arr = random_u16((5, 8, 3))
    path = tmp_path / "rot16.tif"
    tifffile.imwrite(path, arr, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    out = read_image(path)
    assert out.shape == (8, 5, 3)
    assert_image(out, expected16(np.rot90(arr, k=-1)), atol=3e-7)  # clockwise


# ---------------------------------------------------------------------------------- real photos
@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("astronaut.png", (512, 512, 3)),
        ("chelsea.png", (300, 451, 3)),
        ("coffee.png", (400, 600, 3)),
        ("rocket.jpg", (427, 640, 3)),
        ("camera.png", (512, 512, 3)),
    ],
)
def test_real_photos(name: str, shape: tuple[int, int, int]) -> None:
    path = SKIMAGE_DATA / name
    out = read_image(path)
    assert tuple(out.shape) == shape
    ref = pil_array(path, "RGB")
    assert_image(out, expected8(ref))
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0.1


def test_real_rgba_file() -> None:
    path = SKIMAGE_DATA / "logo.png"  # RGBA, fully opaque: the colour channels come through
    rgba = pil_array(path)
    assert rgba.shape == (500, 500, 4) and (rgba[..., 3] == 255).all()
    assert_image(read_image(path), expected8(rgba[..., :3]))


def test_real_photo_with_alpha_ramp(tmp_path: Path) -> None:
    rgb = pil_array(SKIMAGE_DATA / "astronaut.png")  # [512, 512, 3]
    alpha = np.tile(np.linspace(0, 255, 512).round().astype(np.uint8), (512, 1))  # [512, 512]
    path = tmp_path / "astronaut_rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    out = read_image(path)
    assert_image(out, over_white(rgb / 255.0, alpha / 255.0))
    assert torch.equal(out[:, 0], torch.ones(512, 3))  # alpha 0 column is white
    assert_image(out[:, -1:], expected8(rgb[:, -1:]))  # alpha 255 column is the photo


def test_real_multipage_tiff_gives_first_page() -> None:
    path = SKIMAGE_DATA / "multipage.tif"
    with Image.open(path) as img:
        assert img.n_frames == 2
        first = np.asarray(img.convert("L"))
    out = read_image(path)
    assert out.shape == (*first.shape, 3)
    assert_image(out, expected8(first))


# ---------------------------------------------------------------------------------------- errors
def _assert_clear(exc: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"'{path}'" in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "no such file")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        read_image(tmp_path)
    _assert_clear(exc, tmp_path, "directory")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "not a recognised image file", "PNG, JPEG, WebP, BMP or TIFF")
    assert isinstance(exc.value, ValueError)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "not a recognised image file")


@pytest.mark.parametrize("name", ["rocket.jpg", "astronaut.png"])
def test_truncated_real_file(tmp_path: Path, name: str) -> None:
    data = (SKIMAGE_DATA / name).read_bytes()
    path = tmp_path / f"truncated_{name}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "truncated or corrupt")


def test_corrupt_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "JPEG", "cannot be decoded")


def test_corrupt_jpeg_scan_data(tmp_path: Path) -> None:
    data = bytearray((SKIMAGE_DATA / "rocket.jpg").read_bytes())
    data[-2000:] = b"\x00" * 2000  # wipe the tail, including the EOI marker
    path = tmp_path / "wiped.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "truncated or corrupt")


def test_undecodable_tiff_variant_is_named() -> None:
    path = SKIMAGE_DATA / "multipage_rgb.tif"  # float64, planar RGB: Pillow cannot decode it
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "looks like a TIFF file")


def test_other_formats_rejected(tmp_path: Path) -> None:
    path = SKIMAGE_DATA / "no_time_for_that_tiny.gif"
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "GIF", "expected PNG, JPEG, WebP, BMP or TIFF")


def test_decompression_bomb_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    png_header_only(path, 20_000, 20_000)  # 4e8 pixels, far above Pillow's limit
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, "too large")


def test_max_pixels_enforced_when_pillow_limit_disabled(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "big.png"
    png_header_only(path, 2**14 + 1, 2**14)  # just above 2**28 pixels
    with pytest.raises(InputError) as exc:
        read_image(path)
    _assert_clear(exc, path, str(image_io.MAX_PIXELS))


def test_decompression_bomb_warning_does_not_escape(tmp_path: Path, monkeypatch) -> None:
    # 150 px: above MAX_IMAGE_PIXELS (warning) but below twice it (Pillow's error); pytest turns
    # warnings into errors here, so this fails if the warning leaks.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "ok.png"
    Image.fromarray(random_u8((10, 15, 3))).save(path)
    assert read_image(path).shape == (10, 15, 3)


def test_str_path_accepted(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    Image.fromarray(random_u8((4, 5, 3))).save(path)
    assert torch.equal(read_image(str(path)), read_image(path))


# ---------------------------------------------------------------------------------------- write
def test_to_uint8_mapping() -> None:
    x = torch.tensor([[-1.0, 1.0, 0.0, -3.0, 2.5, 1 / 255 * 2 - 1]])
    assert to_uint8(x).tolist() == [[0, 255, 128, 0, 255, 1]]
    assert to_uint8(x).dtype == np.uint8
    assert to_uint8(torch.zeros(2, 3, 1)).shape == (2, 3)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 3, 4),
        torch.zeros(3),
        torch.zeros(2, 2, dtype=torch.uint8),
        torch.tensor([[0.0, float("nan")]]),
        torch.zeros(0, 3, 3),
    ],
)
def test_to_uint8_rejects(bad: torch.Tensor) -> None:
    with pytest.raises(InputError):
        to_uint8(bad)


def test_write_png_roundtrip(tmp_path: Path) -> None:
    x = torch.rand(31, 45, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = tmp_path / "a" / "b" / "out.png"  # parents are created
    write_png(x, path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (45, 31)
    back = read_image(path)
    assert back.shape == x.shape
    assert (back - x).abs().max() <= 1 / 255 + 1e-6
    # 8-bit values survive exactly: writing what was read gives the same file contents
    write_png(back, tmp_path / "again.png")
    assert torch.equal(read_image(tmp_path / "again.png"), back)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temp file left


def test_write_png_gray_and_clamp(tmp_path: Path) -> None:
    x = torch.tensor([[-5.0, -1.0], [0.0, 5.0]])
    path = tmp_path / "g.png"
    write_png(x, path)
    assert pil_mode(path) == "L"
    assert_image(read_image(path), expected8(np.array([[0, 0], [128, 255]])))


def test_write_png_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_png(torch.zeros(2, 2, 3), tmp_path / "perm.png")
    finally:
        os.umask(old)
    assert (tmp_path / "perm.png").stat().st_mode & 0o777 == 0o644


def test_write_png_into_directory_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "taken.png"
    target.mkdir()
    with pytest.raises(InputError, match="directory"):
        write_png(torch.zeros(4, 4, 3), target)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"] and target.is_dir()


def test_write_png_failed_replace_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "keep.png"
    write_png(torch.ones(4, 4, 3), path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("simulated rename failure")

    monkeypatch.setattr(image_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        write_png(-torch.ones(4, 4, 3), path)
    assert path.read_bytes() == before  # old contents intact
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]  # temp file removed


def test_write_png_failed_encode_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("simulated disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(torch.zeros(4, 4, 3), tmp_path / "new.png")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- side_by_side
def test_side_by_side_layout() -> None:
    left = torch.full((5, 3, 3), -1.0)
    right = torch.full((7, 2, 3), 0.5)
    out = side_by_side(left, right, gap=4)
    assert out.shape == (7, 3 + 4 + 2, 3) and out.dtype == torch.float32
    assert torch.equal(out[:5, :3], left)
    assert torch.equal(out[:, 7:], right)
    assert torch.equal(out[:, 3:7], torch.ones(7, 4, 3))  # white separator
    assert torch.equal(out[5:, :3], torch.ones(2, 3, 3))  # white below the shorter image


def test_side_by_side_default_gap_and_no_gap() -> None:
    a, b = torch.zeros(4, 4, 3), torch.zeros(4, 5, 3)
    assert side_by_side(a, b).shape == (4, 4 + 8 + 5, 3)
    assert torch.equal(side_by_side(a, b, gap=0), torch.zeros(4, 9, 3))


@pytest.mark.parametrize(
    ("left", "right", "gap"),
    [
        (torch.zeros(4, 4), torch.zeros(4, 4, 3), 8),
        (torch.zeros(4, 4, 3), torch.zeros(4, 4, 4), 8),
        (torch.zeros(4, 4, 3), torch.zeros(4, 4, 3), -1),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), torch.zeros(4, 4, 3), 8),
    ],
)
def test_side_by_side_rejects(left: torch.Tensor, right: torch.Tensor, gap: int) -> None:
    with pytest.raises(InputError):
        side_by_side(left, right, gap)
