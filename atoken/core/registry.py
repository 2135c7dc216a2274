"""Typed registries of named components with provenance, duplicate refusal and helpful misses.

One `Registry` per kind (adapter, quantizer, head, loss, attention backend, command). Plugins add
entries through their `atoken_register_*` hooks; the plugin host hands each plugin a view bound to
its provider name, so every entry knows who registered it and a clash names both providers.

References: registry shape after timm / open_clip (list what exists on a miss), error classes after
llm (`KeyError` subclass), duplicate refusal as pytest refuses duplicate plugin names.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from atoken.core.adapter_context import AdapterContext
from atoken.core.capabilities import (
    CAPABILITIES,
    CapabilityError,
    capabilities_of,
    declared_capabilities,
)
from atoken.core.config import format_validation_error
from atoken.core.errors import AtokenError

T = TypeVar("T")

_HINT = "run `atoken plugins` to see what is installed and which hooks each plugin implements"


class UnknownComponentError(AtokenError, KeyError, LookupError):
    """A name that no registered component carries."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(AtokenError, ValueError):
    """Two providers registered the same name for the same kind."""


class OptionsError(AtokenError, ValueError):
    """A component's options did not validate against the model its plugin registered."""


@dataclass(frozen=True, slots=True)
class Provider:
    """Who registered an entry: a distribution (or module) name and its version."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name} {self.version}"


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """One registered component.

    Attributes:
        kind: registry kind, e.g. ``"adapter"``.
        name: the name users write in configs and on the command line.
        obj: the factory (or, for attention backends and commands, the object itself).
        options_model: pydantic model validating the component's ``options``; None if it takes none.
        provider: who registered it.
        description: one line for ``atoken plugins``.
        capabilities: (adapters) the optional capabilities its adapters declare, verified
            (`atoken.core.capabilities`); ask `has` rather than probing the adapter.
    """

    kind: str
    name: str
    obj: T
    options_model: type[BaseModel] | None
    provider: Provider
    description: str = ""
    #: the verified declaration, once known: at registration for a class, at the first build
    #: for a lazy factory function
    _capabilities: list[frozenset[str]] = field(default_factory=list, repr=False, compare=False)

    @property
    def capabilities(self) -> frozenset[str]:
        """The optional capabilities this entry's adapters declare (empty for other kinds).

        A lazy factory's declaration is known once it has built an adapter; asked before that,
        the factory is called once with default options to find out.
        """
        if not self._capabilities and self.kind == "adapter":
            self.record_capabilities(
                self.obj(self.validate_options(None), context=AdapterContext())
            )
        return self._capabilities[0] if self._capabilities else frozenset()

    def has(self, capability: str) -> bool:
        """Whether this entry's adapters declare ``capability`` (e.g. ``"stream_sink"``)."""
        if capability not in CAPABILITIES:
            raise CapabilityError(
                f"no capability named {capability!r}; known: {', '.join(sorted(CAPABILITIES))}"
            )
        return capability in self.capabilities

    def record_capabilities(self, adapter: Any) -> frozenset[str]:
        """Verify an adapter built for this entry (once per class) and record its declaration.

        Raises:
            CapabilityError: the declaration does not hold, or differs from the one recorded.
        """
        caps = capabilities_of(adapter)
        if not self._capabilities:
            self._capabilities.append(caps)
        elif self._capabilities[0] != caps:
            raise CapabilityError(
                f"adapter '{self.name}' ({self.provider}) built a {type(adapter).__qualname__}"
                f" declaring {sorted(caps)}, but its entry records {sorted(self._capabilities[0])};"
                " one factory must build adapters of one declaration"
            )
        return caps

    def validate_options(self, options: dict[str, Any] | BaseModel | None) -> BaseModel | None:
        """Validate ``options`` against this entry's options model (phase two of config checks)."""
        if isinstance(options, BaseModel):
            options = options.model_dump()
        options = dict(options or {})
        if self.options_model is None:
            if options:
                raise OptionsError(
                    f"{self.kind} '{self.name}' takes no options, got {sorted(options)}"
                )
            return None
        try:
            return self.options_model.model_validate(options)
        except ValidationError as exc:
            problems = format_validation_error(exc, sep="; ")
            raise OptionsError(
                f"invalid options for {self.kind} '{self.name}' ({self.provider}): {problems}"
            ) from None


