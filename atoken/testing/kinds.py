"""Contract mixins per component kind beyond adapters and quantizers: attention backends,
heads, reconstruction losses and text encoders (semantic losses and task objectives are not
covered yet).

Subclass one and name the registered component (``backend_name`` / ``head_name`` /
``loss_name`` / ``text_encoder_name``); atoken's
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


class ReconstructionLossContract(_Contract):
    """Contract of a reconstruction loss (``LossInputs`` in, scalar out): zero on a perfect
    batch (prediction = target, posterior = N(0, I)), positive and finite on an imperfect one,
    with gradients to the prediction or the posterior. Pixel views come from the ``image``
    adapter's ``from_tokens``; a loss whose network cannot be loaded here skips with the reason.
    """

    loss_name: ClassVar[str]
    loss_options: ClassVar[dict[str, Any]] = {}

    def loss(self) -> torch.nn.Module:
        import inspect

        from atoken.core.errors import AtokenError

        try:
            loss = self.comps().losses.build(self.loss_name, self.loss_options or None)
        except (AtokenError, ImportError, OSError) as exc:
            pytest.skip(f"loss {self.loss_name!r} cannot be built here: {exc}")
        params = list(inspect.signature(loss.forward).parameters)
        if params != ["inputs"]:
            pytest.skip(
                f"loss {self.loss_name!r} takes ({', '.join(params)}), not one LossInputs:"
                " not a reconstruction loss"
            )
        return loss

    def _inputs(self, perfect: bool, *, grad: bool = False):
        from atoken.core.loss import LossInputs

        adapter = self.comps().adapters.build("image")
        g = torch.Generator("cpu").manual_seed(0)
        samples = [adapter.to_tokens(adapter.example(g)) for _ in range(2)]
        target = collate(samples)
        pred_feats = target.feats.clone()
        mean = torch.zeros(target.feats.shape[0], 8)
        logvar = torch.zeros_like(mean)
        if not perfect:
            pred_feats = (pred_feats + 0.3 * torch.randn(pred_feats.shape, generator=g)).clamp(
                -1, 1
            )
            mean, logvar = mean + 0.5, logvar - 0.7
        pred_feats.requires_grad_(grad)
        mean.requires_grad_(grad)
        pred = target.replace(feats=pred_feats)

        def render():
            views = ([], [])
            for side, tokens in enumerate((pred, target)):
                for i, part in enumerate(tokens.feats.split(list(tokens.seqlens))):
                    views[side].append(adapter.from_tokens(samples[i].replace(feats=part)))
            return views

        return LossInputs(pred, target, mean=mean, logvar=logvar, render=render), pred_feats, mean

    def test_perfect_batch_scores_zero(self) -> None:
        loss = self.loss().eval()
        inputs, _, _ = self._inputs(perfect=True)
        value = loss(inputs)
        assert value.ndim == 0 and torch.isfinite(value)
        assert abs(float(value)) < 1e-4, float(value)

    def test_imperfect_batch_scores_above_zero_with_gradients(self) -> None:
        loss = self.loss().eval()
        inputs, pred, mean = self._inputs(perfect=False, grad=True)
        value = loss(inputs)
        assert value.ndim == 0 and torch.isfinite(value) and float(value.detach()) > 1e-4
        value.backward()
        grads = [t.grad for t in (pred, mean) if t.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


class TextEncoderContract(_Contract):
    """Contract of a text tower: ``encode(texts) -> [T, dim]`` finite float rows, one per text,
    equal texts equal rows, different texts different rows, independent of the batch. A tower
    whose weights are not available here skips with the reason."""

    text_encoder_name: ClassVar[str]
    text_encoder_options: ClassVar[dict[str, Any]] = {}
    texts: ClassVar[tuple[str, ...]] = (
        "a photo of a cat",
        "a red car on a road",
        "a photo of a cat",
    )

    def text_encoder(self) -> Any:
        from atoken.core.errors import AtokenError

        try:
            return self.comps().text_encoders.build(
                self.text_encoder_name, self.text_encoder_options or None
            )
        except (AtokenError, ImportError, OSError) as exc:
            pytest.skip(f"text encoder {self.text_encoder_name!r} cannot be built here: {exc}")

    def test_one_row_per_text(self) -> None:
        enc = self.text_encoder()
        with torch.no_grad():
            rows = enc.encode(list(self.texts)).float().cpu()
        assert rows.shape == (len(self.texts), enc.dim)
        assert torch.isfinite(rows).all()
        torch.testing.assert_close(rows[0], rows[2])
        assert (rows[0] - rows[1]).abs().max() > 1e-4

    def test_rows_do_not_depend_on_the_batch(self) -> None:
        enc = self.text_encoder()
        with torch.no_grad():
            batch = enc.encode(list(self.texts)).float().cpu()
            alone = torch.cat([enc.encode([t]).float().cpu() for t in self.texts])
        torch.testing.assert_close(batch, alone, atol=1e-4, rtol=1e-4)
