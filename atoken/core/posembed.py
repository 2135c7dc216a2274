"""Learned 2D absolute position embedding, resized to each sample's grid.

A ``grid x grid`` table (SigLIP2's 16 x 16) is resized per sample with antialiased bilinear
interpolation to ``(max x + 1, max y + 1)`` and read at each token's ``(x, y)``; ``t`` and ``z``
get none. Samples that share a grid size share one resize.

References: SigLIP2 NaFlex position-embedding resize (Tschannen et al., 2025); AToken release
for applying it per sample of a packed batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atoken.core.tokens import SparseTokens


class LearnedPositionEmbedding2D(nn.Module):
    """Per-sample resized learned table.

    Args:
        width: embedding channels.
        grid: side of the stored square table.

    The parameter is ``position_embedding.weight [grid*grid, width]`` (row-major over x, y).
    """

    def __init__(self, width: int, grid: int = 16) -> None:
        super().__init__()
        self.grid = grid
        self.position_embedding = nn.Embedding(grid * grid, width)

    def table(self, rows: int, cols: int) -> Tensor:
        """The table resized to ``[rows, cols, width]``."""
        w = self.position_embedding.weight  # [G*G, D]
        img = w.reshape(self.grid, self.grid, -1).permute(2, 0, 1)[None]  # [1, D, G, G]
        if (rows, cols) != (self.grid, self.grid):
            img = F.interpolate(
                img.float(), size=(rows, cols), mode="bilinear", align_corners=False, antialias=True
            ).to(w.dtype)
        return img[0].permute(1, 2, 0)  # [rows, cols, D]

    def forward(self, tokens: SparseTokens) -> Tensor:
        """``[N, width]`` embedding for every token of the packed batch."""
        out = tokens.feats.new_empty(tokens.num_tokens, self.position_embedding.weight.shape[1])
        x, y = tokens.coords[:, 1].long(), tokens.coords[:, 2].long()  # [N], [N]
        slices = tokens.sample_slices()
        extents = torch.stack(
            [torch.stack((x[s].max(), y[s].max())) for s in slices]
        ).tolist()  # [B, 2] one host sync
        cache: dict[tuple[int, int], Tensor] = {}
        for s, (mx, my) in zip(slices, extents, strict=True):
            key = (mx + 1, my + 1)
            if key not in cache:
                cache[key] = self.table(*key)
            out[s] = cache[key][x[s], y[s]].to(out.dtype)  # [n, D]
        return out
