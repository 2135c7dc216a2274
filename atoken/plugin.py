"""The SDK for plugin authors: everything an atoken plugin needs, from one public module.

A plugin (built in, like ``atoken.plugins.image``, or a separate distribution, like
``atoken-plugin-3d``) imports only ``atoken`` (the user API) and ``atoken.plugin`` (this module).
Everything else under ``atoken.`` is internal and may be renamed without notice; the names below
are the stable surface. Each is a re-export of the implementation that atoken itself uses, so a
plugin behaves exactly like the built-ins.

Registration:
    `hookimpl` marks the ``atoken_register_*(registry)`` functions of a plugin module (see
    ``atoken/core/hookspecs.py``; always take ``registry`` by keyword). ``registry`` is a
    `BoundRegistry`: ``registry.register(name, factory, options=OptionsModel)``. `Registry`,
    `Entry` and `Provider` are what `Components` (``default_components()``) holds;
    `UnknownComponentError`, `DuplicateComponentError` and `OptionsError` are what they raise.
    A training task is ``registry.add(name, TaskSpec(modality=...))`` in
    ``atoken_register_tasks``; an understanding task names a registered understanding objective
    (``registry.add(name, UnderstandingSpec(build=...))`` in
    ``atoken_register_understanding_objectives``: ``build(section, context=UnderstandingContext)``
    returns an object with ``loss(embedding, batch) -> Tensor``; atoken registers ``distill``
    and ``caption_contrast``).
    A task objective (the loss of a task's batches, built by atoken's trainer) is
    ``registry.add(name, factory, options=OptionsModel)`` in ``atoken_register_objectives``:
    ``factory(options, context=ObjectiveContext)`` returns an ``nn.Module``; its held-out
    evaluation gets `HeldOutSample` entries and returns a `HeldOutReport`; `SharedHelpers` keeps
    frozen helpers (a perceptual network) out of its checkpointed state.
    A data source is ``registry.add(name, DataSourceSpec(build), options=OptionsModel)`` in
    ``atoken_register_data_sources``: ``build(options, request=DataSourceRequest)`` returns a
    source with ``__len__``, ``key(i)`` and ``load(i)``; a modality plugin registers its sources
    as ``<modality>.<name>`` with `register_modality_sources`.

Component protocols and building blocks:
    `ModalityAdapter` (``to_tokens`` / ``from_tokens`` / ``target`` / ``metrics`` / ``load`` /
    ``save``), built by its factory as ``factory(options, context=AdapterContext)``: the
    context of the model it serves (`TokenGeometry`: patch sides, channels, ``token_dim``; the
    device; companion model folders such as ``gaussian_decoder``), `Quantizer` and
    `QuantizerOutput`, `AttentionBackend` and `varlen_attention`
    (block-diagonal attention over packed samples), `Mlp`, `RMSNorm`, `MultiHeadRMSNorm`.

Tokens:
    `PatchTokens` (one sample: ``feats [n, C]``, ``coords [n, 4]`` int32 ``(t, x, y, z)``,
    ``meta``), `SparseTokens` (the packed batch), `collate`, `COORD_LIMIT`, `AXES`.

Errors (the CLI prints an `AtokenError` as one ``atoken: error: ...`` line and exits 1):
    `AtokenError` (base), `InputError` (bad input: say what was given and what was expected),
    `ConfigError`, `CheckpointError` (a missing/corrupt/mismatched weights file),
    `OutputPathError` (an output that cannot be written), `ResourceError`, `PluginError`;
    `describe_os_error` turns an `OSError` into one such line.

Options:
    `Strict` is the pydantic base for a plugin's options model (``extra="forbid"``: a typo in a
    key is an error naming the key); `format_validation_error` renders a pydantic
    ``ValidationError`` as one line; `parse_options` turns ``KEY=VALUE`` command-line pairs into
    the options dict (values JSON-decoded where they parse).

Patching (pixel frames <-> patch rows):
    `patchify`, `unpatchify`, `resize_target`, `resize_target_within_budget`, `crop_box`.

Files (atomic: written beside the target, flushed, renamed; never pickle):
    `atomic_write(path, write)` (calls ``write(fileobj)`` on a temporary file),
    `atomic_write_bytes`, `atomic_write_json`, `save_tensors` / `load_tensors` /
    `read_metadata` (safetensors), `read_json`, `check_output_target`, `check_state_layout` (one
    `CheckpointError` listing the missing, unexpected and mis-shaped keys of a state dict), and
    `outputs_together` (a block whose writes land as one set: all of them, or none when it
    raises).

Pretrained directories (``config.json`` + ``model.safetensors`` + optional ``README.md`` model
card + companion subfolders; never pickle): `PretrainedMixin` (``save_pretrained`` /
``from_pretrained`` for an ``nn.Module`` that declares a `PretrainedFormat`), `write_pretrained`
(the same files from a state dict), `read_document` (a size-checked, key-checked config
document), `CONFIG_NAME`, `WEIGHTS_NAME`.

Budgets (checked before anything large is allocated; environment overrides):
    `max_pixels`, `max_tokens`, `max_model_bytes`, `human_bytes`.

Metrics:
    `psnr`, `ssim` (channels last, ``[H, W, C]`` or ``[B, H, W, C]``), `to_unit_uint8`,
    `image_quality`, `image_lpips`, `METRIC_CONVENTION`, `lpips_input`; per-frame video metrics:
    `per_frame_metrics` (a clip ``[T, H, W, 3]`` -> `FrameMetrics`), `frame_quality`; LPIPS
    itself, the ``lpips`` loss from the registry (built on first call): `load_lpips` /
    `shared_lpips` (``(function, None)`` or ``(None, reason)``; the VGG trunk is found offline,
    never downloaded).

Running a model (in memory, no files): `adapter_for(path)` (the registered adapter that reads a
file, or the one named), `reconstruct_sample(model, adapter, sample)` -> `Reconstruction`
(reference, reconstruction, tokens, the adapter's metrics, timings); `progress_bar(enabled)` (a
transient bar with rate and ETA on a terminal, else a null context).

A plugin's own commands follow atoken's conventions with: `parse_options` (``KEY=VALUE``) and
`parse_adapter_options` (``-O ADAPTER.KEY=VALUE``, bare keys for every adapter) -> an
`AdapterOptions`; `resolve_device` (``--device``, one line for an unavailable one);
`refuse_existing` (no silent overwrite without ``--overwrite``); `require_suffix` (an output
suffix the command cannot write is refused in one line). Labelled pictures look the same
everywhere with `LabelBand` (a white band of captions over a picture's columns, planned once,
drawn per frame), `labelled_side_by_side` -> ``(picture, ComparisonLayout)``, `format_metrics`
and `label_font_size`.

Reading official checkpoints weights-only (never unpickling objects): `read_official_state`.

Example::

    from atoken.plugin import InputError, PatchTokens, Strict, hookimpl, patchify

    class GrayOptions(Strict):
        patch: int = 16

    @hookimpl
    def atoken_register_adapters(registry):
        registry.register("gray", GrayAdapter, options=GrayOptions)

Contract tests for a plugin's components are in `atoken.testing` (a test-time import).
"""

