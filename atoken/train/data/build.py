"""From the training config to data: `build_source`, `build_stream`, `held_out_samples`.

A ``[[data]]`` entry names a source (``samples``, ``folder``, ``webdataset``, ``files`` or one a
plugin registers through ``atoken_register_data_sources``), its task, a path and ``options``,
validated against the options model that source registered for the task's modality (unknown
keys are errors; `atoken.core.data_source.find_data_source`: ``<modality>.<name>``, else
``<name>``; the modality-free ones are in `atoken.plugins.sources`, a modality's own ones in
its plugin). The modality is the adapter the task's registration names
(`atoken.core.task.TaskSpec`, registered by the plugin that owns the modality; see
`task_adapter`).

``files`` (`atoken.core.files_source`) serves any modality: the files under ``path`` whose suffix
the task's adapter claims, read by ``adapter.load`` (scene folders with ``transforms.json``
count as one sample for adapters claiming ``.json``), captions from a sidecar ``NAME.txt``;
options ``recursive`` (default true), ``cache`` (loaded samples kept in memory, default 8) and
``adapter`` (options of the task's adapter, e.g. a 3D plugin's ``{ views = 8, size = 128 }``;
sources of one task must agree on them). For a modality whose plugin registers no sources of
its own, ``samples`` is what the adapter offers through its optional ``sample_assets()``
capability (same ``cache`` / ``adapter`` options), and ``folder`` / ``webdataset`` do not exist.

Sources of pixel arrays (the image and video plugins' ones) take the crop options of
`atoken.core.crop.CropOptions`: ``crop_scale`` (kept fraction of each side, default
``[0.25, 1.0]``), ``aspect`` (stretch range, default ``[0.75, 1.333]``) and ``hflip`` (flip
probability, default 0.5); sources of one task must agree on them. Clip sources add their
plugin's clip options (``clip_frames``, ``frame_stride``, ``decode_max_side``); the stage's
resolution range of the task's registered ``resolution`` prefix bounds the samples. The
modality-free sources take no crop options (their samples need not be pixel arrays); an adapter
without ``min_res`` / ``max_res`` options is built from ``options.adapter`` alone, and its
samples with more tokens than ``tokens_per_batch`` are skipped (counted, with a warning).

`held_out_samples` is a run's ``[eval]`` data: the source it names, registered for the modality
of the evaluated task (``[eval] task``, else the run's first reconstruction task), read without
randomness, with the adapter that reconstructs it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from atoken.core.config import ConfigError, format_validation_error
from atoken.core.data_source import (
    DataSourceRequest,
    DataSourceSpec,
    data_source_names,
    find_data_source,
)
from atoken.core.sample_source import ConcatSource, ImageSource, SampleDataMissing
from atoken.train.config import task_spec
from atoken.train.data.batching import TokenBudgetBatcher
from atoken.train.data.stream import TrainStream

if TYPE_CHECKING:
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
        samples=task_spec(task, components).samples,
    )
    if state:
        stream.load_state_dict(state)
    return stream


def first_reconstruction_task(config: TrainConfig, components: Components) -> str | None:
    """The run's first reconstruction task with ``[[data]]`` sources: in the first stage's mix
    (in the order written), else in the ``[[data]]`` list; None when it has none."""
    stage = config.stages[0]
    fed = [s.task for s in config.data]
    order = [t for t in stage.tasks if t in fed] + [t for t in fed if t not in stage.tasks]
    tasks = [t for t in order if task_spec(t, components).objective == "reconstruction"]
    return tasks[0] if tasks else None


@dataclass
class HeldOut:
    """A run's held-out data and the adapter that reconstructs it.

    Attributes:
        task: the evaluated task.
        modality: its adapter's name.
        adapter: the adapter built for evaluation.
        samples: ``(name, sample)`` pairs, in the source's order.
    """

    task: str
    modality: str
    adapter: Any
    samples: list[tuple[str, Any]]


def _eval_adapter_options(
    config: TrainConfig, task: str, components: Components, fields: set[str]
) -> dict[str, Any]:
    """The task's sources' ``options.adapter``, then ``[eval]`` ``max_res`` / ``lpips`` for an
    adapter whose options model has them."""
    sources = [s for s in config.data if s.task == task]
    opts = dict(getattr(source_options(sources[0], components), "adapter", {})) if sources else {}
    wanted = {"max_res": config.eval.max_res, "lpips": config.eval.lpips}
    opts.update({k: v for k, v in wanted.items() if k in fields})
    return opts


def held_out_samples(
    config: TrainConfig | None = None,
    limit: int | None = None,
    components: Components | None = None,
) -> HeldOut:
    """The run's held-out data (its ``[eval]`` section) through the evaluated task's adapter.

    The task is ``[eval] task``, else the run's first reconstruction task
    (`first_reconstruction_task`); the source is ``[eval] source`` as registered for that task's
    modality (``<modality>.<name>``, else ``<name>``), given ``[eval] path`` and ``split``, read
    in its own order without randomness (a clip source gives its centred clips). Unreadable
    samples are skipped (counted, logged). Built-in data that is not installed gives no samples
    (a warning is logged); a folder or shard set that yields nothing is an error.

    Args:
        config: the training config (default: the defaults, which evaluate the ``[[data]]``
            default task on its built-in ``tune`` split).
        limit: at most this many samples (None: all).
        components: registries (default: the installed plugins).

    Raises:
        ConfigError: the run has no reconstruction task to evaluate, ``[eval]`` names a source
            the task's modality has not, or the ``[eval]`` folder or shards hold no readable
            sample.
    """
    from atoken.core.plugins import default_components
    from atoken.train.config import DataSource, EvalConfig, StageConfig, TrainConfig

    components = components or default_components()
    if config is None:
        config = TrainConfig(stages=[StageConfig(steps=1)], data=[DataSource()], eval=EvalConfig())
    spec = config.eval
    task = spec.task or first_reconstruction_task(config, components)
    if task is None:
        raise ConfigError(
            "[eval] needs a reconstruction task to judge the run on: set [eval] task, or feed one"
            f" in [[data]] (the [[data]] tasks are {sorted({s.task for s in config.data})})"
        )
    modality = task_adapter(task, components)
    entry = find_data_source(components.data_sources, spec.source, modality)
    if entry is None:
        raise ConfigError(
            f"[eval] source {spec.source!r} is not registered for task {task!r} ({modality} data);"
            f" sources: {', '.join(data_source_names(components.data_sources, modality))}"
        )
    model = components.adapters.get(modality).options_model
    fields = set(model.model_fields) if model is not None else set()
    adapter = components.adapters.build(
        modality, _eval_adapter_options(config, task, components, fields)
    )
    opts = entry.options_model.model_validate({}) if entry.options_model is not None else None
    source: DataSourceSpec = entry.obj
    request = DataSourceRequest(
        spec.path or "", adapter if source.needs_adapter else None, split=spec.split
    )
    try:
        data: ImageSource = source.build(opts, request)
    except SampleDataMissing as exc:
        logger.warning("no held-out samples for evaluation: %s", exc)
        return HeldOut(task, modality, adapter, [])
    samples: list[tuple[str, Any]] = []
    for index in range(len(data)):  # the source's own (sorted, for folders and shards) order
        if limit is not None and len(samples) >= limit:
            break
        sample = data.load(index)
        if sample is not None:
            samples.append((data.key(index).rsplit("/", 1)[-1], sample))
    if not samples and spec.source != "samples":
        raise ConfigError(f"[eval] {spec.describe()} holds no readable sample")
    return HeldOut(task, modality, adapter, samples)
