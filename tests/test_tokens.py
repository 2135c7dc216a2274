"""SparseTokens packing and its invariants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from atoken import InputError, PatchTokens, collate


def _sample(n: int, c: int = 8, modality: str = "image") -> PatchTokens:
    coords = torch.stack([torch.zeros(n), torch.arange(n), torch.zeros(n), torch.zeros(n)], 1).int()
    return PatchTokens(torch.randn(n, c), coords, modality, {"n": n})


def test_collate_packs_samples_in_order() -> None:
    a, b, c = _sample(3), _sample(5), _sample(1)
    batch = collate([a, b, c]).validate()
    assert batch.cu_seqlens.tolist() == [0, 3, 8, 9]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.coords.dtype == torch.int32
    assert batch.max_seqlen == 5 and batch.seqlens == (3, 5, 1)
    assert torch.equal(batch.feats[3:8], b.feats)
    assert batch.batch_index().tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2]
    parts = batch.split()
    assert [len(p) for p in parts] == [3, 5, 1] and parts[1].meta == {"n": 5}
    assert torch.equal(parts[2].feats, c.feats)


def test_replace_keeps_layout_and_refuses_wrong_rows() -> None:
    batch = collate([_sample(2), _sample(4)])
    new = batch.replace(torch.zeros(6, 3))
    assert new.feats.shape == (6, 3) and new.cu_seqlens is batch.cu_seqlens
    with pytest.raises(ValueError, match="5 rows"):
        batch.replace(torch.zeros(5, 3))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: {"cu_seqlens": torch.tensor([0, 2, 5], dtype=torch.int32)}, "do not match"),
        (lambda b: {"max_seqlen": 2}, "max_seqlen"),
        (lambda b: {"coords": b.coords.long()}, "int32"),
        (lambda b: {"coords": b.coords + 2000}, r"\[0, 1024\)"),
        (lambda b: {"feats": b.feats.index_fill(0, torch.tensor([1]), float("nan"))}, "NaN"),
        (lambda b: {"modality": ("image",)}, "one entry per sample"),
    ],
)
def test_validate_names_the_broken_invariant(mutate, message) -> None:
    batch = collate([_sample(2), _sample(4)])
    broken = dataclasses.replace(batch, **mutate(batch))
    with pytest.raises(InputError, match=message):
        broken.validate()


def test_collate_rejects_bad_batches() -> None:
    with pytest.raises(InputError, match="empty batch"):
        collate([])
    with pytest.raises(InputError, match="different feature widths"):
        collate([_sample(2, c=8), _sample(2, c=4)])
    with pytest.raises(InputError, match="no tokens"):
        collate([_sample(2), _sample(0)])
    bad = _sample(3)
    bad.feats[0, 0] = float("inf")
    with pytest.raises(InputError, match=r"sample\(s\) \[1\]"):
        collate([_sample(2), bad])


def test_patch_tokens_check_shapes() -> None:
    with pytest.raises(InputError, match=r"coords must be an int tensor \[n, 4\]"):
        PatchTokens(torch.zeros(3, 8), torch.zeros(3, 3, dtype=torch.int32), "image")
    with pytest.raises(InputError, match="3 rows but coords has 2"):
        PatchTokens(torch.zeros(3, 8), torch.zeros(2, 4, dtype=torch.int32), "image")
    with pytest.raises(InputError, match="must be integers"):
        PatchTokens(torch.zeros(2, 8), torch.zeros(2, 4), "image")


def test_all_finite_checks_every_element_in_chunks() -> None:
    from atoken.core.tokens import all_finite

    x = torch.zeros(5, 7, 3)
    assert all_finite(x, chunk=4) and all_finite(x[:, ::2], chunk=4)  # contiguous and strided
    for value in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[4, 6, 2] = value  # the very last element: in the last chunk
        assert not all_finite(y, chunk=4) and not all_finite(y[:, ::3], chunk=4)
    assert all_finite(torch.arange(5))  # integers are always finite
