"""Contract mixins per optional adapter capability (`atoken.core.capabilities`).

Each mixin checks what one capability promises, on the adapter named by ``adapter_name``
(samples from `AdapterUnderTest.make_sample`). A test whose capability the adapter does not
declare calls ``pytest.skip`` with the reason; none returns early. atoken's suite parametrizes
each mixin over every registered adapter that declares the capability (`declaring`), so a new
plugin is tested without new test code::

    from atoken.testing import AdapterContract, StreamSinkContract

    class TestMyAdapter(AdapterContract, StreamSinkContract):
        adapter_name = "mymodality"

`AdapterContextContract` is not a capability (every adapter factory receives the context of the
model it serves); it holds every adapter to the token geometry of that context.

References: diffusers' per-feature test mixins; pytest's skip-with-reason idiom.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from atoken.core.capabilities import CAPABILITIES
from atoken.core.plugins import Components
from atoken.testing.contracts import AdapterUnderTest


def declaring(components: Components, capability: str) -> list[str]:
    """Names of the registered adapters whose entries declare ``capability``."""
    if capability not in CAPABILITIES:
        raise KeyError(f"no capability named {capability!r}; known: {sorted(CAPABILITIES)}")
    return [e.name for e in components.adapters.entries() if e.has(capability)]


class _CapabilityContract(AdapterUnderTest):
    #: the capability this mixin checks (its tests name it again: mixins combine in one class)
    capability: str = ""

    def capable_adapter(self, capability: str) -> Any:
        """The adapter under test; skips when its entry does not declare ``capability``."""
        entry = self.comps().adapters.get(self.adapter_name)
        if not entry.has(capability):
            pytest.skip(f"adapter {self.adapter_name!r} does not declare {capability!r}")
        return self.adapter()

    def tensor_target(self, adapter: Any, seed: int) -> tuple[Any, Tensor, dict[str, Any]]:
        """``(sample, target, meta)``; skips when the adapter's targets are not tensors."""
        sample = self.make_sample(torch.Generator("cpu").manual_seed(seed))
        tokens = adapter.to_tokens(sample)
        target = adapter.target(sample, tokens.meta)
        if not isinstance(target, Tensor):
            pytest.skip(
                f"adapter {self.adapter_name!r} targets are {type(target).__name__}, not"
                " tensors: this check compares tensors"
            )
        return sample, target, dict(tokens.meta)


class ExampleContract(_CapabilityContract):
    """``example(generator)``: a valid sample, the same for the same seed."""

    capability = "example"

    def test_example_is_seeded_and_tokenizes(self) -> None:
        adapter = self.capable_adapter("example")
        a = adapter.example(torch.Generator("cpu").manual_seed(0))
        b = adapter.example(torch.Generator("cpu").manual_seed(0))
        c = adapter.example(torch.Generator("cpu").manual_seed(1))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert len(adapter.to_tokens(a)) > 0


class TokenChunksContract(_CapabilityContract):
    """``to_token_chunks(sample, frames)``: concatenated, the chunks are ``to_tokens`` row for
    row; each chunk covers at most ``frames`` frames."""

    capability = "to_token_chunks"

    def test_chunks_concatenate_to_the_whole_tokens(self) -> None:
        adapter = self.capable_adapter("to_token_chunks")
        sample = self.make_sample(torch.Generator("cpu").manual_seed(0))
        whole = adapter.to_tokens(sample)
        for frames in (4, 8):
            chunks = list(adapter.to_token_chunks(sample, frames))
            assert chunks and all(len(c) > 0 for c in chunks)
            torch.testing.assert_close(
                torch.cat([c.feats for c in chunks]), whole.feats, atol=1e-5, rtol=0
            )
            assert torch.equal(torch.cat([c.coords for c in chunks]), whole.coords)
            per_t = frames // 4  # latent frames per chunk (4 input frames per patch)
            for c in chunks:
                t = c.coords[:, 0]
                assert int(t.max()) - int(t.min()) < per_t


class OpenContract(_CapabilityContract):
    """``open(path)``: a lazily read sample that tokenizes exactly as ``load(path)`` does."""

    capability = "open"

    def test_open_tokenizes_like_load(self, tmp_path) -> None:
        adapter = self.capable_adapter("open")
        _, target, _ = self.tensor_target(adapter, seed=1)
        if adapter.output_suffix not in adapter.extensions:
            pytest.skip(f"adapter {self.adapter_name!r} cannot read what it saves")
        path = tmp_path / f"sample{adapter.output_suffix}"
        adapter.save(target, path)
        loaded, opened = (
            adapter.to_tokens(adapter.load(path)),
            adapter.to_tokens(adapter.open(path)),
        )
        torch.testing.assert_close(opened.feats, loaded.feats, atol=1e-6, rtol=0)
        assert torch.equal(opened.coords, loaded.coords)


