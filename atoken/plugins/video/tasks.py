"""The video plugin's training tasks: ``video_rec`` and ``video_und``.

Both take their resolution range from the stage's ``video_min_res`` / ``video_max_res``
(default: ``min_res`` / ``max_res``); ``video_und`` contrasts clips with their captions
(``[semantic.video]``).
"""

from __future__ import annotations

from atoken import hookimpl
from atoken.core.task import TaskSpec


@hookimpl
def atoken_register_tasks(registry) -> None:
    registry.add(
        "video_rec",
        TaskSpec(modality="video", resolution="video"),
        description="video reconstruction (the stage's reconstruction losses)",
    )
    registry.add(
        "video_und",
        TaskSpec(
            modality="video",
            objective="understanding",
            understanding="caption_contrast",
            section="video",
            captions=True,
            resolution="video",
        ),
        description="video understanding: clip/caption sigmoid contrast ([semantic.video])",
    )
