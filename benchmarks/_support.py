"""Shared pieces of the benchmark suite: the image mix, FLOP counts, the padded baseline, timing.

Kept out of ``conftest.py`` so the test modules can import it (``benchmarks/`` is on
``sys.path`` under pytest's default ``prepend`` import mode).

References: nanoGPT's ``estimate_mfu`` (matmul-only FLOP count, burn-in then measure);
pytest-benchmark's ``pedantic`` mode.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

import atoken
from atoken.core.config import ModelConfig, TransformerConfig
from atoken.core.layers import SelfAttention
from atoken.core.rope import Rope4D
from atoken.core.tokens import SparseTokens
from atoken.core.transformer import Decoder, Encoder, SparseTransformer

# ---------------------------------------------------------------------------------------- device


def bench_device() -> torch.device:
    """``$ATOKEN_BENCH_DEVICE`` (default ``cpu``)."""
    return torch.device(os.environ.get("ATOKEN_BENCH_DEVICE", "cpu"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- images


def skimage_data() -> Path:
    """The folder of photos bundled with scikit-image (read by path; nothing is downloaded)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


#: (photo bundled with scikit-image, height, width); every side a multiple of 16, so the image
#: adapter neither crops nor resizes. "small" keeps one atoken-base forward at a few seconds on
#: 2 CPU cores; "full" is the issue's 64..512 px mix (2680 tokens), the default on CUDA.
MIXES: dict[str, tuple[tuple[str, int, int], ...]] = {
    "small": (
        ("motorcycle_left.png", 64, 64),
        ("chelsea.png", 96, 160),
        ("coffee.png", 128, 128),
        ("rocket.jpg", 192, 256),
        ("astronaut.png", 384, 384),
    ),
    "full": (
        ("motorcycle_left.png", 64, 64),
        ("chelsea.png", 96, 160),
        ("coffee.png", 128, 128),
        ("rocket.jpg", 192, 256),
        ("astronaut.png", 256, 256),
        ("chelsea.png", 320, 240),
        ("coffee.png", 384, 512),
        ("astronaut.png", 512, 512),
    ),
}


def mix_name(device: torch.device) -> str:
    """``$ATOKEN_BENCH_MIX``, else ``full`` on CUDA and ``small`` elsewhere."""
    name = os.environ.get("ATOKEN_BENCH_MIX", "full" if device.type == "cuda" else "small")
    if name not in MIXES:
        raise pytest.UsageError(f"ATOKEN_BENCH_MIX={name!r}; choose one of {sorted(MIXES)}")
    return name


def load_photo(name: str, height: int, width: int) -> Tensor:
    """A bundled photo scaled to cover ``height x width`` and centre-cropped: ``[h, w, 3]`` in [-1, 1]."""
    with Image.open(skimage_data() / name) as im:
        im = im.convert("RGB")
        scale = max(height / im.height, width / im.width)
        size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.BICUBIC)
        left, top = (im.width - width) // 2, (im.height - height) // 2
        im = im.crop((left, top, left + width, top + height))
        pixels = np.asarray(im, dtype=np.float32)  # [h, w, 3] in [0, 255]
    return torch.from_numpy(pixels / 127.5 - 1.0)


def mixed_samples(name: str) -> list[atoken.PatchTokens]:
    """The mix as per-sample tokens, made by the image adapter."""
    from atoken.plugins.image.adapter import ImageAdapter

    adapter = ImageAdapter()
    return [adapter.to_tokens(load_photo(*spec)) for spec in MIXES[name]]


# ---------------------------------------------------------------------------------------- FLOPs
# Matmul FLOPs only (2 per multiply-add), as nanoGPT's MFU: norms, RoPE, GELU, biases and the
# softmax are not counted.


def layer_flops(width: int, mlp_width: int, seqlens: Sequence[int]) -> int:
    """One block: qkv 6ND^2, out 2ND^2, MLP 4NDM, attention (QK^T and AV) 4D*sum(n_i^2)."""
    n, d, m = sum(seqlens), width, mlp_width
    return 6 * n * d * d + 2 * n * d * d + 4 * n * d * m + 4 * d * sum(s * s for s in seqlens)


def stack_flops(cfg: TransformerConfig, seqlens: Sequence[int]) -> int:
    """The blocks of one stack."""
    return cfg.depth * layer_flops(cfg.width, cfg.mlp_width, seqlens)


