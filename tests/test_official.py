"""Equivalence with the official AToken release (apple/ml-atoken).

Reads the reference tensors in ``$ATOKEN_OFFICIAL_FIXTURES`` (default ``../shared/reference/
official`` beside the repository; its README describes every tensor and the tolerances): 4D RoPE,
the resized learned position table, FSQ, patching, the tiny So/C-shaped model's encoder, pooling
and decoder outputs on images, video (tiled, with and without the decoder KV cache) and voxels,
and the key schema of the released checkpoints. Every size, frame count, crop and tiling setting
comes from the fixture set itself (`tests.official_set`): the samples of a batch are its
``pixels_<b>`` tensors, the stored outputs are whatever the set holds, the model and its tiling are
``tiny-soc.json``'s, and videos go through the adapter's release frame mode. A test whose file or
tensor the directory lacks is skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import Tensor

from atoken import PatchTokens, build_tokenizer, collate
from atoken.convert.official import model_config_from_official
from atoken.core.posembed import LearnedPositionEmbedding2D
from atoken.core.pretrained import load_state_dict_checked
from atoken.core.rope import Rope4D, rope_frequencies
from atoken.plugins.image.adapter import ImageAdapter
from tests.official_set import (
    DEC,
    ENC,
    EXACT,
    FIXTURES,
    SOD_RESOLVED,
    VOXEL_T,
    discover,
    fixture_file,
    fsq_options,
    in_channels,
    need,
    pixel_samples,
    posterior_seed,
    release_kv_temporal,
    release_temporal,
    release_video,
    rows_of,
    sample_ids,
    tensors,
    tiny_config,
)

pytestmark = pytest.mark.official

BACKENDS = ("reference", "sdpa")


def check(actual: Tensor, expected: Tensor, atol: float | None) -> None:
    tol = 0.0 if atol is None else atol
    torch.testing.assert_close(actual, expected, atol=tol, rtol=0.0 if atol is None else 1e-5)


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, Tensor]:
    return tensors("tiny-soc")


@pytest.fixture(scope="module")
def model(tiny_weights):
    tok = build_tokenizer(tiny_config(), init=False)
    load_state_dict_checked(tok, tiny_weights, source="tiny-soc.safetensors")
    return tok.eval()


@pytest.fixture(scope="module")
def fsq():
    """The So/D quantizer, as ``config-atoken-sod.json`` describes it."""
    return build_tokenizer(
        "atoken-tiny", quantizer={"name": "fsq", "options": fsq_options()}, init=False
    ).quantizer


# ---------------------------------------------------------------- RoPE, position table, FSQ


@pytest.fixture(scope="module")
def rope_pe() -> dict[str, Tensor]:
    return tensors("fixture-rope-pe")


def rope_dim(rope_pe) -> int:
    """Head dim of the fixture's ``RotaryPositionEmbedder``: the query vectors' last dim."""
    dim = need(rope_pe, "rope.q_in").shape[-1]
    assert need(rope_pe, "rope.freqs").shape == (dim // 8,), "rope.freqs: head_dim / 8 per axis"
    return dim


def test_rope_frequencies(rope_pe) -> None:
    # exact: angles reach hundreds of radians, where one ulp of a frequency is already 1.5e-5
    check(rope_frequencies(rope_dim(rope_pe)), need(rope_pe, "rope.freqs"), EXACT)


def test_rope_rotation_factors(rope_pe) -> None:
    pos = need(rope_pe, "rope.positions_txyz")
    rope = Rope4D(rope_dim(rope_pe))
    cos, sin = rope.rotation(pos)
    check(cos, need(rope_pe, "rope.cos"), ENC)
    check(sin, need(rope_pe, "rope.sin"), ENC)
    diff = rope.angles(pos).double() - need(rope_pe, "rope.angles").double()  # release wraps
    wrapped = torch.remainder(diff + math.pi, 2 * math.pi) - math.pi
    check(wrapped, torch.zeros_like(wrapped), ENC)


def test_rope_rotates_queries_and_keys(rope_pe) -> None:
    q, k = Rope4D(rope_dim(rope_pe))(
        need(rope_pe, "rope.q_in"), need(rope_pe, "rope.k_in"), need(rope_pe, "rope.positions_txyz")
    )
    check(q, need(rope_pe, "rope.q_out"), ENC)
    check(k, need(rope_pe, "rope.k_out"), ENC)


def test_learned_position_table_resize(rope_pe, tiny_weights) -> None:
    weight = need(tiny_weights, "encoder.pos_embedder.position_embedding.weight")  # [G*G, D]
    grid = math.isqrt(weight.shape[0])
    assert grid * grid == weight.shape[0], f"position table of {weight.shape[0]} rows is not square"
    pe = LearnedPositionEmbedding2D(weight.shape[1], grid=grid)
    pe.load_state_dict({"position_embedding.weight": weight})
    coords = need(rope_pe, "pe.coords")  # [N, 5] b, t, x, y, z
    samples = [
        PatchTokens(
            torch.zeros(int(n), weight.shape[1]), rows_of(coords, coords, b)[:, 1:], "image"
        )
        for b, n in enumerate(torch.bincount(coords[:, 0]).tolist())
    ]
    with torch.no_grad():
        check(pe(collate(samples)), need(rope_pe, "pe.encoder_pe"), ENC)


def test_fsq_standalone(fsq) -> None:
    data = tensors("fixture-images-video")
    out = fsq(need(data, "fsq.input"))
    check(out.indices, need(data, "fsq.indices"), EXACT)
    check(out.codes, need(data, "fsq.codes"), EXACT)
    check(fsq.indices_to_codes(data["fsq.indices"]), data["fsq.codes"], EXACT)


# ---------------------------------------------------------------- tokens from pixels and voxels


def voxel_tokens(xyz: Tensor, feats01: Tensor) -> PatchTokens:
    """The release's 3D input: ``2f - 1`` zero-padded to the patch width, coords ``(1, x, y, z)``."""
    feats = torch.zeros(xyz.shape[0], in_channels())
    feats[:, : feats01.shape[1]] = 2 * feats01 - 1
    coords = torch.cat([torch.full_like(xyz[:, :1], VOXEL_T), xyz], dim=1)
    return PatchTokens(feats, coords, "voxel")


