"""The report's sections for reconstructions: per item its metrics, comparison slider, clips
played in sync and the 3D Gaussian viewer, and the summary table over all items.

Reads what `atoken.report.sources.Reconstruction` found (``metrics.json`` and the written
outputs); clip frames and Gaussians go into the page's JSON block (``data``) for the scripts.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atoken.core.errors import InputError
from atoken.report import media, splats
from atoken.report.markup import METRICS, compare, fmt, label, quality_line, table
from atoken.report.sources import Reconstruction, number

#: metrics.json keys shown elsewhere than the item's metric table
NOT_IN_TABLE = {"source", "convention", "timings", "modality", "model", "side_by_side_layout"}


def _layout(item: Reconstruction) -> dict[str, Any] | None:
    """metrics.json's ``side_by_side_layout`` (where the two pictures lie), or None."""
    layout = item.metrics.get("side_by_side_layout")
    return layout if isinstance(layout, dict) else None


def _reference_of(item: Reconstruction, picture: np.ndarray, shape: tuple[int, ...]):
    """The reference part of a side-by-side ``picture`` whose reconstruction is ``shape``."""
    layout = _layout(item)
    if layout is None:  # written before the layout was recorded: the unlabelled left part
        return media.reference_part(picture, shape[0], shape[1])
    ref = media.box_part(picture, layout.get("reference"))
    if ref is None or any(abs(a - b) > 1 for a, b in zip(ref.shape[:2], shape[:2], strict=True)):
        return None  # (a clip's decoded frames may carry one row / column of codec padding)
    return ref


def _image_view(item: Reconstruction) -> str:
    rec = media.read_rgb(item.reconstruction)
    ref = None
    if item.side_by_side is not None:
        try:
            ref = _reference_of(item, media.read_rgb(item.side_by_side), rec.shape)
        except OSError as exc:
            item.problems.append(f"{item.side_by_side.name}: {exc}")
    if ref is None:
        if item.side_by_side is not None:
            item.problems.append(
                f"{item.side_by_side.name}: the reference could not be located in it, so no"
                " slider; the reconstruction alone is shown"
            )
        return _picture(item.reconstruction, "reconstruction")
    a, b = Image.fromarray(ref), Image.fromarray(rec)
    a, b = media.fit(a, media.MAX_IMAGE_SIDE), media.fit(b, media.MAX_IMAGE_SIDE)
    scaled = " (scaled down for the page)" if b.size != (rec.shape[1], rec.shape[0]) else ""
    return compare(
        media.data_uri(a),
        media.data_uri(b),
        b.size,
        ("reference", "reconstruction"),
        f"{rec.shape[1]}×{rec.shape[0]}{scaled}: {quality_line(item.metrics)}",
    )


def _picture(path: Path, alt: str, caption: str = "") -> str:
    """A picture; a small one (a grid of 32-pixel views) is shown enlarged, pixel for pixel."""
    rgb = media.read_rgb(path)
    uri = media.data_uri(rgb)
    w = rgb.shape[1]
    style = f' style="width:{w * (320 // w)}px;image-rendering:pixelated"' if w < 160 else ""
    return (
        f'<figure class="picture"><img src="{uri}" alt="{escape(alt)}"{style}>'
        f"<figcaption>{caption or escape(path.name)}</figcaption></figure>"
    )


def _video_view(item: Reconstruction, key: str, data: dict[str, Any]) -> str:
    try:
        h, w = media.clip_size(item.reconstruction)
        rec = media.read_clip(item.reconstruction)
        ref = None
        if item.side_by_side is not None:
            try:
                ref = media.read_clip(
                    item.side_by_side, part=lambda f: _reference_of(item, f, (h, w, 3))
                )
            except media.LayoutError as exc:
                item.problems.append(str(exc))
    except ImportError:
        item.problems.append("PyAV is not installed (pip install av): the clips are not shown")
        return ""
    n = len(rec.frames) if ref is None else min(len(rec.frames), len(ref.frames))
    if n == 0:
        item.problems.append(f"{item.reconstruction.name}: no frames could be decoded")
        return ""
    sub = rec.total > n
    data["videos"][key] = {
        "fps": rec.fps * (n / rec.total if sub else 1.0),
        "labels": ["reference", "reconstruction"] if ref else ["reconstruction"],
        "frames": [
            [media.jpeg_uri(f) for f in clip.frames[:n]] for clip in ([ref] if ref else []) + [rec]
        ],
        "indices": rec.indices[:n],
        "total": rec.total,
    }
    note = (
        f"{n} of {rec.total} frames, evenly spaced (the page embeds at most {media.MAX_FRAMES})"
        if sub
        else f"{n} frames at {rec.fps:.3g} fps"
    )
    shown_w = rec.frames[0].shape[1]
    style = f' style="max-width:{min(480, 3 * shown_w)}px"'  # small clips: at most 3x enlarged
    panes = "".join(
        f'<div class="pane"{style}><div class="label">{side}</div><img alt="{side} frame"></div>'
        for side in data["videos"][key]["labels"]
    )
    return (
        f'<figure class="video" data-video="{key}"><div class="panes">{panes}</div>'
        '<div class="controls"><button type="button" class="play">▶ play</button>'
        f'<input class="scrub" type="range" min="0" max="{n - 1}" step="1" value="0"'
        ' aria-label="frame"><span class="frame-no"></span></div>'
        f"<figcaption>{w}×{h}, {note}; frames are embedded as JPEG pictures and played in sync"
        f" by the page. {quality_line(item.metrics)}</figcaption></figure>"
    )


