"""Encoder/decoder tokens/s per model and attention backend, and achieved FLOP/s.

The achieved rate of atoken-base (encode + decode) is set beside two references measured in the
same run: one large fp32 matmul (the rate the machine's BLAS reaches) and a stock
`torch.nn.TransformerEncoder` of width 768 on the same number of tokens. The two FLOP tests also
time the matmul once before each of their rounds (``paired``), so their share of the matmul rate
holds even when other jobs load the machine unevenly.
"""

from __future__ import annotations

import pytest
import torch
from _support import (
    decoder_flops,
    encoder_flops,
    measure,
    project_flops,
    torch_encoder_flops,
)
from torch import nn

pytestmark = pytest.mark.bench

PRESETS = ("atoken-tiny", "atoken-base")
#: timed rounds after one warm-up round; atoken-base takes seconds per call on 2 CPU cores
ROUNDS = {"atoken-tiny": 10, "atoken-base": 3}

MATMUL_SHAPE = (4096, 768, 3072)  # [M x K] @ [K x N], the size of an atoken-base MLP matmul
MATMUL_FLOPS = 2 * MATMUL_SHAPE[0] * MATMUL_SHAPE[1] * MATMUL_SHAPE[2]


def _common(device, mix) -> dict:
    return {"device": str(device), "mix": mix.describe()}


@pytest.fixture(scope="module")
def matmul_operands(device) -> tuple[torch.Tensor, torch.Tensor]:
    m, k, n = MATMUL_SHAPE
    gen = torch.Generator().manual_seed(0)
    return torch.randn(m, k, generator=gen).to(device), torch.randn(k, n, generator=gen).to(device)


@pytest.mark.parametrize("stage", ["encoder", "decoder"], ids="stage={}".format)
@pytest.mark.parametrize("preset", PRESETS, ids="model={}".format)
def test_stage_throughput(benchmark, tokenizers, mix, backend, preset, stage, device, record):
    """``encode_dense`` (patches -> D) or ``decode`` (Cz -> patches) on the packed mix."""
    tok = tokenizers(preset)
    config = tok.config
    if stage == "encoder":

        def setup():
            return (mix.packed(device),), {}

        def run(tokens):
            return tok.encode_dense(tokens, backend=backend.name)

        flops = encoder_flops(config, mix.seqlens)
    else:

        def setup():
            return (mix.latents(config.latent_channels, device),), {}

        def run(latents):
            return tok.decode(latents, backend=backend.name)

        flops = decoder_flops(config, mix.seqlens)

    m = measure(benchmark, run, setup, device=device, rounds=ROUNDS[preset])
    assert m.result.num_tokens == mix.num_tokens
    benchmark.extra_info.update(tokens=mix.num_tokens, flops=flops)
    if m.best is None:
        return
    tokens_per_s = mix.num_tokens / m.best
    benchmark.extra_info.update(tokens_per_s=tokens_per_s, flops_per_s=flops / m.best)
    record(
        "throughput",
        label={"model": preset, "backend": backend.name, "stage": stage},
        tokens_per_s=tokens_per_s,
        flops=flops,
        seconds=m.best,
        **_common(device, mix),
    )


def test_matmul_flops(benchmark, device, mix, matmul_operands, record):
    """Reference: one fp32 ``[4096 x 768] @ [768 x 3072]`` matmul, timed the same way."""
    m = measure(benchmark, torch.mm, lambda: (matmul_operands, {}), device=device, rounds=5)
    benchmark.extra_info.update(flops=MATMUL_FLOPS)
    if m.best is None:
        return
    benchmark.extra_info.update(flops_per_s=MATMUL_FLOPS / m.best)
    mm, k, n = MATMUL_SHAPE
    record(
        "flops",
        label={"name": "matmul"},
        title=f"fp32 matmul [{mm}x{k}] @ [{k}x{n}]",
        flops_per_s=MATMUL_FLOPS / m.best,
        **_common(device, mix),
    )


def _record_against_matmul(benchmark, record, m, *, name, title, flops, device, mix, **extra):
    benchmark.extra_info.update(flops=flops)
    if m.best is None:
        return
    paired = MATMUL_FLOPS / m.paired_best if m.paired_best else None
    benchmark.extra_info.update(flops_per_s=flops / m.best, paired_matmul_flops_per_s=paired)
    record(
        "flops",
        label={"name": name},
        title=title,
        flops_per_s=flops / m.best,
        paired_matmul_flops_per_s=paired,
        **extra,
        **_common(device, mix),
    )


def test_torch_transformer_encoder_flops(benchmark, device, mix, matmul_operands, record):
    """Reference: stock ``nn.TransformerEncoder`` (12 x width 768, pre-norm) on ``[1, N, 768]``."""
    width, heads, mlp, depth = 768, 12, 3072, 12
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(
            width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        model = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False).eval().to(device)
    n = mix.num_tokens
    x = torch.randn(1, n, width, generator=torch.Generator().manual_seed(0)).to(device)

    m = measure(
        benchmark,
        model,
        lambda: ((x,), {}),
        device=device,
        rounds=ROUNDS["atoken-base"],
        paired=(torch.mm, lambda: (matmul_operands, {})),
    )
    assert m.result.shape == (1, n, width)
    _record_against_matmul(
        benchmark,
        record,
        m,
        name="torch_encoder",
        title=f"nn.TransformerEncoder {depth}x{width} on [1, {n}]",
        flops=torch_encoder_flops(width, mlp, depth, n),
        device=device,
        mix=mix,
    )


def test_encode_decode_flops(benchmark, tokenizers, mix, device, matmul_operands, record):
    """atoken-base ``decode(encode(x))`` (default backend) against the analytic FLOP count."""
    tok = tokenizers("atoken-base")
    config = tok.config
    backend = tok.attention_backend()

    def setup():
        return (mix.packed(device),), {}

    def run(tokens):
        return tok.decode(tok.encode(tokens, backend=backend), backend=backend)

    m = measure(
        benchmark,
        run,
        setup,
        device=device,
        rounds=ROUNDS["atoken-base"],
        paired=(torch.mm, lambda: (matmul_operands, {})),
    )
    assert m.result.feats.shape == (mix.num_tokens, config.patch_dim)
    benchmark.extra_info.update(tokens=mix.num_tokens, backend=backend.name)
    _record_against_matmul(
        benchmark,
        record,
        m,
        name="atoken-base",
        title=f"atoken-base encode+decode ({backend.name})",
        flops=encoder_flops(config, mix.seqlens)
        + project_flops(config, mix.seqlens)
        + decoder_flops(config, mix.seqlens),
        device=device,
        mix=mix,
        target=True,
    )
