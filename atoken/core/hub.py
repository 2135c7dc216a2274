"""Hugging Face Hub conventions: repo ids resolved through the local cache, model cards, upload.

- `resolve_pretrained`: a name given to ``from_pretrained`` / ``load_tokenizer`` / ``--model``
  that is not an existing directory but reads as a Hub repo id (``org/name``, optionally
  ``org/name@revision``) is resolved to its snapshot folder in huggingface_hub's cache
  (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default; read at each call).
  With ``HF_HUB_OFFLINE=1`` only the cache is used, and a repo that is not cached is one line
  naming the command that fetches it (``hf download org/name``). Online, only the files a
  pretrained directory holds are fetched (`ALLOW_PATTERNS`: JSON, safetensors, Markdown, at any
  depth, so companion folders come too); pickles are never downloaded nor read.
- `CardInfo` / `Metric` / `render_card`: the model card (``README.md``) that ``save_pretrained``
  writes, with YAML front matter as the Hub reads it (``license``, ``library_name: atoken``,
  ``tags``, ``base_model``, ``model-index`` with each metric's protocol under ``args``).
- `push_to_hub`: ``save_pretrained`` into a temporary folder, then ``create_repo`` +
  ``upload_folder``.

huggingface_hub is optional: nothing here imports it until a repo id is resolved or pushed.

References: the Hub cache layout and ``snapshot_download`` / ``upload_folder`` of
huggingface_hub; the model-card metadata spec of huggingface/hub-docs (``modelcard.md``); the
``push_to_hub`` shape of transformers / diffusers. Written here.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoken.core.serialization import CheckpointError

if TYPE_CHECKING:
    from atoken.core.pretrained import PretrainedMixin

#: files of a pretrained directory fetched from the Hub (fnmatch: ``*`` crosses ``/``)
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.md")
#: the licence every card states unless told otherwise (the Hub's id of SPDX ``Apache-2.0``)
DEFAULT_LICENSE = "apache-2.0"
#: the ``library_name`` of every card
LIBRARY_NAME = "atoken"

# the Hub's repo-id rule: [org/]name of letters, digits, '-', '_', '.', no '--' or '..', <= 96
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO_ID = re.compile(rf"^(?P<repo>{_PART}/{_PART})(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9._/-]*))?$")
_TRUE = {"1", "true", "yes", "on", "y", "t"}


# =============================================================================== resolving
@dataclass(frozen=True)
class RepoRef:
    """A Hub model reference: ``repo_id`` and an optional ``revision`` (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo_id(name: str | os.PathLike[str]) -> RepoRef | None:
    """``name`` as a Hub repo reference (``org/name`` or ``org/name@rev``), or None when it does
    not read as one (an absolute or ``./`` path, more than one ``/``, a ``..``, ...)."""
    text = os.fspath(name)
    m = _REPO_ID.match(text)
    if m is None:
        return None
    repo = m.group("repo")
    if "--" in repo or ".." in repo or repo.endswith((".", "-")) or repo.split("/")[1] == ".":
        return None
    return RepoRef(repo, m.group("rev"))


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The huggingface_hub cache in use: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the
    library's default (``~/.cache/huggingface/hub``); read at each call."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def download_command(ref: RepoRef) -> str:
    """The command that puts ``ref`` into the cache (huggingface_hub's ``hf`` CLI)."""
    rev = f" --revision {ref.revision}" if ref.revision else ""
    return f"hf download {ref.repo_id}{rev}"


def resolve_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    what: str = "model",
    local_files_only: bool | None = None,
) -> Path:
    """The local directory of ``name_or_path``: itself when it is an existing directory (a local
    directory always wins) or does not read as a repo id; else the snapshot folder of that Hub
    repo in the cache (fetched first when online and not cached).

    Args:
        name_or_path: a directory, or ``org/name`` / ``org/name@revision``.
        what: what is loaded, for messages (``"model"``, ``"Gaussian decoder"``).
        local_files_only: use only the cache (default: when ``HF_HUB_OFFLINE`` is set).

    Raises:
        CheckpointError: a repo id that is not cached while offline (naming `download_command`),
            huggingface_hub missing, a repo or revision the Hub does not have, or a snapshot
            without ``config.json`` / ``model.safetensors``.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    ref = parse_repo_id(name_or_path)
    if ref is None:
        return path
    offline = hub_offline() if local_files_only is None else local_files_only
    cache = hub_cache_dir()
    try:
        import huggingface_hub as hf
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise CheckpointError(
            f"{what} {str(ref)!r} is neither a local directory nor usable as a Hugging Face repo"
            " id: huggingface_hub is not installed (pip install huggingface_hub)"
        ) from None
    from atoken.core.plugins import _atoken_version

    try:
        found = hf.snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            cache_dir=cache,
            local_files_only=offline,
            allow_patterns=list(ALLOW_PATTERNS),
            library_name=LIBRARY_NAME,
            library_version=_atoken_version(),
        )
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        how = "HF_HUB_OFFLINE is set" if offline and local_files_only is None else "offline"
        raise CheckpointError(
            f"{what} {str(ref)!r} is not a local directory and not in the Hugging Face cache"
            f" {str(cache)!r} ({how}); fetch it with `{download_command(ref)}` (online), or pass"
            " a local directory"
        ) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
        raise CheckpointError(
            f"{what} {str(ref)!r} is not a local directory, and the Hugging Face Hub has no such"
            f" repo or revision ({_one_line(exc)})"
        ) from None
    except (hf_errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{what} {str(ref)!r} could not be fetched from the Hugging Face Hub"
            f" ({_one_line(exc)}); fetch it with `{download_command(ref)}`, or set"
            " HF_HUB_OFFLINE=1 to use the cache only"
        ) from None
    snapshot = Path(str(found))
    from atoken.core.pretrained import CONFIG_NAME, WEIGHTS_NAME

    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (snapshot / n).is_file()]
    if missing:
        raise CheckpointError(
            f"the cached snapshot of {str(ref)!r} ({snapshot}) has no {' or '.join(missing)};"
            f" it is incomplete or not an atoken {what}: fetch it whole with"
            f" `{download_command(ref)}`"
        )
    return snapshot


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# =============================================================================== model cards
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


# =============================================================================== upload
def push_to_hub(
    model: PretrainedMixin,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    card: str | CardInfo | None = None,
    **save_kwargs: Any,
) -> Any:
    """Save ``model`` (`save_pretrained`, with its model card) into a temporary folder and
    upload it as the Hub repo ``repo_id`` (created if needed).

    Args:
        model: any pretrained model (`atoken.core.pretrained.PretrainedMixin`).
        repo_id: ``org/name``.
        commit_message: default ``"Upload <class> with atoken"``.
        private, token, revision, create_pr: as huggingface_hub's ``create_repo`` /
            ``upload_folder``.
        card: the model card (text, or `CardInfo` for the generated one).
        **save_kwargs: more ``save_pretrained`` keywords (``companions``, ``provenance``).

    Returns:
        huggingface_hub's ``CommitInfo``.

    Raises:
        ValueError: ``repo_id`` is not ``org/name``.
        ModuleNotFoundError: huggingface_hub is not installed.
    """
    ref = parse_repo_id(repo_id)
    if ref is None or ref.revision is not None:
        raise ValueError(f"repo_id {repo_id!r}: expected a Hugging Face repo id 'org/name'")
    try:
        import huggingface_hub as hf
    except ImportError:
        raise ModuleNotFoundError(
            "push_to_hub needs huggingface_hub: pip install huggingface_hub"
        ) from None
    with tempfile.TemporaryDirectory(prefix="atoken-push-") as tmp:
        folder = model.save_pretrained(
            Path(tmp) / ref.repo_id.split("/")[1], card=card, **save_kwargs
        )
        hf.create_repo(ref.repo_id, token=token, private=private, exist_ok=True)
        return hf.upload_folder(
            repo_id=ref.repo_id,
            folder_path=folder,
            commit_message=commit_message or f"Upload {type(model).__name__} with atoken",
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
