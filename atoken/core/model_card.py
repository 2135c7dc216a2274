"""The model card (``README.md``) that ``save_pretrained`` writes, with YAML front matter as the
Hugging Face Hub reads it: ``license``, ``library_name: atoken``, ``tags``, ``base_model`` and
``model-index`` with each metric's protocol under ``args``.

- `CardInfo` / `Metric`: what a model does not know of itself (licence, base model, metrics).
- `render_card`: the whole card; `card_metadata`: its front matter as a dict; `split_card`:
  front matter and body of an existing card; `to_yaml`: the small YAML writer the front matter
  needs (strings as JSON strings, so no value can change type or break the document).

References: the model-card metadata spec of huggingface/hub-docs (``modelcard.md``). Written
here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: the licence every card states unless told otherwise (the Hub's id of SPDX ``Apache-2.0``)
DEFAULT_LICENSE = "apache-2.0"
#: the ``library_name`` of every card
LIBRARY_NAME = "atoken"


@dataclass(frozen=True)
class Metric:
    """One measured number of a model card.

    Attributes:
        name: shown name (``"PSNR"``).
        value: the number.
        type: the Hub's metric id (``"psnr"``; default ``name`` lower-cased).
        unit: shown after the value in the card's table (``"dB"``).
    """

    name: str
    value: float
    type: str | None = None
    unit: str = ""


@dataclass(frozen=True)
class CardInfo:
    """What a model card says beyond what the model itself knows.

    Attributes:
        title: the card's heading (default: the directory name).
        description: Markdown paragraphs after the heading.
        base_model: the Hub id(s) this model was converted or fine-tuned from.
        base_model_relation: the Hub's relation (``"finetune"``, ``"quantized"``, ...), if any.
        tags: more tags (``atoken`` and the format's are always there).
        license: the Hub's licence id (default Apache-2.0).
        metrics: measured numbers, all under one `protocol` and `dataset`.
        task: what the metrics measure (``"image reconstruction"``).
        dataset: the data they were measured on (``"held-out photos"``).
        protocol: how they were measured (resolution, crop, N, ...): written under each metric's
            ``args`` in the YAML and as a list in the text, so a number never travels without it.
        sections: more ``(heading, Markdown)`` sections.
    """

    title: str | None = None
    description: str | None = None
    base_model: str | Sequence[str] | None = None
    base_model_relation: str | None = None
    tags: Sequence[str] = ()
    license: str = DEFAULT_LICENSE
    metrics: Sequence[Metric] = ()
    task: str = "image reconstruction"
    dataset: str | None = None
    protocol: Mapping[str, Any] = field(default_factory=dict)
    sections: Sequence[tuple[str, str]] = ()


def card_metadata(
    info: CardInfo, *, tags: Sequence[str] = (), model_name: str = "model"
) -> dict[str, Any]:
    """The YAML front matter of a card, as a dict (``tags``: the format's own tags)."""
    meta: dict[str, Any] = {"license": info.license, "library_name": LIBRARY_NAME}
    all_tags = list(dict.fromkeys([LIBRARY_NAME, *tags, *info.tags]))
    meta["tags"] = all_tags
    if info.base_model:
        base = [info.base_model] if isinstance(info.base_model, str) else list(info.base_model)
        meta["base_model"] = base[0] if len(base) == 1 else base
        if info.base_model_relation:
            meta["base_model_relation"] = info.base_model_relation
    if info.metrics:
        protocol = {k: v for k, v in info.protocol.items() if v is not None}
        metrics = []
        for m in info.metrics:
            entry: dict[str, Any] = {
                "type": m.type or m.name.lower(),
                "value": float(m.value),
                "name": m.name + (f" ({m.unit})" if m.unit else ""),
            }
            if protocol:
                entry["args"] = dict(protocol)
            metrics.append(entry)
        meta["model-index"] = [
            {
                "name": model_name,
                "results": [
                    {
                        "task": {"type": info.task.replace(" ", "-"), "name": info.task},
                        "dataset": {
                            "type": (info.dataset or "held-out").replace(" ", "-"),
                            "name": info.dataset or "held-out data",
                        },
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return meta


def render_card(
    info: CardInfo,
    *,
    tags: Sequence[str] = (),
    model_name: str = "model",
    facts: Sequence[tuple[str, str]] = (),
) -> str:
    """A model card: YAML front matter (`card_metadata`), a heading, the description, a
    ``Model`` list of ``facts`` (label, text), the metrics with their protocol, and the
    licence.

    Raises:
        ValueError: a metric value that is not a finite number.
    """
    for m in info.metrics:
        if not isinstance(m.value, int | float) or not math.isfinite(m.value):
            raise ValueError(f"metric {m.name!r}: expected a finite number, got {m.value!r}")
    meta = card_metadata(info, tags=tags, model_name=model_name)
    out = ["---", to_yaml(meta), "---", "", f"# {info.title or model_name}", ""]
    if info.description:
        out += [info.description.strip(), ""]
    if facts:
        out += ["## Model", ""] + [f"- {label}: {text}" for label, text in facts] + [""]
    if info.base_model:
        base = meta["base_model"]
        names = ", ".join(f"`{b}`" for b in ([base] if isinstance(base, str) else base))
        relation = f" ({info.base_model_relation})" if info.base_model_relation else ""
        out += [f"Base model: {names}{relation}.", ""]
    if info.metrics:
        where = f" on {info.dataset}" if info.dataset else ""
        out += [f"## Evaluation: {info.task}{where}", ""]
        out += ["| metric | value |", "|---|---:|"]
        out += [
            f"| {m.name} | {_number(m.value)}{(' ' + m.unit) if m.unit else ''} |"
            for m in info.metrics
        ]
        out.append("")
        if info.protocol:
            out += ["Protocol:", ""]
            out += [
                f"- {k}: {_protocol_text(v)}" for k, v in info.protocol.items() if v is not None
            ]
            out.append("")
    for heading, text in info.sections:
        out += [f"## {heading}", "", text.strip(), ""]
    out += [
        "## Licence",
        "",
        f"`{info.license}`. Load with `atoken.Tokenizer.from_pretrained(...)` (or the class"
        f" this directory's config.json names); written by atoken's `save_pretrained`.",
        "",
    ]
    return "\n".join(out)


def _number(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1 else f"{x:.2f}"


def _protocol_text(v: Any) -> str:
    if isinstance(v, Mapping):
        return ", ".join(f"{k} {_protocol_text(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(_protocol_text(x) for x in v)
    return str(v)


def split_card(text: str) -> tuple[str | None, str]:
    """``(front matter YAML text or None, body)`` of a model card."""
    if not text.startswith("---\n"):
        return None, text
    end = text.find("\n---", 4)
    if end < 0:
        return None, text
    return text[4:end], text[end + 4 :].lstrip("\n")


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def to_yaml(value: Any, indent: int = 0) -> str:
    """``value`` (dicts of string keys, lists, strings, numbers, bools, None) in YAML block
    style.

    Strings (and keys that are not plain identifiers) are written as JSON strings (a YAML
    double-quoted scalar), so no value can be read back as another type or break the document.

    Raises:
        ValueError: a key that is not a string, a value of another type, or a non-finite float.
    """
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return pad + "{}"
        lines = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"YAML key {k!r}: expected a string")
            key = k if _PLAIN_KEY.match(k) else json.dumps(k, ensure_ascii=False)
            if isinstance(v, Mapping | list | tuple) and v:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(v, indent + 2 if isinstance(v, Mapping) else indent))
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
        return "\n".join(lines)
    if isinstance(value, list | tuple):
        if not value:
            return pad + "[]"
        lines = []
        for v in value:
            if isinstance(v, Mapping | list | tuple) and v:
                inner = to_yaml(v, indent + 2)
                lines.append(f"{pad}- {inner[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_scalar(v)}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"YAML value {v!r}: expected a finite number")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Mapping | list | tuple):  # empty
        return "{}" if isinstance(v, Mapping) else "[]"
    raise ValueError(f"YAML value {v!r}: expected a string, number, bool, list or mapping")
