"""Varlen attention backends agree with the reference; packing equals per-sample results.

Every registered backend runs the agreement tests on each device it supports: CPU here, and
CUDA (``-m gpu``, in float32 and bfloat16) where a GPU is present. The layouts cover ragged
batches, keys longer than queries (a temporal KV cache prepends keys), one sample, many unequal
samples and one query per sample (attention pooling); gradients are compared too.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import atoken
from atoken.core import attention
from atoken.core.attention import (
    BUILTIN_BACKENDS,
    BackendUnavailableError,
    reference_attention,
    resolve_backend,
    varlen_attention,
)

COMPONENTS = atoken.default_components()
BACKENDS = COMPONENTS.attention.names()
CUDA = torch.cuda.is_available()
GPU = (pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device"))

# heads and head size of atoken-tiny (72 = so400m's head size too): the compiled flex kernel
# is built once per (heads, head size), so the tests share the one the tiny model needs
HEADS, DIM = 2, 72


def _runs(*, dtypes: bool = True) -> list:
    """(backend, device, dtype) for every backend on every device it supports."""
    params = []
    for name in BACKENDS:
        devices = COMPONENTS.attention.get(name).obj.devices
        if "cpu" in devices:
            params.append(pytest.param(name, "cpu", torch.float32, id=f"{name}-cpu"))
        if "cuda" in devices:
            for dtype in (torch.float32, torch.bfloat16) if dtypes else (torch.float32,):
                tag = str(dtype).removeprefix("torch.")
                params.append(pytest.param(name, "cuda", dtype, id=f"{name}-cuda-{tag}", marks=GPU))
    return params


def _many(count: int = 40, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 200, (count,), generator=g).tolist()


LAYOUTS = {
    "ragged": ([5, 17, 5, 1, 17, 9], [5, 17, 5, 1, 17, 9]),  # repeats exercise sdpa's grouping
    "kv_cache": ([3, 5, 2, 7], [10, 5, 9, 140]),  # carried keys precede each tile's own
    "single": ([33], [33]),
    "many": (_many(), _many()),  # 40 samples, 1..199 tokens: many tiles of the flex mask
    "pooling": ([1, 1, 1], [5, 17, 1]),  # one query per sample
}


def _qkv(seqlens_q, seqlens_k=None, heads=HEADS, dim=DIM, seed=0, device="cpu", dtype=None):
    seqlens_k = seqlens_q if seqlens_k is None else seqlens_k
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(seqlens_q), heads, dim, generator=g)
    k, v = (torch.randn(sum(seqlens_k), heads, dim, generator=g) for _ in range(2))
    return [t.to(device=device, dtype=dtype or torch.float32) for t in (q, k, v)]


def _backend(name: str, device: str):
    backend = COMPONENTS.attention.get(name).obj
    reason = backend.unavailable_reason(torch.device(device))
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return backend


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("name", "device", "dtype"), _runs())
def test_backend_matches_reference(name, device, dtype, layout) -> None:
    backend = _backend(name, device)
    seqlens_q, seqlens_k = LAYOUTS[layout]
    q, k, v = _qkv(seqlens_q, seqlens_k, device=device, dtype=dtype)
    with torch.inference_mode():
        out = varlen_attention(q, k, v, seqlens=seqlens_q, seqlens_k=seqlens_k, backend=backend)
        # the reference in float32 on the same (rounded) inputs
        ref = reference_attention(q.float(), k.float(), v.float(), seqlens_q, seqlens_k)
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, **_tolerance(dtype))


@pytest.mark.parametrize("layout", ["ragged", "kv_cache"])
@pytest.mark.parametrize(("name", "device", "dtype"), _runs())
def test_backend_gradients_match_reference(name, device, dtype, layout) -> None:
    backend = _backend(name, device)
    seqlens_q, seqlens_k = LAYOUTS[layout]
    q, k, v = (t.requires_grad_() for t in _qkv(seqlens_q, seqlens_k, device=device, dtype=dtype))
    out = backend(q, k, v, seqlens_q, seqlens_k)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad((out.float() * weight.float()).sum(), (q, k, v))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q32, k32, v32, seqlens_q, seqlens_k)
    want = torch.autograd.grad((ref * weight.float()).sum(), (q32, k32, v32))
    for got, expected in zip(grads, want, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), expected, **_tolerance(dtype))


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


@pytest.mark.parametrize(("name", "device", "dtype"), _runs(dtypes=False))
def test_samples_do_not_see_each_other(name, device, dtype) -> None:
    backend = _backend(name, device)
    seqlens = [6, 6]
    q, k, v = _qkv(seqlens, device=device)
    v2 = v.clone()
    v2[6:] += 10.0  # change only the second sample's values
    with torch.inference_mode():
        out = varlen_attention(q, k, v, seqlens=seqlens, backend=backend)
        out2 = varlen_attention(q, k, v2, seqlens=seqlens, backend=backend)
    torch.testing.assert_close(out2[:6], out[:6])
    assert (out2[6:] - out[6:]).abs().min() > 1.0


@pytest.mark.parametrize(
    ("seqlens_q", "seqlens_k"),
    [
        ([5, 300, 1], [5, 300, 1]),
        ([1, 1, 1], [129, 200, 3]),
        ([128, 128, 5], [128, 128, 5]),  # samples on tile edges: full tiles
        ([0, 3, 0, 256], [4, 0, 0, 300]),  # empty samples on either side
        ([700, 1, 400], [700, 1, 400]),
    ],
)
def test_flex_block_mask_is_the_dense_document_mask(seqlens_q, seqlens_k) -> None:
    """The tile lists built from the samples' row ranges equal what FlexAttention derives from
    the dense document mask (k tiles per q tile) and from the k side (q tiles per k tile)."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    cpu = torch.device("cpu")
    length, mask = attention._flex_block_mask(tuple(seqlens_q), tuple(seqlens_k), cpu)
    assert length % 128 == 0 and length >= max(256, sum(seqlens_q), sum(seqlens_k))
    doc_q = attention._document_ids(seqlens_q, length, pad=len(seqlens_q))
    doc_k = attention._document_ids(seqlens_k, length, pad=len(seqlens_q) + 1)
    dense = create_block_mask(
        lambda b, h, i, j: doc_q[i] == doc_k[j], None, None, length, length, device=cpu
    )
    assert torch.equal(mask.to_dense(), dense.to_dense()), (seqlens_q, seqlens_k)
    # full tiles are recorded as full (no per-row mask evaluation), the rest as partial
    assert torch.equal(mask.full_kv_num_blocks, dense.full_kv_num_blocks)
    derived = BlockMask.from_kv_blocks(
        mask.kv_num_blocks,
        mask.kv_indices,
        mask.full_kv_num_blocks,
        mask.full_kv_indices,
        BLOCK_SIZE=128,
        mask_mod=mask.mask_mod,
        seq_lengths=(length, length),
    )
    for ours, ours_n, theirs, theirs_n in [
        (mask.q_indices, mask.q_num_blocks, derived.q_indices, derived.q_num_blocks),
        (
            mask.full_q_indices,
            mask.full_q_num_blocks,
            derived.full_q_indices,
            derived.full_q_num_blocks,
        ),
    ]:
        assert torch.equal(ours_n, theirs_n)
        for row, count in enumerate(ours_n[0, 0].tolist()):  # the valid prefix of each row
            assert torch.equal(ours[0, 0, row, :count], theirs[0, 0, row, :count])


