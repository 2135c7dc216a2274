"""Declared adapter capabilities: verified once at registration (or first build), recorded on
the registry entry, and a declaration that does not hold is refused with one clear message."""

from __future__ import annotations

import pytest
import torch

import atoken
from atoken.core.capabilities import (
    CAPABILITIES,
    CapabilityError,
    capabilities_of,
    declared_capabilities,
    has_capability,
)
from atoken.core.registry import Provider, Registry
from atoken.plugins.image.adapter import ImageAdapter


class _Base:
    name = "toy"
    extensions = (".toy",)
    output_suffix = ".toy"


def _registry() -> Registry:
    return Registry("adapter").bound(Provider("tests"))


def test_a_declared_class_is_verified_and_recorded_at_registration() -> None:
    class Streams(_Base):
        capabilities = frozenset({"stream_sink", "save_tolerance"})
        save_tolerance = 0.1

        def stream_sink(
            self, meta, coords, output, *, comparison=None, reference=None, progress=None
        ):
            return None

    entry = _registry().add("toy", Streams)
    assert entry.capabilities == {"stream_sink", "save_tolerance"}
    assert entry.has("stream_sink") and not entry.has("sample_assets")
    assert "bind" not in CAPABILITIES  # companions reach adapters in their AdapterContext
    with pytest.raises(CapabilityError, match="no capability named 'stream_snk'"):
        entry.has("stream_snk")


def test_a_typo_in_a_declaration_is_refused_at_registration() -> None:
    class Typo(_Base):
        capabilities = frozenset({"stream_snk"})

    with pytest.raises(
        CapabilityError,
        match="'stream_snk' is not a known capability"
        r" \(did you mean 'stream_sink'\?\)",
    ):
        _registry().add("toy", Typo)


def test_a_typo_in_a_method_name_is_refused_at_registration() -> None:
    class Misnamed(_Base):
        capabilities = frozenset({"to_token_chunks"})

        def to_tokens_chunks(self, sample, frames):  # the typo
            return iter(())

    with pytest.raises(CapabilityError, match="declares 'to_token_chunks' but it has no such"):
        _registry().add("toy", Misnamed)


def test_an_undeclared_capability_is_refused() -> None:
    class Forgot(_Base):
        def sample_assets(self):
            return []

    with pytest.raises(CapabilityError, match="provides 'sample_assets' without declaring it"):
        _registry().add("toy", Forgot)


def test_a_wrong_signature_or_value_is_refused() -> None:
    class Narrow(_Base):
        capabilities = frozenset({"to_token_chunks", "comparison_suffix"})
        comparison_suffix = "png"  # no dot

        def to_token_chunks(self, sample):  # frames missing
            return iter(())

    with pytest.raises(CapabilityError) as info:
        _registry().add("toy", Narrow)
    msg = str(info.value)
    assert "cannot be called as to_token_chunks(sample, frames)" in msg
    assert "'comparison_suffix' but it is 'png', expected a '.suffix' string" in msg


def test_a_lazy_factory_is_verified_on_its_first_build() -> None:
    def factory(options, context):  # no resolvable return annotation: known once built
        class Lazy(_Base):
            capabilities = frozenset({"sample_assets"})

            def sample_assets(self):
                return []

        return Lazy()

    registry = Registry("adapter")
    entry = registry.add("toy", factory)
    assert entry._capabilities == []  # nothing built yet
    registry.build("toy")
    assert entry.capabilities == {"sample_assets"}

    def broken(options, context):
        class Bad(_Base):
            capabilities = frozenset({"sample_assets"})

        return Bad()

    registry.add("bad", broken)
    with pytest.raises(CapabilityError, match="declares 'sample_assets' but it has no such member"):
        registry.build("bad")


def test_builtin_entries_match_what_their_adapters_implement() -> None:
    comps = atoken.default_components()
    for entry in comps.adapters.entries():
        adapter = comps.adapters.build(entry.name)
        assert entry.capabilities == capabilities_of(adapter) == type(adapter).capabilities
        for name, cap in CAPABILITIES.items():
            assert entry.has(name) == isinstance(adapter, cap.protocol), (entry.name, name)
    assert comps.adapters.get("video").has("stream_sink")
    assert not comps.adapters.get("image").has("stream_sink")
    assert has_capability(ImageAdapter(), "example")
    assert declared_capabilities(ImageAdapter) == {
        "example",
        "metric_convention",
        "metric_lower_is_better",
        "output_suffixes",
        "save_labelled_comparison",
    }
    sample = ImageAdapter().example(torch.Generator().manual_seed(0))
    assert sample.shape == (40, 56, 3)


def test_errors_name_the_kind_being_verified() -> None:
    from torch import nn

    from atoken.core.registry import Kind

    class Objective(nn.Module):
        capabilities = frozenset({"export_companion"})  # typo of export_companions

        def export_companions(self, directory):
            pass

    with pytest.raises(CapabilityError) as info:
        declared_capabilities(Objective, kind="objective")
    msg = str(info.value)
    assert msg.startswith(f"objective class {__name__}.")
    assert "'export_companion' is not a known capability (did you mean 'export_companions'?)" in msg

    class Held(nn.Module):
        capabilities = frozenset({"evaluate_held_out"})

        def evaluate_held_out(self, model):  # samples missing
            return None

        def forward(self, out, batch):
            return out

    objectives = Kind(
        "objective", "atoken_register_objectives", nn.Module, "task objectives", capabilities=True
    ).registry()
    with pytest.raises(CapabilityError, match=r"^objective class .*Held: declares"):
        objectives.add("held", Held, provider="tests")  # a class: verified at registration

    def lazy(context):  # no options model: called with the context only
        return Held()

    objectives.add("lazy", lazy, provider="tests")  # known when built
    with pytest.raises(CapabilityError, match=r"^objective class .*Held: declares"):
        objectives.build("lazy", context=None)
    with pytest.raises(CapabilityError, match=r"^adapter class "):
        _registry().add("toy", type("Typo", (_Base,), {"capabilities": frozenset({"opn"})}))
