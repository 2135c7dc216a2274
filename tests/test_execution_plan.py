"""One execution plan for long inputs: backend, tiling and mode resolved once, never from the
global grad mode; every public entry point runs the plan's backend; ``reconstruct --backend``
takes effect."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from click.testing import CliRunner

from atoken import PatchTokens, collate
from atoken.cli import cli
from atoken.core.attention import AttentionBackend, reference_attention
from atoken.core.config import TemporalConfig
from atoken.core.errors import InputError
from atoken.core.execution import ExecutionPlan
from atoken.core.presets import get_preset
from atoken.core.registry import Entry, Provider
from tests.conftest import SKIMAGE_DATA


def clip(model, frames: int, rows: int = 2, cols: int = 3, seed: int = 0) -> PatchTokens:
    """A video's tokens spanning ``frames`` latent frames, sized by the model's patch width."""
    coords = torch.tensor(
        [(t, x, y, 0) for t in range(frames) for x in range(rows) for y in range(cols)],
        dtype=torch.int32,
    )
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(coords), model.config.patch_dim, generator=gen)
    return PatchTokens(feats, coords, "video", {})


class Counting:
    """An attention function that counts its calls and computes the reference result."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, q, k, v, seqlens_q, seqlens_k):
        self.calls += 1
        return reference_attention(q, k, v, seqlens_q, seqlens_k)


@pytest.fixture
def counting(tiny):
    """A plan on ``tiny`` whose backend counts calls (the config's tiling, two tiles of cache)."""
    fn = Counting()
    backend = AttentionBackend("counting", fn)
    temporal = TemporalConfig(tile=3, encoder_cache=0, decoder_cache=1)
    return fn, tiny.plan(backend=backend, temporal=temporal)


def long_enough(model, plan: ExecutionPlan) -> int:
    """Latent frames that make several tiles under ``plan`` (read from the plan itself)."""
    return 3 * plan.temporal.tile + 1


# ---------------------------------------------------------------------------------- resolution


def test_plan_resolves_mode_from_tiling_and_stream_flag(tiny) -> None:
    tc = tiny.config.temporal
    assert tc.tile is not None  # the preset tiles (the release's default)
    streamed, kept = tiny.plan(), tiny.plan(stream=False)
    assert (streamed.mode, kept.mode) == ("streamed", "tiled")
    assert streamed.temporal == kept.temporal == tc
    assert streamed.group_tokens <= tc.group_tokens and kept.group_tokens == tc.group_tokens
    untiled = tiny.plan(temporal=TemporalConfig(tile=None))
    assert untiled.mode == "whole" and untiled.tiles(collate([clip(tiny, 9)]), 0) is None
    assert tiny.plan(backend="reference").backend.name == "reference"
    with pytest.raises(InputError, match="no attention backend named 'sdpaa'"):
        tiny.plan(backend="sdpaa")
    with pytest.raises(InputError, match="temporal must be a TemporalConfig"):
        tiny.plan(temporal={"tile": 2})
    with pytest.raises(ValueError, match="mode must be one of"):
        dataclasses.replace(streamed, mode="lazy")
    with pytest.raises(ValueError, match="'whole' needs temporal.tile=None"):
        dataclasses.replace(streamed, mode="whole")


def test_plan_and_compat_keywords_are_exclusive(tiny) -> None:
    tokens = [clip(tiny, 2)]
    with pytest.raises(InputError, match="either plan= or backend=/temporal="):
        tiny.encode(tokens, plan=tiny.plan(), backend="sdpa")
    with pytest.raises(InputError, match="plan must be an ExecutionPlan"):
        tiny.encode(tokens, plan="streamed")


# ------------------------------------------------------------------- grad mode does not choose


