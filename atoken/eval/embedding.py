"""Embedding with an atoken model's understanding head: samples, files, embeddings files.

Everything streams: files are read, tokenized and embedded a batch at a time (optionally with
reader threads), so an ImageNet- or COCO-sized evaluation never holds more than one batch of
pixels in memory.

* Embeddings come from the model's pooling head (`Tokenizer.embed`), L2-normalised unless asked
  otherwise. A sample with a time axis (``[T, H, W, 3]``, e.g. from a video adapter) is embedded
  frame by frame through the ``image`` adapter and the per-frame embeddings are averaged (the
  AToken video zero-shot protocol; `atoken.eval.clip_tokens.FrameTokens` tokenizes the frames as
  they are embedded). ``video_pooling="clip"`` pools the head over the clip's space-time tokens.

References: AToken (arXiv 2509.14476), average of per-frame embeddings for video.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from atoken.core.errors import AtokenError, InputError
from atoken.core.modality import ModalityAdapter
from atoken.core.option_pairs import AdapterOptions
from atoken.core.plugins import Components, default_components
from atoken.core.progress import progress_bar
from atoken.core.serialization import CheckpointError, load_tensors, read_metadata, save_tensors
from atoken.core.tokenizer import Tokenizer
from atoken.core.tokens import PatchTokens, collate
from atoken.eval.clip_tokens import (
    FRAME_OPTIONS,
    VIDEO_POOLINGS,
    VideoPooling,
    sample_tokens,
)

EMBEDDINGS_FORMAT = "atoken-embeddings"
EMBEDDINGS_VERSION = "1"

T = TypeVar("T")
R = TypeVar("R")


def require_head(model: Tokenizer) -> int:
    """The image embedding width; an `AtokenError` if the model has no understanding head."""
    if not model.has_head:
        raise AtokenError(
            "this model has no understanding head (config.head is None); zero-shot, retrieval"
            " and embeddings need one: build it with a head such as 'attention_pool'"
        )
    return int(model.encoder.width)


def iter_embeddings(
    model: Tokenizer,
    groups: Iterable[Sequence[PatchTokens]],
    *,
    batch_size: int = 32,
    normalize: bool = True,
    backend=None,
    on_embedded: Callable[[int], None] | None = None,
) -> Iterator[Tensor]:
    """One ``[D]`` float32 CPU embedding per group of tokens, in order, embedded in batches.

    A group of several samples (the frames of a video) gets the mean of its members' embeddings
    (each normalised first when ``normalize``; the mean is normalised again). ``on_embedded``
    is called with the number of samples (images or frames) after each forward pass.
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
        if on_embedded is not None:
            on_embedded(len(pending))
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
    video_pooling: VideoPooling = "frames",
) -> Tensor:
    """``[N, D]`` embeddings of in-memory samples of one modality (rows in input order).

    Clips are embedded as `sample_tokens` says (``video_pooling``: frame average by default).
    """
    require_head(model)
    if image_adapter is None:
        image_adapter = (components or default_components()).adapters.build("image")
    groups = (
        sample_tokens(adapter, s, image_adapter, video_pooling=video_pooling) for s in samples
    )
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


class FileReader:
    """Reads a file into the tokens to embed, choosing (and caching) the adapter by suffix.

    Clips are embedded as ``video_pooling`` says (see `sample_tokens`). Their frames go through
    the image adapter built with the resize options (``min_res``, ``max_res``) given for the
    clip, so a frame is embedded at the size the video adapter would give it.
    """

    def __init__(
        self,
        modality: str | None = None,
        options: Mapping[str, Any] | AdapterOptions | None = None,
        components: Components | None = None,
        video_pooling: VideoPooling = "frames",
    ) -> None:
        from atoken.core.reconstruct import adapter_for

        if video_pooling not in VIDEO_POOLINGS:
            raise InputError(
                f"video_pooling must be one of {', '.join(VIDEO_POOLINGS)}, got {video_pooling!r}"
            )
        self._adapter_for = adapter_for
        self.modality = modality
        self.video_pooling: VideoPooling = video_pooling
        # per adapter (``-O image.max_res=512``), or one mapping for every adapter
        self.options = (
            options if isinstance(options, AdapterOptions) else AdapterOptions(dict(options or {}))
        )
        self.comps = components or default_components()
        self._by_suffix: dict[str, ModalityAdapter] = {}
        self._image: ModalityAdapter | None = None

    def adapter(self, path: Path) -> ModalityAdapter:
        key = self.modality or path.suffix.lower()
        if key not in self._by_suffix:
            name = self.modality or self._adapter_for(path, None, None, self.comps).name
            self._by_suffix[key] = self._adapter_for(
                path, name, self.options.for_adapter(name), self.comps
            )
        return self._by_suffix[key]

    def image_adapter(self) -> ModalityAdapter:
        if self._image is None:
            clip_options = self.options.for_adapter("video") or {}
            resize = {k: v for k, v in clip_options.items() if k in FRAME_OPTIONS}
            self._image = self.comps.adapters.build("image", resize or None)
        return self._image

    def readable_suffixes(self) -> set[str]:
        """Every suffix some registered adapter reads."""
        return {
            s
            for e in self.comps.adapters.entries()
            for s in self.comps.adapters.build(e.name).extensions
        }

    def __call__(self, path: str | os.PathLike[str]) -> Sequence[PatchTokens]:
        path = Path(path)
        adapter = self.adapter(path)
        try:
            sample = adapter.load(path)
            return sample_tokens(
                adapter, sample, self.image_adapter(), video_pooling=self.video_pooling
            )
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
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(paths)) if bar is not None else None
        # images and video frames embedded so far (a long clip moves this, not the file count)
        done = bar.add_task("images/frames", total=None) if bar is not None else None
        groups = _ordered_map(reader, paths, workers)
        embeddings = iter_embeddings(
            model,
            groups,
            batch_size=batch_size,
            normalize=normalize,
            on_embedded=(lambda n: bar.advance(done, n)) if bar is not None else None,
        )
        for emb in embeddings:
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
    video_pooling: VideoPooling = "frames",
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
        video_pooling: ``frames`` (default): a clip's embedding is the normalised mean of its
            frames' embeddings, each frame embedded as an image (AToken's video zero-shot
            protocol); ``clip``: the head pools all the clip's space-time tokens.
    """
    if not paths:
        raise InputError("no input files to embed")
    reader = FileReader(modality, options, components, video_pooling)
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
    video_pooling: VideoPooling | None = None,
) -> Path:
    """Write ``embeddings [N, D]`` + metadata (sources, model id, dim) atomically as safetensors.

    ``video_pooling`` (how clips were embedded, if any were) is recorded when given.
    """
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
    if video_pooling is not None:
        meta["video_pooling"] = video_pooling
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