def encoder_flops(config: ModelConfig, seqlens: Sequence[int]) -> int:
    """Input linear (patch -> D) plus the encoder blocks."""
    return 2 * sum(seqlens) * config.patch_dim * config.encoder.width + stack_flops(
        config.encoder, seqlens
    )


def project_flops(config: ModelConfig, seqlens: Sequence[int]) -> int:
    """The latent projection D -> 2 Cz."""
    return 2 * sum(seqlens) * config.encoder.width * 2 * config.latent_channels


def decoder_flops(config: ModelConfig, seqlens: Sequence[int]) -> int:
    """Input linear (Cz -> D), the decoder blocks and the output linear (D -> patch)."""
    if config.decoder is None:
        raise ValueError(f"{config.preset} has no decoder")
    n, d = sum(seqlens), config.decoder.width
    return (
        2 * n * config.latent_channels * d
        + stack_flops(config.decoder, seqlens)
        + 2 * n * d * config.patch_dim
    )


def torch_encoder_flops(width: int, mlp_width: int, depth: int, seq_len: int) -> int:
    """`torch.nn.TransformerEncoder` on one sequence: the same per-layer count."""
    return depth * layer_flops(width, mlp_width, [seq_len])


# ---------------------------------------------------------------------------------------- padded baseline


@dataclass(frozen=True)
class PaddedBatch:
    """The mix as a dense-batch tokenizer sees it: every sample padded to the longest.

    Attributes:
        tokens: ``B * Lmax`` rows; sample b's real rows first, then zero rows at coords 0
            (coords 0 leave the per-sample position-table extents unchanged).
        key_mask: ``[B, 1, 1, Lmax]`` bool, True for real keys (SDPA's ``attn_mask``).
        real_rows: ``[B * Lmax]`` bool, True for real rows.
        real_seqlens: the unpadded lengths.
    """

    tokens: SparseTokens
    key_mask: Tensor
    real_rows: Tensor
    real_seqlens: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.tokens.batch_size, self.tokens.max_seqlen


def pad_to_longest(batch: SparseTokens) -> PaddedBatch:
    """Pad each sample of a packed batch with dummy rows up to ``max_seqlen``."""
    b, lmax = batch.batch_size, batch.max_seqlen
    device = batch.feats.device
    lengths = torch.tensor(batch.seqlens, device=device)
    keep = torch.arange(lmax, device=device)[None, :] < lengths[:, None]  # [B, Lmax]
    feats = batch.feats.new_zeros(b * lmax, batch.feats.shape[1])
    coords = batch.coords.new_zeros(b * lmax, 4)
    rows = keep.flatten()
    feats[rows] = batch.feats
    coords[rows] = batch.coords
    cu = torch.arange(0, (b + 1) * lmax, lmax, dtype=torch.int32, device=device)
    tokens = SparseTokens(
        feats=feats,
        coords=coords,
        cu_seqlens=cu,
        max_seqlen=lmax,
        seqlens=(lmax,) * b,
        modality=batch.modality,
        meta=batch.meta,
    )
    return PaddedBatch(tokens, keep[:, None, None, :], rows, batch.seqlens)


def _padded_attention(
    attn: SelfAttention, x: Tensor, rope: tuple[Tensor, Tensor] | None, padded: PaddedBatch
) -> Tensor:
    """`SelfAttention` as a dense batch with a key-padding mask; ``x [B*L, C]`` -> ``[B*L, C]``."""
    b, lmax = padded.shape
    qkv = attn.to_qkv(x).unflatten(-1, (3, attn.num_heads, attn.head_dim))  # [B*L, 3, H, Dh]
    q, k, v = qkv.unbind(1)  # [B*L, H, Dh] each
    if attn.qk_norm:
        q, k = attn.q_rms_norm(q), attn.k_rms_norm(k)
    if rope is not None:
        q, k = Rope4D.rotate(q, *rope), Rope4D.rotate(k, *rope)
    q, k, v = (t.unflatten(0, (b, lmax)).transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=padded.key_mask)  # [B, H, L, Dh]
    return attn.to_out(out.transpose(1, 2).reshape(b * lmax, -1))  # [B*L, C]


def padded_trunk(stack: SparseTransformer, padded: PaddedBatch) -> Tensor:
    """`SparseTransformer.trunk` on the padded batch with the stack's own modules; ``[B*L, D]``."""
    tokens = padded.tokens
    x = stack.input_layer(tokens.feats)  # [B*L, D]
    x = x + stack.pos_embedder(tokens)  # [B*L, D]
    rope = stack.rope.rotation(tokens.coords) if stack.rope is not None else None
    for block in stack.blocks:
        x = x + _padded_attention(block.attn, block.norm1(x), rope, padded)  # [B*L, D]
        x = x + block.mlp(block.norm2(x))  # [B*L, D]
    return x


