"""One token geometry, owned by the model config and handed to every adapter it serves.

A model of another patch geometry is served by the adapters that can (image, video, grayscale:
any RGB / any patch) with tokens of its width that the model encodes and decodes, and refused
with one line at build time by those that cannot.
"""

from __future__ import annotations

import pytest
import torch

import atoken
from atoken.core.adapter_context import AdapterContext
from atoken.core.geometry import TokenGeometry
from atoken.core.reconstruct import adapter_for, reconstruct_sample


def test_the_default_geometry_is_atokens_and_the_configs() -> None:
    g = TokenGeometry()
    assert (g.patch, g.channels, g.frame_dim, g.token_dim) == ((4, 16, 16), 3, 768, 3072)
    tiny = atoken.build_tokenizer("atoken-tiny")
    assert tiny.config.geometry == g and g.token_dim == tiny.config.patch_dim
    assert AdapterContext().geometry == g and AdapterContext().device == torch.device("cpu")
    with pytest.raises(atoken.InputError, match="three positive integers"):
        TokenGeometry((4, 0, 16))
    with pytest.raises(atoken.InputError, match="channels must be positive"):
        TokenGeometry(channels=0)


@pytest.fixture(scope="module")
def small_patch_model():
    """atoken-tiny with 2 x 8 x 8 RGB patches (384 values per token)."""
    return atoken.build_tokenizer("atoken-tiny", patch_size=(2, 8, 8)).eval()


@pytest.mark.parametrize("name", ["image", "video"])
def test_pixel_adapters_serve_a_model_of_smaller_patches(small_patch_model, name) -> None:
    model = small_patch_model
    adapter = adapter_for("", name, {"lpips": False} if name == "image" else None, model=model)
    assert adapter.geometry == model.config.geometry
    sample = adapter.example(torch.Generator().manual_seed(0))  # 40 x 56: 5 x 7 patches of 8
    tokens = adapter.to_tokens(sample)
    assert tokens.feats.shape == (len(tokens), 2 * 8 * 8 * 3)
    assert tokens.meta["crop"][2:] == [40, 56]  # multiples of 8, not 16: nothing cropped
    assert int(tokens.coords[:, 1].max()) == 4 and int(tokens.coords[:, 2].max()) == 6
    back = adapter.from_tokens(tokens)  # the patch layout inverts exactly
    torch.testing.assert_close(back, adapter.target(sample, tokens.meta))
    result = reconstruct_sample(model, adapter, sample)
    assert result.reconstruction.shape == result.reference.shape
    assert result.tokens == len(tokens)


def test_an_adapter_that_cannot_serve_a_geometry_says_so_at_build() -> None:
    comps = atoken.default_components()
    gray = TokenGeometry((4, 16, 16), 1)
    for name in ("image", "video"):
        with pytest.raises(atoken.InputError) as info:
            comps.adapters.build(name, context=AdapterContext(geometry=gray))
        message = str(info.value)
        assert f"adapter {name!r} cannot serve a model of patch geometry 4x16x16 x 1" in message
        assert "\n" not in message


def test_an_adapter_built_for_one_model_does_not_feed_another_silently(small_patch_model) -> None:
    tiny = atoken.build_tokenizer("atoken-tiny").eval()
    adapter = adapter_for("", "image", {"lpips": False}, model=tiny)
    tokens = adapter.to_tokens(adapter.example(torch.Generator().manual_seed(1)))
    with pytest.raises(atoken.InputError, match="tokens have 3072 features per row"):
        small_patch_model.encode([tokens])
