"""The plugin host: builds the plugin manager and collects every registry.

Nothing happens at import. `build_plugin_manager` registers the hookspecs, applies the blocks
from ``plugins.toml``, registers the built-ins by import (the same hooks third parties use),
then loads entry points of group ``atoken`` and calls ``check_pending()``.
`collect_components` then calls each plugin's ``atoken_register_*`` hooks with a registry view
bound to that plugin, so every entry knows its provider. The kinds of component, each with its
hook and the type it builds, are one table (`Components`' class attributes, `KINDS`): adding a
kind is one line there (and its hookspec).

References: ordering after tox's plugin manager; blocking and the autoload off-switch after
pytest (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``); hook-call tracing after datasette.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pluggy
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from atoken.core import hookspecs
from atoken.core.attention import AttentionBackend
from atoken.core.config import format_validation_error
from atoken.core.data_source import DataSourceSpec
from atoken.core.errors import AtokenError
from atoken.core.modality import ModalityAdapter
from atoken.core.objective import UnderstandingSpec
from atoken.core.quantizer import Quantizer
from atoken.core.registry import Kind, Provider, Registry
from atoken.core.task import TaskSpec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "atoken"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "atoken.plugins.attention",
    "atoken.plugins.quantizers",
    "atoken.plugins.heads",
    "atoken.plugins.image",
    "atoken.plugins.video",
    "atoken.plugins.text",
    "atoken.plugins.losses",
    "atoken.plugins.sources",  # the modality-free data sources (files, adapter samples)
    "atoken.train.semantic",  # the understanding objectives (distill, caption_contrast)
)


class PluginError(AtokenError, RuntimeError):
    """A plugin could not be loaded or registered."""


class PluginSettings(BaseModel):
    """Contents of ``plugins.toml``.

    Attributes:
        autoload: load every installed entry point of group ``atoken`` (default true).
        blocked: entry-point names never to load.
        enabled: with ``autoload = false``, the entry-point names to load anyway.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    autoload: bool = True
    blocked: tuple[str, ...] = ()
    enabled: tuple[str, ...] = ()

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> PluginSettings:
        """Read and validate a ``plugins.toml`` file; errors name the file and the key."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PluginError(
                f"cannot read plugin settings {str(path)!r}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise PluginError(f"{path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise PluginError(f"{path}: not UTF-8 text (byte {exc.start}); expected TOML") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            errs = format_validation_error(exc, sep="; ")
            raise PluginError(
                f"{path}: {errs} (allowed keys: autoload, blocked, enabled)"
            ) from None

    @classmethod
    def discover(cls) -> PluginSettings:
        """Settings from ``$ATOKEN_PLUGINS_TOML``, else ``./plugins.toml``, else the defaults."""
        env = os.environ.get("ATOKEN_PLUGINS_TOML")
        if env:
            return cls.from_toml(env)
        local = Path("plugins.toml")
        return cls.from_toml(local) if local.is_file() else cls()


class AtokenPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers which distribution provided each plugin."""

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__("atoken")
        self.settings = settings
        self.providers: dict[str, Provider] = {}

    def provider_of(self, plugin: object) -> Provider:
        name = self.get_name(plugin)
        return self.providers.get(name or "", Provider(name or "<unknown>"))


def _atoken_version() -> str | None:
    try:
        return md.version("atoken")
    except md.PackageNotFoundError:
        return None


