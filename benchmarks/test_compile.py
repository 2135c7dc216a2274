"""Regional ``torch.compile`` against eager: ``decode(encode(x))`` on the packed mix.

One eager and one compiled copy of each model (same weights). The compiled call is the
benchmark; the eager call is timed once before every round (``paired``), so the speed-up is a
ratio of interleaved timings and holds on a loaded machine. Compilation happens before the
timing (two untimed calls: the mix has one sample and several) and is reported apart.
"""

from __future__ import annotations

import time

import pytest
import torch
from _support import measure

import atoken

pytestmark = pytest.mark.bench

ROUNDS = {"atoken-tiny": 8, "atoken-base": 3}


@pytest.mark.parametrize("preset", tuple(ROUNDS), ids="model={}".format)
def test_compiled_encode_decode(benchmark, tokenizers, mix, device, record, preset):
    eager = tokenizers(preset)
    compiled = atoken.build_tokenizer(preset, init=False).eval().to(device)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()

    def run(model, tokens):
        return model.decode(model.encode(tokens, sample=False))

    def setup():
        return (mix.packed(device),), {}

    start = time.perf_counter()
    with torch.inference_mode():
        want = run(eager, mix.packed(device))
        got = run(compiled, mix.packed(device))  # compiles
    compile_s = time.perf_counter() - start
    torch.testing.assert_close(got.feats, want.feats, atol=1e-4, rtol=1e-3)

    m = measure(
        benchmark,
        lambda tokens: run(compiled, tokens),
        setup,
        device=device,
        rounds=ROUNDS[preset],
        paired=(lambda tokens: run(eager, tokens), setup),
    )
    benchmark.extra_info.update(tokens=mix.num_tokens, compile_s=compile_s)
    if m.best is None:
        return
    record(
        "compile",
        label={"model": preset},
        eager_tokens_per_s=mix.num_tokens / m.paired_best,
        compiled_tokens_per_s=mix.num_tokens / m.best,
        speedup=m.paired_best / m.best,
        compile_s=compile_s,
        device=str(device),
        mix=mix.describe(),
    )
