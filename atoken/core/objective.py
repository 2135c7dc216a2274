"""Task objectives a plugin registers: the loss of one task's batches, built by the trainer.

A task whose `atoken.core.task.TaskSpec` names a ``task_objective`` is trained by the objective
registered under that name (``atoken_register_objectives``) instead of the stage's
reconstruction losses. The registry entry's ``factory(options, context)`` returns an
``nn.Module`` (`TaskObjective`); ``options`` are the config's ``[objectives.<name>]`` table,
validated against the options model the plugin registered (phase two of config validation),
and ``context`` is an `ObjectiveContext`. The trainer then treats the module like part of the
model: its trainable parameters join AdamW as their own parameter group (``objective.<name>``,
no weight decay unless the objective says otherwise), its ``state_dict()`` goes into every
checkpoint (raw and EMA weights, safetensors), and its EMA copy is what is evaluated and
exported.

Optional capabilities (declared in a ``capabilities`` class attribute and verified as adapter
capabilities are, `atoken.core.capabilities`):

- ``export_companions(directory)``: write companion model folders into the run's ``model/``
  directory (``atoken-plugin-3d`` writes ``gaussian_decoder/`` there, which ``atoken reconstruct
  --model RUN/model`` loads);
- ``evaluate_held_out(model, samples)``: the held-out evaluation the monitor runs every
  ``run.sample_every`` steps instead of the ``[eval]`` images, returning a `HeldOutReport`.

Understanding tasks (``TaskSpec.objective == "understanding"``) train the pooling head with a
registered understanding objective instead (``atoken_register_understanding_objectives``,
`UnderstandingSpec`): atoken registers ``distill`` (the SigLIP2 teacher, ``[semantic]``) and
``caption_contrast`` (captions against a text tower, ``[semantic.<section>]``) from
`atoken.train.semantic`; a plugin registers its own the same way. Their contract differs from a
task objective's (``loss(embedding, batch) -> Tensor`` built from a config table, one instance per
table, learnable parameters in the ``loss`` group, state checkpointed by section), so they are a
kind of their own.

Frozen helpers an objective uses (a perceptual network, say) should not be children of the
module: they would be checkpointed and averaged. `SharedHelpers` holds them outside the module
tree (shared, not copied, by the EMA copy).

References: the loss-as-module pattern of PyTorch training loops (e.g. torchvision's reference
scripts); AToken (arXiv 2509.14476) 3D objective as the first registered one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    import torch

    from atoken.core.config import ModelConfig
    from atoken.core.plugins import Components
    from atoken.core.tokenizer import TokenizerOutput
    from atoken.core.tokens import PatchTokens


@dataclass(frozen=True)
class ObjectiveContext:
    """What the trainer tells an objective's factory.

    Attributes:
        name: the objective's registry name (its parameter group is ``objective.<name>``).
        tasks: the tasks of the run that use it.
        model_config: the trained tokenizer's resolved config (token geometry, widths).
        width: the encoder width (the pooled embedding's size).
        components: the plugin registries (e.g. to build a registered loss).
        device: where training runs.
        seed: the run seed (seed initialisations with it for reproducible runs).
    """

    name: str
    tasks: tuple[str, ...]
    model_config: ModelConfig
    width: int
    components: Components
    device: torch.device
    seed: int


@runtime_checkable
class TaskObjective(Protocol):
    """An ``nn.Module`` computing the loss of one task's batch.

    ``forward(out, batch)`` gets the tokenizer's forward pass over the packed batch and the
    batch's per-sample tokens (with ``meta["sample"]`` when the task declares ``samples``), and
    returns ``(total, terms)``: the scalar loss to minimise and the floats to log (``loss``,
    ``kl`` and ``sem`` are the trainer's own names and may not be used).
    """

    def __call__(
        self, out: TokenizerOutput, batch: Sequence[PatchTokens]
    ) -> tuple[Tensor, dict[str, float]]: ...


@dataclass(frozen=True)
class HeldOutSample:
    """One held-out sample handed to ``evaluate_held_out``.

    Attributes:
        key: the sample's key in its source (names it in pictures and rows).
        sample: what the task's adapter ``load`` returned.
        tokens: its tokens, by the task's adapter (as training tokenizes, without augmentation).
    """

    key: str
    sample: Any
    tokens: PatchTokens


@dataclass
class HeldOutReport:
    """What an objective's held-out evaluation gives the monitor.

    Attributes:
        summary: mean metrics (``psnr``, ``ssim``, ``lpips``: as many as were measured).
        rows: one dict per sample with its ``image`` name and metrics (eval.jsonl ``images``).
        pairs: ``(reference, reconstruction)`` pictures ``[H, W, 3]`` in [-1, 1], one per row.
        data: what was evaluated, in words (eval.jsonl ``data``, log lines).
        convention: how the metrics are computed (eval.jsonl ``convention``).
    """

    summary: dict[str, float]
    rows: list[dict[str, Any]]
    pairs: list[tuple[Tensor, Tensor]]
    data: str
    convention: Mapping[str, Any] = field(default_factory=dict)


class SharedHelpers:
    """Frozen helpers of an objective, kept outside its module tree.

    Not an ``nn.Module``: nothing in it is a parameter, checkpointed or averaged, and a deep
    copy (the EMA copy of the objective) shares it instead of copying it.
    """

    def __init__(self, **items: Any) -> None:
        self.__dict__.update(items)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedHelpers:
        return self


# ====================================================================== understanding objectives
@dataclass(frozen=True)
class UnderstandingContext:
    """What the trainer tells an understanding objective's ``build``.

    Attributes:
        name: the objective's registry name (``distill``, ``caption_contrast``, a plugin's own).
        section: the ``[semantic.<section>]`` table it was built from, or None for ``[semantic]``.
        tasks: the tasks of the run that use this instance (the first one names it in messages).
        semantic: the whole ``[semantic]`` table (`atoken.train.config.SemanticConfig`), e.g.
            for a section's fallback ``text_model``.
        width: the encoder width (the pooled embedding's size).
        components: the plugin registries (text towers, losses, adapters).
        device: where training runs.
        seed: the run seed (seed initialisations with it for reproducible runs).
    """

    name: str
    section: str | None
    tasks: tuple[str, ...]
    semantic: Any
    width: int
    components: Components
    device: torch.device
    seed: int


@runtime_checkable
class UnderstandingObjective(Protocol):
    """The semantic loss of an understanding task: ``loss(embedding [B, D], batch) -> scalar``.

    ``embedding`` is the pooled head output of the batch's forward pass, ``batch`` its
    per-sample tokens (``meta["caption"]`` where the task declares ``captions``). The trainer
    weights the result by ``[semantic] weight`` (the logged ``sem`` term). When the object is an
    ``nn.Module``, its trainable parameters join AdamW in the ``loss`` group (no weight decay)
    and its ``state_dict()`` is checkpointed, keyed by its section.
    """

    def loss(self, embedding: Tensor, batch: Sequence[PatchTokens]) -> Tensor: ...


@dataclass(frozen=True)
class UnderstandingSpec:
    """An understanding objective as a plugin registers it
    (``atoken_register_understanding_objectives``).

    A task names it in `atoken.core.task.TaskSpec` (``understanding``); the trainer builds one
    instance per config section its tasks read: ``[semantic.<section>]`` for a task that names
    a ``section``, ``[semantic]`` otherwise.

    Attributes:
        build: ``build(section, context)`` -> an `UnderstandingObjective`; ``section`` is the
            table (a ``ContrastiveConfig`` for ``[semantic.<section>]``, the ``SemanticConfig``
            for ``[semantic]``), ``context`` an `UnderstandingContext`.
        check: phase two of config validation: ``check(section, semantic, name)`` returns what
            the config lacks, in words (``a [semantic] section (teacher = ...)``), or None;
            ``section`` is the table the task reads (None when absent), ``semantic`` the whole
            ``[semantic]`` table (None when absent), ``name`` the section name (None for
            ``[semantic]``).
        sections: tasks using it name their ``[semantic.<section>]`` table.
        captions: tasks using it declare ``captions`` (their samples carry one).
    """

    build: Callable[[Any, UnderstandingContext], UnderstandingObjective]
    check: Callable[[Any, Any, str | None], str | None] | None = None
    sections: bool = False
    captions: bool = False
