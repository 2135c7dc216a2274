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

    def rows(self, tokens: SparseTokens) -> RowPositions:
        """A reader of this embedding for any rows of ``tokens`` (see `RowPositions`)."""
        return RowPositions(self, tokens)


class RowPositions:
    """`LearnedPositionEmbedding2D` read for any rows, the table sized per whole sample.

    ``reader(rows)`` equals ``embedder(tokens)[rows]`` without forming the ``[N, D]`` embedding
    (tile steps of a long clip read their rows one step at a time).
    """

    def __init__(self, embedder: LearnedPositionEmbedding2D, tokens: SparseTokens) -> None:
        self.embedder = embedder
        self.x, self.y = tokens.coords[:, 1].long(), tokens.coords[:, 2].long()  # [N], [N]
        self.extents = torch.stack(
            [
                torch.stack((self.x[s].max() + 1, self.y[s].max() + 1))
                for s in tokens.sample_slices()
            ]
        ).tolist()  # [B, 2]
        self.sample = tokens.batch_index()  # [N]
        self.dtype = tokens.feats.dtype
        self.tables: dict[tuple[int, int], Tensor] = {}

    def __call__(self, rows: Tensor) -> Tensor:
        width = self.embedder.position_embedding.weight.shape[1]
        out = torch.empty(len(rows), width, dtype=self.dtype, device=rows.device)  # [n, D]
        owner = self.sample.index_select(0, rows)  # [n]
        x, y = self.x.index_select(0, rows), self.y.index_select(0, rows)
        for b in torch.unique(owner).tolist():
            key = tuple(self.extents[b])
            if key not in self.tables:
                self.tables[key] = self.embedder.table(*key)
            m = owner == b
            out[m] = self.tables[key][x[m], y[m]].to(out.dtype)  # [n_b, D]
        return out
