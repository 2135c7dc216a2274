"""Initialising atoken's encoder from SigLIP2: parity with Hugging Face's vision tower.

A tiny, randomly initialised SigLIP2 (width 144, 2 layers, 2 heads, the real 16 x 16 position
table) is saved with transformers; atoken's converted encoder with ``use_rope=False`` must give
the same dense features (``last_hidden_state``) and pooled embedding (``pooler_output``) on real
photos of several sizes. The HF inputs are built here as the Siglip2 image processor builds them
(patches flattened as (row-in-patch, col-in-patch, channel), padded to ``max_num_patches``, with
``pixel_attention_mask`` and ``spatial_shapes = (rows, cols)``), without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from atoken import AtokenError
from atoken.convert.siglip2 import (
    Siglip2ConversionError,
    atoken_state_from_siglip2,
    convert_siglip2,
    init_tokenizer_from_siglip2,
    load_siglip2_vision,
)
from atoken.core.serialization import CheckpointError
from atoken.core.tokenizer import Tokenizer
from atoken.plugins.image.adapter import ImageAdapter

ATOL = 1e-5
WIDTH, MLP, LAYERS, HEADS = 144, 160, 2, 2
# (photo, top, left, height, width): aspect ratios from 1:3 to 20:3; grids above and below 16
CROPS = [
    ("astronaut", 40, 200, 64, 96),  # 4 x 6 patches: the table is downsampled (antialias)
    ("coffee", 100, 150, 128, 128),  # 8 x 8
    ("chelsea", 60, 100, 80, 48),  # 5 x 3
    ("astronaut", 0, 0, 48, 320),  # 3 x 20: downsampled rows, upsampled columns
]
MAX_PATCHES = 256


def _vision_kwargs(**over):
    return dict(
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_patches=256,
        patch_size=16,
        vision_use_head=True,
        **over,
    )


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value (no LayerNorm weight stays exactly 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def hf_vision(tmp_path_factory):
    """``(directory, model)``: a tiny Siglip2VisionModel saved as safetensors."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**_vision_kwargs()))
    _perturb(model, 1)
    model.eval()
    directory = tmp_path_factory.mktemp("siglip2-vision")
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def hf_full(tmp_path_factory):
    """``(directory, model)``: a tiny full Siglip2Model (vision + text) saved as safetensors."""
    transformers = pytest.importorskip("transformers")
    text = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = transformers.Siglip2Config(text_config=text, vision_config=_vision_kwargs())
    torch.manual_seed(2)
    model = transformers.Siglip2Model(config)
    _perturb(model, 3)
    model.eval()
    directory = tmp_path_factory.mktemp("siglip2-full")
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def converted(hf_vision) -> Tokenizer:
    return init_tokenizer_from_siglip2(hf_vision[0], use_rope=False).eval()


@pytest.fixture(scope="module")
def crops(photos) -> list[Tensor]:
    return [photos[n][t : t + h, left : left + w].contiguous() for n, t, left, h, w in CROPS]


def hf_inputs(images: list[Tensor], max_patches: int = MAX_PATCHES) -> dict[str, Tensor]:
    """What the Siglip2 processor gives for already-sized images in [-1, 1] ([H, W, 3]).

    (rescale 1/255 + normalise with mean = std = 0.5 is exactly atoken's [-1, 1] mapping.)
    """
    values, masks, shapes = [], [], []
    for img in images:
        h, w, c = img.shape
        rows, cols = h // 16, w // 16
        patches = img.reshape(rows, 16, cols, 16, c).permute(0, 2, 1, 3, 4)  # [r, c, 16, 16, 3]
        patches = patches.reshape(rows * cols, 16 * 16 * c)  # (row-in-patch, col, channel)
        pad = max_patches - rows * cols
        values.append(torch.cat([patches, patches.new_zeros(pad, patches.shape[1])]))
        masks.append(torch.cat([torch.ones(rows * cols), torch.zeros(pad)]).to(torch.int32))
        shapes.append((rows, cols))
    return {
        "pixel_values": torch.stack(values),  # [B, P, 768]
        "pixel_attention_mask": torch.stack(masks),  # [B, P]
        "spatial_shapes": torch.tensor(shapes, dtype=torch.long),  # [B, 2]
    }