def build_plugin_manager(settings: PluginSettings | None = None) -> AtokenPluginManager:
    """Build the plugin manager: specs, blocks, built-ins, entry points, then ``check_pending``.

    Args:
        settings: plugin settings; default `PluginSettings.discover()`.

    Raises:
        PluginError: an entry point failed to import, or a plugin implements an unknown hook.
    """
    settings = settings if settings is not None else PluginSettings.discover()
    pm = AtokenPluginManager(settings)
    pm.add_hookspecs(hookspecs)
    for name in settings.blocked:
        pm.set_blocked(name)
    builtin = Provider("atoken", _atoken_version())
    for modname in BUILTIN_PLUGINS:
        module = importlib.import_module(modname)
        pm.register(module, name=modname)
        pm.providers[modname] = builtin
    if os.environ.get("ATOKEN_DISABLE_PLUGIN_AUTOLOAD"):
        wanted: set[str] | None = set(settings.enabled)
    else:
        wanted = None if settings.autoload else set(settings.enabled)
    _load_entry_points(pm, wanted)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin)!r}: {exc}") from None
    if os.environ.get("ATOKEN_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


def _load_entry_points(pm: AtokenPluginManager, wanted: set[str] | None) -> None:
    seen: dict[str, str] = {}
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "<unknown distribution>"
        version = dist.version if dist is not None else None
        provider = Provider(dist_name, version)
        if pm.is_blocked(ep.name) or (wanted is not None and ep.name not in wanted):
            continue
        if ep.name in seen:
            if seen[ep.name] == dist_name:  # same distribution seen twice on sys.path
                continue
            raise PluginError(
                f"entry point {ep.name!r} of group 'atoken' is provided by both {seen[ep.name]}"
                f" and {provider}; uninstall one or block the name in plugins.toml"
            )
        seen[ep.name] = dist_name
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
            raise PluginError(
                f"Error importing plugin {ep.name!r} from {provider}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            pm.register(plugin, name=ep.name)
        except ValueError as exc:
            raise PluginError(
                f"cannot register plugin {ep.name!r} from {provider}: {exc}"
            ) from None
        pm.providers[ep.name] = provider


@dataclass
class Components:
    """Every registry, filled by the plugins of one plugin manager.

    The class attributes below are the table of kinds (`KINDS`, in hook-call order): each reads,
    on an instance, as that kind's `Registry`, typed by what it builds
    (``components.adapters: Registry[ModalityAdapter]``).
    """

    pm: AtokenPluginManager
    registries: dict[str, Registry[Any]] = field(default_factory=dict)

    # name, hook, what an entry builds (or, factory=False, is), description
    adapters = Kind(
        "adapter",
        "atoken_register_adapters",
        ModalityAdapter,
        "modality adapters",
        capabilities=True,
    )
    quantizers = Kind("quantizer", "atoken_register_quantizers", Quantizer, "latent quantizers")
    heads = Kind("head", "atoken_register_heads", nn.Module, "token-pooling embedding heads")
    losses = Kind("loss", "atoken_register_losses", nn.Module, "training losses")
    tasks = Kind("task", "atoken_register_tasks", TaskSpec, "training tasks", factory=False)
    data_sources = Kind(
        "data_source",
        "atoken_register_data_sources",
        DataSourceSpec,
        "training data sources",
        factory=False,
    )
    attention = Kind(
        "attention",
        "atoken_register_attention_backends",
        AttentionBackend,
        "varlen attention backends",
        factory=False,
    )
    text_encoders = Kind("text_encoder", "atoken_register_text_encoders", object, "text towers")
    objectives = Kind(
        "objective", "atoken_register_objectives", nn.Module, "task objectives", capabilities=True
    )
    understanding_objectives = Kind(
        "understanding_objective",
        "atoken_register_understanding_objectives",
        UnderstandingSpec,
        "understanding objectives",
        factory=False,
    )
    commands = Kind(
        "command", "atoken_register_commands", click.Command, "atoken sub-commands", factory=False
    )

    def __getitem__(self, kind: str) -> Registry[Any]:
        try:
            return self.registries[kind]
        except KeyError:
            raise KeyError(f"no registry kind {kind!r}; kinds: {sorted(self.registries)}") from None

    def plugins(self) -> list[tuple[str, Provider, list[str]]]:
        """(plugin name, provider, hooks it implements) for every registered plugin."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append((name, self.pm.provider_of(plugin), hooks))
        return out


#: the table of kinds, in hook-call order (`Components`' class attributes)
KINDS: tuple[Kind[Any], ...] = tuple(v for v in vars(Components).values() if isinstance(v, Kind))


def collect_components(pm: AtokenPluginManager) -> Components:
    """Call every kind's ``atoken_register_*`` hook (`KINDS`), one plugin at a time, with a
    registry view bound to that plugin."""
    comps = Components(pm)
    for kind in KINDS:
        hook_name = kind.hook
        registry = kind.registry(blocked=tuple(pm.settings.blocked))
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            others = [p for p in pm.get_plugins() if p is not impl.plugin]
            caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(registry=registry.bound(pm.provider_of(impl.plugin)))
            except AtokenError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} ({pm.provider_of(impl.plugin)}) failed in"
                    f" {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc
        comps.registries[kind.name] = registry
    return comps


@cache
def default_components() -> Components:
    """The components of the default plugin manager, built on first use and then reused."""
    return collect_components(build_plugin_manager())


def import_module_or_none(name: str) -> ModuleType | None:
    """Import ``name`` if it is installed; None otherwise (used for optional backends)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