def pixel_tokens(pixels: Tensor) -> PatchTokens:
    """An image ``[H, W, 3]`` or a video ``[T, H, W, 3]`` as the release tokenizes it."""
    return (ImageAdapter() if pixels.ndim == 3 else release_video()).to_tokens(pixels)


def patch_cases(ndim: int) -> list[tuple[str, str, int]]:
    return discover("fixture-images-video", "main", ndim) + discover(
        "fixture-crop-tiling", "extra", ndim
    )


PATCH_CASES = {"image": patch_cases(3), "video": patch_cases(4)}


@pytest.mark.parametrize(("name", "prefix", "b"), PATCH_CASES["image"] + PATCH_CASES["video"])
def test_pixel_patchify(name: str, prefix: str, b: int) -> None:
    """Crop (images, videos) and frame cut (videos) as the release's preprocessing."""
    data = tensors(name)
    tokens = pixel_tokens(need(data, f"{prefix}.pixels_{b}"))
    coords = need(data, f"{prefix}.coords_in")
    check(tokens.coords, rows_of(coords, coords, b)[:, 1:], EXACT)
    check(tokens.feats, rows_of(need(data, f"{prefix}.feats_in"), coords, b), EXACT)


def test_patch_cases_cover_images_and_videos() -> None:
    """The set's batches hold images and videos (else the cases above test nothing)."""
    fixture_file("fixture-images-video.safetensors")
    assert PATCH_CASES["image"] and PATCH_CASES["video"], PATCH_CASES


def test_voxel_and_mixed_coords() -> None:
    data = tensors("fixture-3d")
    vox = voxel_tokens(need(data, "vox.coords_xyz"), need(data, "vox.feats_01"))
    check(collate([vox]).coords, need(data, "vox.x_coords")[:, 1:], EXACT)
    check(torch.cat([torch.zeros_like(vox.coords[:, :1]), vox.coords[:, 1:]], 1),
          need(data, "vox.gs_in_coords"), EXACT)  # fmt: skip
    mixed = collate(batch_samples(data, "mixed"))
    check(mixed.coords, need(data, "mixed.coords_in")[:, 1:], EXACT)
    check(torch.tensor(mixed.seqlens), torch.bincount(data["mixed.coords_in"][:, 0]), EXACT)


