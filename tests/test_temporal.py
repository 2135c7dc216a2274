"""Temporal tiling of long samples, with and without a KV cache, and the release's behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import atoken
from atoken import ModelConfig, PatchTokens, TransformerConfig, build_tokenizer, collate
from atoken.core.config import ConfigError, TemporalConfig
from atoken.core.pretrained import load_state_dict_checked
from atoken.core.rope import Rope4D
from atoken.core.temporal import plan_tiles
from tests.official_set import (
    need,
    pixel_samples,
    release_kv_temporal,
    release_temporal,
    tensors,
    tiny_config,
)

UNTILED = TemporalConfig(tile=None)


def clip(frames, rows: int = 2, cols: int = 3, *, width: int = 3072, seed: int = 0, t0: int = 0):
    """A video's tokens: one row per (t, x, y), t ascending; ``frames`` = count or list of t."""
    ts = list(range(t0, t0 + frames)) if isinstance(frames, int) else list(frames)
    coords = torch.tensor(
        [(t, x, y, 0) for t in ts for x in range(rows) for y in range(cols)], dtype=torch.int32
    )
    gen = torch.Generator().manual_seed(seed)
    return PatchTokens(torch.randn(len(coords), width, generator=gen), coords, "video")


def image(rows: int = 3, cols: int = 2, *, width: int = 3072, seed: int = 1) -> PatchTokens:
    return clip(1, rows, cols, width=width, seed=seed).replace(modality="image")


def frame_of(tokens: PatchTokens) -> torch.Tensor:
    """``[n]`` rank of each row's t among the sample's distinct t values."""
    return torch.unique(tokens.coords[:, 0], return_inverse=True)[1]


def window_mask(frames: torch.Tensor, tile: int, cache: int) -> torch.Tensor:
    """``[n, n]`` bool: query row i may attend to key row j (the tiling rule, written densely)."""
    count = int(frames.max()) + 1
    if count <= tile:
        return torch.ones(len(frames), len(frames), dtype=torch.bool)
    stride = tile - cache
    start = (frames // stride) * stride  # first new frame of each query's tile
    lo, hi = (start - cache).clamp(min=0), (start + stride).clamp(max=count)
    return (frames[None, :] >= lo[:, None]) & (frames[None, :] < hi[:, None])


def masked_blocks(stack, tokens, allowed: torch.Tensor) -> torch.Tensor:
    """The blocks of ``stack`` over one sample with dense attention limited to ``allowed``."""
    x = stack.embed(tokens)  # [n, D]
    cos, sin = stack.rope.rotation(tokens.coords)  # absolute t: no tiles, no re-basing
    for block in stack.blocks:
        att = block.attn
        qkv = att.to_qkv(block.norm1(x)).unflatten(-1, (3, att.num_heads, att.head_dim))
        q, k, v = qkv.unbind(1)  # [n, H, Dh]
        if att.qk_norm:
            q, k = att.q_rms_norm(q), att.k_rms_norm(k)
        q, k = Rope4D.rotate(q, cos, sin), Rope4D.rotate(k, cos, sin)
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=allowed
        ).transpose(0, 1)  # [n, H, Dh]
        x = x + att.to_out(o.flatten(1))
        x = x + block.mlp(block.norm2(x))
    return x


def latents(sample: PatchTokens, seed: int = 5) -> PatchTokens:
    gen = torch.Generator().manual_seed(seed)
    return sample.replace(feats=torch.randn(len(sample), 48, generator=gen))


# ---------------------------------------------------------------------------------- config


def test_config_defaults_are_the_release_and_bad_caches_are_named() -> None:
    cfg = TemporalConfig()
    assert (cfg.tile, cfg.encoder_cache, cfg.decoder_cache, cfg.restart_t) == (4, 0, 0, True)
    with pytest.raises(ValueError, match="decoder_cache=4 must be smaller than tile=4"):
        TemporalConfig(decoder_cache=4)
    with pytest.raises(ValueError, match="encoder_cache=1 needs tiling"):
        TemporalConfig(tile=None, encoder_cache=1)
    tiny = TransformerConfig(width=144, depth=1, num_heads=2, mlp_width=32)
    with pytest.raises(ConfigError, match="temporal.tile"):
        ModelConfig(encoder=tiny, decoder=None).with_overrides({"temporal": {"tile": 0}})
    with pytest.raises(ConfigError, match="temporal.stride: unknown key"):
        ModelConfig(encoder=tiny, decoder=None).with_overrides({"temporal": {"stride": 3}})


