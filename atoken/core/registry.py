"""Typed registries of named components with provenance, duplicate refusal and helpful misses.

One `Registry` per `Kind` (adapter, quantizer, head, loss, task, ..., command; the table of kinds
is `atoken.core.plugins.Components`). A kind says what its entries build (or, for kinds whose
entries are plain objects, what they are), so a registry is typed by it (`Registry[TaskSpec]`)
and checks it: a plain object when it is registered, a factory's class when it is at hand at
registration, and every object a factory builds. Plugins add entries through their
`atoken_register_*` hooks; the plugin host hands each plugin a view bound to its provider name,
so every entry knows who registered it and a clash names both providers.

References: registry shape after timm / open_clip (list what exists on a miss), error classes after
llm (`KeyError` subclass), duplicate refusal as pytest refuses duplicate plugin names.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, overload

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


class ComponentTypeError(AtokenError, TypeError):
    """A registered object, or what a factory built, is not of the type its kind says."""


@dataclass(frozen=True, slots=True)
class Kind(Generic[T]):
    """One kind of component: a row of the table of kinds (`atoken.core.plugins.Components`).

    As a class attribute it reads, on an instance holding ``registries`` by kind name, as that
    kind's `Registry` (``components.adapters``), typed by ``builds``.

    Attributes:
        name: singular noun used in messages and as the registry key (``"adapter"``).
        hook: the hook that fills the registry (``"atoken_register_adapters"``).
        builds: what an entry's factory builds, or, when ``factory`` is False, what an entry is;
            objects are checked against it with ``isinstance`` (a runtime-checkable protocol
            checks that the members exist).
        description: one line saying what the kind is.
        factory: entries are factories of ``builds`` (called by `Registry.build`); False: entries
            are ``builds`` objects themselves (a `TaskSpec`, an `AttentionBackend`, ...).
        capabilities: what it builds declares optional capabilities (`atoken.core.capabilities`),
            verified per class.
    """

    name: str
    hook: str
    builds: type[T]
    description: str
    factory: bool = True
    capabilities: bool = False

    def registry(self, blocked: tuple[str, ...] = ()) -> Registry[T]:
        """An empty registry of this kind."""
        return Registry(self.name, blocked, spec=self)

    @overload
    def __get__(self, holder: None, owner: type) -> Kind[T]: ...

    @overload
    def __get__(self, holder: object, owner: type) -> Registry[T]: ...

    def __get__(self, holder: Any, owner: type) -> Kind[T] | Registry[T]:
        return self if holder is None else holder.registries[self.name]

    def expected(self) -> str:
        """What ``builds`` is, for messages: ``a TaskSpec (atoken.core.task.TaskSpec)``."""
        t = self.builds
        return f"{_a(t)} ({t.__module__}.{t.__qualname__})"

    def refusal(self, obj: Any) -> str | None:
        """Why ``obj`` is not a ``builds``, or None when it is."""
        if isinstance(obj, self.builds):
            return None
        lacks = _missing_members(obj, self.builds)
        return f"it lacks {', '.join(lacks)}" if lacks else ""


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
        obj: the factory of the kind's type (or, for kinds whose entries are objects, such as
            tasks, attention backends and commands, the object itself).
        options_model: pydantic model validating the component's ``options``; None if it takes none.
        provider: who registered it.
        description: one line for ``atoken plugins``.
        capabilities: (adapters) the optional capabilities its adapters declare, verified
            (`atoken.core.capabilities`); ask `has` rather than probing the adapter.
    """

    kind: str
    name: str
    obj: T | Callable[..., T]
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
        caps = capabilities_of(adapter, kind=self.kind)
        if not self._capabilities:
            self._capabilities.append(caps)
        elif self._capabilities[0] != caps:
            raise CapabilityError(
                f"{self.kind} '{self.name}' ({self.provider}) built a {type(adapter).__qualname__}"
                f" declaring {sorted(caps)}, but its entry records {sorted(self._capabilities[0])};"
                f" one factory must build {self.kind}s of one declaration"
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
        spec: the `Kind` (what entries build, checked); None: an unchecked registry of ``kind``
            (`Kind.registry` makes checked ones).
    """

    kind: str
    blocked: tuple[str, ...] = ()
    spec: Kind[T] | None = None
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    # ------------------------------------------------------------------ writing
    def add(
        self,
        name: str,
        obj: T | Callable[..., T],
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

        Raises:
            ComponentTypeError: (checked registries) an object kind's ``obj`` is not of the
                kind's type, a factory kind's is not callable, or its class (the factory itself,
                or its resolvable return annotation) is a class that is not the kind's type.
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
        cls = _built_class(obj) if self._factories else None
        if self.spec is not None:
            self._check_registered(name, obj, cls, prov)
        entry = Entry(self.kind, name, obj, options, prov, description)
        if cls is not None and self._declares_capabilities:
            # the class is at hand: its capability declaration is verified now
            entry._capabilities.append(declared_capabilities(cls, kind=self.kind))
        self._entries[name] = entry
        return entry

    @property
    def _factories(self) -> bool:
        return self.spec.factory if self.spec is not None else True

    @property
    def _declares_capabilities(self) -> bool:
        return self.spec.capabilities if self.spec is not None else self.kind == "adapter"

    def _check_registered(self, name: str, obj: Any, cls: type | None, prov: Provider) -> None:
        spec = self.spec
        assert spec is not None
        where = f"{self.kind} '{name}' ({prov})"
        if not spec.factory:
            why = spec.refusal(obj)
            if why is not None:
                raise ComponentTypeError(
                    f"{where} is {_a(type(obj))}, expected {spec.expected()}" + _why(why)
                )
        elif not callable(obj):
            raise ComponentTypeError(
                f"{where} is {_a(type(obj))}, expected a factory building {spec.expected()}"
            )
        elif cls is not None and not _is_protocol(spec.builds) and not issubclass(cls, spec.builds):
            raise ComponentTypeError(f"{where} builds {_a(cls)}, expected {spec.expected()}")

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

    def build(
        self, name: str, options: dict[str, Any] | BaseModel | None = None, **context: Any
    ) -> T:
        """Validate ``options`` with the entry's model, then call its factory.

        The factory receives the validated options model (or nothing if it takes none) followed by
        ``context`` keywords (e.g. ``latent_channels=48``). An adapter factory is always called as
        ``factory(options, context=AdapterContext)`` (options None when it registered no model):
        ``context=`` is the model's (`atoken.core.reconstruct.adapter_for` builds it), default
        `AdapterContext()` (the default model config's geometry, the CPU, no companions).

        Raises:
            ComponentTypeError: (checked registries) the factory built something that is not of
                the kind's type.
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
        elif entry.options_model is not None:
            built = entry.obj(opts, **context)
        else:
            built = entry.obj(**context)
        if self.spec is not None:
            why = self.spec.refusal(built)
            if why is not None:
                raise ComponentTypeError(
                    f"{self.kind} '{name}' ({entry.provider}) built {_a(type(built))}, expected"
                    f" {self.spec.expected()}" + _why(why)
                )
        if self._declares_capabilities:  # a lazy factory's declaration, verified on first use
            entry.record_capabilities(built)
        return built

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


def _built_class(obj: Any) -> type | None:
    """The class a factory builds, when known without importing anything: the factory itself,
    or its return annotation if that resolves in the factory's module as it stands."""
    if isinstance(obj, type):
        return obj
    try:
        hint = inspect.get_annotations(obj, eval_str=True).get("return")
    except Exception:  # noqa: BLE001 - a lazy factory (name imported later): checked at build
        return None
    return hint if isinstance(hint, type) else None


def _is_protocol(t: type) -> bool:
    """Whether ``t`` is a protocol class (typing sets ``_is_protocol`` on each class itself)."""
    return bool(t.__dict__.get("_is_protocol", False))


def _missing_members(obj: Any, proto: type) -> list[str]:
    """The members of protocol ``proto`` that ``obj`` lacks (empty for a non-protocol): what a
    runtime-checkable protocol's ``isinstance`` looks for, named for the message."""
    if not _is_protocol(proto):
        return []
    members: set[str] = set()
    for base in proto.__mro__:
        if not _is_protocol(base) or base is Protocol:
            continue
        names = set(base.__dict__.get("__annotations__", {})) | set(base.__dict__)
        members |= {n for n in names if not n.startswith("_") or n == "__call__"}
    return sorted(m for m in members if not hasattr(obj, m))


def _a(t: type) -> str:
    """``a Tensor``, ``an AttentionBackend``: a type's name with its article, for messages."""
    name = t.__qualname__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _why(why: str) -> str:
    return f": {why}" if why else ""


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
        obj: T | Callable[..., T],
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
