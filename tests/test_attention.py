"""Varlen attention backends agree with the reference; packing equals per-sample results."""

from __future__ import annotations

import pytest
import torch

import atoken
from atoken.core.attention import (
    BackendUnavailableError,
    reference_attention,
    resolve_backend,
    varlen_attention,
)

BACKENDS = atoken.default_components().attention.names()


def _qkv(seqlens, heads=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(seqlens)
    return [torch.randn(n, heads, dim, generator=g) for _ in range(3)]


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_matches_reference(name, components) -> None:
    backend = components.attention.get(name).obj
    device = torch.device("cpu")
    if backend.unavailable_reason(device) is not None:
        pytest.skip(f"{name}: {backend.unavailable_reason(device)}")
    seqlens = [5, 17, 5, 1, 17, 9]  # repeated lengths exercise sdpa's grouping
    q, k, v = _qkv(seqlens)
    out = varlen_attention(q, k, v, seqlens=seqlens, backend=backend)
    ref = reference_attention(q, k, v, seqlens, seqlens)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_reference_is_block_diagonal_dense_attention() -> None:
    seqlens = [4, 7, 3]
    q, k, v = _qkv(seqlens, heads=2, dim=8)
    out = reference_attention(q, k, v, seqlens, seqlens)
    # dense masked softmax in float64 as an independent oracle
    owner = torch.repeat_interleave(torch.arange(3), torch.tensor(seqlens))
    mask = owner[:, None] == owner[None, :]
    s = torch.einsum("nhd,mhd->hnm", q.double(), k.double()) / 8**0.5
    s = s.masked_fill(~mask, float("-inf"))
    dense = torch.einsum("hnm,mhd->nhd", s.softmax(-1), v.double())
    torch.testing.assert_close(out.double(), dense, atol=1e-6, rtol=1e-6)


def test_samples_do_not_see_each_other() -> None:
    seqlens = [6, 6]
    q, k, v = _qkv(seqlens)
    out = varlen_attention(q, k, v, seqlens=seqlens, backend="sdpa")
    v2 = v.clone()
    v2[6:] += 10.0  # change only the second sample's values
    out2 = varlen_attention(q, k, v2, seqlens=seqlens, backend="sdpa")
    torch.testing.assert_close(out2[:6], out[:6])
    assert (out2[6:] - out[6:]).abs().min() > 1.0


def test_cross_attention_lengths() -> None:
    q = torch.randn(2, 2, 8)
    k = v = torch.randn(9, 2, 8)
    out = varlen_attention(q, k, v, seqlens=[1, 1], seqlens_k=[4, 5], backend="sdpa")
    ref = reference_attention(q, k, v, [1, 1], [4, 5])
    torch.testing.assert_close(out, ref)


def test_bad_lengths_and_backends_are_named() -> None:
    q, k, v = _qkv([3, 4])
    with pytest.raises(ValueError, match="do not match"):
        varlen_attention(q, k, v, seqlens=[3, 3])
    with pytest.raises(KeyError, match="sdpaa"):
        varlen_attention(q, k, v, seqlens=[3, 4], backend="sdpaa")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="cuda"):
            resolve_backend("xformers", torch.device("cpu"))
        assert resolve_backend("auto", torch.device("cpu")).name == "sdpa"


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_packed_batch_equals_per_sample(tiny, mixed_batch, backend) -> None:
    with torch.inference_mode():
        packed = tiny.encode(mixed_batch, backend=backend)
        dec = tiny.decode(packed, backend=backend)
        emb = tiny.embed(mixed_batch, backend=backend)
        for i, (sample, rows) in enumerate(
            zip(mixed_batch, packed.tokens.sample_slices(), strict=True)
        ):
            alone = tiny.encode([sample], backend=backend)
            torch.testing.assert_close(packed.codes[rows], alone.codes, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                dec.feats[rows], tiny.decode(alone, backend=backend).feats, atol=2e-5, rtol=1e-5
            )
            torch.testing.assert_close(
                emb[i], tiny.embed([sample], backend=backend)[0], atol=1e-5, rtol=1e-5
            )