def batch_samples(data: dict[str, Tensor], prefix: str) -> list[PatchTokens]:
    """The samples of batch ``prefix``: its ``pixels_<b>`` and, in a mixed batch, its voxel set.

    The voxel set takes the one sample index no pixel tensor has (``coords_in`` tells how many
    samples the batch holds).
    """
    samples = {b: pixel_tokens(px) for b, px in pixel_samples(data, prefix)}
    if f"{prefix}.vox_coords_xyz" in data:
        ids = sample_ids(need(data, f"{prefix}.coords_in"))
        free = [b for b in ids if b not in samples]
        assert len(free) == 1, f"{prefix}: cannot tell the voxel sample among {ids}"
        samples[free[0]] = voxel_tokens(
            data[f"{prefix}.vox_coords_xyz"], data[f"{prefix}.vox_feats_01"]
        )
    if f"{prefix}.coords_xyz" in data:  # a voxel-only batch (vox.*)
        samples[0] = voxel_tokens(data[f"{prefix}.coords_xyz"], need(data, f"{prefix}.feats_01"))
    if sorted(samples) != list(range(len(samples))):
        pytest.fail(f"{prefix}: sample indices {sorted(samples)} are not 0..{len(samples) - 1}")
    return [samples[b] for b in range(len(samples))]


# ---------------------------------------------------------------- the tiny model


def decoded_pixels(tokens: PatchTokens) -> Tensor:
    """Decoded tokens -> ``[frames, 3, H, W]`` as the release's ``sparse_to_img_list``."""
    if tokens.modality == "image":
        return ImageAdapter().from_tokens(tokens).permute(2, 0, 1)[None]  # keeps frame 0
    return release_video().from_tokens(tokens).permute(0, 3, 1, 2)


def run_batch(model, fsq, samples, backend: str) -> dict[str, Tensor]:
    """Every per-batch output a fixture can store, for these samples."""
    with torch.no_grad():
        dense = model.encode_dense(samples, backend=backend, temporal=release_temporal())
        z = model.project(dense)  # [N, 2*Cz]: means, then log-variances
        mean, logvar = z.chunk(2, dim=-1)
        layout = dense.replace(mean)
        decoded = model.decode(layout, backend=backend, temporal=release_temporal())
        kv = model.decode(layout, backend=backend, temporal=release_kv_temporal())
        generator = torch.Generator().manual_seed(posterior_seed())
        quantized = fsq(z)
        out = {
            "dense": dense.feats,
            "z_proj": z,
            "pooled": model.pool(dense, normalize=False, backend=backend),
            "pooled_normalized": model.pool(dense, normalize=True, backend=backend),
            "posterior_std": torch.exp(0.5 * logvar.clamp(-30.0, 20.0)),
            "posterior_sample": model.quantizer(z, sample=True, generator=generator).codes,
            "fsq_codes": quantized.codes,
            "fsq_indices": quantized.indices,
            "dec_mean": decoded.feats,
            "dec_mean_kvcache": kv.feats,
        }
    for b, part in enumerate(decoded.split()):
        if part.modality != "voxel":
            out[f"dec_img_{b}"] = decoded_pixels(part)
    return out


#: batch prefix -> fixture file
BATCHES = {
    "main": "fixture-images-video",
    "extra": "fixture-crop-tiling",
    "vox": "fixture-3d",
    "mixed": "fixture-3d",
}
#: stored tensors that are inputs of a batch, not outputs of the model
INPUTS = ("pixels_", "coords_in", "feats_in", "vox_", "coords_xyz", "feats_01", "x_coords", "gs_in")
TOLERANCE = {"fsq_codes": EXACT, "fsq_indices": EXACT}


def stored_outputs() -> list[tuple[str, str]]:
    """``(batch, output)`` for every model output the fixture set stores (read at collection)."""
    cases = []
    for prefix, name in BATCHES.items():
        path = FIXTURES / f"{name}.safetensors"
        if not path.is_file():
            continue
        with safe_open(str(path), "pt") as fh:
            keys = sorted(k.split(".", 1)[1] for k in fh.keys() if k.startswith(f"{prefix}."))
        cases += [(prefix, k) for k in keys if not k.startswith(INPUTS)]
    return cases


