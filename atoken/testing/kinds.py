"""Contract mixins per component kind beyond adapters and quantizers: attention backends and
heads (losses, text encoders and renderers are not covered yet).

Subclass one and name the registered component (``backend_name`` / ``head_name``); atoken's
suite parametrizes them over everything registered. A check that cannot run here (a CUDA-only
backend on a CPU machine) skips with the reason.

References: timm's tests parametrized over the model registry; xformers' tests of memory-
efficient attention against a reference implementation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from atoken.core.attention import reference_attention
from atoken.core.tokens import PatchTokens, collate
from atoken.testing.contracts import _Contract

_SEQLENS = (5, 17, 1)  # ragged, including a one-token sample


def _qkv(n: int, heads: int = 2, dim: int = 8, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator("cpu").manual_seed(seed)
    return tuple(torch.randn(n, heads, dim, generator=g) for _ in range(3))  # [n, H, D] each


class AttentionBackendContract(_Contract):
    """Contract of a varlen attention backend: block-diagonal, equal to the reference."""

    backend_name: ClassVar[str]

    def backend(self) -> Any:
        backend = self.comps().attention.get(self.backend_name).obj
        reason = backend.unavailable_reason(torch.device("cpu"))
        if reason is not None:
            pytest.skip(f"attention backend {self.backend_name!r} {reason}")
        return backend

    def test_matches_the_reference(self) -> None:
        backend = self.backend()
        q, k, v = _qkv(sum(_SEQLENS))
        out = backend(q, k, v, _SEQLENS, _SEQLENS)
        assert out.shape == q.shape
        torch.testing.assert_close(
            out, reference_attention(q, k, v, _SEQLENS, _SEQLENS), atol=1e-5, rtol=1e-4
        )

    def test_samples_do_not_attend_across(self) -> None:
        backend = self.backend()
        q, k, v = _qkv(sum(_SEQLENS))
        k2, v2 = k.clone(), v.clone()
        k2[_SEQLENS[0] :] += 3.0  # change every sample but the first
        v2[_SEQLENS[0] :] -= 2.0
        a = backend(q, k, v, _SEQLENS, _SEQLENS)[: _SEQLENS[0]]
        b = backend(q, k2, v2, _SEQLENS, _SEQLENS)[: _SEQLENS[0]]
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

    def test_queries_and_keys_of_different_lengths(self) -> None:
        backend = self.backend()
        ones = (1,) * len(_SEQLENS)  # one query per sample, as attention pooling asks
        q, _, _ = _qkv(len(ones), seed=1)
        _, k, v = _qkv(sum(_SEQLENS), seed=2)
        torch.testing.assert_close(
            backend(q, k, v, ones, _SEQLENS),
            reference_attention(q, k, v, ones, _SEQLENS),
            atol=1e-5,
            rtol=1e-4,
        )


class HeadContract(_Contract):
    """Contract of an embedding head: ``SparseTokens`` in, one ``[B, width]`` row per sample,
    each sample pooled on its own, gradients to every sample's tokens."""

    head_name: ClassVar[str]
    head_options: ClassVar[dict[str, Any]] = {}
    width: ClassVar[int] = 32
    num_heads: ClassVar[int] = 4
    mlp_width: ClassVar[int] = 64

    def head(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return self.comps().heads.build(
            self.head_name,
            self.head_options or None,
            width=self.width,
            num_heads=self.num_heads,
            mlp_width=self.mlp_width,
        )

    def _sample(self, n: int, seed: int) -> PatchTokens:
        g = torch.Generator("cpu").manual_seed(seed)
        coords = torch.zeros(n, 4, dtype=torch.int32)
        coords[:, 1] = torch.arange(n, dtype=torch.int32)
        return PatchTokens(torch.randn(n, self.width, generator=g), coords, "test")

    def test_one_embedding_per_sample(self) -> None:
        samples = [self._sample(n, seed=i) for i, n in enumerate(_SEQLENS)]
        out = self.head().eval()(collate(samples))
        assert out.shape == (len(samples), self.width)
        assert torch.isfinite(out).all()

    def test_samples_are_pooled_on_their_own(self) -> None:
        head = self.head().eval()
        samples = [self._sample(n, seed=i) for i, n in enumerate(_SEQLENS)]
        with torch.no_grad():
            batch = head(collate(samples))
            alone = torch.cat([head(collate([s])) for s in samples])
            swapped = head(collate(samples[::-1])).flip(0)
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch, swapped, atol=1e-5, rtol=1e-4)
        assert (batch[0] - batch[1]).abs().max() > 1e-4  # different tokens, different rows

    def test_gradients_reach_every_sample(self) -> None:
        samples = [self._sample(n, seed=i) for i, n in enumerate(_SEQLENS)]
        tokens = collate(samples)
        feats = tokens.feats.clone().requires_grad_(True)
        self.head()(tokens.replace(feats=feats)).square().sum().backward()
        assert feats.grad is not None and torch.isfinite(feats.grad).all()
        for part in feats.grad.split(list(_SEQLENS)):
            assert part.abs().sum() > 0