def _splat_view(item: Reconstruction, key: str, data: dict[str, Any]) -> str:
    try:
        g = splats.read_splats(item.reconstruction)
    except (InputError, OSError) as exc:
        item.problems.append(str(exc))
        return ""
    shown = splats.cap(g)
    data["splats"][key] = splats.pack(shown)
    count = (
        f"{len(shown):,} of {g.total:,} Gaussians (a random subset: the page embeds at most"
        f" {splats.MAX_SPLATS:,})"
        if len(shown) < g.total
        else f"{len(shown):,} Gaussians"
    )
    view = (
        f'<figure class="splat" data-splat="{key}"><canvas width="640" height="480"></canvas>'
        '<div class="controls"><label><input type="checkbox" class="spin" checked> auto-rotate'
        '</label><button type="button" class="reset">reset view</button>'
        '<span class="splat-status"></span></div>'
        f"<figcaption>{escape(item.reconstruction.name)}: {count}; drag to orbit, wheel to zoom"
        "</figcaption></figure>"
    )
    if item.side_by_side is not None and item.side_by_side.suffix.lower() != ".ply":
        view += _views_grid(item, item.side_by_side)
    return view


def _views_grid(item: Reconstruction, path: Path) -> str:
    """The held-out views over their renders: a slider between the two rows when the layout
    says where they lie, else the grid as it is."""
    grid = media.read_rgb(path)
    layout = _layout(item) or {}
    ref = media.box_part(grid, layout.get("reference"))
    rec = media.box_part(grid, layout.get("reconstruction"))
    if ref is None or rec is None or ref.shape != rec.shape:
        return _picture(
            path,
            "held-out views and renders",
            f"{escape(path.name)}: held-out ground truth (top row) over the Gaussians rendered"
            f" from those cameras (bottom row). {quality_line(item.metrics)}",
        )
    a, b = (media.fit(Image.fromarray(x), media.MAX_IMAGE_SIDE) for x in (ref, rec))
    return compare(
        media.data_uri(a),
        media.data_uri(b),
        b.size,
        ("ground truth", "Gaussians rendered"),
        f"{escape(path.name)}: the held-out views and the Gaussians rendered from the same"
        f" cameras. {quality_line(item.metrics)}",
    )


def _metrics_rows(metrics: dict[str, Any]) -> list[list[str]]:
    rows = [[escape(label(k)), fmt(k, metrics[k])] for k in METRICS if k in metrics]
    for k, v in metrics.items():
        if k in METRICS or k in NOT_IN_TABLE:
            continue
        if isinstance(v, dict | list):
            v = json.dumps(v)
        rows.append([escape(k), fmt(k, v)])
    for k, v in (metrics.get("timings") or {}).items():
        rows.append([f"time: {escape(k)}", f"{fmt(k, v)} s" if number(v) is not None else "–"])
    return rows


def item_section(item: Reconstruction, root: Path, anchor: str, data: dict[str, Any]) -> str:
    view = ""
    try:
        if item.kind == "image":
            view = _image_view(item)
        elif item.kind == "video":
            view = _video_view(item, anchor, data)
        elif item.kind == "splats":
            view = _splat_view(item, anchor, data)
        elif item.side_by_side is not None and item.side_by_side.suffix.lower() in {".png", ".jpg"}:
            view = _picture(item.side_by_side, "side by side")
    except (OSError, ValueError) as exc:  # an unreadable file: say so, show the rest
        item.problems.append(f"{item.reconstruction.name}: {exc}")
    m = item.metrics
    meta = [
        f"modality <b>{escape(str(m.get('modality', item.kind)))}</b>",
        f"model <code>{escape(str(m['model']))}</code>" if "model" in m else "",
        f"source <code>{escape(str(m['source']))}</code>" if "source" in m else "",
    ]
    problems = "".join(f'<p class="problem">{escape(p)}</p>' for p in item.problems)
    convention = m.get("convention")
    conv = (
        "<details><summary>how the metrics are computed</summary>"
        + table(["", ""], [[escape(k), escape(str(v))] for k, v in convention.items()], "summary")
        + "</details>"
        if isinstance(convention, dict)
        else ""
    )
    name = item.path.relative_to(root).as_posix() if item.path != root else item.name
    return (
        f'<section class="item item-{item.kind}" id="{anchor}"><h3>{escape(name)}</h3>'
        f'<p class="meta">{" · ".join(x for x in meta if x)}</p>{problems}'
        f'<div class="item-body"><div class="item-view">{view}</div><div class="item-metrics">'
        + table(["metric", "value"], _metrics_rows(m))
        + conv
        + "</div></div></section>"
    )


def items_summary(items: list[Reconstruction], anchors: list[str]) -> str:
    keys = [k for k in ("tokens", "frames", *METRICS) if any(k in it.metrics for it in items)]
    rows = [
        [f'<a href="#{a}">{escape(it.name)}</a>', escape(str(it.metrics.get("modality", it.kind)))]
        + [fmt(k, it.metrics[k]) if k in it.metrics else "–" for k in keys]
        for it, a in zip(items, anchors, strict=True)
    ]
    return table(["item", "modality", *(escape(label(k)) for k in keys)], rows)


# ---------------------------------------------------------------------------- the page
