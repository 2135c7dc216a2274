"""Temporal tiling: long clips run through a transformer a few latent frames at a time.

A sample whose tokens span more than ``tile`` latent frames (distinct t values) is cut along t
into tiles; samples that fit in one tile run whole. Without a cache, tiles attend only within
themselves; they are independent, so tiles of any samples are packed into passes of at most
``group_tokens`` tokens. With a cache of k frames, a tile adds ``tile - k`` new frames and its
queries also attend to the k frames before it: tiles run in order (step j holds the j-th tile of
every sample) and each attention layer carries the keys (after qk-norm, before RoPE) and values
of those frames to the next step, where they are rotated again at positions re-based to the new
tile. Each frame's keys and values are computed once, in the tile where it is new.

With ``restart_t`` every tile's t starts at 0 at its first frame, cached or new (RoPE is
relative, so this changes only rounding; it keeps the angles small). Results are scattered back
to the input row order, so the per-token layers before and after the blocks (input layer,
learned position embedding, final norm, output layer) and the pooling head see whole samples:
a tiled clip's embedding pools all of its tokens, as in the release. (The release resizes the
position table per tile; per sample is the same whenever a clip's frames share one grid.)
Peak memory is that of one pass (at most ``group_tokens`` tokens, or one tile per sample) plus
the inputs and outputs; attention across all tiles is never formed. `stream_tiles` runs the
passes as a generator, so a decoder can hand each step's rows on (to a video file) and never hold
the whole output; `atoken.core.execution.ExecutionPlan` chooses how the steps are fed.

References: AToken (Lu et al., arXiv 2509.14476), temporal tiling with a KV cache for video;
the public AToken inference release (apple/ml-atoken) for 16-frame tiles with t restarted at 0
and a decoder cache of keys before RoPE whose positions are re-based.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from atoken.core.tokens import COORD_LIMIT, SparseTokens

Rotation = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class KeyPlan:
    """How a cached step lays out its keys: per tile, the carried frames, then its own.

    Attributes:
        index: ``[M]`` gather from ``cat(carried, new)`` into that order; None when nothing is
            carried in (the keys are the step's own tokens).
        coords: ``[M, 4]`` key positions (re-based like the queries); None with ``index``.
        seqlens: keys per tile.
        keep: ``[M']`` which of the M keys the next step carries; None after the last step.
    """

    index: Tensor | None
    coords: Tensor | None
    seqlens: tuple[int, ...]
    keep: Tensor | None


@dataclass(frozen=True)
class TileStep:
    """One transformer pass over a set of tiles.

    Attributes:
        rows: ``[n]`` int64 input rows of the tiles' tokens, tile after tile.
        layout: the tiles as a packed batch (``feats [n, 0]``; coords re-based with restart_t).
        keys: key layout when a cache is used, else None.
    """

    rows: Tensor
    layout: SparseTokens
    keys: KeyPlan | None = None


@dataclass
class KVCache:
    """Keys and values one cached step receives from the previous step and passes to the next.

    Attributes:
        plan: the step's key layout.
        carried: per layer ``(k, v)`` ``[C, H, Dh]`` from the previous step, or None.
        layers: per layer, the view its attention layer used (what it kept is read from there).
    """

    plan: KeyPlan
    carried: Sequence[tuple[Tensor, Tensor]] | None = None
    layers: dict[int, LayerKV] = field(default_factory=dict)

    def layer(self, index: int, rope: Rotation | None) -> LayerKV:
        """The view attention layer ``index`` uses; ``rope`` rotates the merged keys.

        The view holds only that layer's tensors and the step's flags, so a compiled block
        sees the same structure at every layer (no per-layer guards).
        """
        merge = self.plan.index is not None and self.carried is not None
        view = LayerKV(
            carried=self.carried[index] if merge else None,
            index=self.plan.index if merge else None,
            keep=self.plan.keep,
            rope=rope,
        )
        self.layers[index] = view
        return view

    def carry(self) -> list[tuple[Tensor, Tensor]] | None:
        """What the next step receives (per layer), or None after the last step."""
        if self.plan.keep is None:
            return None
        return [self.layers[i].kept[0] for i in range(len(self.layers))]


@dataclass
class LayerKV:
    """One attention layer's part of a `KVCache`.

    Attributes:
        carried: this layer's ``(k, v)`` ``[C, H, Dh]`` from the previous step, or None.
        index: ``[M]`` gather from ``cat(carried, new)`` into key order (None: no carried keys).
        keep: ``[M']`` which merged keys the next step carries (None: the last step).
        rope: rotation of the merged keys.
        kept: filled by `merge` with the ``(k, v)`` to carry (one entry).
    """

    carried: tuple[Tensor, Tensor] | None
    index: Tensor | None
    keep: Tensor | None
    rope: Rotation | None
    kept: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def merge(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Prepend the carried keys/values to ``k, v [n, H, Dh]`` -> ``[M, H, Dh]``."""
        if self.carried is not None and self.index is not None:
            ck, cv = self.carried
            k = torch.cat((ck, k)).index_select(0, self.index)  # [M, H, Dh]
            v = torch.cat((cv, v)).index_select(0, self.index)  # [M, H, Dh]
        if self.keep is not None:  # detached, as in the release: no gradient across tiles
            self.kept.append(
                (k.index_select(0, self.keep).detach(), v.index_select(0, self.keep).detach())
            )
        return k, v


def plan_tiles(
    tokens: SparseTokens,
    *,
    tile: int | None,
    cache: int = 0,
    restart_t: bool = True,
    group_tokens: int = 32768,
    lazy: bool = False,
) -> list[TileStep] | Iterator[TileStep] | None:
    """Cut the samples of a packed batch into temporal tiles.

    Args:
        tokens: the batch (only coords and layout are read).
        tile: latent frames a tile attends over (cached + new); None never tiles.
        cache: frames of keys/values carried from tile to tile (``0 <= cache < tile``).
        restart_t: re-base t so each tile starts at 0 at its first frame.
        group_tokens: token budget of one pass when there is no cache.
        lazy: return an iterator that builds each pass when it is reached (the bookkeeping of
            a long clip's passes then never exists all at once).

    Returns:
        The passes to run in order (a list, or an iterator with ``lazy``), or None when no sample spans more than ``tile`` frames
        (run the batch as it is).
    """
    if tile is None or tokens.num_tokens == 0:
        return None
    if not 0 <= cache < tile:
        raise ValueError(f"cache must lie in [0, tile={tile}), got {cache}")
    lo, hi = torch.stack(torch.aminmax(tokens.coords[:, 0])).tolist()
    if hi - lo < tile:  # nothing can span more than a tile: the common, untiled case
        return None
    frames = _Frames.of(tokens)
    if max(frames.per_sample) <= tile:
        return None
    stride, tiles, first = tile - cache, [], 0
    for count in frames.per_sample:  # per sample: (window start, new from, new to) frame indices
        if count <= tile:
            spans = [(0, 0, count)]
        else:
            spans = [
                (max(0, s - cache), s, min(s + stride, count)) for s in range(0, count, stride)
            ]
        tiles.append([(first + w, first + a, first + e) for w, a, e in spans])
        first += count
    if cache == 0:
        steps = _packed_steps(frames, tiles, restart_t, group_tokens)
    else:
        steps = _cached_steps(frames, tiles, restart_t)
    return steps if lazy else list(steps)


@dataclass(frozen=True)
class _Frames:
    """A batch's rows grouped by frame: distinct (sample, t) pairs in sorted order.

    Attributes:
        tokens: the batch.
        order: ``[N]`` rows sorted by sample, frame, then input order.
        row_at: frame f owns ``order[row_at[f]:row_at[f + 1]]``.
        t: each frame's t.
        per_sample: frames of each sample.
    """

    tokens: SparseTokens
    order: Tensor
    row_at: list[int]
    t: list[int]
    per_sample: list[int]

    @classmethod
    def of(cls, tokens: SparseTokens) -> _Frames:
        key = tokens.batch_index() * COORD_LIMIT + tokens.coords[:, 0].long()  # [N]
        uniq, frame = torch.unique(key, return_inverse=True)  # [F], [N]
        counts = torch.bincount(frame, minlength=len(uniq))  # [F]
        return cls(
            tokens=tokens,
            order=torch.argsort(frame, stable=True),
            row_at=[0, *torch.cumsum(counts, 0).tolist()],
            t=(uniq % COORD_LIMIT).tolist(),
            per_sample=torch.bincount(uniq // COORD_LIMIT, minlength=tokens.batch_size).tolist(),
        )

    def rows(self, f0: int, f1: int) -> Tensor:
        """``[n]`` rows of frames ``f0 .. f1 - 1``."""
        return self.order[self.row_at[f0] : self.row_at[f1]]

    def size(self, f0: int, f1: int) -> int:
        return self.row_at[f1] - self.row_at[f0]

    def step(
        self, spans: list[tuple[int, int, int]], samples: list[int], restart_t: bool
    ) -> TileStep:
        """The pass over the new frames of ``spans`` (window start, from, to), one per tile."""
        rows = torch.cat([self.rows(a, b) for _, a, b in spans])  # [n]
        lengths = [self.size(a, b) for _, a, b in spans]
        origins = [self.t[w] for w, _, _ in spans]
        coords = _rebase(self.tokens.coords, rows, origins, lengths, restart_t)
        return TileStep(rows, _layout(self.tokens, coords, lengths, samples))


def _packed_steps(
    frames: _Frames, tiles: list[list[tuple[int, int, int]]], restart_t: bool, budget: int
) -> Iterator[TileStep]:
    """Independent tiles, packed in order into passes of at most ``budget`` tokens."""
    group, samples, size = [], [], 0
    for b, sample_tiles in enumerate(tiles):
        for span in sample_tiles:
            n = frames.size(span[1], span[2])
            if group and size + n > budget:
                yield frames.step(group, samples, restart_t)
                group, samples, size = [], [], 0
            group.append(span)
            samples.append(b)
            size += n
    yield frames.step(group, samples, restart_t)


def _cached_steps(
    frames: _Frames, tiles: list[list[tuple[int, int, int]]], restart_t: bool
) -> Iterator[TileStep]:
    """Step j runs the j-th tile of every sample; its keys are its window's frames."""
    for j in range(max(len(s) for s in tiles)):
        samples = [b for b, s in enumerate(tiles) if len(s) > j]
        spans = [tiles[b][j] for b in samples]
        new = frames.step(spans, samples, restart_t)
        key_lengths = [frames.size(w, c) for w, _, c in spans]
        index = coords = None
        if j > 0:  # carried rows (from the previous step's keep) then the new ones, per tile
            carried = [frames.size(w, a) for w, a, _ in spans]
            index = _interleave(carried, new.layout.seqlens, new.rows.device)
            key_rows = torch.cat([frames.rows(w, c) for w, _, c in spans])  # [M]
            origins = [frames.t[w] for w, _, _ in spans]
            coords = _rebase(frames.tokens.coords, key_rows, origins, key_lengths, restart_t)
        keep, end = [], 0  # per tile that goes on: its keys of the next window's cached frames
        for b, (_, _, c), n in zip(samples, spans, key_lengths, strict=True):
            end += n
            if len(tiles[b]) > j + 1:
                keep.append(torch.arange(end - frames.size(tiles[b][j + 1][0], c), end))
        keep_index = torch.cat(keep).to(new.rows.device) if keep else None
        yield TileStep(new.rows, new.layout, KeyPlan(index, coords, tuple(key_lengths), keep_index))


def _rebase(
    coords: Tensor, rows: Tensor, origins: list[int], lengths: list[int], restart_t: bool
) -> Tensor:
    """``coords[rows]`` ``[n, 4]``, with t minus each tile's origin when ``restart_t``."""
    out = coords.index_select(0, rows)
    if restart_t:
        shift = torch.repeat_interleave(
            torch.tensor(origins, dtype=out.dtype, device=out.device),
            torch.tensor(lengths, device=out.device),
            output_size=out.shape[0],
        )  # [n]
        out[:, 0] -= shift
    return out


def _interleave(carried: list[int], new: Sequence[int], device: torch.device) -> Tensor:
    """Index into ``cat(carried, new)`` giving, per tile, its carried rows then its new rows."""
    total, parts, c0, n0 = sum(carried), [], 0, 0
    for c, n in zip(carried, new, strict=True):
        parts += [torch.arange(c0, c0 + c), torch.arange(total + n0, total + n0 + n)]
        c0, n0 = c0 + c, n0 + n
    return torch.cat(parts).to(device)


def _layout(
    tokens: SparseTokens, coords: Tensor, lengths: list[int], samples: list[int]
) -> SparseTokens:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return SparseTokens(
        feats=tokens.feats.new_empty((coords.shape[0], 0)),
        coords=coords,
        cu_seqlens=cu.to(coords.device),
        max_seqlen=max(lengths),
        seqlens=tuple(lengths),
        modality=tuple(tokens.modality[b] for b in samples),
        meta=tuple(tokens.meta[b] for b in samples),
    )


def stream_tiles(
    embed: Callable[[Tensor], Tensor],
    steps: Iterable[TileStep],
    blocks: Callable[[Tensor, SparseTokens, KVCache | None], Tensor],
) -> Iterator[tuple[Tensor, Tensor]]:
    """Run ``blocks`` over each step's tiles: yields ``(rows [n], outputs [n, D])`` per step, in order.

    Only one step's inputs and outputs (plus the carried keys/values) are alive at a time, so a
    caller that consumes each step (writes its frames out) never holds the whole batch's
    activations. With a cache the steps must run in this order, which the generator keeps.

    Args:
        embed: ``embed(rows [n]) -> [n, D]`` embedded tokens of those input rows.
        steps: from `plan_tiles`.
        blocks: ``blocks(x_tiles [n, D], layout, cache) -> [n, D]``.
    """
    carried = None
    for step in steps:
        xs = embed(step.rows)  # [n, D]
        cache = KVCache(step.keys, carried) if step.keys is not None else None
        ys = blocks(xs, step.layout.replace(xs), cache)  # [n, D]
        carried = cache.carry() if cache is not None else None
        del xs, cache
        yield step.rows, ys
