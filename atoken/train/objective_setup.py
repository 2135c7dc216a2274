"""Building the registered objectives a training config's tasks name, before the first step.

Two kinds, both found through the plugin registries and checked here, so that a plugin's mistake
is one clear `ConfigError` when the `Trainer` is built rather than a traceback at step 1:

* understanding objectives (`atoken.core.objective.UnderstandingSpec`; atoken's ``distill`` and
  ``caption_contrast``), one per ``[semantic]`` table the understanding tasks read;
* task objectives (``task_objective`` of a task's registration, e.g. atoken-plugin-3d's
  ``gaussian_render``), each an ``nn.Module`` built once with its ``[objectives.<name>]`` options.

References: AToken (arXiv 2509.14476), "Losses" (the semantic terms of understanding tasks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atoken.core.config import ConfigError
from atoken.core.plugins import Components
from atoken.core.tokenizer import Tokenizer
from atoken.train.config import TrainConfig, task_spec


def config_tasks(config: TrainConfig) -> list[str]:
    """Every task the config's stages train, sorted."""
    return sorted({t for s in config.stages for t in s.tasks})


def build_understanding_objectives(
    config: TrainConfig, components: Components, model: Tokenizer, device: torch.device
) -> dict[str | None, Any]:
    """The understanding objectives the stages' tasks name, one per config table they read,
    keyed by section (None: the ``[semantic]`` table itself); tasks reading the same table share
    it. Those of ``[semantic]`` are built first, then the sections' in task order."""
    from atoken.core.objective import UnderstandingContext, UnderstandingObjective
    from atoken.train.config import semantic_section, understanding_registry

    users: dict[str | None, list[str]] = {}
    for task in config_tasks(config):
        spec = task_spec(task, components)
        if spec.objective != "understanding":
            continue
        shared = users.setdefault(spec.section, [])
        if shared and task_spec(shared[0], components).understanding != spec.understanding:
            raise ConfigError(
                f"tasks {shared[0]!r} and {task!r} read the same"
                f" [semantic{'.' + spec.section if spec.section else ''}] table but train"
                " different understanding objectives"
                f" ({task_spec(shared[0], components).understanding!r},"
                f" {spec.understanding!r}); register one section per objective"
            )
        shared.append(task)
    registry = understanding_registry(components)
    out: dict[str | None, Any] = {}
    for section in sorted(users, key=lambda k: (k is not None, users[k][0])):
        tasks = users[section]
        spec = task_spec(tasks[0], components)
        table = semantic_section(config, spec)
        if table is None:  # the config validator already says this; kept for safety
            where = f"[semantic.{section}]" if section else "[semantic]"
            raise ConfigError(f"task {tasks[0]!r} needs a {where} section")
        if not model.has_head:
            raise ConfigError(
                f"task {tasks[0]!r} trains the understanding head, but this model has none"
                " (config.head is None); use a preset with a head"
            )
        entry = registry.get(spec.understanding)
        context = UnderstandingContext(
            name=spec.understanding,
            section=section,
            tasks=tuple(tasks),
            semantic=config.semantic,
            width=int(model.encoder.width),
            components=components,
            device=device,
            seed=config.run.seed,
        )
        built = entry.obj.build(table, context)
        if not isinstance(built, UnderstandingObjective):
            raise ConfigError(
                f"understanding objective {spec.understanding!r} ({entry.provider}) built a"
                f" {type(built).__name__}; expected an object with loss(embedding, batch)"
            )
        out[section] = built
    return out


def build_task_objectives(
    config: TrainConfig, components: Components, model: Tokenizer, device: torch.device
) -> dict[str, nn.Module]:
    """The registered task objectives the stages' tasks name (`atoken.core.objective`), each
    built once with its ``[objectives.<name>]`` options and moved to ``device``; their declared
    capabilities are verified here."""
    from atoken.core.capabilities import declared_capabilities
    from atoken.core.objective import ObjectiveContext
    from atoken.train.config import objective_options, task_objectives

    out: dict[str, nn.Module] = {}
    for name, tasks in task_objectives(config, components).items():
        context = ObjectiveContext(
            name=name,
            tasks=tuple(tasks),
            model_config=model.config,
            width=int(model.encoder.width),
            components=components,
            device=device,
            seed=config.run.seed,
        )
        options = objective_options(name, config, components)
        # the objectives registry refuses a factory that builds anything but an nn.Module
        module = components.objectives.build(name, options, context=context)
        declared_capabilities(type(module))
        out[name] = module.to(device)
    return out
