"""The image plugin's training tasks: ``image_rec`` and ``image_und``."""

from __future__ import annotations

from atoken import hookimpl
from atoken.core.task import TaskSpec


@hookimpl
def atoken_register_tasks(registry) -> None:
    registry.add(
        "image_rec",
        TaskSpec(modality="image"),
        description="image reconstruction (the stage's reconstruction losses)",
    )
    registry.add(
        "image_und",
        TaskSpec(modality="image", objective="understanding", understanding="distill"),
        description="image understanding: KL distillation from a frozen SigLIP2 ([semantic])",
    )
