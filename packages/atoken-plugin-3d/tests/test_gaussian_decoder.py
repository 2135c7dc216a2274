"""The 3D Gaussian decoder reproduces the release's tiny fixture; windows, APE and key schema.

Fixtures live in ``$ATOKEN_OFFICIAL_FIXTURES`` (default ``<workspace>/shared/reference/official``);
tests that need them skip when they are absent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atoken_plugin_3d.gaussian_decoder import (
    GaussianDecoder,
    GaussianDecoderConfig,
    sinusoidal_position_embedding,
    softcap_attention,
    window_partition,
    windowed_attention,
)
from atoken_plugin_3d.gaussians import (
    Gaussians,
    RepresentationConfig,
    offset_perturbation,
    to_representation,
)

RAW_ATOL = 1e-5
ATTRS = ("_xyz", "_features_dc", "_scaling", "_rotation", "_opacity")
ACTIVATED = ("xyz", "scaling", "rotation", "opacity")


# ------------------------------------------------------------------------------------ fixture
@pytest.fixture(scope="module")
def official(official_files):
    gs, vox, weights, cfg = official_files(
        "fixture-gs.safetensors", "fixture-3d.safetensors", "tiny-gs.safetensors", "tiny-gs.json"
    )
    fx = load_file(str(gs))
    voxels = load_file(str(vox))
    kwargs = json.loads(cfg.read_text())["constructor_kwargs"]
    return {
        "fx": fx,
        "feats": voxels["vox.dec_mean"][:, :768].contiguous(),
        "coords": fx["gs.in_coords"],
        "gs_in_coords": voxels["vox.gs_in_coords"],
        "state": load_file(str(weights)),
        "kwargs": kwargs,
    }


def tiny_decoder(official, **overrides) -> GaussianDecoder:
    model = GaussianDecoder(GaussianDecoderConfig.from_official(official["kwargs"], **overrides))
    model.load_state_dict(official["state"], strict=True)
    return model.eval()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_fixture_inputs_are_the_3d_handover(official):
    assert torch.equal(official["coords"], official["gs_in_coords"])
    assert official["coords"].shape == (64, 4)


def test_tiny_config_matches_the_fixture_description(official):
    cfg = GaussianDecoderConfig.from_official(official["kwargs"])
    assert (cfg.model_channels, cfg.num_heads, cfg.num_blocks, cfg.mlp_channels) == (32, 2, 2, 64)
    assert (cfg.window_size, [cfg.shift(i) for i in range(2)]) == (8, [0, 4])
    assert cfg.out_channels == 448 and cfg.representation.num_gaussians == 32


def test_raw_output_matches_release_with_softcap(official):
    with torch.no_grad():
        raw = tiny_decoder(official)(official["feats"], official["coords"])
    err = max_err(raw, official["fx"]["gs.raw_out"])
    print(f"gs.raw_out max abs error (softcap 30): {err:.3g}")
    assert err <= RAW_ATOL


def test_softcap_off_is_further_from_the_release(official):
    """The fixture ran flash-attn semantics; plain softmax differs (by ~1.1e-5, per the README)."""
    with torch.no_grad():
        on = tiny_decoder(official)(official["feats"], official["coords"])
        off = tiny_decoder(official, attn_softcap=None)(official["feats"], official["coords"])
    want = official["fx"]["gs.raw_out"]
    err_on, err_off = max_err(on, want), max_err(off, want)
    print(f"gs.raw_out max abs error: softcap on {err_on:.3g}, off {err_off:.3g}")
    assert err_on < err_off
    assert 1e-6 < err_off < 1e-4


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_softcap_off_backends_agree(official, backend):
    with torch.no_grad():
        a = tiny_decoder(official, attn_softcap=None, attn_backend=backend)
        b = tiny_decoder(official, attn_softcap=1e9)  # a cap this large is the identity
        ra = a(official["feats"], official["coords"])
        rb = b(official["feats"], official["coords"])
    assert max_err(ra, rb) < 1e-5


def test_representation_matches_release(official):
    fx = official["fx"]
    model = tiny_decoder(official)
    with torch.no_grad():
        (gauss,) = model.decode(official["feats"], official["coords"])
    assert isinstance(gauss, Gaussians) and len(gauss) == 64 * 32
    errors = {}
    for name in ATTRS:
        got = getattr(gauss, name.lstrip("_"))
        errors[f"gs.rep.{name}"] = max_err(got, fx[f"gs.rep.{name}"])
    for name in ACTIVATED:
        errors[f"gs.act.{name}"] = max_err(getattr(gauss, f"get_{name}"), fx[f"gs.act.{name}"])
    print("max abs errors:", {k: f"{v:.3g}" for k, v in errors.items()})
    assert all(v <= 1e-5 for v in errors.values()), errors


def test_to_representation_alone_matches_release(official):
    """Feeding the release's raw output isolates to_representation from the network."""
    fx = official["fx"]
    cfg = GaussianDecoderConfig.from_official(official["kwargs"])
    (gauss,) = to_representation(
        fx["gs.raw_out"], official["coords"], fx["gs.offset_perturbation"], cfg.representation, 64
    )
    for name in ATTRS:
        assert max_err(getattr(gauss, name.lstrip("_")), fx[f"gs.rep.{name}"]) <= 1e-6
    for name in ACTIVATED:
        assert max_err(getattr(gauss, f"get_{name}"), fx[f"gs.act.{name}"]) <= 1e-6


