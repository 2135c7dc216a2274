"""From the training config to data: `build_source`, `build_stream`, `held_out_images`.

A ``[[data]]`` entry names a source (``samples``, ``folder`` or ``webdataset``), its task, a path
and ``options``, validated here against the source's options model (unknown keys are errors).
Options every source accepts set the crop augmentation: ``crop_scale`` (kept fraction of each
side, default ``[0.25, 1.0]``), ``aspect`` (stretch range, default ``[0.75, 1.333]``) and
``hflip`` (flip probability, default 0.5); sources of one task must agree on them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from atoken.core.config import ConfigError, Strict, format_validation_error
from atoken.train.data.augment import RandomScaleCrop
from atoken.train.data.batching import TokenBudgetBatcher
from atoken.train.data.folder import ImageFolderSource
from atoken.train.data.sample_images import SampleImagesSource
from atoken.train.data.source import ConcatSource, ImageSource
from atoken.train.data.stream import TrainStream
from atoken.train.data.webdataset import WebDatasetSource

if TYPE_CHECKING:
    from torch import Tensor

    from atoken.core.plugins import Components
    from atoken.train.config import DataSource, StageConfig, TrainConfig

logger = logging.getLogger("atoken.train.data")

#: tasks the image data sources can feed
IMAGE_TASKS = ("image_rec", "image_und")


class AugmentOptions(Strict):
    """Crop augmentation options (shared by every source)."""

    crop_scale: tuple[float, float] = (0.25, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(default=0.5, ge=0, le=1)

    def build(self) -> RandomScaleCrop:
        return RandomScaleCrop(scale=self.crop_scale, aspect=self.aspect, hflip=self.hflip)


class SamplesOptions(AugmentOptions):
    """``samples``: the built-in photos (train split)."""

    video_frames: bool = True


class FolderOptions(AugmentOptions):
    """``folder``: image files under ``path``."""

    recursive: bool = True


class WebDatasetOptions(AugmentOptions):
    """``webdataset``: local tar shards; ``path`` is a path, brace pattern or glob."""


_OPTIONS: dict[str, type[AugmentOptions]] = {
    "samples": SamplesOptions,
    "folder": FolderOptions,
    "webdataset": WebDatasetOptions,
}


def source_options(spec: DataSource) -> AugmentOptions:
    """Validate ``spec.options`` against its source's options model."""
    model = _OPTIONS.get(spec.name)
    if model is None:
        raise ConfigError(f"unknown data source {spec.name!r}; sources: {', '.join(_OPTIONS)}")
    try:
        return model.model_validate(spec.options)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, f"data source {spec.name!r} options")
        ) from None


def build_source(spec: DataSource) -> ImageSource:
    """The `ImageSource` a ``[[data]]`` entry describes."""
    opts = source_options(spec)
    if isinstance(opts, SamplesOptions):
        return SampleImagesSource("train", video_frames=opts.video_frames)
    if isinstance(opts, FolderOptions):
        return ImageFolderSource(spec.path or "", recursive=opts.recursive)
    return WebDatasetSource(spec.path or "")


def build_stream(
    sources: Sequence[DataSource],
    *,
    stage: StageConfig,
    components: Components,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    state: Mapping[str, Any] | None = None,
) -> TrainStream:
    """The batch stream of one task in one curriculum stage.

    Args:
        sources: the ``[[data]]`` entries of the task (read as one concatenated source).
        stage: gives ``min_res`` / ``max_res`` (image adapter) and ``tokens_per_batch``.
        components: registries; the ``image`` adapter is built from them.
        seed: run seed (the same on every rank).
        rank: this process's rank.
        world_size: number of ranks (each reads a disjoint part of the data).
        state: a `TrainStream.state_dict` to continue from (checkpoint or previous stage).

    Raises:
        ConfigError: no sources, a task the image sources cannot feed, bad options, or sources
            that disagree on the augmentation.
    """
    if not sources:
        raise ConfigError("build_stream: no data sources given")
    tasks = sorted({s.task for s in sources})
    unsupported = [t for t in tasks if t not in IMAGE_TASKS]
    if unsupported:
        raise ConfigError(
            f"no data pipeline for task(s) {unsupported} yet; image sources feed"
            f" {', '.join(IMAGE_TASKS)}"
        )
    augments = {source_options(s).build() for s in sources}
    if len(augments) > 1:
        raise ConfigError(
            f"data sources of task {tasks[0]!r} set different crop options; use the same"
            " crop_scale / aspect / hflip on each"
        )
    parts = [build_source(s) for s in sources]
    source = parts[0] if len(parts) == 1 else ConcatSource(parts)
    adapter = components.adapters.build(
        "image", {"min_res": stage.min_res, "max_res": stage.max_res}
    )
    stream = TrainStream(
        source,
        adapter,
        TokenBudgetBatcher(stage.tokens_per_batch),
        seed=seed,
        rank=rank,
        world_size=world_size,
        augment=augments.pop(),
    )
    if state:
        stream.load_state_dict(state)
    return stream


def held_out_images(
    config: TrainConfig | None = None, limit: int | None = None
) -> list[tuple[str, Tensor]]:
    """The fixed held-out photos (``SampleImagesSource("heldout")``) as ``(name, image)``.

    They are never in the built-in train split; with other sources they are still a fixed,
    real-photo yardstick. Without scikit-image the list is empty (a warning is logged).

    Args:
        config: the training config (reserved for per-run held-out sets; unused now).
        limit: at most this many images (None: all three).
    """
    from atoken.train.samples import SampleDataMissing

    try:
        source = SampleImagesSource("heldout")
    except SampleDataMissing as exc:
        logger.warning("no held-out images for evaluation: %s", exc)
        return []
    images = [(key.rsplit("/", 1)[-1], image) for key, image in source]
    return images if limit is None else images[:limit]