class StreamSinkContract(_CapabilityContract):
    """``stream_sink``: rows fed in pieces write the same sample ``save`` would, measure it like
    ``metrics``, and a sink left incomplete writes nothing."""

    capability = "stream_sink"

    def test_streamed_rows_write_the_sample(self, tmp_path) -> None:
        adapter = self.capable_adapter("stream_sink")
        sample, target, meta = self.tensor_target(adapter, seed=2)
        tokens = adapter.to_tokens(sample)
        out, side = tmp_path / f"rec{adapter.output_suffix}", tmp_path / "cmp"
        side = side.with_suffix(adapter.output_suffix)
        half = len(tokens) // 2
        with adapter.stream_sink(
            meta, tokens.coords, out, comparison=side, reference=sample
        ) as sink:
            sink.add(tokens.coords[:half], tokens.feats[:half])
            sink.add(tokens.coords[half:], tokens.feats[half:])
        assert sink.frames_done == target.shape[0]
        assert out.is_file() and side.is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, side.name])
        streamed = sink.metrics()
        assert set(streamed) == set(adapter.metrics(target, target))
        if adapter.output_suffix in adapter.extensions:
            back = adapter.load(out)
            assert back.shape == target.shape
            budget = (
                adapter.save_tolerance
                if self.comps().adapters.get(self.adapter_name).has("save_tolerance")
                else 2.5 / 255 * 2
            )
            assert (back - target.clamp(-1, 1)).abs().mean() <= budget

    def test_an_incomplete_stream_writes_nothing(self, tmp_path) -> None:
        from atoken.core.errors import AtokenError

        adapter = self.capable_adapter("stream_sink")
        sample, _, meta = self.tensor_target(adapter, seed=3)
        tokens = adapter.to_tokens(sample)
        out = tmp_path / f"rec{adapter.output_suffix}"
        first_t = tokens.coords[:, 0] == tokens.coords[0, 0]
        if bool(first_t.all()):
            pytest.skip("the example has one latent frame: nothing can be left out")
        with pytest.raises(AtokenError), adapter.stream_sink(meta, tokens.coords, out) as sink:
            sink.add(tokens.coords[first_t], tokens.feats[first_t])
        assert list(tmp_path.iterdir()) == []


class AdapterContextContract(AdapterUnderTest):
    """The adapter serves the token geometry of the model it is built for (its
    `AdapterContext`), or refuses that geometry when it is built, with one `InputError` line.

    Not a capability: every adapter factory receives a context. Built for the default context
    (no model), tokens are ``token_dim`` of the default model config wide; built for the context
    of a real tokenizer, they are that model's width and it encodes them; built for another
    geometry, tokens are that geometry's width, or the build fails (never a later, silent
    width mismatch).
    """

    #: a geometry unlike AToken's (2 frames of 8 x 8 RGB patches), for the refusal check
    other_geometry: ClassVar[tuple[tuple[int, int, int], int]] = ((2, 8, 8), 3)

    def _build(self, context: Any) -> Any:
        return self.comps().adapters.build(
            self.adapter_name, self.adapter_options or None, context=context
        )

    def test_tokens_have_the_width_of_the_default_geometry(self) -> None:
        from atoken.core.adapter_context import AdapterContext
        from atoken.core.config import ModelConfig, TransformerConfig

        default = ModelConfig(
            encoder=TransformerConfig(width=8, depth=1, num_heads=1, mlp_width=8), decoder=None
        ).geometry
        assert AdapterContext().geometry == default
        adapter = self._build(None)
        sample = self.make_sample(torch.Generator("cpu").manual_seed(6))
        assert adapter.to_tokens(sample).feats.shape[1] == default.token_dim

    def test_an_adapter_built_for_a_model_feeds_it(self) -> None:
        from atoken.core.reconstruct import adapter_for
        from atoken.core.tokenizer import build_tokenizer

        model = build_tokenizer(self.model_preset, components=self.comps()).eval()
        adapter = adapter_for(
            "", self.adapter_name, self.adapter_options or None, self.comps(), model=model
        )
        sample = self.make_sample(torch.Generator("cpu").manual_seed(7))
        tokens = adapter.to_tokens(sample)
        assert tokens.feats.shape[1] == model.config.geometry.token_dim
        with torch.inference_mode():
            latents = model.encode([tokens])
        assert latents.codes.shape[0] == len(tokens)

    def test_another_geometry_is_served_or_refused_at_build(self) -> None:
        from atoken.core.adapter_context import AdapterContext
        from atoken.core.errors import InputError
        from atoken.core.geometry import TokenGeometry

        patch, channels = self.other_geometry
        geometry = TokenGeometry(patch=patch, channels=channels)
        try:
            adapter = self._build(AdapterContext(geometry=geometry))
        except InputError as exc:  # refused at build: one line naming the model's geometry
            message = str(exc)
            assert "\n" not in message and geometry.describe() in message, message
        else:  # served: tokens of that geometry's width
            sample = self.make_sample(torch.Generator("cpu").manual_seed(8))
            assert adapter.to_tokens(sample).feats.shape[1] == geometry.token_dim