def test_offset_perturbation_is_the_hammersley_buffer(official):
    want = official["fx"]["gs.offset_perturbation"]
    assert torch.equal(offset_perturbation(RepresentationConfig()), want)
    assert torch.equal(official["state"]["offset_perturbation"], want)


# ------------------------------------------------------------------------------ representation
def test_activations_at_zero_give_the_biases():
    cfg = RepresentationConfig()
    coords = torch.tensor([[0, 10, 20, 30]], dtype=torch.int32)
    no_perturb = RepresentationConfig(perturb_offset=False)
    (g,) = to_representation(torch.zeros(1, 448), coords, offset_perturbation(cfg), no_perturb, 64)
    centre = (torch.tensor([10, 20, 30]) + 0.5) / 64
    assert torch.allclose(g.xyz, centre.expand(32, 3))
    assert torch.allclose(g.get_xyz, centre - 0.5)
    assert torch.allclose(g.get_opacity, torch.full((32, 1), 0.1))
    assert torch.allclose(g.get_scaling, torch.full((32, 3), math.hypot(0.004, 0.0009)))
    assert torch.equal(g.get_rotation, torch.tensor([1.0, 0, 0, 0]).expand(32, 4))


def test_offsets_stay_within_the_voxel_bound():
    cfg = RepresentationConfig()
    coords = torch.tensor([[0, 5, 5, 5], [1, 0, 63, 7]], dtype=torch.int32)
    raw = torch.randn(2, 448, generator=torch.Generator().manual_seed(0)) * 100
    reps = to_representation(raw, coords, offset_perturbation(cfg), cfg, 64)
    assert len(reps) == 2
    for g, c in zip(reps, coords, strict=True):
        centre = (c[1:].float() + 0.5) / 64
        assert ((g.xyz - centre).abs() <= 0.75 / 64 + 1e-7).all()


# ------------------------------------------------------------------------------ windows
def random_voxels(n: int = 300, batch: int = 2, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        cells = torch.randperm(size**3, generator=g)[:n]
        xyz = torch.stack([cells // size**2, cells // size % size, cells % size], 1)
        rows.append(torch.cat([torch.full((n, 1), b), xyz], 1))
    return torch.cat(rows).to(torch.int32)


@pytest.mark.parametrize("shift", [0, 4])
def test_every_token_in_exactly_one_window(shift):
    coords = random_voxels()
    part = window_partition(coords, 8, shift)
    assert sorted(part.order.tolist()) == list(range(coords.shape[0]))
    assert torch.equal(part.order[part.inverse], torch.arange(coords.shape[0]))
    assert sum(part.seqlens) == coords.shape[0]
    start = 0
    for n in part.seqlens:
        rows = coords[part.order[start : start + n]].long()
        assert (rows[:, 0] == rows[0, 0]).all()  # one sample per window
        cells = torch.div(rows[:, 1:] + shift, 8, rounding_mode="floor")
        assert (cells == cells[0]).all()  # one cell per window
        assert len(set(part.window_ids[part.order[start : start + n]].tolist())) == 1
        start += n
    assert len(set(part.window_ids.tolist())) == len(part.seqlens)


def test_shifted_windows_differ_and_cross_unshifted_borders():
    coords = random_voxels()
    a, b = window_partition(coords, 8, 0), window_partition(coords, 8, 4)
    same_a = a.window_ids[:, None] == a.window_ids[None, :]
    same_b = b.window_ids[:, None] == b.window_ids[None, :]
    assert not torch.equal(same_a, same_b)
    # x = 3 and x = 4 share an unshifted window; with shift 4, x = 4 and x = 8 share one instead
    pair = torch.tensor([[0, 3, 0, 0], [0, 4, 0, 0], [0, 8, 0, 0]], dtype=torch.int32)
    ids0, ids4 = window_partition(pair, 8, 0).window_ids, window_partition(pair, 8, 4).window_ids
    assert ids0[0] == ids0[1] != ids0[2]
    assert ids4[0] != ids4[1] == ids4[2]


def dense_masked_attention(q, k, v, same, softcap=None):
    """Full attention over all tokens with a boolean mask ``same[i, j]`` (float64)."""
    q, k, v = (t.double().transpose(0, 1) for t in (q, k, v))  # [H, N, D]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits = logits.masked_fill(~same, float("-inf"))
    return (torch.softmax(logits, -1) @ v).transpose(0, 1)


@pytest.mark.parametrize("softcap", [None, 30.0, 0.5])
@pytest.mark.parametrize("shift", [0, 4])
def test_windowed_attention_equals_dense_masked(softcap, shift):
    coords = random_voxels(n=150)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(coords.shape[0], 2, 16, generator=g) * 3 for _ in range(3))
    part = window_partition(coords, 8, shift)
    assert not all(n == 8 for n in part.seqlens)
    got = windowed_attention(q, k, v, part, window_size=8, softcap=softcap, backend="reference")
    same = part.window_ids[:, None] == part.window_ids[None, :]
    want = dense_masked_attention(q, k, v, same, softcap)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)


def test_softcap_is_skipped_when_every_window_is_full():
    """The release's dense flash call (all windows exactly window_size tokens) has no soft-cap."""
    coords = torch.tensor([[0, 0, 0, z] for z in range(8)] + [[0, 8, 0, z] for z in range(8)])
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(16, 1, 4, generator=g) * 10 for _ in range(3))
    part = window_partition(coords, 8, 0)
    assert part.seqlens == (8, 8)
    capped = windowed_attention(q, k, v, part, window_size=8, softcap=0.5, backend="reference")
    plain = windowed_attention(q, k, v, part, window_size=8, softcap=None, backend="reference")
    assert torch.allclose(capped, plain)


