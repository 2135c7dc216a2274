"""The tokenizer: presets, encode/decode/embed, save/load, config and checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch

import atoken
from atoken import (
    CheckpointError,
    ConfigError,
    InputError,
    Tokenizer,
    UnknownComponentError,
    build_tokenizer,
)
from atoken.core.presets import PRESETS


def _meta_model(name: str, **overrides) -> Tokenizer:
    with torch.device("meta"):
        return build_tokenizer(name, init=False, **overrides)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_presets_have_the_paper_sizes() -> None:
    so = _meta_model("atoken-so400m")
    # the official So/C checkpoint holds 845,738,048 numbers; atoken's layout is the same
    assert sum(t.numel() for t in so.state_dict().values()) == 845_738_048
    base = _meta_model("atoken-base")
    d, m = 768, 3072
    enc_block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    dec_block = 2 * d + 3 * d * d + 2 * 12 * 64 + d * d + d * m + m * d
    enc = 256 * d + (3072 * d + d) + 12 * enc_block + 2 * d
    dec = 256 * d + 48 * d + 12 * dec_block + d + d * 3072
    assert _params(base.encoder) - _params(base.encoder.head) == enc
    assert _params(base.decoder) == dec
    assert round((enc + dec) / 1e6) == 175  # the paper quotes ~192M for its (unspecified) base
    assert base.encoder.blocks[0].attn.head_dim == 64 and len(base.decoder.blocks) == 12


def test_unknown_preset_suggests(components) -> None:
    with pytest.raises(UnknownComponentError, match="did you mean 'atoken-tiny'"):
        atoken.load_tokenizer("atoken-tinny", components=components)


def test_encode_decode_embed_shapes(tiny, mixed_batch) -> None:
    with torch.inference_mode():
        lat = tiny.encode(mixed_batch)
        n = sum(len(s) for s in mixed_batch)
        assert lat.codes.shape == (n, 48) and lat.indices is None
        assert lat.mean.shape == lat.logvar.shape == (n, 48)
        torch.testing.assert_close(lat.codes, lat.mean)  # eval mode decodes the mean
        out = tiny.decode(lat)
        assert out.feats.shape == (n, 3072) and out.seqlens == lat.tokens.seqlens
        emb = tiny.embed(mixed_batch)
        assert emb.shape == (4, 144)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))


def test_fsq_model_gives_indices_and_decodes_them(components, mixed_batch) -> None:
    model = build_tokenizer("atoken-tiny", components=components, quantizer={"name": "fsq"}).eval()
    with torch.inference_mode():
        lat = model.encode(mixed_batch)
        assert lat.indices.shape == (lat.codes.shape[0], 8) and lat.indices.dtype == torch.int32
        rebuilt = model.latents_from_indices(lat.indices, lat.tokens)
        torch.testing.assert_close(model.decode(rebuilt).feats, model.decode(lat).feats)


def test_wrong_input_width_is_named(tiny) -> None:
    bad = atoken.PatchTokens(torch.zeros(2, 768), torch.zeros(2, 4, dtype=torch.int32), "image")
    with pytest.raises(InputError, match="768 features per row.*expects 3072"):
        tiny.encode([bad])
    with pytest.raises(InputError, match="no attention backend named 'flash2'"):
        tiny.attention_backend("flash2")


def test_save_load_round_trip_is_bit_exact(tmp_path, components, mixed_batch) -> None:
    model = build_tokenizer(
        "atoken-tiny", components=components, quantizer={"name": "fsq"}, init_seed=7
    )
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    loaded = Tokenizer.from_pretrained(tmp_path / "m", components=components)
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.config == model.config and loaded.model_id == model.model_id
    with torch.inference_mode():
        assert torch.equal(
            model.eval().encode(mixed_batch).indices, loaded.eval().encode(mixed_batch).indices
        )


def test_init_seed_makes_presets_reproducible(components) -> None:
    a = build_tokenizer("atoken-tiny", components=components)
    b = build_tokenizer("atoken-tiny", components=components)
    c = build_tokenizer("atoken-tiny", components=components, init_seed=1)
    assert a.model_id == b.model_id != c.model_id


def test_config_errors_name_the_key_path(tmp_path, tiny) -> None:
    with pytest.raises(ConfigError, match=r"encoder\.widht: unknown key"):
        PRESETS["atoken-tiny"].with_overrides({"encoder": {"widht": 3}})
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        PRESETS["atoken-tiny"].with_overrides({"encoder": {"num_heads": 5}})
    tiny.save_pretrained(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    doc["model"]["latent_chanels"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="latent_chanels: unknown key"):
        Tokenizer.from_pretrained(tmp_path / "m")


def test_checkpoint_errors(tmp_path, tiny, components) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    tiny.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Tokenizer.from_pretrained(tmp_path / "m", components=components)
    # weights of another shape: every offending key is listed
    other = build_tokenizer(
        "atoken-tiny", components=components, latent_channels=32, quantizer={"name": "kl"}
    )
    other.save_pretrained(tmp_path / "o")
    (tmp_path / "o" / "config.json").write_bytes((tmp_path / "m" / "config.json").read_bytes())
    with pytest.raises(
        CheckpointError, match=r"wrong shape: decoder\.input_layer\.weight.*proj\.weight"
    ):
        Tokenizer.from_pretrained(tmp_path / "o", components=components)
    (tmp_path / "m" / "config.json").write_text('{"format": "diffusers"}')
    with pytest.raises(CheckpointError, match="not an atoken model config"):
        Tokenizer.from_pretrained(tmp_path / "m", components=components)


def test_training_mode_samples_and_has_gradients(components, mixed_batch) -> None:
    model = build_tokenizer("atoken-tiny", components=components).train()
    out = model(mixed_batch, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out.latents.codes, out.latents.mean)
    loss = (
        out.reconstruction.feats - model.prepare(mixed_batch).feats
    ).abs().mean() + out.embedding.sum() * 0
    (loss + 1e-8 * out.latents.aux_loss).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
