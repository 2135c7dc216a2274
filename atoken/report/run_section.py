"""The report's section for one training run: summary, held-out table, curves, sample slider.

Reads what `atoken.report.sources.Run` found in the run folder (``metrics.jsonl``,
``eval.jsonl``, ``samples/``).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from atoken.report import media
from atoken.report.charts import line_chart
from atoken.report.markup import METRICS, compare, fmt, label, table
from atoken.report.sources import Run, number

#: metrics.jsonl keys that are not curves of their own, and those drawn on separate panels
NOT_CURVES = {"step", "tokens"}
OWN_PANELS = {
    "lr": "learning rate",
    "grad_norm": "gradient norm",
    "tokens_per_s": "throughput (tokens/s)",
    "kl": "KL term",
}


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
    keys = [k for k in keys if k not in NOT_CURVES]

    def points(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
        return [
            (number(r.get("step")), number(r.get(key)))
            for r in records
            if number(r.get("step")) is not None and number(r.get(key)) is not None
        ]

    losses = {k: points(run.metrics, k) for k in keys if k not in OWN_PANELS}
    panels = [line_chart("training losses", losses, marks=marks[1:])] if losses else []
    panels += [
        line_chart(title, {k: points(run.metrics, k)}, marks=marks[1:])
        for k, title in OWN_PANELS.items()
        if k in keys
    ]
    for k in METRICS:
        pts = points(run.evals, k)
        if pts:
            panels.append(line_chart(f"held-out {label(k)}", {k: pts}, log=False, marks=marks[1:]))
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
            ["steps logged", f"{len(run.metrics)} (last step {fmt('step', last.get('step'))})"]
        )
        if stages:
            rows.append(["stages", escape(", ".join(stages))])
        for k, v in last.items():
            if k not in {"step", "stage"}:
                rows.append([f"last {escape(k)}", fmt(k, v)])
    if run.evals:
        first, last = run.evals[0], run.evals[-1]
        if "data" in last:
            rows.append(["held-out data", escape(str(last["data"]))])
        for k in METRICS:
            if number(last.get(k)) is not None:
                start = fmt(k, first.get(k)) if number(first.get(k)) is not None else "–"
                rows.append(
                    [
                        f"held-out {label(k)}",
                        f"{start} at step {fmt('step', first.get('step'))} → "
                        f"<b>{fmt(k, last[k])}</b> at step {fmt('step', last.get('step'))}",
                    ]
                )
    return table(["", "value"], rows, "summary") if rows else ""


def _held_out_table(run: Run) -> str:
    if not run.evals:
        return ""
    last = run.evals[-1]
    rows = run.rows(last)
    if not rows:
        return ""
    keys = [k for k in ("tokens", *METRICS) if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k, v in r.items() if number(v) is not None} - set(keys))
    body = [[escape(r["name"])] + [fmt(k, r[k]) if k in r else "–" for k in keys] for r in rows]
    return f"<h3>Held-out samples at step {fmt('step', last.get('step'))}</h3>" + table(
        ["sample", *(escape(label(k)) for k in keys)], body
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


def run_section(run: Run, root: Path, anchor: str) -> str:
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
