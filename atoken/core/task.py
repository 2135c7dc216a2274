"""A training task as a plugin registers it: which adapter feeds it and which objective it trains.

The plugin that owns a modality registers its tasks through ``atoken_register_tasks`` (the image
plugin registers ``image_rec`` and ``image_und``, the video plugin ``video_rec`` and
``video_und``, a third-party modality its own); the trainer reads everything that differs per
task from the registered `TaskSpec`, so it never branches on a modality name. A task may name a
registered task objective (``atoken_register_objectives``, `atoken.core.objective`) that replaces
the stage's reconstruction losses on its batches, e.g. ``3d_gs`` of atoken-plugin-3d (the
Gaussian decoder's render loss); an understanding task names its registered understanding
objective (``atoken_register_understanding_objectives``).

References: task table after AToken (arXiv 2509.14476), "Curriculum and optimisation".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a task needs from the trainer.

    Attributes:
        modality: the registered adapter that reads, tokenizes and decodes the task's samples.
        objective: ``reconstruction`` (the stage's reconstruction losses) or ``understanding``
            (the semantic objective named by ``understanding``).
        understanding: for understanding tasks, a registered understanding objective
            (``atoken_register_understanding_objectives``,
            `atoken.core.objective.UnderstandingSpec`):
            atoken's ``distill`` (KL distillation from the frozen SigLIP2 teacher, the
            ``[semantic]`` section) or ``caption_contrast`` (pooled embeddings against caption
            embeddings, the ``[semantic.<section>]`` section), or a plugin's own; phase two of
            config validation refuses a name no plugin registers.
        section: the ``[semantic.<section>]`` table the task's understanding objective reads
            (None: the ``[semantic]`` table itself).
        captions: samples carry a caption (read from the data: ``.txt`` sidecars, ``txt``
            members, built-in captions).
        resolution: prefix of the stage keys bounding this task's resolution
            (``video`` -> ``video_min_res`` / ``video_max_res``, falling back to ``min_res`` /
            ``max_res``); None: ``min_res`` / ``max_res``.
        task_objective: a registered task objective (``atoken_register_objectives``) that
            computes the loss of this reconstruction task's batches instead of the stage's
            reconstruction losses; its options are the config's ``[objectives.<name>]`` table.
        samples: the stream keeps each loaded sample (what the adapter's ``load`` returned) on
            its tokens as ``meta["sample"]``, for a task objective that needs more than the
            tokens (e.g. the posed views a 3D asset was rendered from). An in-memory reference,
            never written anywhere.
    """

    modality: str
    objective: Literal["reconstruction", "understanding"] = "reconstruction"
    understanding: str | None = None
    section: str | None = None
    captions: bool = False
    resolution: str | None = None
    task_objective: str | None = None
    samples: bool = False

    def __post_init__(self) -> None:
        if self.objective not in ("reconstruction", "understanding"):
            raise ValueError(
                f"task objective must be 'reconstruction' or 'understanding', got"
                f" {self.objective!r}"
            )
        if self.objective == "understanding" and not (
            isinstance(self.understanding, str) and self.understanding.strip()
        ):
            raise ValueError(
                "an understanding task names its registered understanding objective"
                " (atoken_register_understanding_objectives, e.g. 'distill'), got"
                f" {self.understanding!r}"
            )
        if self.objective == "reconstruction" and self.understanding is not None:
            raise ValueError("a reconstruction task takes no understanding objective")
        if self.task_objective is not None and (
            self.objective != "reconstruction" or not self.task_objective.strip()
        ):
            raise ValueError(
                "task_objective names a registered objective (atoken_register_objectives) of a"
                f" reconstruction task, got {self.task_objective!r} on a {self.objective} task"
            )