class SampleAssetsContract(_CapabilityContract):
    """``sample_assets()``: unique ``(key, what load reads, caption)`` triples; the first loads."""

    capability = "sample_assets"

    def test_sample_assets_are_loadable_triples(self) -> None:
        adapter = self.capable_adapter("sample_assets")
        assets = adapter.sample_assets()
        assert assets, "sample_assets() returned nothing"
        keys = [k for k, _, _ in assets]
        assert len(set(keys)) == len(keys)
        assert all(isinstance(k, str) and isinstance(c, str) and c for k, _, c in assets)
        assert len(adapter.to_tokens(adapter.load(assets[0][1]))) > 0


class MetricConventionContract(_CapabilityContract):
    """``metric_convention``: a JSON mapping (it is written into metrics.json as is)."""

    capability = "metric_convention"

    def test_convention_is_json(self) -> None:
        adapter = self.capable_adapter("metric_convention")
        doc = dict(adapter.metric_convention)
        assert doc and json.loads(json.dumps(doc)) == doc


class MetricInfoKeysContract(_CapabilityContract):
    """``metric_info_keys`` names keys that ``metrics`` returns (facts such as counts)."""

    capability = "metric_info_keys"

    def test_info_keys_are_metrics(self) -> None:
        adapter = self.capable_adapter("metric_info_keys")
        _, target, _ = self.tensor_target(adapter, seed=5)
        keys = set(adapter.metrics(target, target))
        assert set(adapter.metric_info_keys) <= keys, (adapter.metric_info_keys, keys)


class OutputSuffixesContract(_CapabilityContract):
    """``output_suffixes``: ``save`` writes every listed suffix (``output_suffix`` among them)
    in a format ``load`` reads back at the sample's size."""

    capability = "output_suffixes"

    def test_save_writes_every_suffix(self, tmp_path) -> None:
        adapter = self.capable_adapter("output_suffixes")
        assert adapter.output_suffix.lower() in adapter.output_suffixes
        _, target, _ = self.tensor_target(adapter, seed=7)
        for suffix in adapter.output_suffixes:
            path = tmp_path / f"out{suffix}"
            adapter.save(target, path)
            back = adapter.load(path)
            assert back.shape == target.shape, (suffix, back.shape, target.shape)
            # lossy formats (JPEG) included: far below what a wrong format or channel order gives
            assert (back.float() - target.float()).abs().mean() < 0.1, suffix


class LabelledComparisonContract(_CapabilityContract):
    """``save_labelled_comparison(reference, reconstruction, path, *, metrics)``: writes the
    comparison and returns its layout: a JSON mapping with the ``label_band`` height and the
    ``[x0, y0, x1, y1]`` boxes of the two pictures, below the band, each the sample's size."""

    capability = "save_labelled_comparison"

    def test_layout_boxes_are_the_pictures(self, tmp_path) -> None:
        from atoken.core.capabilities import has_capability

        adapter = self.capable_adapter("save_labelled_comparison")
        _, target, _ = self.tensor_target(adapter, seed=8)
        suffix = (
            adapter.comparison_suffix
            if has_capability(adapter, "comparison_suffix")
            else adapter.output_suffix
        )
        path = tmp_path / f"comparison{suffix}"
        layout = adapter.save_labelled_comparison(
            target, target, path, metrics=adapter.metrics(target, target)
        )
        assert path.is_file() and path.stat().st_size > 0
        assert json.loads(json.dumps(layout)) == layout
        band = layout["label_band"]
        assert isinstance(band, int) and band > 0
        h, w = target.shape[-3], target.shape[-2]  # [..., H, W, C]
        (rx0, ry0, rx1, ry1), (cx0, cy0, cx1, cy1) = layout["reference"], layout["reconstruction"]
        assert (rx1 - rx0, ry1 - ry0) == (w, h) == (cx1 - cx0, cy1 - cy0), layout
        assert ry0 >= band and cy0 >= band and rx1 <= cx0, layout  # under the band, side by side


#: every capability contract, by capability: ``class TestX(AdapterContract, *CAPABILITY_CONTRACTS.values())``
CAPABILITY_CONTRACTS: dict[str, type[_CapabilityContract]] = {
    c.capability: c
    for c in (
        ExampleContract,
        TokenChunksContract,
        OpenContract,
        StreamSinkContract,
        SampleAssetsContract,
        MetricConventionContract,
        MetricInfoKeysContract,
        OutputSuffixesContract,
        LabelledComparisonContract,
    )
}
