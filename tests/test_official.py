"""Equivalence with the official AToken release (apple/ml-atoken).

Reads the reference tensors in ``$ATOKEN_OFFICIAL_FIXTURES`` (default ``../shared/reference/
official`` beside the repository; its README describes every tensor and the tolerances): 4D RoPE,
the resized learned position table, FSQ, patching, the tiny So/C-shaped model's encoder, pooling
and decoder outputs on images, video and voxels, and the key schema of the released checkpoints.
A test whose file or tensor the directory lacks is skipped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from atoken import ModelConfig, PatchTokens, TransformerConfig, build_tokenizer, collate
from atoken.core.patching import patchify, unpatchify
from atoken.core.posembed import LearnedPositionEmbedding2D
from atoken.core.rope import Rope4D, rope_frequencies
from atoken.core.tokenizer import load_state_dict_checked
from atoken.plugins.image.adapter import ImageAdapter

pytestmark = pytest.mark.official

FIXTURES = Path(
    os.environ.get(
        "ATOKEN_OFFICIAL_FIXTURES",
        Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official",
    )
)
BACKENDS = ("reference", "sdpa")
PATCH = (4, 16, 16)
SEED_POSTERIOR = 1002  # README: generator of main.posterior_sample
# README tolerances: encoder side / PE / RoPE, decoder outputs; None means exact
ENC, DEC, EXACT = 1e-5, 2e-5, None


def fixture_file(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"{name} is not in {FIXTURES}")
    return path


def tensors(name: str) -> dict[str, Tensor]:
    return load_file(fixture_file(f"{name}.safetensors"))


def need(data: dict[str, Tensor], key: str) -> Tensor:
    if key not in data:
        pytest.skip(f"{key} is not in the fixture set")
    return data[key]


def check(actual: Tensor, expected: Tensor, atol: float | None) -> None:
    tol = 0.0 if atol is None else atol
    torch.testing.assert_close(actual, expected, atol=tol, rtol=0.0 if atol is None else 1e-5)


def rows_of(data: Tensor, coords5: Tensor, b: int) -> Tensor:
    """Rows of sample ``b`` of a per-token tensor whose coords are ``[b, t, x, y, z]``."""
    return data[coords5[:, 0] == b]


def transformer(arch: dict, side: str) -> TransformerConfig:
    return TransformerConfig(
        width=arch[f"{side}_model_channels"],
        depth=arch[f"{side}_num_blocks"],
        num_heads=arch[f"{side}_num_heads"],
        mlp_width=arch[f"{side}_mlp_channels"],
    )


def tiny_config() -> ModelConfig:
    arch = json.loads(fixture_file("tiny-soc.json").read_text())["arch_cfg"]
    return ModelConfig(
        patch_size=tuple(arch["patch_size"]),
        latent_channels=arch["latent_channels"],
        encoder=transformer(arch, "encoder"),
        decoder=transformer(arch, "decoder"),
    )


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, Tensor]:
    return load_file(fixture_file("tiny-soc.safetensors"))


@pytest.fixture(scope="module")
def model(tiny_weights):
    tok = build_tokenizer(tiny_config(), init=False)
    load_state_dict_checked(tok, tiny_weights, source="tiny-soc.safetensors")
    return tok.eval()


@pytest.fixture(scope="module")
def fsq():
    """The So/D quantizer: 8 groups x 6 dims x 4 levels over the 48 means."""
    return build_tokenizer("atoken-tiny", quantizer={"name": "fsq"}, init=False).quantizer


# ---------------------------------------------------------------- RoPE, position table, FSQ


@pytest.fixture(scope="module")
def rope_pe() -> dict[str, Tensor]:
    return tensors("fixture-rope-pe")


def test_rope_frequencies(rope_pe) -> None:
    # exact: angles reach hundreds of radians, where one ulp of a frequency is already 1.5e-5
    check(rope_frequencies(72), need(rope_pe, "rope.freqs"), EXACT)


def test_rope_rotation_factors(rope_pe) -> None:
    pos = need(rope_pe, "rope.positions_txyz")
    rope = Rope4D(72)
    cos, sin = rope.rotation(pos)
    check(cos, need(rope_pe, "rope.cos"), ENC)
    check(sin, need(rope_pe, "rope.sin"), ENC)
    diff = rope.angles(pos).double() - need(rope_pe, "rope.angles").double()  # release wraps
    wrapped = torch.remainder(diff + math.pi, 2 * math.pi) - math.pi
    check(wrapped, torch.zeros_like(wrapped), ENC)


def test_rope_rotates_queries_and_keys(rope_pe) -> None:
    q, k = Rope4D(72)(
        need(rope_pe, "rope.q_in"), need(rope_pe, "rope.k_in"), rope_pe["rope.positions_txyz"]
    )
    check(q, need(rope_pe, "rope.q_out"), ENC)
    check(k, need(rope_pe, "rope.k_out"), ENC)


def test_learned_position_table_resize(rope_pe, tiny_weights) -> None:
    weight = tiny_weights["encoder.pos_embedder.position_embedding.weight"]  # [256, 144]
    pe = LearnedPositionEmbedding2D(weight.shape[1], grid=math.isqrt(weight.shape[0]))
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
    """The release's 3D input: ``2f - 1`` zero-padded to 3072, coords ``(t=1, x, y, z)``."""
    feats = torch.zeros(xyz.shape[0], 3072)
    feats[:, : feats01.shape[1]] = 2 * feats01 - 1
    coords = torch.cat([torch.ones_like(xyz[:, :1]), xyz], dim=1)
    return PatchTokens(feats, coords, "voxel")


