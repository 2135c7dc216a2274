"""Mixed precision: a bf16 plan runs the matrix products in bf16 (CPU autocast here, CUDA's on a
GPU) while RoPE, FSQ and the norm statistics stay float32, outputs come back float32, ``fp32``
turns an outer autocast off, and the CLI and the trainer take the same choice."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import atoken
from atoken import PatchTokens
from atoken.cli import cli
from atoken.core.errors import InputError
from atoken.core.execution import ExecutionPlan, autocast_dtype
from atoken.core.layers import LayerNorm, MultiHeadRMSNorm, RMSNorm
from atoken.core.rope import Rope4D
from tests.conftest import SKIMAGE_DATA

BF16 = torch.bfloat16


def sample(model, rows: int = 6, cols: int = 5, seed: int = 0) -> list[PatchTokens]:
    """One image's tokens sized by the model's own patch width."""
    coords = torch.tensor(
        [(0, x, y, 0) for x in range(rows) for y in range(cols)], dtype=torch.int32
    )
    gen = torch.Generator().manual_seed(seed)
    return [
        PatchTokens(
            torch.randn(len(coords), model.config.patch_dim, generator=gen), coords, "image", {}
        )
    ]


class DtypeProbe:
    """Records the output dtype of a module's forward (hooked on an attention input projection)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.dtypes: list[torch.dtype] = []
        self.handle = module.register_forward_hook(lambda m, i, o: self.dtypes.append(o.dtype))

    def close(self) -> None:
        self.handle.remove()


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_a_bf16_plan_runs_bf16_matmuls_and_returns_float32(tiny) -> None:
    batch = sample(tiny)
    probes = [
        DtypeProbe(tiny.encoder.blocks[0].attn.to_qkv),
        DtypeProbe(tiny.decoder.blocks[-1].mlp),
    ]
    try:
        with torch.no_grad():
            full = tiny.decode(tiny.encode(batch, sample=False, plan=tiny.plan(precision="fp32")))
            seen_fp32 = [list(p.dtypes) for p in probes]
            for p in probes:
                p.dtypes.clear()
            plan = tiny.plan(precision="bf16")
            latents = tiny.encode(batch, sample=False, plan=plan)
            half = tiny.decode(latents, plan=plan)
            emb = tiny.embed(batch, plan=plan)
    finally:
        for p in probes:
            p.close()
    assert seen_fp32 == [[torch.float32], [torch.float32]]
    assert [p.dtypes for p in probes] == [[BF16, BF16], [BF16]]  # encode + embed, decode
    assert latents.codes.dtype == half.feats.dtype == emb.dtype == torch.float32
    err = rel_rms(half.feats, full.feats)
    assert 0 < err < 0.05, err  # bf16 rounding: close, and really not float32


def test_fp32_turns_an_outer_autocast_off_and_none_follows_it(tiny) -> None:
    batch = sample(tiny, seed=1)
    probe = DtypeProbe(tiny.encoder.blocks[0].attn.to_qkv)
    try:
        with torch.no_grad():
            plain = tiny.encode(batch, sample=False).codes
            with torch.autocast("cpu", dtype=BF16):
                off = tiny.encode(batch, sample=False, plan=tiny.plan(precision="fp32")).codes
                follows = tiny.encode(batch, sample=False, plan=tiny.plan()).codes
    finally:
        probe.close()
    assert probe.dtypes == [torch.float32, torch.float32, BF16]
    torch.testing.assert_close(off, plain, atol=0, rtol=0)
    assert not torch.equal(follows, plain)


def test_a_scoped_plan_carries_its_precision(tiny) -> None:
    with tiny.using(tiny.plan(precision="bf16")):
        assert tiny.plan().precision == "bf16"
        assert tiny.plan(precision="fp32").precision == "fp32"
    assert tiny.plan().precision is None


