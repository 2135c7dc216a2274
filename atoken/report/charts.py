"""Training curves as inline SVG: one panel per quantity, drawn here so the page needs no script
or library for them (hovering a point shows its value through the SVG ``<title>``)."""

from __future__ import annotations

import math
from html import escape

#: series colours (colour-blind safe, Okabe-Ito)
COLORS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
_W, _H = 420, 220
_L, _R, _T, _B = 58, 12, 28, 34  # margins: left, right, top, bottom


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.2g}"
    return f"{v:.4g}"


def line_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    log: bool | None = None,
    marks: list[tuple[float, str]] = (),
) -> str:
    """An SVG panel of ``series`` (name -> ``(step, value)`` points, finite values only).

    Args:
        log: log-scale y axis; None: when every value is positive and they span over 100x.
        marks: ``(step, label)`` dashed vertical lines (stage starts).
    """
    series = {
        k: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        for k, pts in series.items()
    }
    series = {k: pts for k, pts in series.items() if pts}
    if not series:
        return ""
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    if log is None:
        log = min(ys) > 0 and max(ys) / min(ys) > 100
    fy = (lambda v: math.log10(v)) if log else (lambda v: v)
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(fy(y) for y in ys), max(fy(y) for y in ys)
    pad = (y1 - y0) * 0.06 or (abs(y0) * 0.1 or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(x: float) -> float:
        return _L + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _T + (1 - (fy(y) - y0) / (y1 - y0)) * ph

    out = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">',
        f'<text class="chart-title" x="{_L}" y="16">{escape(title)}{" (log scale)" if log else ""}</text>',
        f'<rect class="plot" x="{_L}" y="{_T}" width="{pw}" height="{ph}"/>',
    ]
    for t in _ticks(y0, y1):
        y = _T + (1 - (t - y0) / (y1 - y0)) * ph
        label = _fmt(10**t) if log else _fmt(t)
        out.append(f'<line class="grid" x1="{_L}" x2="{_L + pw}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{_L - 4}" y="{y + 3:.1f}" text-anchor="end">{label}</text>'
        )
    for t in _ticks(x0, x1):
        x = px(t)
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{_T + ph + 14}" text-anchor="middle">{_fmt(t)}</text>'
        )
    out.append(
        f'<text class="tick" x="{_L + pw / 2}" y="{_H - 4}" text-anchor="middle">step</text>'
    )
    for step, label in marks:
        if x0 <= step <= x1:
            x = px(step)
            out.append(
                f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{_T}" y2="{_T + ph}">'
                f"<title>{escape(label)}</title></line>"
            )
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="series" points="{path}" stroke="{color}"/>')
        if len(pts) <= 60:
            for x, y in pts:
                out.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}">'
                    f"<title>{escape(name)} at step {_fmt(x)}: {y:.6g}</title></circle>"
                )
        lx = _L + 8 + (i % 3) * 118
        ly = _T + 12 + (i // 3) * 13
        out.append(f'<rect x="{lx}" y="{ly - 7}" width="10" height="3" fill="{color}"/>')
        out.append(f'<text class="legend" x="{lx + 14}" y="{ly - 2}">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)
