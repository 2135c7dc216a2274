"""Tokens in the shared sparse 4D space ``(t, x, y, z)``.

`PatchTokens` holds one sample as an adapter produced it; `collate` packs samples into one
`SparseTokens` batch (rows of a sample contiguous, ``cu_seqlens`` and ``max_seqlen`` computed once).
Every layer after collate takes and returns `SparseTokens`; feature-wise ops use ``replace``.

References: packed layout and ``replace`` idiom after TRELLIS's SparseTensor; cu_seqlens
convention after flash-attn's varlen API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from atoken.core.errors import InputError

#: every coordinate axis must stay below this (the paper's 4D space is [0, 1024)^4)
COORD_LIMIT = 1024
AXES = ("t", "x", "y", "z")


@dataclass(frozen=True, slots=True)
class PatchTokens:
    """One sample's tokens, as an adapter emits them.

    Attributes:
        feats: ``[n, C]`` float features (C = 3072 for 4x16x16x3 patches).
        coords: ``[n, 4]`` int32 positions ``(t, x, y, z)``.
        modality: name of the adapter that made them (decoding goes back through it).
        meta: JSON-serialisable facts the adapter needs to rebuild the sample (sizes, crop, ...).
    """

    feats: Tensor
    coords: Tensor
    modality: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_rows(self.feats, self.coords, what=f"{self.modality} tokens")

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def replace(self, **changes: Any) -> PatchTokens:
        return dataclasses.replace(self, **changes)


def all_finite(x: Tensor, chunk: int = 1 << 22) -> bool:
    """``torch.isfinite(x).all()`` in chunks of ``chunk`` elements, without whole-size temporaries.

    (``isfinite`` of a float tensor allocates a bool mask and an ``abs`` copy of all of ``x``:
    1.3 GB for a 1024-frame 256² clip.)
    """
    if not x.is_floating_point():
        return True
    if not x.is_contiguous() and x.ndim > 1:  # a strided view: check it slice by slice
        return all(all_finite(part, chunk) for part in x.unbind(0))
    flat = x.reshape(-1)
    return all(
        bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk)
    )


def _check_rows(feats: Tensor, coords: Tensor, *, what: str) -> None:
    if not isinstance(feats, Tensor) or feats.ndim != 2:
        shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise InputError(f"{what}: feats must be a 2-D tensor [n, C], got {shape}")
    if not isinstance(coords, Tensor) or coords.ndim != 2 or coords.shape[1] != 4:
        shape = tuple(coords.shape) if isinstance(coords, Tensor) else type(coords).__name__
        raise InputError(f"{what}: coords must be an int tensor [n, 4] (t, x, y, z), got {shape}")
    if feats.shape[0] != coords.shape[0]:
        raise InputError(
            f"{what}: feats has {feats.shape[0]} rows but coords has {coords.shape[0]}"
        )
    if coords.dtype.is_floating_point or coords.dtype == torch.bool:
        raise InputError(f"{what}: coords must be integers, got {coords.dtype}")


@dataclass(frozen=True, slots=True)
class SparseTokens:
    """Packed variable-length 4D token batch.

    Attributes:
        feats: ``[N, C]`` float; N = total tokens over the batch.
        coords: ``[N, 4]`` int32 ``(t, x, y, z)``; unused axes are 0 (image: t = z = 0).
        cu_seqlens: ``[B+1]`` int32; sample b owns rows ``cu_seqlens[b]:cu_seqlens[b+1]``.
        max_seqlen: longest sample, a host int computed once at collate time.
        seqlens: per-sample lengths as host ints (same information as ``cu_seqlens``).
        modality: per-sample adapter names.
        meta: per-sample adapter metadata.
    """

    feats: Tensor
    coords: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    seqlens: tuple[int, ...]
    modality: tuple[str, ...]
    meta: tuple[Mapping[str, Any], ...]

    @property
    def batch_size(self) -> int:
        return len(self.seqlens)

    @property
    def num_tokens(self) -> int:
        return int(self.feats.shape[0])

    def replace(self, feats: Tensor) -> SparseTokens:
        """Same positions and batch layout, new features (``[N, C']``)."""
        if feats.shape[0] != self.feats.shape[0]:
            raise ValueError(f"replace: got {feats.shape[0]} rows, batch has {self.feats.shape[0]}")
        return dataclasses.replace(self, feats=feats)

    def to(self, *args: Any, **kwargs: Any) -> SparseTokens:
        """Move features (and coords/cu_seqlens, for a device) like ``Tensor.to``."""
        feats = self.feats.to(*args, **kwargs)
        return dataclasses.replace(
            self,
            feats=feats,
            coords=self.coords.to(feats.device),
            cu_seqlens=self.cu_seqlens.to(feats.device),
        )

    def sample_slices(self) -> list[slice]:
        """Row ranges of each sample."""
        out, start = [], 0
        for n in self.seqlens:
            out.append(slice(start, start + n))
            start += n
        return out

    def batch_index(self) -> Tensor:
        """``[N]`` int64: which sample each row belongs to."""
        lengths = torch.tensor(self.seqlens, device=self.feats.device)
        return torch.repeat_interleave(
            torch.arange(len(self.seqlens), device=lengths.device), lengths
        )

    def split(self) -> list[PatchTokens]:
        """Unpack into per-sample `PatchTokens` (views, no copy)."""
        return [
            PatchTokens(self.feats[s], self.coords[s], m, meta)
            for s, m, meta in zip(self.sample_slices(), self.modality, self.meta, strict=True)
        ]

    def validate(self) -> SparseTokens:
        """Check every invariant; raise `InputError` naming the broken one. Returns self."""
        _check_rows(self.feats, self.coords, what="SparseTokens")
        if self.coords.dtype != torch.int32:
            raise InputError(f"SparseTokens: coords must be int32, got {self.coords.dtype}")
        cu = self.cu_seqlens
        if cu.ndim != 1 or cu.dtype != torch.int32 or cu.numel() != len(self.seqlens) + 1:
            raise InputError(
                f"SparseTokens: cu_seqlens must be int32 [B+1] with B={len(self.seqlens)},"
                f" got {cu.dtype} {tuple(cu.shape)}"
            )
        expected = [0]
        for n in self.seqlens:
            expected.append(expected[-1] + n)
        if cu.tolist() != expected:
            raise InputError(
                f"SparseTokens: cu_seqlens {cu.tolist()} do not match per-sample lengths"
                f" {list(self.seqlens)} (must start at 0 and increase by each length)"
            )
        if any(n <= 0 for n in self.seqlens):
            raise InputError(
                f"SparseTokens: every sample needs at least one token, got {self.seqlens}"
            )
        if expected[-1] != self.feats.shape[0]:
            raise InputError(
                f"SparseTokens: lengths sum to {expected[-1]} but feats has {self.feats.shape[0]} rows"
            )
        if self.max_seqlen != max(self.seqlens):
            raise InputError(
                f"SparseTokens: max_seqlen is {self.max_seqlen}, longest sample has {max(self.seqlens)}"
            )
        if not (len(self.modality) == len(self.meta) == len(self.seqlens)):
            raise InputError("SparseTokens: modality/meta must have one entry per sample")
        if self.coords.numel():
            lo, hi = int(self.coords.min()), int(self.coords.max())
            if lo < 0 or hi >= COORD_LIMIT:
                raise InputError(
                    f"SparseTokens: coords must lie in [0, {COORD_LIMIT}), got range [{lo}, {hi}]"
                )
        if not all_finite(self.feats):
            raise InputError("SparseTokens: feats contain NaN or Inf")
        return self


def collate(samples: Sequence[PatchTokens]) -> SparseTokens:
    """Pack per-sample tokens into one `SparseTokens` batch (computes cu_seqlens once).

    Raises:
        InputError: empty batch, an empty sample, mismatched feature widths, or non-finite values.
    """
    if isinstance(samples, PatchTokens):
        samples = [samples]
    if not samples:
        raise InputError("collate: got an empty batch; pass at least one sample")
    widths = {s.feats.shape[1] for s in samples}
    if len(widths) != 1:
        raise InputError(f"collate: samples have different feature widths {sorted(widths)}")
    for i, s in enumerate(samples):
        if len(s) == 0:
            raise InputError(f"collate: sample {i} ({s.modality}) has no tokens")
    seqlens = tuple(len(s) for s in samples)
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seqlens, dtype=torch.int64), 0).to(torch.int32)
    feats = torch.cat([s.feats for s in samples], 0)
    coords = torch.cat([s.coords.to(torch.int32) for s in samples], 0)
    tokens = SparseTokens(
        feats=feats,
        coords=coords.to(feats.device),
        cu_seqlens=cu.to(feats.device),
        max_seqlen=max(seqlens),
        seqlens=seqlens,
        modality=tuple(s.modality for s in samples),
        meta=tuple(dict(s.meta) for s in samples),
    )
    if not all_finite(feats):
        bad = [i for i, s in enumerate(samples) if not torch.isfinite(s.feats).all()]
        raise InputError(f"collate: sample(s) {bad} contain NaN or Inf features")
    return tokens
