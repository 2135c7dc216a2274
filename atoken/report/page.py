"""The report page: sections for runs and reconstructions, put into ``report.html`` with the
page's stylesheet and scripts inline (package data beside this module).

Everything the page shows is in the one file: pictures as ``data:`` URIs, clip frames and
Gaussians in a JSON block the scripts read, no ``http(s)`` address anywhere, so it opens offline
and can be mailed or attached to an issue.
"""

from __future__ import annotations

import json
import os
import re
import time
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atoken.core.errors import InputError
from atoken.report import media, splats
from atoken.report.charts import line_chart
from atoken.report.sources import Found, Reconstruction, Run, find, number

#: metric -> (label, format) for the known quality metrics; others print with 6 digits
_METRICS = {
    "psnr": ("PSNR (dB)", "{:.2f}"),
    "ssim": ("SSIM", "{:.4f}"),
    "lpips": ("LPIPS", "{:.4f}"),
}
#: metrics.jsonl keys that are not curves of their own, and those drawn on separate panels
_NOT_CURVES = {"step", "tokens"}
#: metrics.json keys shown elsewhere than the item's metric table
_NOT_IN_TABLE = {"source", "convention", "timings", "modality", "model", "side_by_side_layout"}
_OWN_PANELS = {
    "lr": "learning rate",
    "grad_norm": "gradient norm",
    "tokens_per_s": "throughput (tokens/s)",
    "kl": "KL term",
}


def _fmt(key: str, value: Any) -> str:
    v = number(value)
    if v is None:
        return escape(str(value))
    if key in _METRICS:
        return _METRICS[key][1].format(v)
    if float(v).is_integer() and abs(v) < 1e12:
        return str(int(v))
    return f"{v:.6g}"


def _label(key: str) -> str:
    return _METRICS.get(key, (key, ""))[0]


def _asset(name: str) -> str:
    return resources.files("atoken.report").joinpath(name).read_text(encoding="utf-8")


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _table(header: list[str], rows: list[list[str]], cls: str = "metrics") -> str:
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


def _quality_line(metrics: dict[str, Any]) -> str:
    parts = [
        f"{_label(k).split(' ')[0]} <b>{_fmt(k, metrics[k])}</b>{' dB' if k == 'psnr' else ''}"
        for k in _METRICS
        if number(metrics.get(k)) is not None
    ]
    return " · ".join(parts) if parts else "no quality metrics recorded"


# ------------------------------------------------------------------------------- runs


def _curves(run: Run) -> str:
    """SVG panels: the losses, each separately-scaled term, the held-out metrics."""
    marks, last_stage = [], None
    for rec in run.metrics:
        if rec.get("stage") != last_stage and number(rec.get("step")) is not None:
            last_stage = rec.get("stage")
            marks.append((float(rec["step"]), f"stage {last_stage}"))
    keys: list[str] = []
    for rec in run.metrics:
        keys += [k for k, v in rec.items() if k not in keys and number(v) is not None]
    keys = [k for k in keys if k not in _NOT_CURVES]

    def points(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
        return [
            (number(r.get("step")), number(r.get(key)))
            for r in records
            if number(r.get("step")) is not None and number(r.get(key)) is not None
        ]

    losses = {k: points(run.metrics, k) for k in keys if k not in _OWN_PANELS}
    panels = [line_chart("training losses", losses, marks=marks[1:])] if losses else []
    panels += [
        line_chart(title, {k: points(run.metrics, k)}, marks=marks[1:])
        for k, title in _OWN_PANELS.items()
        if k in keys
    ]
    for k in _METRICS:
        pts = points(run.evals, k)
        if pts:
            panels.append(line_chart(f"held-out {_label(k)}", {k: pts}, log=False, marks=marks[1:]))
    panels = [p for p in panels if p]
    if not panels:
        return '<p class="note">no numeric records in metrics.jsonl / eval.jsonl yet</p>'
    return '<div class="charts">' + "".join(panels) + "</div>"


def _run_summary(run: Run) -> str:
    rows = []
    if run.metrics:
        last = run.metrics[-1]
        stages = list(dict.fromkeys(str(r["stage"]) for r in run.metrics if "stage" in r))
        rows.append(
            ["steps logged", f"{len(run.metrics)} (last step {_fmt('step', last.get('step'))})"]
        )
        if stages:
            rows.append(["stages", escape(", ".join(stages))])
        for k, v in last.items():
            if k not in {"step", "stage"}:
                rows.append([f"last {escape(k)}", _fmt(k, v)])
    if run.evals:
        first, last = run.evals[0], run.evals[-1]
        if "data" in last:
            rows.append(["held-out data", escape(str(last["data"]))])
        for k in _METRICS:
            if number(last.get(k)) is not None:
                start = _fmt(k, first.get(k)) if number(first.get(k)) is not None else "–"
                rows.append(
                    [
                        f"held-out {_label(k)}",
                        f"{start} at step {_fmt('step', first.get('step'))} → "
                        f"<b>{_fmt(k, last[k])}</b> at step {_fmt('step', last.get('step'))}",
                    ]
                )
    return _table(["", "value"], rows, "summary") if rows else ""


def _held_out_table(run: Run) -> str:
    if not run.evals:
        return ""
    last = run.evals[-1]
    rows = run.rows(last)
    if not rows:
        return ""
    keys = [k for k in ("tokens", *_METRICS) if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k, v in r.items() if number(v) is not None} - set(keys))
    body = [[escape(r["name"])] + [_fmt(k, r[k]) if k in r else "–" for k in keys] for r in rows]
    return f"<h3>Held-out samples at step {_fmt('step', last.get('step'))}</h3>" + _table(
        ["sample", *(escape(_label(k)) for k in keys)], body
    )