@pytest.mark.parametrize("stream", [False, True])
def test_grad_mode_does_not_change_the_path(tiny, stream) -> None:
    """The same plan gives bit-identical values with and without autograd recording."""
    plan = tiny.plan(stream=stream)
    video = [clip(tiny, long_enough(tiny, plan))]
    with torch.no_grad():
        z_off = tiny.encode(video, sample=False, plan=plan)
        x_off = tiny.decode(z_off, plan=plan).feats
    with torch.enable_grad():
        z_on = tiny.encode(video, sample=False, plan=plan)
        x_on = tiny.decode(z_on.tokens.replace(z_on.codes.detach()), plan=plan).feats
    assert torch.equal(z_off.codes, z_on.codes.detach())
    assert torch.equal(x_off, x_on.detach())


def test_streamed_and_tiled_plans_agree_and_both_train(tiny) -> None:
    kept, streamed = tiny.plan(stream=False), tiny.plan()
    video = [clip(tiny, long_enough(tiny, kept), seed=3)]
    with torch.no_grad():
        a = tiny.encode(video, sample=False, plan=kept)
        b = tiny.encode(video, sample=False, plan=streamed)
        torch.testing.assert_close(a.codes, b.codes, atol=2e-5, rtol=1e-5)
        da, db = tiny.decode(a, plan=kept).feats, tiny.decode(a, plan=streamed).feats
        torch.testing.assert_close(da, db, atol=2e-5, rtol=1e-5)
    weight = tiny.decoder.input_layer.weight
    try:
        for plan in (kept, streamed):  # a streamed plan still carries gradients (tile by tile)
            tiny.zero_grad(set_to_none=True)
            tiny.decode(a, plan=plan).feats.square().mean().backward()
            assert weight.grad is not None and torch.isfinite(weight.grad).all()
            assert weight.grad.abs().sum() > 0
    finally:
        tiny.zero_grad(set_to_none=True)  # the shared model is left as it was


# ------------------------------------------------------------ the backend travels with the plan


def test_every_entry_point_runs_the_plans_backend(tiny, counting) -> None:
    fn, plan = counting
    video = clip(tiny, long_enough(tiny, plan))
    blocks = len(tiny.encoder.blocks)
    with torch.inference_mode():
        latents = tiny.encode([video], sample=False, plan=plan)
        assert fn.calls >= blocks  # every block of every step (independent tiles pack into one)
        for run in (
            lambda: tiny.decode(latents, plan=plan),
            lambda: list(tiny.decode_stream(latents, plan=plan)),
            lambda: tiny.encode_chunks([video], plan=plan),
            lambda: tiny.encode_dense([video], plan=plan),
            lambda: tiny(collate([video]), sample=False, plan=plan),
        ):
            before = fn.calls
            run()
            assert fn.calls > before
        with tiny.using(plan):  # calls without plan= run the scoped plan
            assert tiny.temporal() == plan.temporal != tiny.config.temporal  # pipeline reads it
            assert tiny.plan(stream=False).backend is plan.backend
            before = fn.calls
            tiny.decode(tiny.encode([video], sample=False))
            assert fn.calls > before
        before = fn.calls
        tiny.decode(latents)  # outside the block: the config's backend again
        assert fn.calls == before


def test_reconstruct_backend_takes_effect(tmp_path, components, monkeypatch) -> None:
    """``atoken reconstruct --backend NAME`` runs NAME's attention; without it, NAME is unused."""
    fn = Counting()
    registry = components.attention
    backend = AttentionBackend("counting", fn)
    entry = Entry("attention", "counting", backend, None, Provider("tests"), "counts its calls")
    monkeypatch.setitem(registry._entries, "counting", entry)  # the registry the CLI builds from
    src = tmp_path / "coffee.png"
    shutil.copy(SKIMAGE_DATA / "coffee.png", src)
    args = ["reconstruct", str(src), "-m", "atoken-tiny", "-O", "lpips=false"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert fn.calls == 0
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b"), "--backend", "counting"])
    assert result.exit_code == 0, result.output
    preset = get_preset("atoken-tiny")  # at least one call per encoder and decoder block
    assert fn.calls >= preset.encoder.depth + preset.decoder.depth
    assert (tmp_path / "b" / "coffee" / "metrics.json").is_file()