def padded_encode(encoder: Encoder, padded: PaddedBatch) -> Tensor:
    """Dense-batch equivalent of ``Encoder.forward``: ``[B*L, D]`` (padding rows are garbage)."""
    return encoder.post_layernorm(padded_trunk(encoder, padded))


def padded_decode(decoder: Decoder, padded: PaddedBatch) -> Tensor:
    """Dense-batch equivalent of ``Decoder.forward``: ``[B*L, patch]``."""
    return decoder.out_layer(decoder.out_norm(padded_trunk(decoder, padded)))


# ---------------------------------------------------------------------------------------- timing and results


@dataclass
class Record:
    """One measured row for the end-of-run summary."""

    kind: str  # "throughput" | "padding" | "flops"
    label: dict[str, str]
    values: dict[str, Any] = field(default_factory=dict)


RESULTS_KEY = pytest.StashKey[list[Record]]()


def timed(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    """``fn`` under inference mode, ending with a device sync so GPU work is inside the timing."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        synchronize(device)
        return out

    return run


Setup = Callable[[], tuple[tuple, dict]]


@dataclass(frozen=True)
class Measured:
    """What `measure` returns.

    Attributes:
        result: the timed function's last output.
        best: best round in seconds (None when pytest-benchmark is disabled).
        paired_best: best time of the paired reference, timed once before every round.
    """

    result: Any
    best: float | None
    paired_best: float | None = None


def measure(
    benchmark,
    fn: Callable[..., Any],
    setup: Setup,
    *,
    device: torch.device,
    rounds: int,
    warmup_rounds: int = 1,
    paired: tuple[Callable[..., Any], Setup] | None = None,
) -> Measured:
    """``benchmark.pedantic`` with sync, inference mode and peak memory.

    The best (minimum) round is used for rates, because on a shared machine the other rounds also
    measure other jobs' load. ``paired = (ref_fn, ref_setup)`` times a reference once inside the
    setup of every round (outside the benchmark's timing). A ratio of two interleaved
    measurements stays valid when the machine's load drifts between tests.
    """
    ref_times: list[float] = []

    def round_setup() -> tuple[tuple, dict]:
        if paired is not None:
            ref_fn, ref_setup = paired
            ref_args, ref_kwargs = ref_setup()
            synchronize(device)
            start = time.perf_counter()
            timed(ref_fn, device)(*ref_args, **ref_kwargs)
            ref_times.append(time.perf_counter() - start)
        args = setup()
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return args

    result = benchmark.pedantic(
        timed(fn, device), setup=round_setup, rounds=rounds, warmup_rounds=warmup_rounds
    )
    if device.type == "cuda":
        benchmark.extra_info["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return Measured(result, None)
    best = float(stats.stats.min)
    benchmark.extra_info["best_s"] = best
    benchmark.extra_info["median_s"] = float(stats.stats.median)
    paired_best = min(ref_times) if ref_times else None
    if paired_best is not None:
        benchmark.extra_info["paired_best_s"] = paired_best
    return Measured(result, best, paired_best)


# ---------------------------------------------------------------------------------------- the mix


@dataclass(frozen=True)
class Mix:
    """The variable-resolution batch every benchmark runs on."""

    name: str
    samples: tuple[atoken.PatchTokens, ...]

    @property
    def seqlens(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.samples)

    @property
    def num_tokens(self) -> int:
        return sum(self.seqlens)

    @property
    def padded_tokens(self) -> int:
        return max(self.seqlens) * len(self.samples)

    def describe(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for _, h, w in MIXES[self.name])
        return (
            f"mix {self.name!r}: {len(self.samples)} images ({sizes}) = {self.num_tokens} tokens,"
            f" longest {max(self.seqlens)}, padded {self.padded_tokens}"
        )

    def packed(self, device: torch.device) -> SparseTokens:
        """A freshly collated batch on ``device`` (call it in ``setup``, not in the timed code)."""
        return atoken.collate(list(self.samples)).to(device)

    def latents(self, channels: int, device: torch.device) -> SparseTokens:
        """The batch layout with seeded random ``[N, channels]`` latents (decoder input)."""
        tokens = atoken.collate(list(self.samples))
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(tokens.num_tokens, channels, generator=gen)
        return tokens.replace(z).to(device)