def video_tokens(clip: Tensor) -> PatchTokens:
    feats, coords = patchify(clip, PATCH)
    return PatchTokens(feats, coords, "video", {"shape": list(clip.shape[:3])})


IMAGE_SAMPLES = [("fixture-images-video", "main", 0), ("fixture-images-video", "main", 1)]
IMAGE_SAMPLES += [("fixture-crop-tiling", "extra", 0)]  # 37x53, centre-cropped to 32x48


@pytest.mark.parametrize(("name", "prefix", "b"), IMAGE_SAMPLES)
def test_image_patchify(name: str, prefix: str, b: int) -> None:
    data = tensors(name)
    tokens = ImageAdapter().to_tokens(need(data, f"{prefix}.pixels_{b}"))
    coords = need(data, f"{prefix}.coords_in")
    check(tokens.coords, rows_of(coords, coords, b)[:, 1:], EXACT)
    check(tokens.feats, rows_of(need(data, f"{prefix}.feats_in"), coords, b), EXACT)


def test_video_patchify() -> None:
    data = tensors("fixture-images-video")
    tokens = video_tokens(need(data, "main.pixels_2"))  # 8 frames: no truncation, no tiling
    coords = data["main.coords_in"]
    check(tokens.coords, rows_of(coords, coords, 2)[:, 1:], EXACT)
    check(tokens.feats, rows_of(data["main.feats_in"], coords, 2), EXACT)


def test_voxel_and_mixed_coords() -> None:
    data = tensors("fixture-3d")
    vox = voxel_tokens(need(data, "vox.coords_xyz"), need(data, "vox.feats_01"))
    check(collate([vox]).coords, need(data, "vox.x_coords")[:, 1:], EXACT)
    mixed = collate(mixed_samples(data))
    check(mixed.coords, need(data, "mixed.coords_in")[:, 1:], EXACT)
    check(torch.tensor(mixed.seqlens), torch.bincount(data["mixed.coords_in"][:, 0]), EXACT)


def main_samples(data: dict[str, Tensor]) -> list[PatchTokens]:
    adapter = ImageAdapter()
    images = [adapter.to_tokens(need(data, f"main.pixels_{b}")) for b in (0, 1)]
    return [*images, video_tokens(need(data, "main.pixels_2"))]


def mixed_samples(data: dict[str, Tensor]) -> list[PatchTokens]:
    image = ImageAdapter().to_tokens(need(data, "mixed.pixels_0"))
    return [image, voxel_tokens(need(data, "mixed.vox_coords_xyz"), data["mixed.vox_feats_01"])]


# ---------------------------------------------------------------- the tiny model


def run_model(model, fsq, samples, backend: str) -> tuple[dict[str, Tensor], list[PatchTokens]]:
    """Every per-batch output the fixtures store, and the decoded mean latent per sample."""
    with torch.no_grad():
        dense = model.encode_dense(samples, backend=backend)
        z = model.project(dense)  # [N, 96]: 48 means, 48 log-variances
        mean, logvar = z.chunk(2, dim=-1)
        decoded = model.decode(dense.replace(mean), backend=backend)
        generator = torch.Generator().manual_seed(SEED_POSTERIOR)
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
        }
    return out, decoded.split()


def image_chw(tokens: PatchTokens) -> Tensor:
    """Decoded image tokens -> ``[1, 3, H, W]`` as the release's ``sparse_to_img_list``."""
    return ImageAdapter().from_tokens(tokens).permute(2, 0, 1)[None]


def with_prefix(data: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith(f"{prefix}.")}


