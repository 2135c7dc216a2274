"""``KEY=VALUE`` option pairs (``--option`` / ``-o`` on the command line) -> an options dict.

One parser for atoken's commands and for the commands plugins add (`atoken.plugin.parse_options`),
so ``-o size=64 -o name=x`` means the same everywhere. Values are JSON where they parse as JSON
(``64`` -> int, ``true`` -> bool, ``[1, 2]`` -> list) and plain strings otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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
