"""Zero-shot classification: rank labels per file, accuracy over an ImageFolder tree.

Scores are the softmax over the labels of the zero-shot logits (see `atoken.eval.text_towers`);
class prompts are prompt-ensembled over the templates; accuracy is top-1 / top-5.

References: A. Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision" (CLIP, 2021), zero-shot protocol and prompt ensembling.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from atoken.core.errors import InputError
from atoken.core.plugins import Components
from atoken.core.tokenizer import Tokenizer
from atoken.eval.embedding import FileReader, iter_file_embeddings, require_head
from atoken.eval.text_towers import (
    TextEncoder,
    check_dims,
    check_templates,
    class_embeddings,
    logit_params,
    zero_shot_logits,
)

DEFAULT_TEMPLATES = ("a photo of a {}.",)

T = TypeVar("T")


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """Comma-separated (or listed) labels, stripped; empty or duplicate labels are errors."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    out = [s.strip() for s in items if s.strip()]
    if not out:
        raise InputError("no labels given; pass them comma-separated, e.g. --labels 'a cat,a dog'")
    dupes = sorted({s for s in out if out.count(s) > 1})
    if dupes:
        raise InputError(f"labels must be distinct; repeated: {', '.join(dupes)}")
    return out


def zero_shot_classify(
    model: Tokenizer,
    text_encoder: TextEncoder,
    paths: Sequence[str | os.PathLike[str]],
    labels: Sequence[str],
    *,
    template: str = "{}",
    top_k: int | None = None,
    batch_size: int = 32,
    reader: FileReader | None = None,
    progress: bool = False,
) -> list[list[tuple[str, float]]]:
    """Per input, the labels ranked by softmax score (``top_k`` of them; scores over all labels).

    Logits are `zero_shot_logits` with the text tower's `logit_params`.
    """
    dim = require_head(model)
    check_dims(dim, text_encoder.dim)
    labels = list(labels)
    text = class_embeddings(text_encoder, labels, (template,))  # [L, D]
    scale, bias = logit_params(text_encoder)
    k = len(labels) if top_k is None else max(1, min(top_k, len(labels)))
    out = []
    for emb in iter_file_embeddings(
        model, paths, reader=reader, batch_size=batch_size, progress=progress
    ):
        probs = zero_shot_logits(emb[None], text, scale, bias).softmax(-1)[0]  # [L]
        values, order = probs.topk(k)
        out.append([(labels[i], float(v)) for v, i in zip(values, order.tolist(), strict=True)])
    return out


def image_folder(
    root: str | os.PathLike[str], suffixes: set[str]
) -> tuple[list[str], list[Path], list[int]]:
    """``(class dirs, files, class index per file)`` of an ImageFolder-style tree, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            f"zero-shot data {str(root)!r} is not a directory (expected class sub-directories)"
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(
            f"{root} has no class sub-directories (ImageFolder layout: ROOT/CLASS/IMAGE)"
        )
    files: list[Path] = []
    targets: list[int] = []
    for c, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if Path(f).suffix.lower() in suffixes and not f.startswith("."):
                    files.append(Path(dirpath) / f)
                    targets.append(c)
    if not files:
        raise InputError(
            f"{root} holds no readable files under its class directories (suffixes read:"
            f" {' '.join(sorted(suffixes))})"
        )
    return classes, files, targets


def zeroshot_accuracy(
    model: Tokenizer,
    text_encoder: TextEncoder,
    root_dir: str | os.PathLike[str],
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    class_names: Mapping[str, str] | None = None,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    components: Components | None = None,
) -> dict[str, Any]:
    """Zero-shot classification accuracy over an ImageFolder tree (class = sub-directory).

    Args:
        model: tokenizer with a head, on the device to run on.
        text_encoder: a text tower of the same width.
        root_dir: ``ROOT/CLASS/.../IMAGE`` files (videos too, if an adapter reads them).
        templates: prompt templates, e.g. ``"a photo of a {}."``; several are ensembled.
        class_names: directory name -> class name for the prompts (e.g. WordNet ids to words);
            unmapped directories use their name with ``_`` read as a space.
        batch_size: images per forward pass; workers: reader threads; progress: rich bar.
        components: registries; default: the installed plugins.

    Returns:
        A JSON-ready dict: ``top1``, ``top5`` (fractions; top-5 is top-``min(5, C)``),
        ``per_class`` accuracy and count, ``confusion`` counts ``[true][predicted]``, sizes.
    """
    dim = require_head(model)
    check_dims(dim, text_encoder.dim)
    reader = FileReader(components=components)
    classes, files, targets = image_folder(root_dir, reader.readable_suffixes())
    names = [(class_names or {}).get(c, c.replace("_", " ")) for c in classes]
    text = class_embeddings(text_encoder, names, templates).to(model.device)  # [C, D]
    n_cls, k5 = len(classes), min(5, len(classes))
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.long)
    top5_hits = torch.zeros(n_cls, dtype=torch.long)
    stream = iter_file_embeddings(
        model,
        files,
        reader=reader,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        description="zero-shot",
    )
    target = torch.tensor(targets)
    start = 0
    for chunk in _chunks(stream, max(batch_size, 256)):
        sims = torch.stack(chunk).to(model.device) @ text.T  # [b, C] cosine (both normalised)
        top = sims.topk(k5, dim=-1).indices.cpu()  # [b, k5]
        truth = target[start : start + len(chunk)]  # [b]
        confusion.index_put_((truth, top[:, 0]), torch.ones_like(truth), accumulate=True)
        top5_hits.index_add_(0, truth, (top == truth[:, None]).any(-1).long())
        start += len(chunk)
    counts = confusion.sum(1)
    correct = confusion.diag()
    total = int(counts.sum())
    return {
        "task": "zeroshot",
        "data": str(root_dir),
        "num_images": total,
        "num_classes": n_cls,
        "templates": list(check_templates(templates)),
        "top1": float(correct.sum()) / total,
        "top5": float(top5_hits.sum()) / total,
        "top5_k": k5,
        "per_class": {
            c: {
                "name": n,
                "count": int(counts[i]),
                "accuracy": float(correct[i]) / int(counts[i]) if counts[i] else None,
            }
            for i, (c, n) in enumerate(zip(classes, names, strict=True))
        },
        "confusion": {"classes": classes, "counts": confusion.tolist()},
    }


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
