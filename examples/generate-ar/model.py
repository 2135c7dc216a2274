"""A tiny autoregressive prior over FSQ indices: a spatial transformer over positions and a depth
transformer over the 8 codes of each position.

An image of ``rows x cols`` patches is ``P = rows * cols`` positions in raster order, and each
position holds ``G = 8`` FSQ codes (one per group of 6 latent dims, 4096 values each: atoken's
``Latents.indices [N, 8]``). The joint distribution is factorised as

    p(c) = prod_t prod_d p(c[t, d] | c[< t, :], c[t, < d])

* The **spatial transformer** (causal over positions) reads, at position ``t``, the sum of the
  8 code embeddings of position ``t - 1`` (a learned start vector at ``t = 0``) plus a learned
  position embedding, and returns a context ``h[t]`` that has seen every code of positions < t.
* The **depth transformer** (causal over the 8 codes, shared by all positions) reads
  ``h[t] + depth_emb[0]`` at step 0 and ``h[t] + depth_emb[d] + code_emb[d - 1](c[t, d - 1])``
  at step ``d``, and a separate linear head per depth gives the logits of code ``d``
  (4096 values). So code ``d`` sees the codes before it at the same position through attention,
  and the sequence the big transformer runs over is ``P`` long, not ``8 P``.

References: Lee et al., "Autoregressive Image Generation using Residual Quantization"
(RQ-Transformer, CVPR 2022): the spatial/depth split and the summed code embeddings; Défossez et
al., "Moshi" (2024): a depth transformer over per-frame codebooks; Karpathy, nanoGPT: the
pre-norm causal block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalBlock(nn.Module):
    """Pre-norm causal self-attention + MLP (``x += attn(ln(x)); x += mlp(ln(x))``)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, L, D]`` -> ``[B, L, D]`` (position ``i`` sees ``0..i``)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, L, Dh]
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))  # [B, L, D]
        return x + self.mlp(self.ln2(x))  # [B, L, D]


class DepthARPrior(nn.Module):
    """Spatial + depth transformer over ``[B, P, G]`` FSQ indices.

    Args:
        positions: ``P``, positions per image (raster order).
        groups: ``G``, codes per position (8 for the paper's So/D FSQ).
        codebook_size: values per code (4096 = 4**6).
        width: model width ``D``.
        spatial_depth / depth_depth: blocks of the spatial and of the depth transformer.
        heads: attention heads of both.
    """

    def __init__(
        self,
        positions: int,
        groups: int = 8,
        codebook_size: int = 4096,
        width: int = 192,
        spatial_depth: int = 4,
        depth_depth: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.positions, self.groups, self.codebook_size = positions, groups, codebook_size
        self.code_emb = nn.ModuleList(nn.Embedding(codebook_size, width) for _ in range(groups))
        self.start = nn.Parameter(torch.zeros(width))
        self.pos_emb = nn.Parameter(torch.randn(positions, width) * 0.02)
        self.depth_emb = nn.Parameter(torch.randn(groups, width) * 0.02)
        self.spatial = nn.ModuleList(CausalBlock(width, heads) for _ in range(spatial_depth))
        self.spatial_ln = nn.LayerNorm(width)
        self.depth = nn.ModuleList(CausalBlock(width, heads) for _ in range(depth_depth))
        self.depth_ln = nn.LayerNorm(width)
        self.heads = nn.ModuleList(nn.Linear(width, codebook_size) for _ in range(groups))
        for emb in self.code_emb:
            nn.init.normal_(emb.weight, std=0.02)

    def _check(self, codes: Tensor) -> None:
        if codes.ndim != 3 or codes.shape[2] != self.groups or codes.shape[1] > self.positions:
            raise ValueError(
                f"codes must be [B, <= {self.positions}, {self.groups}] indices, got"
                f" {tuple(codes.shape)}"
            )
        if codes.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"codes must be int32/int64 indices, got {codes.dtype}")

    def embed_positions(self, codes: Tensor) -> Tensor:
        """``codes [B, T, G]`` -> summed code embeddings ``[B, T, D]``."""
        return sum(emb(codes[..., g]) for g, emb in enumerate(self.code_emb))  # [B, T, D]

    def context(self, codes: Tensor, length: int) -> Tensor:
        """Spatial contexts ``h [B, length, D]`` from the first ``length - 1`` positions of
        ``codes [B, >= length - 1, G]`` (``h[t]`` has seen positions ``< t``)."""
        b = codes.shape[0]
        start = self.start.expand(b, 1, -1)  # [B, 1, D]
        x = torch.cat([start, self.embed_positions(codes[:, : length - 1])], 1)  # [B, length, D]
        x = x + self.pos_emb[:length]  # [B, length, D]
        for block in self.spatial:
            x = block(x)  # [B, length, D]
        return self.spatial_ln(x)  # [B, length, D]

    def depth_logits(self, h: Tensor, codes: Tensor) -> Tensor:
        """``h [M, D]`` and the known codes ``codes [M, k, G']`` (``k < G``, the first ``k``
        codes of each position) -> logits of codes ``0..k`` ``[M, k + 1, V]``."""
        k = codes.shape[1]
        steps = [h + self.depth_emb[0]]  # code 0 sees only the context
        for d in range(1, k + 1):
            steps.append(h + self.depth_emb[d] + self.code_emb[d - 1](codes[:, d - 1]))
        x = torch.stack(steps, 1)  # [M, k + 1, D]
        for block in self.depth:
            x = block(x)  # [M, k + 1, D]
        x = self.depth_ln(x)  # [M, k + 1, D]
        return torch.stack([self.heads[d](x[:, d]) for d in range(k + 1)], 1)  # [M, k + 1, V]

    def forward(self, codes: Tensor) -> Tensor:
        """Teacher-forced logits: ``codes [B, P, G]`` -> ``[B, P, G, V]``."""
        self._check(codes)
        b, p, g = codes.shape
        h = self.context(codes, p)  # [B, P, D]
        logits = self.depth_logits(h.reshape(b * p, -1), codes.reshape(b * p, g)[:, : g - 1])
        return logits.view(b, p, g, self.codebook_size)  # [B, P, G, V]

    def loss_per_code(self, codes: Tensor) -> Tensor:
        """Mean cross-entropy (nats) of each of the ``G`` codes, ``[G]``."""
        logits = self(codes)  # [B, P, G, V]
        ce = F.cross_entropy(logits.flatten(0, 2), codes.flatten().long(), reduction="none")
        return ce.view(codes.shape).mean((0, 1))  # [G]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``n`` images' indices, ``[n, P, G]`` int64: positions in raster order, and the
        ``G`` codes of each position one after the other."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        device = self.start.device
        codes = torch.zeros(n, self.positions, self.groups, dtype=torch.long, device=device)
        for t in range(self.positions):
            h = self.context(codes, t + 1)[:, t]  # [n, D]
            for d in range(self.groups):
                logits = self.depth_logits(h, codes[:, t, :d])[:, d] / temperature  # [n, V]
                if top_k is not None:
                    kth = logits.topk(top_k, -1).values[:, -1:]  # [n, 1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = logits.softmax(-1)  # [n, V]
                codes[:, t, d] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return codes