def atoken_outputs(model: Tokenizer, images: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Per-sample dense features and the pooled embeddings of one packed call."""
    adapter = ImageAdapter()
    with torch.no_grad():
        dense = model.encode_dense([adapter.to_tokens(img) for img in images])
        pooled = model.pool(dense, normalize=False)  # [B, D]
    return [dense.feats[s] for s in dense.sample_slices()], pooled


def hf_outputs(vision, images: list[Tensor], max_patches: int = MAX_PATCHES):
    with torch.no_grad():
        out = vision(**hf_inputs(images, max_patches))
    n = [(img.shape[0] // 16) * (img.shape[1] // 16) for img in images]
    return [out.last_hidden_state[i, :k] for i, k in enumerate(n)], out.pooler_output


def _max_err(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------ parity
def test_dense_and_pooled_match_hf_per_image(converted, hf_vision, crops) -> None:
    _, vision = hf_vision
    for img in crops:
        dense, pooled = atoken_outputs(converted, [img])
        ref_dense, ref_pooled = hf_outputs(vision, [img])
        assert dense[0].shape == ref_dense[0].shape
        torch.testing.assert_close(dense[0], ref_dense[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)
        assert float(dense[0].std()) > 0.5  # real, non-degenerate features were compared


def test_full_grid_uses_the_table_unresized(converted, hf_vision, photos) -> None:
    img = photos["astronaut"][100:356, 100:356].contiguous()  # 16 x 16 patches
    dense, pooled = atoken_outputs(converted, [img])
    ref_dense, ref_pooled = hf_outputs(hf_vision[1], [img])
    torch.testing.assert_close(dense[0], ref_dense[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)


def test_padding_does_not_change_hf_outputs(hf_vision, crops) -> None:
    img = crops[0]
    tight_dense, tight_pooled = hf_outputs(hf_vision[1], [img], max_patches=24)  # 4 x 6, no pad
    padded_dense, padded_pooled = hf_outputs(hf_vision[1], [img])
    torch.testing.assert_close(padded_dense[0], tight_dense[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(padded_pooled, tight_pooled, atol=ATOL, rtol=0)


def test_mixed_sizes_in_one_packed_call_match_hf(converted, hf_vision, crops) -> None:
    dense, pooled = atoken_outputs(converted, crops)  # one packed atoken batch
    ref = [hf_outputs(hf_vision[1], [img]) for img in crops]  # HF one image at a time
    assert _max_err(dense, [r[0][0] for r in ref]) < ATOL
    torch.testing.assert_close(pooled, torch.cat([r[1] for r in ref]), atol=ATOL, rtol=0)
    batch_dense, batch_pooled = hf_outputs(hf_vision[1], crops)  # HF padded batch
    assert _max_err(dense, batch_dense) < ATOL
    torch.testing.assert_close(pooled, batch_pooled, atol=ATOL, rtol=0)


def test_full_model_checkpoint_gives_the_vision_tower(hf_full, crops) -> None:
    directory, model = hf_full
    cfg, state = load_siglip2_vision(directory)
    assert cfg["hidden_size"] == WIDTH and not any(k.startswith("text") for k in state)
    converted = init_tokenizer_from_siglip2(directory, use_rope=False).eval()
    dense, pooled = atoken_outputs(converted, crops[:2])
    ref_dense, ref_pooled = hf_outputs(model.vision_model, crops[:2])
    assert _max_err(dense, ref_dense) < ATOL
    torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)


def test_sharded_and_prefixed_checkpoints_load_the_same(hf_vision, tmp_path) -> None:
    directory, model = hf_vision
    cfg, state = load_siglip2_vision(directory)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="300KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    cfg2, state2 = load_siglip2_vision(sharded)
    assert cfg2 == cfg and state2.keys() == state.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    # transformers 4.x saved a Siglip2VisionModel with a "vision_model." prefix
    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    (prefixed / "config.json").write_text((directory / "config.json").read_text())
    flat = load_file(directory / "model.safetensors")
    save_file({f"vision_model.{k}": v for k, v in flat.items()}, prefixed / "model.safetensors")
    _, state3 = load_siglip2_vision(prefixed)
    assert state3.keys() == state.keys()


# ------------------------------------------------------------------------------------ mapping
def test_input_layer_holds_the_patch_embedding_in_frame_zero(converted, hf_vision) -> None:
    vision = hf_vision[1]
    w = converted.encoder.input_layer.weight.detach()  # [D, 3072]
    assert w.shape == (WIDTH, 3072)
    assert torch.equal(w[:, :768], vision.embeddings.patch_embedding.weight.detach())
    assert torch.count_nonzero(w[:, 768:]) == 0  # frames 1..3
    assert torch.equal(
        converted.encoder.pos_embedder.position_embedding.weight.detach(),
        vision.embeddings.position_embedding.weight.detach(),
    )
    norm = converted.encoder.blocks[0].norm1.weight.detach()
    assert not torch.any(norm == 1.0)  # the fixture's LayerNorms really were perturbed


def test_every_encoder_key_converted_and_the_rest_fresh(converted, hf_vision) -> None:
    cfg, state = load_siglip2_vision(hf_vision[0])
    config, mapped = atoken_state_from_siglip2(state, cfg, use_rope=False)
    own = converted.state_dict()
    assert set(mapped) == {k for k in own if k.startswith("encoder.")}
    assert all(torch.equal(own[k], v.to(own[k].dtype)) for k, v in mapped.items())
    assert converted.decoder is not None and config.decoder == config.encoder
    assert config.pos_grid == 16 and config.head.options == {"num_heads": HEADS, "mlp_width": MLP}
    assert (config.encoder.width, config.encoder.depth) == (WIDTH, LAYERS)
    no_decoder, _ = atoken_state_from_siglip2(state, cfg, with_decoder=False, latent_channels=32)
    assert no_decoder.decoder is None and no_decoder.latent_channels == 32


def test_use_rope_changes_features_but_not_weights_or_shapes(converted, hf_vision, crops) -> None:
    roped = init_tokenizer_from_siglip2(hf_vision[0]).eval()  # default: AToken's 4D RoPE on
    assert roped.config.use_rope and roped.encoder.rope is not None
    plain = converted.state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in roped.state_dict().items() if "encoder." in k)
    dense, pooled = atoken_outputs(roped, crops[:2])
    ref_dense, ref_pooled = hf_outputs(hf_vision[1], crops[:2])
    assert [d.shape for d in dense] == [r.shape for r in ref_dense]
    assert pooled.shape == ref_pooled.shape
    assert _max_err(dense, ref_dense) > 1e-2


def test_converted_model_round_trips_through_save_pretrained(hf_vision, crops, tmp_path) -> None:
    out = convert_siglip2(hf_vision[0], tmp_path / "atoken", use_rope=False)
    loaded = Tokenizer.from_pretrained(out).eval()
    dense, pooled = atoken_outputs(loaded, crops[:1])
    ref_dense, ref_pooled = hf_outputs(hf_vision[1], crops[:1])
    torch.testing.assert_close(dense[0], ref_dense[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)


def test_headless_tower_gives_a_headless_model(hf_vision) -> None:
    cfg, state = load_siglip2_vision(hf_vision[0])
    body = {k: v for k, v in state.items() if not k.startswith("head.")}
    config, mapped = atoken_state_from_siglip2(body, {**cfg, "vision_use_head": False})
    assert config.head is None and not any(k.startswith("encoder.head.") for k in mapped)
    with pytest.raises(Siglip2ConversionError, match=r"not used by the mapping: head\.attention"):
        atoken_state_from_siglip2(state, {**cfg, "vision_use_head": False})


def test_missing_or_misshaped_tensors_are_named(hf_vision) -> None:
    cfg, state = load_siglip2_vision(hf_vision[0])
    partial = {k: v for k, v in state.items() if k != "encoder.layers.1.mlp.fc2.bias"}
    with pytest.raises(Siglip2ConversionError, match=r"missing .*encoder\.layers\.1\.mlp\.fc2"):
        atoken_state_from_siglip2(partial, cfg)
    with pytest.raises(Siglip2ConversionError, match="not used by the mapping: extra.weight"):
        atoken_state_from_siglip2({**state, "extra.weight": torch.zeros(1)}, cfg)
    with pytest.raises(Siglip2ConversionError, match=r"position_embedding.weight' has shape"):
        atoken_state_from_siglip2(state, {**cfg, "num_patches": 64})


# ------------------------------------------------------------------------------------ errors
def _write_dir(path: Path, config: dict, weights: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if weights:
        save_file({"embeddings.patch_embedding.bias": torch.zeros(4)}, path / "model.safetensors")
    return path


VISION_CONFIG = {"model_type": "siglip2_vision_model", **_vision_kwargs()}


def test_missing_directory_and_files(tmp_path) -> None:
    with pytest.raises(Siglip2ConversionError, match="does not exist"):
        load_siglip2_vision(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Siglip2ConversionError, match="has no config.json"):
        load_siglip2_vision(tmp_path / "empty")
    no_weights = _write_dir(tmp_path / "noweights", VISION_CONFIG, weights=False)
    with pytest.raises(Siglip2ConversionError, match="has no weights"):
        load_siglip2_vision(no_weights)
    sharded = _write_dir(tmp_path / "sharded", VISION_CONFIG, weights=False)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(Siglip2ConversionError, match="model-00001-of-00002.safetensors"):
        load_siglip2_vision(sharded)
    truncated = _write_dir(tmp_path / "truncated", VISION_CONFIG, weights=False)
    (truncated / "model.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(Siglip2ConversionError, match="not a readable safetensors"):
        load_siglip2_vision(truncated)


def test_pickle_weights_are_refused_unread(tmp_path) -> None:
    directory = _write_dir(tmp_path / "bin", VISION_CONFIG, weights=False)
    (directory / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(Siglip2ConversionError, match="pickle.*safetensors") as info:
        load_siglip2_vision(directory)
    assert "pytorch_model.bin" in str(info.value)
    assert isinstance(info.value, AtokenError) and isinstance(info.value, CheckpointError)


def test_non_siglip2_models_are_refused(tmp_path) -> None:
    for model_type in ("clip_vision_model", "siglip", None):
        directory = _write_dir(
            tmp_path / str(model_type), {**VISION_CONFIG, "model_type": model_type}
        )
        with pytest.raises(Siglip2ConversionError, match=f"{model_type!r} model, not SigLIP2"):
            load_siglip2_vision(directory)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("patch_size", 14, "patch_size 14"),
        ("num_channels", 1, "num_channels 1"),
        ("hidden_act", "gelu", "hidden_act 'gelu'"),
        ("layer_norm_eps", 1e-5, "layer_norm_eps 1e-05"),
        ("num_patches", 200, "num_patches 200"),
        ("attention_dropout", 0.1, "attention_dropout 0.1"),
    ],
)
def test_unsupported_options_are_refused(tmp_path, option, value, message) -> None:
    directory = _write_dir(tmp_path / "m", {**VISION_CONFIG, option: value})
    with pytest.raises(Siglip2ConversionError, match=message):
        load_siglip2_vision(directory)
    full = {"model_type": "siglip2", "vision_config": {**_vision_kwargs(), option: value}}
    with pytest.raises(Siglip2ConversionError, match=message):
        load_siglip2_vision(_write_dir(tmp_path / "full", full))


def test_sizes_atoken_cannot_build_are_refused(tmp_path) -> None:
    cfg, _ = load_siglip2_vision(_write_dir(tmp_path / "m", VISION_CONFIG))
    with pytest.raises(Siglip2ConversionError, match="divisible by 8"):
        atoken_state_from_siglip2({}, {**cfg, "hidden_size": 144, "num_attention_heads": 4})


def test_unexpected_keys_of_a_full_model_are_refused(tmp_path) -> None:
    directory = _write_dir(tmp_path / "full", {"model_type": "siglip2", "vision_config": {}})
    save_file({"mystery.weight": torch.zeros(2)}, directory / "model.safetensors")
    with pytest.raises(Siglip2ConversionError, match="unexpected key 'mystery.weight'"):
        load_siglip2_vision(directory)
