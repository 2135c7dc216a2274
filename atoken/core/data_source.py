"""A training data source as a plugin registers it: its options model and how to build it.

A ``[[data]]`` entry (or a run's ``[eval]`` section) names a source (``samples``, ``folder``,
``webdataset``, ``files``, or one a plugin adds). Sources are registered through
``atoken_register_data_sources``: a source that serves any modality (it reads through the task's
adapter, e.g. ``files``) is registered under its plain name; a source for one modality's data is
registered as ``<modality>.<name>`` by that modality's plugin (``image.folder``,
``video.samples``) and wins over the plain one for tasks of that modality.
`find_data_source` does that lookup; the entry's options model validates the entry's
``options`` (phase two of the config check, after the ``[[data]]`` structure itself).

References: two-phase option validation after this project's registries (`atoken.core.registry`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atoken.core.registry import Entry, Registry


@dataclass(frozen=True, slots=True)
class DataSourceRequest:
    """What a data-source factory is given besides its validated options.

    Attributes:
        path: the ``[[data]]`` entry's ``path`` ("" when it has none).
        adapter: the built adapter of the entry's task (None for sources that do not read
            through it, `DataSourceSpec.needs_adapter` False).
        max_tokens: the batch budget (None: unchecked); sources whose samples the stream cannot
            downscale skip samples over it.
        split: which split of a source's built-in data: ``train`` for training, or the held-out
            split a run's ``[eval]`` names (``tune``, its alias ``heldout``, or ``final``);
            sources without built-in splits ignore it.
    """

    path: str
    adapter: Any = None
    max_tokens: int | None = None
    split: str = "train"


@dataclass(frozen=True, slots=True)
class DataSourceSpec:
    """A registered data source.

    Attributes:
        build: ``build(options, request) -> source``: ``options`` is the validated options model
            (registered with ``registry.add(..., options=Model)``), ``request`` a
            `DataSourceRequest`; the source has ``__len__``, ``key(i)`` and ``load(i)``.
        needs_adapter: the source reads through the task's adapter (``request.adapter`` is set).

    The options model may define ``build()`` returning the crop augmentation the stream applies
    to the source's samples (sources of one task must give equal ones); without it, no crop.
    The options model's ``adapter`` field, if any, holds the options of the task's adapter.
    """

    build: Callable[[Any, DataSourceRequest], Any]
    needs_adapter: bool = False


def register_modality_sources(
    registry: Any,
    modality: str,
    sources: Iterable[tuple[str, type, Callable[[Any, DataSourceRequest], Any], bool, str]],
) -> None:
    """Register a modality plugin's sources as ``<modality>.<name>`` (what `find_data_source`
    looks up first for a task of that modality).

    Args:
        registry: the plugin's bound data-source registry.
        modality: the adapter name the sources feed (``image``, ``video``, ...).
        sources: rows ``(name, options model, build, needs_adapter, description)``.
    """
    for name, options, build, needs_adapter, description in sources:
        registry.add(
            f"{modality}.{name}",
            DataSourceSpec(build, needs_adapter=needs_adapter),
            options=options,
            description=description,
        )


def find_data_source(registry: Registry[Any], name: str, modality: str) -> Entry[Any] | None:
    """The entry serving source ``name`` for ``modality`` data (``<modality>.<name>``, else
    ``<name>``); None when neither is registered."""
    for key in (f"{modality}.{name}", name):
        if key in registry:
            return registry.get(key)
    return None


def data_source_names(registry: Registry[Any], modality: str) -> list[str]:
    """The source names a task of ``modality`` may use, sorted."""
    names = set()
    for key in registry.names():
        head, _, tail = key.rpartition(".")
        if not head:
            names.add(key)
        elif head == modality:
            names.add(tail)
    return sorted(names)
