"""Shard lists from patterns: bash-style brace expansion and globs.

``shards/train-{000000..000009}.tar`` names ten shards; ``{a,b}`` gives alternatives; braces
nest (``{a,b{1..2}}``); numeric ranges keep the zero padding of their endpoints and may step
(``{0..10..5}``) or count down. A pattern without braces but with ``*``, ``?`` or ``[`` is a glob
(sorted matches). Everything else is a plain path.

References: the Bash reference manual, "Brace Expansion"; the ``braceexpand`` package
(https://github.com/trendels/braceexpand), which WebDataset uses for the same purpose.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence

from atoken.core.errors import InputError

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")


def _matching_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``start``, or -1."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top(body: str) -> list[str]:
    """Split a brace body at its top-level commas."""
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    parts.append(body[last:])
    return parts


def _range(lo: str, hi: str, step: str | None) -> list[str]:
    a, b = int(lo), int(hi)
    s = abs(int(step)) if step else 1
    if s == 0:
        raise InputError(f"brace range {{{lo}..{hi}..{step}}} has step 0")
    padded = any(len(x.lstrip("-")) > 1 and x.lstrip("-").startswith("0") for x in (lo, hi))
    width = max(len(lo), len(hi)) if padded else 0
    values = range(a, b + 1, s) if a <= b else range(a, b - 1, -s)
    return [str(v).zfill(width) if v >= 0 else "-" + str(-v).zfill(width - 1) for v in values]


def expand_braces(pattern: str) -> list[str]:
    """All strings a brace pattern names, in order (no file-system access).

    Args:
        pattern: e.g. ``"train-{000..003}.tar"`` or ``"{train,val}-{0..1}.tar"``.

    Returns:
        The expansions; a pattern without a complete brace group is returned as is.
    """
    start = pattern.find("{")
    while start != -1:
        end = _matching_brace(pattern, start)
        if end == -1:
            return [pattern]
        body = pattern[start + 1 : end]
        m = _RANGE.match(body)
        if m:
            options = _range(*m.groups())
        else:
            parts = _split_top(body)
            if len(parts) == 1:  # "{x}" is literal, as in bash; look for a later group
                start = pattern.find("{", start + 1)
                continue
            options = [o for part in parts for o in expand_braces(part)]
        head, tails = pattern[:start], expand_braces(pattern[end + 1 :])
        return [head + o + t for o in options for t in tails]
    return [pattern]


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand shard patterns to a list of paths (braces, then globs for brace-free patterns).

    Args:
        urls: one pattern or a list of patterns (each expanded; order kept).

    Returns:
        The paths, in pattern order.

    Raises:
        InputError: a glob matches nothing, or the list is empty.
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for pattern in patterns:
        for item in expand_braces(str(pattern)):
            if any(c in item for c in "*?["):
                matches = sorted(glob.glob(item))
                if not matches:
                    raise InputError(f"shard pattern {item!r} matches no file")
                out.extend(matches)
            else:
                out.append(item)
    if not out:
        raise InputError("no shards given; pass a path, a brace pattern or a list of paths")
    return out
