"""Shared fixtures: registries, a tiny model, real photos, temporary plugins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import atoken
from atoken.core.plugins import (
    AtokenPluginManager,
    Components,
    build_plugin_manager,
    collect_components,
)

SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"


def pytest_configure(config) -> None:
    """Tests import transformers directly; on CPU torch the PyPI torchvision (pulled in by lpips)
    would break that import, so apply atoken's shim before any test module is collected."""
    from atoken.core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()


@pytest.fixture(scope="session")
def components() -> Components:
    """The registries of the installed plugins."""
    return atoken.default_components()


@pytest.fixture(scope="session")
def tiny(components) -> atoken.Tokenizer:
    """An untrained atoken-tiny in eval mode (shared; do not mutate)."""
    return atoken.build_tokenizer("atoken-tiny", components=components).eval()


@pytest.fixture(scope="session")
def photos() -> dict[str, torch.Tensor]:
    """Real photos bundled with scikit-image, as [H, W, 3] tensors in [-1, 1]."""
    from atoken.plugins.image.io import read_image

    names = ("astronaut.png", "coffee.png", "chelsea.png")
    return {n.split(".")[0]: read_image(SKIMAGE_DATA / n) for n in names}


@pytest.fixture
def plugin_manager() -> AtokenPluginManager:
    """A fresh plugin manager with built-ins only (no entry points)."""
    return build_plugin_manager(atoken.PluginSettings(autoload=False))


@pytest.fixture
def register_plugin(plugin_manager):
    """Register temporary plugin objects on a fresh manager; returns a components factory.

    Usage: ``comps = register_plugin(obj, name="x")``.
    """
    added: list[object] = []

    def _register(plugin: object, name: str) -> Components:
        plugin_manager.register(plugin, name=name)
        added.append(plugin)
        return collect_components(plugin_manager)

    yield _register
    for plugin in added:
        if plugin_manager.is_registered(plugin):
            plugin_manager.unregister(plugin)


def crop_to(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Top-left crop helper for making mixed-size batches from real photos."""
    return img[:h, :w].contiguous()


@pytest.fixture
def mixed_batch(photos) -> Iterator[list[atoken.PatchTokens]]:
    """Real photo crops of different sizes and aspect ratios, tokenized by the image adapter."""
    from atoken.plugins.image.adapter import ImageAdapter

    adapter = ImageAdapter()
    sizes = [("astronaut", 64, 96), ("coffee", 48, 48), ("chelsea", 80, 32), ("astronaut", 32, 112)]
    yield [adapter.to_tokens(crop_to(photos[n], h, w)) for n, h, w in sizes]