OUTPUT_CASES = stored_outputs()


@pytest.fixture(scope="module")
def run(model, fsq) -> Callable[[str, str], tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """``run(batch, backend) -> (ours, release's)``, computed once per batch and backend."""
    memo: dict[tuple[str, str], tuple[dict[str, Tensor], dict[str, Tensor]]] = {}

    def _run(prefix: str, backend: str):
        if (prefix, backend) not in memo:
            data = tensors(BATCHES[prefix])
            ours = run_batch(model, fsq, batch_samples(data, prefix), backend)
            release = {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith(f"{prefix}.")}
            memo[prefix, backend] = ours, release
        return memo[prefix, backend]

    return _run


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("batch", "output"), OUTPUT_CASES)
def test_model_output(run, batch: str, output: str, backend: str) -> None:
    ours, release = run(batch, backend)
    assert output in ours, f"{batch}.{output} is stored in the fixture set but not reproduced here"
    atol = TOLERANCE.get(output, DEC if output.startswith("dec_") else ENC)
    check(ours[output], release[output], atol)


def test_fixture_set_exercises_tiling_and_the_cache() -> None:
    """The crop-tiling batch spans more than one tile, and its two decodes differ (else the set
    could not tell tiled from untiled, or the cache from none)."""
    data = tensors("fixture-crop-tiling")
    coords = need(data, "extra.coords_in")
    frames = max(len(torch.unique(rows_of(coords, coords, b)[:, 1])) for b in sample_ids(coords))
    tile = release_temporal().tile
    assert tile is not None and frames > tile, f"{frames} latent frames, tile {tile}"
    gap = (need(data, "extra.dec_mean") - need(data, "extra.dec_mean_kvcache")).abs().max()
    assert gap > 100 * DEC


# ---------------------------------------------------------------- checkpoint key schema


def key_schemas() -> list[str]:
    """Every ``keys-<config>.tsv`` of an AToken autoencoder config (the GS decoder is the 3D
    plugin's)."""
    names = sorted(p.name for p in FIXTURES.glob("keys-*.tsv")) if FIXTURES.is_dir() else []
    return [n for n in names if n != "keys-3d_decode_gs.tsv"]


@pytest.mark.parametrize("tsv", key_schemas())
def test_checkpoint_key_schema(tsv: str) -> None:
    """The release config's atoken model (and the So400m preset with its latent and quantizer)
    has the released checkpoint's names, shapes and dtypes."""
    lines = fixture_file(tsv).read_text().splitlines()
    expected = {name: (shape, dtype) for name, shape, dtype in (ln.split("\t") for ln in lines)}
    cfg_name = tsv.replace("keys-", "config-").replace(".tsv", ".json")
    doc = json.loads(fixture_file(cfg_name).read_text())
    if SOD_RESOLVED not in doc:
        pytest.fail(f"{cfg_name} has no key {SOD_RESOLVED!r}")
    config = model_config_from_official(doc[SOD_RESOLVED])
    overrides = {"latent_channels": config.latent_channels, "quantizer": config.quantizer}
    for source in (config, "atoken-so400m"):
        with torch.device("meta"):
            tok = build_tokenizer(source, init=False, **({} if source is config else overrides))
        ours = {
            k: (str(list(v.shape)), str(v.dtype).removeprefix("torch."))
            for k, v in tok.state_dict().items()
        }
        assert sorted(set(ours) ^ set(expected)) == []
        assert ours == expected


def test_every_fixture_file_is_read() -> None:
    """Nothing in the set goes unchecked by a name this module does not know."""
    fixture_file("tiny-soc.json")
    known = {f"{n}.safetensors" for n in (*BATCHES.values(), "fixture-rope-pe", "tiny-soc")}
    known |= {"tiny-soc.json", "README.md", *key_schemas()}
    known |= {n.replace("keys-", "config-").replace(".tsv", ".json") for n in key_schemas()}
    gs = {"fixture-gs.safetensors", "tiny-gs.json", "tiny-gs.safetensors"}  # atoken-plugin-3d
    gs |= {"keys-3d_decode_gs.tsv", "config-3d_decode_gs.json"}
    present = {p.name for p in Path(FIXTURES).iterdir() if p.is_file()}
    assert sorted(present - known - gs) == []