def test_flex_block_masks_are_cached_and_bounded() -> None:
    cache = attention._flex_block_mask
    cpu = torch.device("cpu")
    first = cache((3, 4), (3, 4), cpu)
    assert cache((3, 4), (3, 4), cpu) is first  # every layer of a pass reuses it
    for n in range(1, 40):
        cache((n,), (n,), cpu)
    info = cache.cache_info()
    assert info.maxsize is not None and info.currsize <= info.maxsize


def test_flex_inside_a_compiled_region() -> None:
    """Compiled transformer blocks call attention as one opaque op; flex (building its block
    mask and running its own compiled kernel) works inside that op."""
    from atoken.core.compile import varlen_attention_op

    resolve_backend("flex", torch.device("cpu"))
    seqlens_q, seqlens_k = [3, 9, 1], [3, 12, 1]
    q, k, v = _qkv(seqlens_q, seqlens_k)
    lengths_q, lengths_k = torch.tensor(seqlens_q), torch.tensor(seqlens_k)

    @torch.compile(fullgraph=True, dynamic=True)
    def block(q, k, v, lengths_q, lengths_k):
        return varlen_attention_op(q * 2.0, k, v, lengths_q, lengths_k, "flex") + 1.0

    with torch.no_grad():
        out = block(q, k, v, lengths_q, lengths_k)
    ref = reference_attention(q * 2.0, k, v, seqlens_q, seqlens_k) + 1.0
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_varlen_keeps_float32_and_odd_head_sizes_on_the_sdpa_path() -> None:
    """The flash kernel takes fp16/bf16 with head sizes divisible by 8; other inputs take the
    grouped SDPA path at their own precision (this runs on CPU: no flash call is reached)."""
    seqlens_q, seqlens_k = LAYOUTS["kv_cache"]
    for dtype, dim in [(torch.float32, DIM), (torch.bfloat16, 12)]:
        q, k, v = _qkv(seqlens_q, seqlens_k, dim=dim, dtype=dtype)
        out = attention.torch_varlen_attention(q, k, v, seqlens_q, seqlens_k)
        assert out.dtype == dtype
        ref = reference_attention(q, k, v, seqlens_q, seqlens_k)
        torch.testing.assert_close(out, ref, **_tolerance(dtype))


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
    if not CUDA:
        for name in ("xformers", "varlen"):
            with pytest.raises(BackendUnavailableError, match="cuda"):
                resolve_backend(name, torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")).name == "sdpa"


def test_a_missing_torch_module_says_which_torch_has_it() -> None:
    absent = dataclasses.replace(
        BUILTIN_BACKENDS["varlen"], devices=("cpu",), requires="torch.nn.attention.not_there"
    )
    reason = absent.unavailable_reason(torch.device("cpu"))
    assert "torch.nn.attention.not_there" in reason and "torch >= 2.9" in reason
    assert torch.__version__ in reason


def test_auto_on_cuda_prefers_varlen_then_xformers(monkeypatch) -> None:
    """Resolved with stand-ins that claim CUDA (so this runs without a GPU); the resolved-name
    table is restored afterwards."""
    monkeypatch.setattr(attention, "_RESOLVED", dict(attention._RESOLVED))

    def standin(name: str, runs: bool):
        real = BUILTIN_BACKENDS[name]
        return dataclasses.replace(
            real, requires=None if runs else "no_such_module_here", check=None
        )

    cuda = torch.device("cuda")
    table = {n: standin(n, True) for n in ("reference", "sdpa", "flex", "varlen", "xformers")}
    assert resolve_backend("auto", cuda, table).name == "varlen"
    table["varlen"] = standin("varlen", False)
    assert resolve_backend("auto", cuda, table).name == "xformers"
    table["xformers"] = standin("xformers", False)
    assert resolve_backend("auto", cuda, table).name == "sdpa"
    assert resolve_backend("auto", torch.device("cpu"), table).name == "sdpa"


@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex"])
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
