"""4D RoPE: exact frequencies, and attention scores that depend only on coordinate differences."""

from __future__ import annotations

import math

import pytest
import torch

from atoken.core.rope import Rope4D, rope_frequencies


def test_frequencies_use_the_full_head_dim() -> None:
    f = rope_frequencies(72)
    assert f.shape == (9,)
    expected = torch.tensor([10000 ** (-i / 72) for i in range(9)], dtype=torch.float32)
    torch.testing.assert_close(f, expected)
    assert math.isclose(float(f[-1]), 0.3594, abs_tol=1e-4)  # spans only 1 ... ~0.36
    with pytest.raises(ValueError, match="divisible by 8"):
        rope_frequencies(20)


def _scores(rope: Rope4D, q, k, pq, pk) -> torch.Tensor:
    qr, _ = rope(q, q, pq)
    _, kr = rope(k, k, pk)
    return (qr * kr).sum(-1)  # [P, H]


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_scores_depend_only_on_coordinate_differences(axis: int) -> None:
    g = torch.Generator().manual_seed(0)
    rope = Rope4D(72)
    q, k = torch.randn(16, 2, 72, generator=g), torch.randn(16, 2, 72, generator=g)
    pq = torch.randint(0, 50, (16, 4), generator=g)
    pk = torch.randint(0, 50, (16, 4), generator=g)
    shift = torch.zeros(4, dtype=torch.long)
    shift[axis] = 37
    base = _scores(rope, q, k, pq, pk)
    moved = _scores(rope, q, k, pq + shift, pk + shift)
    torch.testing.assert_close(moved, base, atol=2e-4, rtol=1e-4)
    # ... but moving only the key along that axis changes them
    changed = _scores(rope, q, k, pq, pk + shift)
    assert (changed - base).abs().max() > 1e-2


def test_each_axis_rotates_its_own_chunk() -> None:
    rope = Rope4D(72)
    x = torch.randn(1, 1, 72)
    for axis in range(4):
        pos = torch.zeros(1, 4, dtype=torch.long)
        pos[0, axis] = 5
        y, _ = rope(x, x, pos)
        changed = (y - x).abs()[0, 0].view(4, 18).amax(-1) > 1e-6
        assert changed.tolist() == [a == axis for a in range(4)]


def test_rotation_preserves_norms_and_dtype() -> None:
    rope = Rope4D(64)
    x = torch.randn(10, 3, 64, dtype=torch.bfloat16)
    pos = torch.randint(0, 1000, (10, 4))
    y, _ = rope(x, x, pos)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().norm(dim=-1), x.float().norm(dim=-1), atol=0.05, rtol=0.02)