def test_temporal_config_is_saved_and_chosen_per_call(components, tmp_path) -> None:
    model = build_tokenizer(
        "atoken-tiny", components=components, temporal={"tile": 2, "decoder_cache": 1}
    ).eval()
    loaded = atoken.Tokenizer.from_pretrained(
        model.save_pretrained(tmp_path), components=components
    )
    assert loaded.config.temporal == TemporalConfig(tile=2, decoder_cache=1)
    video = [clip(5)]
    with torch.inference_mode():
        default = model.encode_dense(video).feats
        assert torch.equal(
            default, model.encode_dense(video, temporal=TemporalConfig(tile=2)).feats
        )
        untiled = model.encode_dense(video, temporal=UNTILED).feats
        assert (default - untiled).abs().max() > 1e-2  # tiling changes a 5-frame clip
    with pytest.raises(atoken.InputError, match="TemporalConfig"):
        model.encode_dense(video, temporal={"tile": 2})


# ---------------------------------------------------------------------------------- the plan


def test_short_samples_are_left_untouched(tiny) -> None:
    batch = collate([image(), clip(4), clip(3, seed=2)])
    assert plan_tiles(batch, tile=4, cache=1) is None
    assert plan_tiles(collate([clip(9)]), tile=None) is None
    with torch.inference_mode():
        for cfg in (TemporalConfig(), TemporalConfig(decoder_cache=3), TemporalConfig(tile=9)):
            ref = tiny.encode_dense(batch, temporal=UNTILED).feats
            assert torch.equal(tiny.encode_dense(batch, temporal=cfg).feats, ref)
            z = collate([latents(s) for s in batch.split()])
            ref = tiny.decode(z, temporal=UNTILED).feats
            assert torch.equal(tiny.decode(z, temporal=cfg).feats, ref)