def _samples(run: Run) -> str:
    if not run.samples:
        return ""
    first, last = run.samples[0], run.samples[-1]
    step = {p: p.stem.removeprefix("step-").lstrip("0") or "0" for p in (first, last)}
    a = media.fit(Image.open(first).convert("RGB"), media.MAX_IMAGE_SIDE)
    b = media.fit(Image.open(last).convert("RGB"), media.MAX_IMAGE_SIDE)
    head = "<h3>Held-out reconstructions</h3>"
    if first != last and a.size == b.size:
        return head + compare(
            media.data_uri(a),
            media.data_uri(b),
            b.size,
            (f"step {step[first]}", f"step {step[last]}"),
            f"samples/{escape(first.name)} (left) and samples/{escape(last.name)} (right): the"
            " held-out grids, drag the handle to compare",
        )
    return head + (
        f'<figure><img class="grid" src="{media.data_uri(b)}" alt="samples at step {step[last]}">'
        f"<figcaption>samples/{escape(last.name)}</figcaption></figure>"
    )


def _run_section(run: Run, root: Path, anchor: str) -> str:
    name = escape(run.path.relative_to(root).as_posix() if run.path != root else run.path.name)
    return (
        f'<section class="run" id="{anchor}"><h2>Training run <code>{name}</code></h2>'
        f'<p class="path">{escape(str(run.path))}</p>'
        + '<div class="run-tables"><div>'
        + _run_summary(run)
        + "</div><div>"
        + _held_out_table(run)
        + "</div></div><h3>Curves</h3>"
        + _curves(run)
        + _samples(run)
        + "</section>"
    )


# ---------------------------------------------------------------------- reconstructions


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
        f"{rec.shape[1]}×{rec.shape[0]}{scaled}: {_quality_line(item.metrics)}",
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
        f'<div class="pane"{style}><div class="label">{label}</div><img alt="{label} frame"></div>'
        for label in data["videos"][key]["labels"]
    )
    return (
        f'<figure class="video" data-video="{key}"><div class="panes">{panes}</div>'
        '<div class="controls"><button type="button" class="play">▶ play</button>'
        f'<input class="scrub" type="range" min="0" max="{n - 1}" step="1" value="0"'
        ' aria-label="frame"><span class="frame-no"></span></div>'
        f"<figcaption>{w}×{h}, {note}; frames are embedded as JPEG pictures and played in sync"
        f" by the page. {_quality_line(item.metrics)}</figcaption></figure>"
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
            f" from those cameras (bottom row). {_quality_line(item.metrics)}",
        )
    a, b = (media.fit(Image.fromarray(x), media.MAX_IMAGE_SIDE) for x in (ref, rec))
    return compare(
        media.data_uri(a),
        media.data_uri(b),
        b.size,
        ("ground truth", "Gaussians rendered"),
        f"{escape(path.name)}: the held-out views and the Gaussians rendered from the same"
        f" cameras. {_quality_line(item.metrics)}",
    )


def _metrics_rows(metrics: dict[str, Any]) -> list[list[str]]:
    rows = [[escape(_label(k)), _fmt(k, metrics[k])] for k in _METRICS if k in metrics]
    for k, v in metrics.items():
        if k in _METRICS or k in _NOT_IN_TABLE:
            continue
        if isinstance(v, dict | list):
            v = json.dumps(v)
        rows.append([escape(k), _fmt(k, v)])
    for k, v in (metrics.get("timings") or {}).items():
        rows.append([f"time: {escape(k)}", f"{_fmt(k, v)} s" if number(v) is not None else "–"])
    return rows


def _item_section(item: Reconstruction, root: Path, anchor: str, data: dict[str, Any]) -> str:
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
        + _table(["", ""], [[escape(k), escape(str(v))] for k, v in convention.items()], "summary")
        + "</details>"
        if isinstance(convention, dict)
        else ""
    )
    name = item.path.relative_to(root).as_posix() if item.path != root else item.name
    return (
        f'<section class="item item-{item.kind}" id="{anchor}"><h3>{escape(name)}</h3>'
        f'<p class="meta">{" · ".join(x for x in meta if x)}</p>{problems}'
        f'<div class="item-body"><div class="item-view">{view}</div><div class="item-metrics">'
        + _table(["metric", "value"], _metrics_rows(m))
        + conv
        + "</div></div></section>"
    )


def _items_summary(items: list[Reconstruction], anchors: list[str]) -> str:
    keys = [k for k in ("tokens", "frames", *_METRICS) if any(k in it.metrics for it in items)]
    rows = [
        [f'<a href="#{a}">{escape(it.name)}</a>', escape(str(it.metrics.get("modality", it.kind)))]
        + [_fmt(k, it.metrics[k]) if k in it.metrics else "–" for k in keys]
        for it, a in zip(items, anchors, strict=True)
    ]
    return _table(["item", "modality", *(escape(_label(k)) for k in keys)], rows)


# ---------------------------------------------------------------------------- the page


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
        anchor = _slug(f"run-{run.path.name}", used)
        nav.append(f'<a href="#{anchor}">run {escape(run.path.name)}</a>')
        parts.append(_run_section(run, root, anchor))
    if found.items:
        anchors = [_slug(it.name, used) for it in found.items]
        sections = [
            _item_section(it, root, a, data) for it, a in zip(found.items, anchors, strict=True)
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
            + _items_summary(found.items, anchors)
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
