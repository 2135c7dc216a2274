"""The report page: sections for runs and reconstructions, put into ``report.html`` with the
page's stylesheet and scripts inline (package data beside this module).

Everything the page shows is in the one file: pictures as ``data:`` URIs, clip frames and
Gaussians in a JSON block the scripts read, no ``http(s)`` address anywhere, so it opens offline
and can be mailed or attached to an issue.
"""

from __future__ import annotations

import json
import os
import time
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from atoken.report.item_section import item_section, items_summary
from atoken.report.markup import slug
from atoken.report.run_section import run_section
from atoken.report.sources import Found, find


def _asset(name: str) -> str:
    return resources.files("atoken.report").joinpath(name).read_text(encoding="utf-8")


def _json_script(data: dict[str, Any]) -> str:
    """JSON safe inside ``<script>``: no ``<`` at all (so no ``</script>``)."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def render(found: Found, root: Path) -> str:
    """The page's HTML for what `atoken.report.sources.find` found under ``root``."""
    import atoken

    used: set[str] = set()
    data: dict[str, Any] = {"videos": {}, "splats": {}}
    parts, nav = [], []
    for run in found.runs:
        anchor = slug(f"run-{run.path.name}", used)
        nav.append(f'<a href="#{anchor}">run {escape(run.path.name)}</a>')
        parts.append(run_section(run, root, anchor))
    if found.items:
        anchors = [slug(it.name, used) for it in found.items]
        sections = [
            item_section(it, root, a, data) for it, a in zip(found.items, anchors, strict=True)
        ]
        more = (
            f'<p class="note">{found.more_items} more reconstructions are not shown (the page'
            " shows the first ones by path)</p>"
            if found.more_items
            else ""
        )
        nav.append('<a href="#reconstructions">reconstructions</a>')
        parts.append(
            '<section id="reconstructions"><h2>Reconstructions</h2>'
            + items_summary(found.items, anchors)
            + more
            + "".join(sections)
            + "</section>"
        )
    title = f"atoken report: {root.name or root}"
    header = (
        f"<h1>{escape(title)}</h1>"
        f'<p class="path">{escape(str(root))} · written {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}'
        f" · atoken {escape(atoken.__version__)}</p><nav>{' '.join(nav)}</nav>"
    )
    page = _asset("report.html")
    for marker, value in (
        ("title", escape(title)),
        ("css", _asset("report.css")),
        ("header", header),
        ("body", "".join(parts)),
        ("data", _json_script(data)),
        ("js", _asset("report.js") + "\n" + _asset("splat.js")),
    ):
        page = page.replace(f"<!--atoken:{marker}-->", value, 1)
    return page


def build_report(path: str | os.PathLike[str]) -> str:
    """The self-contained HTML report of a training run or reconstruction folder.

    Args:
        path: a run folder (`atoken train --out`), a reconstruction folder (`atoken reconstruct
            -o`, or one input's subfolder of it), or a folder holding several of them.

    Returns:
        The page, one HTML document with everything inline.

    Raises:
        InputError: ``path`` is not a folder, or holds neither kind.
    """
    root = Path(path).resolve()
    return render(find(root), root)


def write_report(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """`build_report` of ``path``, written atomically to ``out`` (replacing a file there).

    Raises:
        InputError: as `build_report`.
        OutputPathError: ``out`` is a folder, a device or a FIFO.
    """
    from atoken.core.serialization import atomic_write, check_output_target

    target = check_output_target(out, "report")
    text = build_report(path)
    return atomic_write(target, lambda fh: fh.write(text.encode("utf-8")))
