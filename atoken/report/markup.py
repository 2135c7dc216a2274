"""HTML pieces shared by the report's sections: metric formats, tables, anchors, the slider.

Cells and captions passed in are HTML already (the callers escape text); `compare` is the image
comparison slider that ``report.js`` drives.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from atoken.report.sources import number

#: metric -> (label, format) for the known quality metrics; others print with 6 digits
METRICS = {
    "psnr": ("PSNR (dB)", "{:.2f}"),
    "ssim": ("SSIM", "{:.4f}"),
    "lpips": ("LPIPS", "{:.4f}"),
}


def fmt(key: str, value: Any) -> str:
    v = number(value)
    if v is None:
        return escape(str(value))
    if key in METRICS:
        return METRICS[key][1].format(v)
    if float(v).is_integer() and abs(v) < 1e12:
        return str(int(v))
    return f"{v:.6g}"


def label(key: str) -> str:
    return METRICS.get(key, (key, ""))[0]


def slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"
    candidate, i = base, 2
    while candidate in used:
        candidate, i = f"{base}-{i}", i + 1
    used.add(candidate)
    return candidate


def table(header: list[str], rows: list[list[str]], cls: str = "metrics") -> str:
    """An HTML table; cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def compare(
    left: str, right: str, size: tuple[int, int], labels: tuple[str, str], caption: str
) -> str:
    """A comparison slider: ``left`` (revealed left of the handle) over ``right``.

    Args:
        left, right: ``data:`` URIs of two pictures of the same size.
        size: ``(width, height)`` in pixels.
        labels: what each side is, shown on the picture and read out to screen readers.
    """
    w, h = size
    ll, rl = (escape(t) for t in labels)
    shown = max(w, min(3 * w, 640))  # a small picture is enlarged, pixel for pixel
    pixels = ";image-rendering:pixelated" if shown > w else ""
    return (
        f'<figure class="compare" data-compare style="max-width:{shown}px">'
        f'<div class="compare-frame" style="aspect-ratio:{w}/{h}{pixels}">'
        f'<img class="compare-right" src="{right}" alt="{rl}" draggable="false">'
        f'<img class="compare-left" src="{left}" alt="{ll}" draggable="false"'
        ' style="clip-path:inset(0 50% 0 0)">'
        '<div class="compare-handle" style="left:50%"></div>'
        f'<span class="tag tag-left">◀ {ll}</span><span class="tag tag-right">{rl} ▶</span>'
        "</div>"
        '<input class="compare-range" type="range" min="0" max="100" step="0.1" value="50"'
        f' aria-label="reveal: {ll} on the left, {rl} on the right">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def quality_line(metrics: dict[str, Any]) -> str:
    parts = [
        f"{label(k).split(' ')[0]} <b>{fmt(k, metrics[k])}</b>{' dB' if k == 'psnr' else ''}"
        for k in METRICS
        if number(metrics.get(k)) is not None
    ]
    return " · ".join(parts) if parts else "no quality metrics recorded"
