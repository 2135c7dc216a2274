"""Packed varlen batching against padding every sample to the longest one.

"padded" is what a dense-batch tokenizer does. It runs ``[B, Lmax, D]`` through the same layers with
the same parameters and a key-padding mask, so it spends exactly the padded FLOPs. Both layouts
are reported in *useful* tokens/s, counting real tokens only. The packed encoder is timed once before
every padded round, so the two timings see the same machine load.
"""

from __future__ import annotations

import pytest
import torch
from _support import encoder_flops, measure, pad_to_longest, padded_decode, padded_encode

pytestmark = pytest.mark.bench

PRESETS = ("atoken-tiny", "atoken-base")
ROUNDS = {"atoken-tiny": 10, "atoken-base": 2}  # padded rounds; a padded call is ~3x a packed one


def test_padded_baseline_matches_packed(tokenizers, mix, device):
    """The padded baseline computes the same function: real rows equal the packed outputs."""
    tok = tokenizers("atoken-tiny")
    backend = tok.attention_backend()
    with torch.inference_mode():
        packed = mix.packed(device)
        padded = pad_to_longest(packed)
        want = tok.encode_dense(packed, backend=backend).feats
        got = padded_encode(tok.encoder, padded)[padded.real_rows]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

        latents = mix.latents(tok.config.latent_channels, device)
        want = tok.decode(latents, backend=backend).feats
        got = padded_decode(tok.decoder, pad_to_longest(latents))[padded.real_rows]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", PRESETS, ids="model={}".format)
def test_encoder_packed_vs_padded(benchmark, tokenizers, mix, preset, device, record):
    """Padded encoder (the benchmark) with the packed encoder (default backend) paired."""
    tok = tokenizers(preset)
    config = tok.config
    backend = tok.attention_backend()

    def packed_setup():
        return (mix.packed(device),), {}

    def packed(tokens):
        return tok.encode_dense(tokens, backend=backend)

    def padded_setup():
        return (pad_to_longest(mix.packed(device)),), {}

    def padded(batch):
        return padded_encode(tok.encoder, batch)

    m = measure(
        benchmark,
        padded,
        padded_setup,
        device=device,
        rounds=ROUNDS[preset],
        paired=(packed, packed_setup),
    )
    assert m.result.shape == (mix.padded_tokens, config.encoder.width)
    useful = encoder_flops(config, mix.seqlens)
    computed = encoder_flops(config, [max(mix.seqlens)] * len(mix.seqlens))
    benchmark.extra_info.update(
        useful_tokens=mix.num_tokens,
        padded_tokens=mix.padded_tokens,
        useful_flops=useful,
        padded_flops=computed,
        packed_backend=backend.name,
    )
    if m.best is None or m.paired_best is None:
        return
    padded_rate, packed_rate = mix.num_tokens / m.best, mix.num_tokens / m.paired_best
    benchmark.extra_info.update(
        padded_useful_tokens_per_s=padded_rate,
        packed_tokens_per_s=packed_rate,
        packed_over_padded=packed_rate / padded_rate,
    )
    record(
        "padding",
        label={"model": preset},
        packed_tokens_per_s=packed_rate,
        padded_tokens_per_s=padded_rate,
        flop_ratio=computed / useful,
        backend=backend.name,
        device=str(device),
        mix=mix.describe(),
    )