def case_main(model, fsq, backend):
    data = tensors("fixture-images-video")
    out, parts = run_model(model, fsq, main_samples(data), backend)
    out["dec_img_0"], out["dec_img_1"] = image_chw(parts[0]), image_chw(parts[1])
    t, h, w = data["main.pixels_2"].shape[:3]
    clip = unpatchify(parts[2].feats, parts[2].coords, PATCH, (t // 4, h // 16, w // 16), 3)
    out["dec_img_2"] = clip.permute(0, 3, 1, 2)  # [T, 3, H, W]
    return out, with_prefix(data, "main")


def case_vox(model, fsq, backend):
    data = tensors("fixture-3d")
    samples = [voxel_tokens(need(data, "vox.coords_xyz"), need(data, "vox.feats_01"))]
    return run_model(model, fsq, samples, backend)[0], with_prefix(data, "vox")


def case_mixed(model, fsq, backend):
    data = tensors("fixture-3d")
    return run_model(model, fsq, mixed_samples(data), backend)[0], with_prefix(data, "mixed")


def case_extra_image(model, fsq, backend):
    """The cropped image of the crop-tiling batch, encoded alone (samples never interact)."""
    # The tiled video of this batch (extra.* rows of sample 1, dec_img_1, dec_mean_kvcache)
    # arrives with the video adapter's compatibility tiling.
    data = tensors("fixture-crop-tiling")
    image = ImageAdapter().to_tokens(need(data, "extra.pixels_0"))
    out, parts = run_model(model, fsq, [image], backend)
    out["dec_img_0"] = image_chw(parts[0])
    ref = with_prefix(data, "extra")
    coords = need(ref, "coords_in")
    expected = {k: rows_of(ref[k], coords, 0) for k in ("dense", "z_proj", "dec_mean") if k in ref}
    expected |= {k: ref[k][:1] for k in ("pooled", "pooled_normalized", "dec_img_0") if k in ref}
    return out, expected


CASES: dict[str, Callable] = {
    "main": case_main,
    "vox": case_vox,
    "mixed": case_mixed,
    "extra": case_extra_image,
}
ENCODER_OUTPUTS = ("dense", "z_proj", "pooled", "pooled_normalized")
OUTPUTS = {
    "main": (*ENCODER_OUTPUTS, "posterior_std", "posterior_sample", "fsq_codes", "fsq_indices")
    + ("dec_mean", "dec_img_0", "dec_img_1", "dec_img_2"),
    "vox": (*ENCODER_OUTPUTS, "dec_mean"),
    "mixed": ENCODER_OUTPUTS,
    "extra": (*ENCODER_OUTPUTS, "dec_mean", "dec_img_0"),
}
TOLERANCE = {"fsq_codes": EXACT, "fsq_indices": EXACT}


@pytest.fixture(scope="module")
def run(model, fsq) -> Callable[[str, str], tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """``run(case, backend) -> (ours, release's)``, computed once per case and backend."""
    memo: dict[tuple[str, str], tuple[dict[str, Tensor], dict[str, Tensor]]] = {}

    def _run(case: str, backend: str):
        if (case, backend) not in memo:
            memo[case, backend] = CASES[case](model, fsq, backend)
        return memo[case, backend]

    return _run


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("case", "output"), [(case, name) for case, names in OUTPUTS.items() for name in names]
)
def test_model_output(run, case: str, output: str, backend: str) -> None:
    ours, release = run(case, backend)
    atol = TOLERANCE.get(output, DEC if output.startswith("dec_") else ENC)
    check(ours[output], need(release, output), atol)


# ---------------------------------------------------------------- checkpoint key schema

KEY_SCHEMAS = {
    "keys-atoken-soc.tsv": {},
    "keys-atoken-soc-s1.tsv": {"latent_channels": 32},
    "keys-atoken-sod.tsv": {"quantizer": {"name": "fsq"}},
}


@pytest.mark.parametrize(("tsv", "overrides"), KEY_SCHEMAS.items(), ids=list(KEY_SCHEMAS))
def test_checkpoint_key_schema(tsv: str, overrides: dict) -> None:
    """The So400m preset's state dict has the released checkpoints' names, shapes and dtypes."""
    lines = fixture_file(tsv).read_text().splitlines()
    expected = {name: (shape, dtype) for name, shape, dtype in (ln.split("\t") for ln in lines)}
    with torch.device("meta"):
        tok = build_tokenizer("atoken-so400m", init=False, **overrides)
    ours = {
        k: (str(list(v.shape)), str(v.dtype).removeprefix("torch."))
        for k, v in tok.state_dict().items()
    }
    assert sorted(set(ours) ^ set(expected)) == []
    assert ours == expected
