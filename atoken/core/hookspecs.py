"""The hooks a plugin may implement. Every hook receives a registry view bound to that plugin.

Each view is typed by what its kind builds (the table of kinds, `atoken.core.plugins.Components`)
and checks it. Hooks are always called with keywords, so new arguments can be added later
without breaking installed plugins (pluggy passes each implementation only the arguments it
names).

References: hook discipline after pytest's hookspec.py; register-object hooks after llm and tox.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from torch import nn

    from atoken.core.attention import AttentionBackend
    from atoken.core.data_source import DataSourceSpec
    from atoken.core.modality import ModalityAdapter
    from atoken.core.objective import UnderstandingSpec
    from atoken.core.quantizer import Quantizer
    from atoken.core.registry import BoundRegistry
    from atoken.core.task import TaskSpec

hookspec = pluggy.HookspecMarker("atoken")


@hookspec
def atoken_register_adapters(registry: BoundRegistry[ModalityAdapter]) -> None:
    """Register modality adapters (image, video, 3D, ...).

    Called once per plugin when the plugin manager is built. Call ``registry.add(name, factory,
    options=OptionsModel)`` once per adapter; ``factory(options, context=AdapterContext)``
    (the served model's token geometry, device and companions,
    :class:`atoken.core.adapter_context.AdapterContext`) must return an object that satisfies
    :class:`atoken.core.modality.ModalityAdapter`. Names are global across plugins;
    a clash is an error naming both providers. Not firstresult, not historic.

    :param registry: the adapter registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_quantizers(registry: BoundRegistry[Quantizer]) -> None:
    """Register latent quantizers (continuous or discrete).

    ``factory(options, latent_channels=C)`` must return an ``nn.Module`` satisfying
    :class:`atoken.core.quantizer.Quantizer`. Called once per plugin. Not firstresult.

    :param registry: the quantizer registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_heads(registry: BoundRegistry[nn.Module]) -> None:
    """Register heads that turn encoder tokens into one vector per sample.

    ``factory(options, width=D, num_heads=H, mlp_width=M)`` returns an ``nn.Module`` whose
    ``forward(tokens: SparseTokens, *, backend) -> Tensor [B, D]``. Called once per plugin.

    :param registry: the head registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_losses(registry: BoundRegistry[nn.Module]) -> None:
    """Register training losses.

    ``factory(options)`` returns an ``nn.Module`` computing a scalar loss. Called once per plugin.

    :param registry: the loss registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_tasks(registry: BoundRegistry[TaskSpec]) -> None:
    """Register training tasks (what a curriculum stage mixes, e.g. ``image_rec``).

    Add a :class:`atoken.core.task.TaskSpec` (no options) naming the adapter that feeds the
    task and its objective; the plugin that owns the modality registers its tasks. Unknown task
    names in a training config are errors listing the registered ones. Called once per plugin.

    :param registry: the task registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_data_sources(registry: BoundRegistry[DataSourceSpec]) -> None:
    """Register training data sources (what a ``[[data]]`` entry's ``source`` names).

    Add a :class:`atoken.core.data_source.DataSourceSpec` with ``options=OptionsModel``: under a
    plain name for a source that serves any modality (it reads through the task's adapter), or
    as ``<modality>.<name>`` for one modality's data (it wins over the plain name for tasks of
    that modality). The ``[[data]]`` entry's ``options`` are validated against the model. Called
    once per plugin. Not firstresult.

    :param registry: the data-source registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_attention_backends(registry: BoundRegistry[AttentionBackend]) -> None:
    """Register variable-length attention backends.

    Add an :class:`atoken.core.attention.AttentionBackend` (no options). Availability is checked
    lazily, when a backend is first used, never at registration. Called once per plugin.

    :param registry: the attention-backend registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_text_encoders(registry: BoundRegistry[Any]) -> None:
    """Register text towers for the semantic side (zero-shot, retrieval, distillation).

    ``factory(options)`` returns an object with ``dim: int`` and ``encode(texts: list[str]) ->
    Tensor [T, dim]`` (not normalised). Heavy imports belong inside the factory. Called once
    per plugin. Not firstresult.

    :param registry: the text-encoder registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_objectives(registry: BoundRegistry[nn.Module]) -> None:
    """Register task objectives: the loss of a task's batches, in place of the stage's
    reconstruction losses (see :mod:`atoken.core.objective`).

    Call ``registry.add(name, factory, options=OptionsModel)``; ``factory(options, context)``
    gets the config's ``[objectives.<name>]`` table validated against ``OptionsModel`` and an
    :class:`atoken.core.objective.ObjectiveContext`, and returns an ``nn.Module`` whose
    ``forward(out, batch)`` returns ``(total, terms)``. A task uses it by naming it in its
    :class:`atoken.core.task.TaskSpec` (``task_objective``). Called once per plugin. Not
    firstresult, not historic.

    :param registry: the objective registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_understanding_objectives(registry: BoundRegistry[UnderstandingSpec]) -> None:
    """Register understanding objectives: the semantic loss an understanding task trains the
    pooling head with (see :class:`atoken.core.objective.UnderstandingSpec`).

    Add an ``UnderstandingSpec`` (no options: the objective reads the config's ``[semantic]`` or
    ``[semantic.<section>]`` table); ``build(section, context)`` returns an object with
    ``loss(embedding, batch) -> Tensor``. A task uses it by naming it in its
    :class:`atoken.core.task.TaskSpec` (``understanding``); atoken registers ``distill`` and
    ``caption_contrast``. Called once per plugin. Not firstresult, not historic.

    :param registry: the understanding-objective registry, bound to the calling plugin.
    """


@hookspec
def atoken_register_commands(registry: BoundRegistry[click.Command]) -> None:
    """Register extra ``atoken`` sub-commands.

    Add ``click.Command`` objects; the name is the sub-command name. Called once per plugin.

    :param registry: the command registry, bound to the calling plugin.
    """