def test_softcap_attention_matches_formula():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(7, 2, 4, generator=g) * 5 for _ in range(3))
    out = softcap_attention(q, k, v, [3, 4], softcap=2.0)
    for sl in (slice(0, 3), slice(3, 7)):
        logits = torch.einsum("nhd,mhd->hnm", q[sl], k[sl]) / 2.0
        p = torch.softmax(2.0 * torch.tanh(logits / 2.0), -1)
        assert torch.allclose(out[sl], torch.einsum("hnm,mhd->nhd", p, v[sl]), atol=1e-6)


# ------------------------------------------------------------------------------ position embedding
def test_ape_layout_and_padding():
    pos = torch.tensor([[1, 2, 3], [0, 0, 0]])
    emb = sinusoidal_position_embedding(pos, 32)  # 5 frequencies per axis -> 30 + 2 zeros
    freqs = 10000 ** (-torch.arange(5) / 5)
    for axis in range(3):
        block = emb[0, axis * 10 : axis * 10 + 10]
        assert torch.allclose(block[:5], torch.sin(pos[0, axis] * freqs))
        assert torch.allclose(block[5:], torch.cos(pos[0, axis] * freqs))
    assert torch.equal(emb[:, 30:], torch.zeros(2, 2))
    assert sinusoidal_position_embedding(pos, 768).shape == (2, 768)


# ------------------------------------------------------------------------------ key schema
def read_key_table(path: Path) -> list[tuple[str, list[int], str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape, dtype = line.split("\t")
            rows.append((name, json.loads(shape), dtype))
    return rows


def test_full_size_keys_equal_the_release_schema(official_files):
    (keys,) = official_files("keys-3d_decode_gs.tsv")
    with torch.device("meta"):
        state = GaussianDecoder(GaussianDecoderConfig()).state_dict()
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert got == read_key_table(keys)
    assert sum(math.prod(s) for _, s, _ in got) == 85_887_520


def test_release_config_file_gives_the_default_config(official_files):
    (cfg_path,) = official_files("config-3d_decode_gs.json")
    from atoken_plugin_3d.convert import official_constructor_args

    doc = json.loads(cfg_path.read_text())
    assert (
        GaussianDecoderConfig.from_official(official_constructor_args(doc))
        == GaussianDecoderConfig()
    )
    assert [list(b) for b in doc["derived"]["block_attn"]] == [
        ["windowed", 8, GaussianDecoderConfig().shift(i)] for i in range(12)
    ]


def test_unsupported_official_settings_are_refused():
    with pytest.raises(ValueError, match="attn_mode"):
        GaussianDecoderConfig.from_official({"model_channels": 32, "attn_mode": "full"})
    with pytest.raises(ValueError, match="pe_mode"):
        GaussianDecoderConfig.from_official({"model_channels": 32, "pe_mode": "rope"})
    with pytest.raises(ValueError, match="unknown"):
        GaussianDecoderConfig.from_official({"model_channels": 32, "num_heads": 2, "bogus": 1})


def test_forward_checks_shapes():
    model = GaussianDecoder(
        GaussianDecoderConfig(model_channels=16, latent_channels=8, num_blocks=1, num_heads=2)
    )
    with pytest.raises(ValueError, match="feats"):
        model(torch.zeros(3, 7), torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="coords"):
        model(torch.zeros(3, 8), torch.zeros(3, 5, dtype=torch.int32))
    out = model(torch.zeros(3, 8), torch.zeros(3, 4, dtype=torch.int32))
    assert torch.equal(out, torch.zeros(3, 448))  # zero-initialised out_layer
