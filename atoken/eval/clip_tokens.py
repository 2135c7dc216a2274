"""What a sample becomes for embedding: one token set, or (for a clip) one per frame.

AToken's video zero-shot protocol embeds every frame of a clip as an image and averages the
normalised frame embeddings (`atoken.eval.embedding.iter_embeddings` does the averaging);
`FrameTokens` makes those per-frame image tokens lazily, so a long clip is never tokenized whole.
``video_pooling="clip"`` instead tokenizes the clip whole (the head pools its space-time tokens).

References: AToken (arXiv 2509.14476), video zero-shot: average of per-frame embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

from torch import Tensor

from atoken.core.capabilities import has_capability
from atoken.core.errors import InputError
from atoken.core.modality import ModalityAdapter
from atoken.core.tokens import PatchTokens

VideoPooling = Literal["frames", "clip"]
#: how a clip becomes one embedding: ``frames`` (default, the paper's video zero-shot protocol)
#: embeds every frame as an image and averages; ``clip`` pools the head over the whole clip's
#: space-time tokens (one forward pass, the model's temporal tiling applies)
VIDEO_POOLINGS: tuple[str, ...] = ("frames", "clip")
#: adapter options a clip's frames share with the image adapter that embeds them
FRAME_OPTIONS = ("min_res", "max_res")


class FrameTokens(Sequence[PatchTokens]):
    """The frames of a clip as image tokens, made one frame at a time as they are read.

    A long clip is never tokenized whole (image tokens are 4x a frame's pixels, since images are
    zero-padded to 4 frames); only the frames of one embedding batch exist as tokens at once.
    The first frame is tokenized at construction, so a frame the image adapter rejects fails
    where the clip is read.
    """

    def __init__(self, clip: Tensor, image_adapter: ModalityAdapter) -> None:
        self.clip = clip
        self.image_adapter = image_adapter
        self._first: PatchTokens | None = image_adapter.to_tokens(clip[0])

    def __len__(self) -> int:
        return int(self.clip.shape[0])

    def _frame(self, i: int) -> PatchTokens:
        if i == 0 and self._first is not None:
            first, self._first = self._first, None  # handed out once; rebuilt if asked again
            return first
        return self.image_adapter.to_tokens(self.clip[i])

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._frame(i) for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError / negative indices like a list
        return self._frame(i)

    def __iter__(self) -> Iterator[PatchTokens]:
        for i in range(len(self)):
            yield self._frame(i)


def sample_tokens(
    adapter: ModalityAdapter,
    sample: Tensor,
    image_adapter: ModalityAdapter | None = None,
    *,
    video_pooling: VideoPooling = "frames",
) -> Sequence[PatchTokens]:
    """Tokens to embed for one sample: one entry, or one per frame for a sample with a time axis.

    A sample is a clip when the adapter says so (``embed_per_frame = True``), or, for adapters
    that do not say, when it is named ``video`` or the sample is 4-D ``[T, H, W, C]``. With
    ``video_pooling="frames"`` (default; AToken's video zero-shot protocol) each frame goes
    through ``image_adapter`` and `iter_embeddings` averages the frame embeddings; with
    ``"clip"`` the clip is tokenized whole by ``adapter`` (the head pools all its tokens).
    """
    if video_pooling not in VIDEO_POOLINGS:
        raise InputError(
            f"video_pooling must be one of {', '.join(VIDEO_POOLINGS)}, got {video_pooling!r}"
        )
    per_frame = adapter.embed_per_frame if has_capability(adapter, "embed_per_frame") else None
    if per_frame is None:
        per_frame = adapter.name == "video" or (isinstance(sample, Tensor) and sample.ndim == 4)
    if not per_frame or video_pooling == "clip":
        return [adapter.to_tokens(sample)]
    if image_adapter is None:
        raise InputError(
            f"{adapter.name} samples are embedded per frame, which needs an image adapter"
        )
    if not isinstance(sample, Tensor) or sample.ndim != 4 or sample.shape[0] == 0:
        shape = tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
        raise InputError(f"expected a [T, H, W, 3] {adapter.name} sample with T >= 1, got {shape}")
    return FrameTokens(sample, image_adapter)  # T x [n, 3072], made as they are read
