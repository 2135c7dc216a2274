"""``KEY=VALUE`` option pairs (``--option`` / ``-o`` on the command line) -> an options dict.

One parser for atoken's commands and for the commands plugins add (`atoken.plugin.parse_options`),
so ``-o size=64 -o name=x`` means the same everywhere. Values are JSON where they parse as JSON
(``64`` -> int, ``true`` -> bool, ``[1, 2]`` -> list) and plain strings otherwise.
`parse_adapter_options` reads the ``ADAPTER.KEY=VALUE`` form every command that builds adapters
takes (``-O image.max_res=512 -O mesh3d.views=8``), bare keys applying to every adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings into a dict; a later key wins over an earlier one.

    Args:
        pairs: the strings as given, e.g. the tuple of a click ``multiple=True`` option.

    Returns:
        ``{key: value}`` with each value JSON-decoded where it parses, else the raw string.

    Raises:
        click.BadParameter: a pair without ``=`` or with an empty key (a usage error: click
            prints it against ``--option`` and exits 2).
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            import click  # only on the error path: the parser itself does not need click

            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@dataclass(frozen=True)
class AdapterOptions:
    """``-O`` options of a command that may read several modalities.

    ``ADAPTER.KEY=VALUE`` sets ``KEY`` of that adapter only (``-O mesh3d.views=8``); a bare
    ``KEY=VALUE`` (``-O max_res=512``) sets it for every adapter the command builds, so a
    one-modality command keeps its short form. A qualified key wins over a bare one.
    """

    shared: dict[str, Any] = field(default_factory=dict)
    per_adapter: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_adapter(self, name: str) -> dict[str, Any] | None:
        """The options of adapter ``name`` (None: its defaults)."""
        return {**self.shared, **self.per_adapter.get(name, {})} or None

    def check_adapters(self, known: Iterable[str]) -> None:
        """`InputError` (one line) for an ``ADAPTER.`` prefix that names no registered adapter."""
        known = sorted(known)
        for name in self.per_adapter:
            if name not in known:
                from atoken.core.errors import InputError

                raise InputError(
                    f"-O {name}.…: no adapter is named {name!r}; known adapters: {', '.join(known)}"
                    " (give ADAPTER.KEY=VALUE, e.g. image.max_res=512, or a bare KEY=VALUE)"
                )


def parse_adapter_options(pairs: Iterable[str], *, qualified_only: bool = False) -> AdapterOptions:
    """Parse ``-O`` pairs into `AdapterOptions` (values as `parse_options` reads them).

    Args:
        qualified_only: every key must name its adapter (``ADAPTER.KEY``), as in a command
            that reads a folder of mixed files (``atoken eval``).

    Raises:
        click.BadParameter: a malformed pair, or a bare key where ``qualified_only``.
    """
    shared: dict[str, Any] = {}
    per_adapter: dict[str, dict[str, Any]] = {}
    for key, value in parse_options(pairs).items():
        adapter, dot, name = key.partition(".")
        if dot and adapter and name:
            per_adapter.setdefault(adapter, {})[name] = value
        elif dot or qualified_only:
            import click

            raise click.BadParameter(
                f"expected ADAPTER.KEY=VALUE (e.g. mesh3d.views=8), got {key!r}",
                param_hint="--option",
            )
        else:
            shared[key] = value
    return AdapterOptions(shared, per_adapter)