from __future__ import annotations

from atoken import hookimpl
from atoken.core.adapter_context import AdapterContext
from atoken.core.attention import AttentionBackend, varlen_attention
from atoken.core.budgets import human_bytes, max_model_bytes, max_pixels, max_tokens
from atoken.core.config import ConfigError, Strict, format_validation_error
from atoken.core.data_source import (
    DataSourceRequest,
    DataSourceSpec,
    register_modality_sources,
)
from atoken.core.errors import AtokenError, InputError, ResourceError, describe_os_error
from atoken.core.frame_metrics import FrameMetrics, frame_quality, per_frame_metrics
from atoken.core.geometry import TokenGeometry
from atoken.core.layers import Mlp, MultiHeadRMSNorm, RMSNorm
from atoken.core.metrics import (
    METRIC_CONVENTION,
    image_lpips,
    image_quality,
    load_lpips,
    lpips_input,
    psnr,
    shared_lpips,
    ssim,
    to_unit_uint8,
)
from atoken.core.modality import ModalityAdapter
from atoken.core.objective import (
    HeldOutReport,
    HeldOutSample,
    ObjectiveContext,
    SharedHelpers,
    UnderstandingContext,
    UnderstandingObjective,
    UnderstandingSpec,
)
from atoken.core.option_pairs import AdapterOptions, parse_adapter_options, parse_options
from atoken.core.outputs import refuse_existing, require_suffix, resolve_device
from atoken.core.patching import (
    crop_box,
    patchify,
    resize_target,
    resize_target_within_budget,
    unpatchify,
)
from atoken.core.pictures import (
    ComparisonLayout,
    LabelBand,
    format_metrics,
    label_font_size,
    labelled_side_by_side,
)
from atoken.core.plugins import Components, PluginError, default_components
from atoken.core.pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainedFormat,
    PretrainedMixin,
    read_document,
    write_pretrained,
)
from atoken.core.progress import progress_bar
from atoken.core.quantizer import Quantizer, QuantizerOutput
from atoken.core.reconstruct import Reconstruction, adapter_for, reconstruct_sample
from atoken.core.registry import (
    BoundRegistry,
    DuplicateComponentError,
    Entry,
    OptionsError,
    Provider,
    Registry,
    UnknownComponentError,
)
from atoken.core.serialization import (
    CheckpointError,
    OutputPathError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    check_output_target,
    check_state_layout,
    load_tensors,
    outputs_together,
    read_json,
    read_metadata,
    save_tensors,
)
from atoken.core.task import TaskSpec
from atoken.core.tokens import AXES, COORD_LIMIT, PatchTokens, SparseTokens, collate
from atoken.core.torch_checkpoint import read_official_state

