"""Regional torch.compile of the transformer blocks: every path (encode, decode, embed, the
streamed and tiled paths with their KV caches) gives the eager values, one graph per block
(fullgraph: no graph break), a bounded number of graphs over a mix of token counts, the same
gradients, a training run with ``[run] compile = true`` that equals the eager one, and
``--compile`` on the inference commands."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch._dynamo.utils import counters

import atoken
from atoken import PatchTokens
from atoken.cli import cli
from atoken.core.compile import RECOMPILE_LIMIT, compile_blocks, compiled_blocks
from atoken.core.config import TemporalConfig
from tests.conftest import SKIMAGE_DATA
from tests.test_distributed import _write
from tests.test_execution_plan import clip

pytestmark = pytest.mark.slow

ATOL = 2e-5  # fp32; compiled kernels fuse and reorder sums


@pytest.fixture(scope="module")
def models(components):
    """(eager, compiled) copies of one atoken-tiny with a head (same weights)."""
    torch._dynamo.reset()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        eager = atoken.build_tokenizer("atoken-tiny", components=components).eval()
    compiled = atoken.build_tokenizer("atoken-tiny", components=components).eval()
    compiled.load_state_dict(eager.state_dict())
    assert compiled.compile() is compiled
    yield eager, compiled
    torch._dynamo.reset()


def batches(model) -> list[list[PatchTokens]]:
    """Batches of different token counts and sample counts (one sample and several)."""
    shapes = [
        [(1, 4, 4)],
        [(1, 3, 5), (1, 6, 2)],
        [(2, 4, 4), (1, 2, 2), (1, 3, 3)],
        [(1, 7, 5)],
        [(1, 5, 5), (2, 3, 2)],
        [(1, 2, 9), (1, 4, 3), (1, 1, 5), (1, 6, 6)],
    ]
    return [[clip(model, *s, seed=i) for i, s in enumerate(b)] for b in shapes]


def test_compiled_blocks_are_counted_and_compiling_twice_is_harmless(models) -> None:
    eager, compiled = models
    blocks = len(eager.encoder.blocks) + len(eager.decoder.blocks)
    assert compiled_blocks(eager) == 0 and compiled_blocks(compiled) == blocks
    compile_blocks(compiled)
    assert compiled_blocks(compiled) == blocks
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    with pytest.raises(ValueError, match="holds no TransformerBlock"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_encode_decode_embed_match_eager_with_bounded_graphs(models) -> None:
    """A mix of token counts and sample counts compiles a bounded set of graphs (the first two
    batches, one sample and several, compile all of them), with no graph break."""
    eager, compiled = models
    counters.clear()
    graphs = []
    with torch.no_grad():
        for batch in batches(eager):
            want = eager.encode(batch, sample=False)
            got = compiled.encode(batch, sample=False)
            torch.testing.assert_close(got.codes, want.codes, atol=ATOL, rtol=1e-4)
            torch.testing.assert_close(
                compiled.decode(got).feats, eager.decode(want).feats, atol=ATOL, rtol=1e-4
            )
            torch.testing.assert_close(
                compiled.embed(batch), eager.embed(batch), atol=ATOL, rtol=1e-4
            )
            graphs.append(counters["stats"]["unique_graphs"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    # encoder and decoder blocks (their norms and biases differ), each for one sample and for
    # several; the head's attention is not a block
    assert graphs[-1] <= 4, graphs
    assert graphs[1:] == [graphs[1]] * (len(graphs) - 1), graphs  # nothing new after batch 2


def test_streamed_and_tiled_paths_with_caches_match_eager(models) -> None:
    """Temporal tiles with carried keys (the decoder cache) and without, streamed (inference)
    and tiled, and the streamed decoder rows: the same values; the cache's states add a
    bounded number of graphs and no graph break."""
    eager, compiled = models
    temporal = TemporalConfig(tile=2, encoder_cache=0, decoder_cache=1)
    long = [clip(eager, 7, 2, 3), clip(eager, 5, 3, 2, seed=1)]
    counters.clear()
    with torch.no_grad():
        for stream in (True, False):
            plan_e = eager.plan(temporal=temporal, stream=stream)
            plan_c = compiled.plan(temporal=temporal, stream=stream)
            want = eager.encode(long, sample=False, plan=plan_e)
            got = compiled.encode(long, sample=False, plan=plan_c)
            torch.testing.assert_close(got.codes, want.codes, atol=ATOL, rtol=1e-4)
            torch.testing.assert_close(
                compiled.decode(got, plan=plan_c).feats,
                eager.decode(want, plan=plan_e).feats,
                atol=ATOL,
                rtol=1e-4,
            )
        rows_e = list(eager.decode_stream(want, plan=eager.plan(temporal=temporal)))
        rows_c = list(compiled.decode_stream(got, plan=compiled.plan(temporal=temporal)))
    assert [r.rows.tolist() for r in rows_c] == [r.rows.tolist() for r in rows_e]
    for a, b in zip(rows_c, rows_e, strict=True):
        torch.testing.assert_close(a.feats, b.feats, atol=ATOL, rtol=1e-4)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert 0 < counters["stats"]["unique_graphs"] <= 8  # the cache's states, both stacks


def test_gradients_match_eager(models, components) -> None:
    """Forward and backward of the training path (tiled, activations kept) through compiled
    blocks: the loss and every parameter's gradient equal eager's."""
    eager, compiled = models
    batch = batches(eager)[2]
    grads = []
    for model in (eager, compiled):
        model.zero_grad(set_to_none=True)
        out = model(batch, sample=False)
        loss = out.reconstruction.feats.square().mean() + out.embedding.square().mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-3, msg=name)


def test_training_with_compile_equals_eager(tmp_path) -> None:
    """``[run] compile = true``: three steps reach the weights and losses of the eager run."""
    runs = {}
    for flag in ("false", "true"):
        cfg = _write(tmp_path, accum=1)  # one process: [run] distributed does not apply
        cfg = cfg.rename(tmp_path / f"compile-{flag}.toml")
        cfg.write_text(cfg.read_text() + f"compile = {flag}\n")
        run = tmp_path / f"run-{flag}"
        result = CliRunner().invoke(cli, ["train", str(cfg), "--out", str(run)])
        assert result.exit_code == 0, result.output
        runs[flag] = run
    losses = {
        flag: [
            json.loads(line)["loss"]
            for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line
        ]
        for flag, run in runs.items()
    }
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
    weights = {
        f: load_file(str(r / "checkpoints" / "step-00000003" / "model.safetensors"))
        for f, r in runs.items()
    }
    assert weights["true"].keys() == weights["false"].keys()
    for key, w in weights["false"].items():
        torch.testing.assert_close(weights["true"][key], w, atol=2e-5, rtol=1e-4, msg=key)


def test_inference_commands_take_compile(tmp_path) -> None:
    """``reconstruct --compile`` writes the eager run's reconstruction (to float tolerance)."""
    src = SKIMAGE_DATA / "coffee.png"
    metrics = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        args = ["reconstruct", str(src), "-m", "atoken-tiny", "-O", "max_res=64", "--out", str(out)]
        result = CliRunner().invoke(cli, [*args, "--precision", "fp32", *flag])
        assert result.exit_code == 0, result.output
        metrics[bool(flag)] = json.loads((out / "coffee" / "metrics.json").read_text())
    assert metrics[True]["psnr"] == pytest.approx(metrics[False]["psnr"], abs=1e-3)
    assert "--compile" in CliRunner().invoke(cli, ["encode", "--help"]).output