@pytest.mark.parametrize("cache", [0, 1, 3])
def test_plan_covers_every_row_once_and_bounds_each_pass(cache) -> None:
    batch = collate([image(), clip(11), clip(7, seed=3), clip([0, 2, 5, 9, 11, 20], seed=4)])
    steps = plan_tiles(batch, tile=4, cache=cache, group_tokens=20)
    rows = torch.cat([s.rows for s in steps])
    assert torch.equal(rows.sort().values, torch.arange(batch.num_tokens))

    def frames(coords, seqlens) -> list[int]:
        return [len(torch.unique(c[:, 0])) for c in torch.split(coords, list(seqlens))]

    for j, s in enumerate(steps):
        assert max(frames(s.layout.coords, s.layout.seqlens)) <= 4  # every tile fits the window
        if cache == 0:  # packed passes of at most group_tokens tokens (or one larger tile)
            assert s.keys is None
            assert s.layout.num_tokens <= 20 or len(s.layout.seqlens) == 1
            continue
        assert len(s.layout.seqlens) <= batch.batch_size  # one tile per sample and step
        assert max(frames(s.layout.coords, s.layout.seqlens)) <= (4 if j == 0 else 4 - cache)
        keys = s.keys.coords if s.keys.coords is not None else s.layout.coords
        assert max(frames(keys, s.keys.seqlens)) <= 4  # cached + new frames fit the window
    if cache:
        assert len(steps) == -(-11 // (4 - cache))  # the 11-frame clip sets the number of steps
        # re-based: step 1 carries min(cache, stride) frames, at t = 0, 1, ...; its own follow
        assert steps[1].layout.coords[:, 0].min() == min(cache, 4 - cache)
        assert steps[1].keys.coords[:, 0].min() == 0


# ---------------------------------------------------------------------------- exact semantics


def test_tiles_without_cache_equal_clips_encoded_alone(tiny) -> None:
    video = clip(10)
    with torch.inference_mode():
        tiled = tiny.encode_dense([video], temporal=TemporalConfig(tile=4)).feats
        for lo, hi in ((0, 4), (4, 8), (8, 10)):
            rows = (video.coords[:, 0] >= lo) & (video.coords[:, 0] < hi)
            part = video.replace(feats=video.feats[rows], coords=video.coords[rows])
            alone = tiny.encode_dense([part], temporal=UNTILED).feats
            torch.testing.assert_close(tiled[rows], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stage", ["encoder", "decoder"])
@pytest.mark.parametrize(
    ("frames", "tile", "cache"),
    [(10, 4, 0), (10, 4, 1), (9, 4, 3), (11, 5, 2), ([0, 1, 3, 4, 8, 9, 10, 15], 4, 1)],
    ids=["independent", "release-kv", "sliding", "tile5-cache2", "gaps-in-t"],
)
def test_tiled_blocks_equal_dense_masked_attention(tiny, stage, frames, tile, cache) -> None:
    """A cached tile attends to its own frames and the cached ones; computed densely it is the
    same: a frame's keys depend only on its own window, in both computations."""
    stack = tiny.encoder if stage == "encoder" else tiny.decoder
    sample = clip(frames) if stage == "encoder" else latents(clip(frames))
    tokens = collate([sample])
    allowed = window_mask(frame_of(sample), tile, cache)
    cfg = TemporalConfig(tile=tile)
    with torch.inference_mode():
        ref = masked_blocks(stack, tokens, allowed)
        for stream in (False, True):  # whole-batch per-token layers, or one step at a time
            plan = tiny.plan(backend="reference", temporal=cfg, stream=stream)
            got = stack.run(tokens, plan, cache)
            torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
        full = masked_blocks(stack, tokens, torch.ones_like(allowed))
        assert (got - full).abs().max() > 1e-3  # the mask matters: tiling is really in effect


@pytest.mark.parametrize("cache", [0, 1, 2])
def test_outputs_do_not_depend_on_where_the_clip_starts_in_t(tiny, cache) -> None:
    a, b = clip(9), clip(9, t0=37)
    za, zb = collate([latents(a)]), collate([latents(b)])
    with torch.inference_mode():
        for restart, check in ((True, torch.equal), (False, None)):
            cfg = TemporalConfig(encoder_cache=cache, decoder_cache=cache, restart_t=restart)
            pairs = [
                (
                    tiny.encode_dense([a], temporal=cfg).feats,
                    tiny.encode_dense([b], temporal=cfg).feats,
                ),
                (tiny.decode(za, temporal=cfg).feats, tiny.decode(zb, temporal=cfg).feats),
            ]
            for x, y in pairs:
                if check is not None:
                    assert check(x, y)  # re-based t: the very same computation
                else:
                    torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-5)  # RoPE is relative


@pytest.mark.parametrize("cache", [0, 1])
def test_packed_batch_equals_each_sample_alone(tiny, cache) -> None:
    samples = [image(), clip(11), clip(6, 3, 2, seed=7), image(2, 4, seed=8), clip(2, seed=9)]
    cfg = TemporalConfig(encoder_cache=cache, decoder_cache=cache)
    small_groups = cfg.model_copy(update={"group_tokens": 7})
    with torch.inference_mode():
        packed = tiny.encode_dense(samples, temporal=cfg)
        assert packed.seqlens == tuple(len(s) for s in samples)
        grouped = tiny.encode_dense(samples, temporal=small_groups).feats
        z = collate([latents(s, seed=i) for i, s in enumerate(samples)])
        decoded = tiny.decode(z, temporal=cfg)
        for i, (s, rows) in enumerate(zip(samples, packed.sample_slices(), strict=True)):
            alone = tiny.encode_dense([s], temporal=cfg).feats
            torch.testing.assert_close(packed.feats[rows], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(grouped[rows], alone, atol=1e-5, rtol=1e-5)
            dec = tiny.decode(collate([latents(s, seed=i)]), temporal=cfg).feats
            torch.testing.assert_close(decoded.feats[rows], dec, atol=1e-5, rtol=1e-5)
        pooled = tiny.pool(packed, normalize=False)
        alone = tiny.embed([samples[1]], normalize=False, temporal=cfg)
        torch.testing.assert_close(pooled[1:2], alone, atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_tiles_with_checkpointing(components) -> None:
    model = build_tokenizer("atoken-tiny", components=components).train()
    cfg = TemporalConfig(encoder_cache=1, decoder_cache=1)
    samples = [image(), clip(7)]

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = model(samples, sample=False, temporal=cfg)
        (out.reconstruction.feats.square().mean() + out.embedding.square().mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert all(torch.isfinite(g).all() for g in plain.values())
    assert all(
        plain[f"{s}.blocks.{i}.attn.to_qkv.weight"].abs().sum() > 0
        for s in ("encoder", "decoder")
        for i in range(2)
    )
    model.encoder.grad_checkpointing = model.decoder.grad_checkpointing = True
    try:
        checked = grads()
    finally:
        model.encoder.grad_checkpointing = model.decoder.grad_checkpointing = False
    for name, g in plain.items():
        torch.testing.assert_close(checked[name], g, atol=1e-6, rtol=1e-5, msg=name)


# ---------------------------------------------------------------------- the official release

#: the tilings of the fixture set (tests.official_set): ``runtime_settings`` and ``spec.kv``
RELEASE_TILINGS = {"dec_mean": release_temporal, "dec_mean_kvcache": release_kv_temporal}


@pytest.fixture(scope="module")
def official(components):
    data = tensors("fixture-crop-tiling")
    model = build_tokenizer(tiny_config(), components=components)
    load_state_dict_checked(model, tensors("tiny-soc"), source="tiny-soc.safetensors")
    coords, feats = need(data, "extra.coords_in"), need(data, "extra.feats_in")
    kinds = {b: "image" if px.ndim == 3 else "video" for b, px in pixel_samples(data, "extra")}
    samples = [
        PatchTokens(feats[coords[:, 0] == b], coords[coords[:, 0] == b, 1:], kinds.get(b, "video"))
        for b in torch.unique(coords[:, 0]).tolist()
    ]
    return model.eval(), samples, data


def latent_frames(samples) -> int:
    return max(len(torch.unique(s.coords[:, 0])) for s in samples)


@pytest.mark.official
def test_release_encoder_tiles_and_pooling(official) -> None:
    model, samples, data = official
    release = release_temporal()
    frames = latent_frames(samples)
    assert frames > release.tile, f"the clip spans {frames} latent frames, one tile: no tiling"
    with torch.inference_mode():
        dense = model.encode_dense(samples, temporal=release)
        got = {
            "dense": dense.feats,
            "z_proj": model.project(dense),
            "pooled": model.pool(dense, normalize=False),  # pools every token of the tiled clip
            "pooled_normalized": model.pool(dense),
        }
        untiled = model.encode_dense(samples, temporal=UNTILED).feats
    for name, value in got.items():
        torch.testing.assert_close(value, data[f"extra.{name}"], atol=1e-5, rtol=1e-5, msg=name)
    assert (untiled - data["extra.dense"]).abs().max() > 1e-3  # tiling is what matches


@pytest.mark.official
@pytest.mark.parametrize("name", list(RELEASE_TILINGS))
def test_release_decoder_tiles_and_kv_cache(official, name) -> None:
    model, samples, data = official
    layout = collate(samples)
    latent = model.config.latent_channels
    with torch.inference_mode():
        out = model.decode(
            layout.replace(data["extra.z_proj"][:, :latent]), temporal=RELEASE_TILINGS[name]()
        ).feats
    torch.testing.assert_close(out, need(data, f"extra.{name}"), atol=2e-5, rtol=1e-5)
    other = need(data, "extra.dec_mean" if name == "dec_mean_kvcache" else "extra.dec_mean_kvcache")
    gap = (data[f"extra.{name}"] - other).abs().max()
    assert (out - other).abs().max() > gap / 2  # the two modes are told apart