@dataclass
class Registry(Generic[T]):
    """Named components of one kind.

    Args:
        kind: singular noun used in messages ("adapter", "quantizer", ...).
        blocked: entry-point names blocked in plugins.toml, quoted on a miss.
    """

    kind: str
    blocked: tuple[str, ...] = ()
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    # ------------------------------------------------------------------ writing
    def add(
        self,
        name: str,
        obj: T,
        *,
        options: type[BaseModel] | None = None,
        description: str = "",
        provider: Provider | str | None = None,
    ) -> Entry[T]:
        """Register ``obj`` under ``name``; refuses a name that is already taken.

        Args:
            name: lowercase identifier users will write (letters, digits, ``-``, ``_``, ``.``).
            obj: the factory or object.
            options: pydantic model of the component's options (``extra="forbid"``).
            description: one line shown by ``atoken plugins``.
            provider: who registers it; filled in by the plugin host's bound view.
        """
        if (
            not isinstance(name, str)
            or not name
            or not all(c.isalnum() or c in "-_." for c in name)
        ):
            raise ValueError(
                f"{self.kind} name must be a non-empty string of letters, digits, '-', '_' or '.';"
                f" got {name!r}"
            )
        if options is not None and not (
            isinstance(options, type) and issubclass(options, BaseModel)
        ):
            raise TypeError(f"options for {self.kind} '{name}' must be a pydantic model class")
        prov = provider if isinstance(provider, Provider) else Provider(provider or "<unknown>")
        if name in self._entries:
            old = self._entries[name]
            raise DuplicateComponentError(
                f"{self.kind} '{name}' is registered twice: by {old.provider} and by {prov}."
                f" Uninstall one of them or block one in plugins.toml."
            )
        entry = Entry(self.kind, name, obj, options, prov, description)
        cls = _adapter_class(obj) if self.kind == "adapter" else None
        if cls is not None:  # the class is at hand: its capability declaration is verified now
            entry._capabilities.append(declared_capabilities(cls))
        self._entries[name] = entry
        return entry

    def bound(self, provider: Provider) -> BoundRegistry[T]:
        """A view whose ``add`` records ``provider``; what the plugin host hands to hooks."""
        return BoundRegistry(self, provider)

    # ------------------------------------------------------------------ reading
    def get(self, name: str) -> Entry[T]:
        """Return the entry called ``name`` or raise `UnknownComponentError` with suggestions."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownComponentError(self.miss_message(name)) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        """Registered entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def build(self, name: str, options: dict[str, Any] | BaseModel | None = None, **context: Any):
        """Validate ``options`` with the entry's model, then call its factory.

        The factory receives the validated options model (or nothing if it takes none) followed by
        ``context`` keywords (e.g. ``latent_channels=48``). An adapter factory is always called as
        ``factory(options, context=AdapterContext)`` (options None when it registered no model):
        ``context=`` is the model's (`atoken.core.reconstruct.adapter_for` builds it), default
        `AdapterContext()` (the default model config's geometry, the CPU, no companions).
        """
        entry = self.get(name)
        opts = entry.validate_options(options)
        if not callable(entry.obj):
            raise TypeError(f"{self.kind} '{name}' ({entry.provider}) is not a factory")
        if self.kind == "adapter":
            ctx = context.pop("context", None)
            if context:
                raise TypeError(
                    f"adapter '{name}' is built with options and context= only, got"
                    f" {', '.join(sorted(context))}"
                )
            if ctx is None:
                ctx = AdapterContext()
            elif not isinstance(ctx, AdapterContext):
                raise TypeError(f"context must be an AdapterContext, got {type(ctx).__name__}")
            built = entry.obj(opts, context=ctx)
            entry.record_capabilities(built)  # a lazy factory's declaration, verified on first use
            return built
        if entry.options_model is not None:
            return entry.obj(opts, **context)
        return entry.obj(**context)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def miss_message(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.6)
        lines = [
            f"no {self.kind} named {name!r}" + (f" — did you mean {close[0]!r}?" if close else "")
        ]
        available = ", ".join(f"{e.name} ({e.provider})" for e in self.entries()) or "none"
        lines.append(f"  available {self.kind}s: {available}")
        if self.blocked:
            lines.append(f"  blocked in plugins.toml: {', '.join(self.blocked)}")
        lines.append(f"  {_HINT}")
        return "\n".join(lines)


def _adapter_class(obj: Any) -> type | None:
    """The class an adapter factory builds, when known without importing anything: the factory
    itself, or its return annotation if that resolves in the factory's module as it stands."""
    if isinstance(obj, type):
        return obj
    try:
        hint = inspect.get_annotations(obj, eval_str=True).get("return")
    except Exception:  # noqa: BLE001 - a lazy factory (name imported later): checked at build
        return None
    return hint if isinstance(hint, type) else None


@dataclass(frozen=True, slots=True)
class BoundRegistry(Generic[T]):
    """A registry view bound to one provider (what a plugin's hook receives)."""

    registry: Registry[T]
    provider: Provider

    @property
    def kind(self) -> str:
        return self.registry.kind

    def add(
        self,
        name: str,
        obj: T,
        *,
        options: type[BaseModel] | None = None,
        description: str = "",
    ) -> Entry[T]:
        """Register ``obj`` under ``name`` on behalf of this view's provider (see `Registry.add`)."""
        return self.registry.add(
            name, obj, options=options, description=description, provider=self.provider
        )

    def __contains__(self, name: object) -> bool:
        return name in self.registry

    def names(self) -> list[str]:
        return self.registry.names()


Factory = Callable[..., Any]
