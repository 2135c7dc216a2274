"""Pictures of a run: a loss-curve PNG and reconstruction grids, drawn with Pillow only.

No plotting library is needed (matplotlib would be a large dependency for two pictures).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from atoken.core.pictures import side_by_side, to_uint8
from atoken.core.serialization import atomic_write

_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
]


def _save(img: Image.Image, path: str | os.PathLike[str]) -> None:
    atomic_write(path, lambda fh: img.save(fh, format="PNG"))


def chart(
    series: Mapping[str, Sequence[tuple[int, float]]],
    *,
    title: str,
    size: tuple[int, int] = (900, 500),
    log_y: bool = True,
    y_label: str = "",
) -> Image.Image:
    """Lines of ``{name: [(step, value), ...]}`` on one chart (log y by default), as an image."""
    w, h = size
    left, right, top, bottom = 70, 170, 40, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 12), title, fill="black")
    points = {
        k: [(s, v) for s, v in pts if math.isfinite(v) and (v > 0 or not log_y)]
        for k, pts in series.items()
    }
    points = {k: v for k, v in points.items() if v}
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    if not points:
        draw.text((left + 10, top + 10), "no data yet", fill="black")
        return img
    ty = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    steps = [s for pts in points.values() for s, _ in pts]
    vals = [ty(v) for pts in points.values() for _, v in pts]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(vals), max(vals)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def to_px(s: float, v: float) -> tuple[float, float]:
        px = left + (s - x0) / (x1 - x0) * (w - right - left)
        py = (h - bottom) - (ty(v) - y0) / (y1 - y0) * (h - bottom - top)
        return px, py

    for i in range(5):  # y ticks
        val = y0 + (y1 - y0) * i / 4
        py = (h - bottom) - (val - y0) / (y1 - y0) * (h - bottom - top)
        label = f"{10**val:.3g}" if log_y else f"{val:.4g}"
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((4, py - 6), label, fill="black")
    if y_label:
        draw.text((4, top - 16), y_label, fill="black")
    shown = set()
    for i in range(5):  # x ticks, each step once (a short run has fewer steps than ticks)
        s = round(x0 + (x1 - x0) * i / 4)
        if s in shown:
            continue
        shown.add(s)
        px = left + (s - x0) / (x1 - x0) * (w - right - left)
        draw.line([px, h - bottom, px, h - bottom + 4], fill="black")
        draw.text((px - 10, h - bottom + 8), f"{s}", fill="black")
    draw.text(((w - right + left) // 2 - 10, h - 18), "step", fill="black")
    for i, (name, pts) in enumerate(sorted(points.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        xy = [to_px(s, v) for s, v in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy if len(xy) <= 40 else xy[-1:]:  # few points (evaluations): mark each
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.line(
            [w - right + 10, top + 10 + 16 * i, w - right + 30, top + 10 + 16 * i],
            fill=colour,
            width=3,
        )
        draw.text((w - right + 36, top + 4 + 16 * i), name, fill="black")
    return img


def loss_curve(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike[str],
    *,
    title: str = "training loss",
    size: tuple[int, int] = (900, 500),
    log_y: bool = True,
) -> None:
    """Plot ``{name: [(step, value), ...]}`` as lines on one chart (log y by default)."""
    _save(chart(series, title=title, size=size, log_y=log_y), path)


class Panel(NamedTuple):
    """One chart of `run_curves`: its title, ``{name: [(step, value), ...]}``, the y scale and
    the y axis label (the x axis is always ``step``)."""

    title: str
    series: Mapping[str, Sequence[tuple[int, float]]]
    log_y: bool = True
    y_label: str = ""


#: numbers of a ``metrics.jsonl`` row that are not loss terms
NOT_LOSSES = ("step", "lr", "tokens", "tokens_per_s", "grad_norm")
#: loss terms drawn on a panel of their own (the KL term is orders of magnitude below the rest)
OWN_PANEL = ("kl",)


def _series(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> dict[str, list[tuple[int, float]]]:
    return {
        k: [(r["step"], float(r[k])) for r in rows if _number(r.get(k))]
        for k in keys
        if any(_number(r.get(k)) for r in rows)
    }


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def training_panels(
    history: Sequence[Mapping[str, Any]],
    evals: Sequence[Mapping[str, Any]],
    *,
    eval_name: str = "held-out data",
) -> list[Panel]:
    """The panels of ``loss_curve.png`` from the rows of ``metrics.jsonl`` (``history``) and
    ``eval.jsonl`` (``evals``): the loss terms (log scale; every number of a row that is not in
    `NOT_LOSSES`), the KL term on its own (log scale), held-out PSNR, SSIM and LPIPS, and the
    learning rate."""
    losses = [
        k
        for k in dict.fromkeys(k for r in history for k in r)
        if k not in NOT_LOSSES and k not in OWN_PANEL
    ]
    return [
        Panel("training losses (log scale)", _series(history, losses), True, "loss"),
        Panel("KL term (log scale)", _series(history, OWN_PANEL), True, "KL"),
        Panel(f"held-out PSNR ({eval_name})", _series(evals, ["psnr"]), False, "PSNR, dB"),
        Panel("held-out SSIM (higher is better)", _series(evals, ["ssim"]), False, "SSIM"),
        Panel("held-out LPIPS (lower is better)", _series(evals, ["lpips"]), False, "LPIPS"),
        Panel("learning rate", _series(history, ["lr"]), False, "lr"),
    ]


def run_curves(
    panels: Sequence[Panel | tuple[str, Mapping[str, Sequence[tuple[int, float]]], bool]],
    path: str | os.PathLike[str],
    *,
    panel_size: tuple[int, int] = (640, 360),
    columns: int = 2,
) -> None:
    """Several charts in a grid, ``columns`` wide, one per `Panel` (or ``(title, series,
    log_y)``); empty ones say so."""
    if not panels:
        raise ValueError("run_curves: no panels to draw")
    pw, ph = panel_size
    rows = math.ceil(len(panels) / columns)
    grid = Image.new("RGB", (pw * min(columns, len(panels)), ph * rows), "white")
    for i, panel in enumerate(panels):
        panel = Panel(*panel)
        grid.paste(
            chart(
                panel.series,
                title=panel.title,
                size=panel_size,
                log_y=panel.log_y,
                y_label=panel.y_label,
            ),
            (pw * (i % columns), ph * (i // columns)),
        )
    _save(grid, path)


def reconstruction_grid(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    path: str | os.PathLike[str],
    *,
    captions: Sequence[str] | None = None,
    max_side: int = 256,
) -> None:
    """Rows of ``reference | reconstruction`` (``[H, W, 3]`` in [-1, 1]), each scaled to ``max_side``."""
    rows = []
    for i, (ref, rec) in enumerate(pairs):
        pair = to_uint8(side_by_side(ref.float().cpu(), rec.float().cpu().clamp(-1, 1)))
        im = Image.fromarray(pair)
        scale = min(1.0, max_side / max(ref.shape[0], 1))
        if scale < 1.0:
            im = im.resize(
                (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR
            )
        if captions is not None:
            canvas = Image.new("RGB", (im.width, im.height + 16), "white")
            canvas.paste(im, (0, 16))
            ImageDraw.Draw(canvas).text((2, 2), captions[i], fill="black")
            im = canvas
        rows.append(im)
    if not rows:
        return
    width = max(r.width for r in rows)
    grid = Image.new("RGB", (width, sum(r.height for r in rows) + 6 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + 6
    _save(grid, path)


def comparison_strip(
    images: Sequence[torch.Tensor],
    labels: Sequence[str],
    path: str | os.PathLike[str],
    *,
    gap: int = 8,
) -> None:
    """Images ``[H, W, 3]`` in [-1, 1] side by side, each under its label (lines split at
    ``"\n"``; e.g. reference, reconstruction and a baseline with their metrics)."""
    if len(images) != len(labels) or not images:
        raise ValueError("comparison_strip: give one label per image, at least one image")
    tiles = [Image.fromarray(to_uint8(img.float().cpu().clamp(-1, 1))) for img in images]
    lines = [label.split("\n") for label in labels]
    header = 4 + 12 * max(len(x) for x in lines)
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, max(t.height for t in tiles) + header), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, text in zip(tiles, lines, strict=True):
        canvas.paste(tile, (x, header))
        for i, line in enumerate(text):
            draw.text((x + 2, 2 + 12 * i), line, fill="black")
        x += tile.width + gap
    _save(canvas, path)


def as_array(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG back (tests)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