__all__ = [
    "AXES",
    "CONFIG_NAME",
    "COORD_LIMIT",
    "METRIC_CONVENTION",
    "WEIGHTS_NAME",
    "AdapterContext",
    "AdapterOptions",
    "AtokenError",
    "AttentionBackend",
    "BoundRegistry",
    "CheckpointError",
    "ComparisonLayout",
    "Components",
    "ConfigError",
    "DataSourceRequest",
    "DataSourceSpec",
    "DuplicateComponentError",
    "Entry",
    "FrameMetrics",
    "HeldOutReport",
    "HeldOutSample",
    "InputError",
    "LabelBand",
    "Mlp",
    "ModalityAdapter",
    "MultiHeadRMSNorm",
    "ObjectiveContext",
    "OptionsError",
    "OutputPathError",
    "PatchTokens",
    "PluginError",
    "PretrainedFormat",
    "PretrainedMixin",
    "Provider",
    "Quantizer",
    "QuantizerOutput",
    "RMSNorm",
    "Reconstruction",
    "Registry",
    "ResourceError",
    "SharedHelpers",
    "SparseTokens",
    "Strict",
    "TaskSpec",
    "TokenGeometry",
    "UnderstandingContext",
    "UnderstandingObjective",
    "UnderstandingSpec",
    "UnknownComponentError",
    "adapter_for",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_output_target",
    "check_state_layout",
    "collate",
    "crop_box",
    "default_components",
    "describe_os_error",
    "format_metrics",
    "format_validation_error",
    "frame_quality",
    "hookimpl",
    "human_bytes",
    "image_lpips",
    "image_quality",
    "label_font_size",
    "labelled_side_by_side",
    "load_lpips",
    "load_tensors",
    "lpips_input",
    "max_model_bytes",
    "max_pixels",
    "max_tokens",
    "outputs_together",
    "parse_adapter_options",
    "parse_options",
    "patchify",
    "per_frame_metrics",
    "progress_bar",
    "psnr",
    "read_document",
    "read_json",
    "read_metadata",
    "read_official_state",
    "reconstruct_sample",
    "refuse_existing",
    "register_modality_sources",
    "require_suffix",
    "resize_target",
    "resize_target_within_budget",
    "resolve_device",
    "save_tensors",
    "shared_lpips",
    "ssim",
    "to_unit_uint8",
    "unpatchify",
    "varlen_attention",
    "write_pretrained",
]