def test_norms_compute_their_statistics_in_float32_under_autocast() -> None:
    """Given bf16 activations inside a bf16 region, each norm returns bf16 equal to the float32
    computation rounded once (bf16 statistics would differ), and float32 stays bit-exact."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 4, 32, generator=gen) * 30 + 5).to(BF16)
    for norm in (LayerNorm(32, eps=1e-6), RMSNorm(32, eps=1e-6), MultiHeadRMSNorm(32, 4)):
        with torch.no_grad():
            for p in norm.parameters():
                p.uniform_(0.5, 1.5, generator=gen)
            want = norm(x.float()).to(BF16)  # float32 all the way, one rounding at the end
            with torch.autocast("cpu", dtype=BF16):
                got = norm(x)
        assert got.dtype == BF16, type(norm).__name__
        torch.testing.assert_close(got, want, atol=0, rtol=0, msg=type(norm).__name__)
    ln = LayerNorm(32, eps=1e-6)
    xf = torch.randn(8, 32, generator=gen)
    assert torch.equal(ln(xf), F.layer_norm(xf, (32,), ln.weight, ln.bias, 1e-6))
    assert ln.state_dict().keys() == torch.nn.LayerNorm(32).state_dict().keys()


def test_rope_and_fsq_stay_float32_under_autocast(tiny, components) -> None:
    rope = Rope4D(64)
    coords = torch.randint(0, 300, (50, 4), dtype=torch.int32)
    x = torch.randn(50, 2, 64).to(BF16)
    with torch.autocast("cpu", dtype=BF16):
        cos, sin = rope.rotation(coords)
        got = Rope4D.rotate(x, cos, sin)
    assert cos.dtype == sin.dtype == torch.float32 and got.dtype == BF16
    want = Rope4D.rotate(x.float(), *rope.rotation(coords)).to(BF16)
    torch.testing.assert_close(got, want, atol=0, rtol=0)

    fsq = atoken.build_tokenizer(
        "atoken-tiny", components=components, quantizer={"name": "fsq"}
    ).quantizer
    z = torch.randn(200, 2 * tiny.config.latent_channels) * 3
    want = fsq(z)
    with torch.autocast("cpu", dtype=BF16):
        got = fsq(z)
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(got.codes.float(), want.codes)


def test_precision_names_are_checked() -> None:
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("auto", "cuda") is BF16
    assert autocast_dtype("bf16", "cpu") is BF16 and autocast_dtype("fp32", "cuda") is None
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("fp16", "cpu")


def test_an_unknown_precision_is_one_clear_error(tiny) -> None:
    with pytest.raises(InputError, match=r"precision must be one of fp32, bf16, auto, got 'fp16'"):
        tiny.plan(precision="fp16")
    with pytest.raises(ValueError, match="ExecutionPlan precision"):
        ExecutionPlan(tiny.plan().backend, tiny.config.temporal, precision="half")


def test_reconstruct_takes_precision(tmp_path) -> None:
    """``reconstruct --precision bf16`` writes a reconstruction close to fp32's; a bad name is
    refused by the option."""
    src = SKIMAGE_DATA / "astronaut.png"
    runner = CliRunner()
    metrics = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = runner.invoke(
            cli,
            [
                "reconstruct",
                str(src),
                "-m",
                "atoken-tiny",
                "-O",
                "max_res=64",
                "--out",
                str(out),
                "--precision",
                precision,
            ],
        )
        assert result.exit_code == 0, result.output
        metrics[precision] = json.loads((out / "astronaut" / "metrics.json").read_text())
    assert metrics["bf16"]["psnr"] == pytest.approx(metrics["fp32"]["psnr"], abs=0.5)
    bad = runner.invoke(cli, ["reconstruct", str(src), "-m", "atoken-tiny", "--precision", "fp16"])
    assert bad.exit_code == 2 and "'fp16' is not one of" in bad.output


def test_training_runs_in_bf16_when_asked(tmp_path) -> None:
    """``[run] precision = "bf16"``: the step runs its matrix products in bf16 (CPU autocast) and
    its losses stay close to the float32 run's (same data, same start)."""
    from tests.test_train import TINY_TOML

    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = tmp_path / f"{precision}.toml"
        cfg.write_text(TINY_TOML.replace("[run]\n", f'[run]\nprecision = "{precision}"\n'))
        run = tmp_path / precision
        result = CliRunner().invoke(cli, ["train", str(cfg), "--out", str(run)])
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = [r["loss"] for r in records if "loss" in r]
    assert len(losses["bf16"]) == len(losses["fp32"]) > 0
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_the_cli_offers_the_precisions_plans_take() -> None:
    from atoken.core.execution import PRECISIONS

    options = {p.name: p for p in cli.commands["encode"].params}
    assert set(options["precision"].type.choices) == set(PRECISIONS)
