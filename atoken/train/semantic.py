"""The image understanding task (``image_und``): KL distillation from a frozen SigLIP2 teacher.

For each image of a batch, the frozen teacher (a SigLIP2 vision tower) and the student (atoken's
pooling head on the same forward pass) each give a distribution over a fixed bank of prompt
embeddings from one frozen text tower; the loss is the registered ``semantic_distill`` loss,
``KL(p_teacher || p_student)`` at the configured temperature (paper: 2).

The teacher sees exactly the student's pixels: frame 0 of each sample's tokens, rebuilt by the
image adapter, cropped to whole teacher patches and laid out as the Siglip2 image processor lays
them out (patches flattened as (row-in-patch, col-in-patch, channel), padded, with
``pixel_attention_mask`` and ``spatial_shapes = (rows, cols)``). atoken's [-1, 1] pixels are the
processor's rescale-then-normalise (mean = std = 0.5) output, so no further mapping is needed.

`CaptionContrast` is the video / 3D objective (``video_und``, ``3d_und``): the SigLIP sigmoid loss
between pooled embeddings and the frozen text tower's embeddings of each sample's caption.

Both are registered understanding objectives (``atoken_register_understanding_objectives``; this
module is a built-in plugin as `atoken.plugins.sources` is): ``distill`` builds a
`SemanticDistiller` from ``[semantic]``, ``caption_contrast`` a `CaptionContrast` per
``[semantic.<section>]``.

References: AToken (arXiv 2509.14476), "Losses" (semantic loss for images: KL to the SigLIP2
teacher's image-text similarity distribution, temperature 2, same frozen text encoder);
M. Tschannen et al., "SigLIP 2" (arXiv 2502.14786) for the NaFlex input layout; X. Zhai et al.,
"Sigmoid Loss for Language Image Pre-Training" (ICCV 2023); W. B. Johnson, J. Lindenstrauss (1984)
for the random projection between text and model widths.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atoken import hookimpl
from atoken.core.config import ConfigError
from atoken.core.objective import UnderstandingContext, UnderstandingSpec
from atoken.core.tokens import PatchTokens

if TYPE_CHECKING:
    from atoken.core.plugins import Components
    from atoken.train.config import SemanticConfig

#: model types whose vision tower can be the teacher
TEACHER_TYPES = ("siglip2", "siglip2_vision_model")


def load_teacher(directory: str | Path) -> nn.Module:
    """The frozen SigLIP2 vision tower of a local Hugging Face directory (eval, no grad, float32).

    Raises:
        ConfigError: not a directory, no config.json, not a SigLIP2 model, or transformers missing.
    """
    path = Path(directory).expanduser()
    config = path / "config.json"
    if not config.is_file():
        what = "does not exist" if not path.is_dir() else "has no config.json"
        raise ConfigError(
            f"semantic.teacher: SigLIP2 directory {str(path)!r} {what}; give a local Hugging Face"
            " SigLIP2 directory (full model or vision model; nothing is downloaded)"
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ConfigError(f"semantic.teacher: {config} is not a valid config.json: {exc}") from None
    if model_type not in TEACHER_TYPES:
        raise ConfigError(
            f"semantic.teacher: {str(path)!r} holds a {model_type!r} model; the teacher must be"
            f" SigLIP2 (model_type {' or '.join(TEACHER_TYPES)})"
        )
    from atoken.core.hf import hf_class, import_transformers, quiet_transformers

    transformers = import_transformers("siglip2")  # applies the torchvision shim first
    vision_model = hf_class(transformers, "Siglip2VisionModel", "siglip2")
    with quiet_transformers():  # a full checkpoint's text tower is reported as unused; it is
        teacher = vision_model.from_pretrained(str(path), local_files_only=True)
    if not getattr(teacher.config, "vision_use_head", True):
        raise ConfigError(
            f"semantic.teacher: {str(path)!r} has no pooling head (vision_use_head = false);"
            " the teacher's image embedding is the head's pooled output"
        )
    return teacher.float().eval().requires_grad_(False)


def teacher_inputs(images: Sequence[Tensor], patch_size: int) -> dict[str, Tensor]:
    """Siglip2 NaFlex inputs for images ``[H, W, 3]`` in [-1, 1] (cropped to whole patches).

    Returns ``pixel_values [B, P, p*p*3]``, ``pixel_attention_mask [B, P]`` and
    ``spatial_shapes [B, 2]`` (rows, cols), padded to the largest image's patch count P.
    """
    p = patch_size
    grids = []
    for img in images:
        h, w = int(img.shape[0]), int(img.shape[1])
        if h < p or w < p:
            raise ConfigError(
                f"semantic.teacher: an image of {h}x{w} pixels is smaller than one teacher patch"
                f" ({p}x{p}); raise the stage's min_res"
            )
        grids.append((h // p, w // p))
    longest = max(r * c for r, c in grids)
    values, masks = [], []
    for img, (rows, cols) in zip(images, grids, strict=True):
        c = img.shape[-1]
        x = img[: rows * p, : cols * p].float()
        patches = x.reshape(rows, p, cols, p, c).permute(0, 2, 1, 3, 4)  # [r, c, p, p, 3]
        patches = patches.reshape(rows * cols, p * p * c)  # (row-in-patch, col, channel)
        pad = longest - rows * cols
        values.append(torch.cat([patches, patches.new_zeros(pad, patches.shape[1])]))
        mask = torch.zeros(longest, dtype=torch.int32, device=img.device)
        mask[: rows * cols] = 1
        masks.append(mask)
    return {
        "pixel_values": torch.stack(values),  # [B, P, p*p*3]
        "pixel_attention_mask": torch.stack(masks),  # [B, P]
        "spatial_shapes": torch.tensor(grids, dtype=torch.long, device=images[0].device),  # [B, 2]
    }


def distill_task(components: Components) -> str:
    """The one registered task whose objective is ``distill`` (``image_und``).

    Raises:
        ConfigError: none, or several (then the trainer names the one a stage mixes).
    """
    from atoken.train.config import _task_registry

    names = [
        e.name for e in _task_registry(components).entries() if e.obj.understanding == "distill"
    ]
    if len(names) != 1:
        raise ConfigError(
            f"semantic distillation needs one registered distill task, found {names or 'none'};"
            " name the task (SemanticDistiller(task=...))"
        )
    return names[0]


class SemanticDistiller:
    """The frozen teacher, the fixed text bank and the distillation loss of ``image_und``.

    Not an ``nn.Module`` on purpose: nothing here is trained, checkpointed or averaged by EMA.

    Args:
        teacher: a Siglip2 vision model (``pooler_output`` is its image embedding); frozen here.
        text: ``[K, D]`` text-bank embeddings (normalised here).
        loss: ``loss(student, teacher, text) -> scalar`` (the ``semantic_distill`` loss).
        components: registries (the task's adapter rebuilds pixels from tokens).
        task: the ``distill`` task whose samples the teacher sees (its registered adapter
            rebuilds them); None: the one registered ``distill`` task (``image_und``).
        student_dim: width of the student's pooled embeddings, checked against ``D`` if given.
        device: where the teacher runs and the text bank lives.
    """

    def __init__(
        self,
        teacher: nn.Module,
        text: Tensor,
        loss: nn.Module,
        *,
        components: Components,
        student_dim: int | None = None,
        device: torch.device | str = "cpu",
        task: str | None = None,
    ) -> None:
        from atoken.train.config import task_spec

        self.task = task if task is not None else distill_task(components)
        self.modality = task_spec(self.task, components).modality
        self.device = torch.device(device)
        self.teacher = teacher.eval().requires_grad_(False).to(self.device)
        self.text = F.normalize(text.detach().float(), dim=-1).to(self.device)  # [K, D]
        self.loss_fn = loss.to(self.device)
        self.adapter = components.adapters.build(self.modality)
        self.patch_size = int(self.teacher.config.patch_size)
        teacher_dim = int(self.teacher.config.hidden_size)
        text_dim = int(self.text.shape[1])
        if teacher_dim != text_dim:
            raise ConfigError(
                f"semantic: the teacher's image embeddings are {teacher_dim}-d but the text"
                f" tower gives {text_dim}-d embeddings; use the text tower of the teacher's model"
            )
        if student_dim is not None and student_dim != text_dim:
            raise ConfigError(
                f"semantic: the student's pooled embeddings are {student_dim}-d (model width) but"
                f" the text tower gives {text_dim}-d embeddings; the text tower (and teacher) must"
                " match the model's embedding width"
            )

    @classmethod
    def from_config(
        cls,
        config: SemanticConfig,
        *,
        components: Components,
        student_dim: int | None = None,
        device: torch.device | str = "cpu",
        task: str | None = None,
    ) -> SemanticDistiller:
        """Load the teacher and text tower, embed the prompt bank, build the registered loss."""
        from atoken.core.errors import AtokenError

        try:
            from atoken.eval.understanding import encode_texts, load_text_encoder
        except ImportError:  # older layout: the towers live in their own module
            from atoken.eval.text_towers import encode_texts, load_text_encoder

        prompts = config.prompt_list()
        teacher = load_teacher(config.teacher)
        try:
            encoder = load_text_encoder(
                config.text_model, config.text_options or None, components=components
            )
            text = encode_texts(encoder, prompts)  # [K, D] normalised, CPU
        except ConfigError:
            raise
        except AtokenError as exc:
            raise ConfigError(f"semantic.text_model: {exc}") from None
        del encoder  # only the bank's embeddings are needed from here on
        loss = components.losses.build("semantic_distill", {"temperature": config.temperature})
        return cls(
            teacher,
            text,
            loss,
            components=components,
            student_dim=student_dim,
            device=device,
            task=task,
        )

    def images(self, batch: Sequence[PatchTokens]) -> list[Tensor]:
        """Frame 0 of each sample's tokens as ``[h, w, 3]`` on the teacher's device."""
        out = []
        for tokens in batch:
            if tokens.modality != self.modality:
                raise ConfigError(
                    f"{self.task}: got {tokens.modality!r} tokens, expected {self.modality!r};"
                    " the SigLIP2 teacher sees that adapter's pictures"
                )
            out.append(self.adapter.from_tokens(tokens).to(self.device))
        return out

    @torch.no_grad()
    def teacher_embeddings(self, batch: Sequence[PatchTokens]) -> Tensor:
        """``[B, D]`` teacher image embeddings (``pooler_output``), float32, no gradient."""
        inputs = teacher_inputs(self.images(batch), self.patch_size)
        dtype = next(self.teacher.parameters()).dtype
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return self.teacher(**inputs).pooler_output.float()  # [B, D]

    def loss(
        self, student: Tensor, batch: Sequence[PatchTokens], teacher: Tensor | None = None
    ) -> Tensor:
        """Scalar ``KL(teacher || student)`` for ``student [B, D]`` (the pooled, unnormalised head
        output of the same forward pass) and the batch's tokens; ``teacher`` may be precomputed."""
        if teacher is None:
            teacher = self.teacher_embeddings(batch)
        return self.loss_fn(student.float(), teacher.to(student.device), self.text)


# ====================================================================== video / 3D understanding
def text_projection(text_dim: int, width: int, seed: int) -> Tensor:
    """A fixed ``[text_dim, width]`` map with orthonormal rows or columns (seeded, no parameters).

    With ``text_dim <= width`` it embeds caption embeddings isometrically (inner products are
    kept exactly); with ``text_dim > width`` it is a random orthogonal projection, which keeps
    inner products approximately (Johnson-Lindenstrauss).
    """
    g = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFF)
    rows, cols = max(text_dim, width), min(text_dim, width)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))  # [r, c]
    q = q.float()
    return q if text_dim >= width else q.T  # [text_dim, width]


class CaptionContrast(nn.Module):
    """The ``video_und`` / ``3d_und`` objective: pooled embeddings against caption embeddings.

    Captions (``meta["caption"]`` of each sample's tokens) go through the frozen text tower
    (embeddings cached per caption), optionally through the fixed `text_projection` to the
    model's width, and are compared with the student's pooled embeddings by the registered loss
    (the SigLIP sigmoid loss: matched pairs on the diagonal of the batch). The loss's own
    parameters (learnable scale and bias) are this module's parameters.

    Args:
        encoder: a text tower (``encode(list[str]) -> [B, D]``, ``dim``); frozen, not a child.
        loss: ``loss(embeddings [B, W], texts [B, W]) -> scalar``.
        modality: ``video`` or ``mesh3d`` (for messages).
        student_dim: the model's embedding width W.
        projection: ``auto`` (map when widths differ) or ``none`` (widths must match).
        seed: seed of the projection.
    """

    def __init__(
        self,
        encoder,
        loss: nn.Module,
        *,
        modality: str,
        student_dim: int,
        projection: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.__dict__["encoder"] = encoder  # frozen and never a child (not moved, saved or trained)
        self.loss_fn = loss
        self.modality = modality
        self._cache: dict[str, Tensor] = {}
        text_dim = int(self._encode(["a"]).shape[1])
        self.text_dim = text_dim
        if text_dim != student_dim and projection == "none":
            raise ConfigError(
                f"semantic.{modality}: the model's pooled embeddings are {student_dim}-d but the"
                f" text tower gives {text_dim}-d embeddings; use projection = 'auto' or a text"
                " tower of the model's width"
            )
        self.proj: Tensor | None
        if text_dim != student_dim:
            self.register_buffer(
                "proj", text_projection(text_dim, student_dim, seed), persistent=False
            )
        else:
            self.proj = None

    @classmethod
    def from_config(
        cls,
        config,
        *,
        modality: str,
        fallback_text_model: str | None,
        components: Components,
        student_dim: int,
        seed: int = 0,
    ) -> CaptionContrast:
        """Build from a `ContrastiveConfig` (``[semantic.video]``): text tower and loss."""
        from atoken.core.errors import AtokenError
        from atoken.eval.text_towers import load_text_encoder

        name = config.text_model or fallback_text_model
        try:
            encoder = load_text_encoder(name, config.text_options or None, components=components)
            loss = components.losses.build(config.loss, config.loss_options or None)
        except ConfigError:
            raise
        except AtokenError as exc:
            raise ConfigError(f"semantic.{modality}: {exc}") from None
        return cls(
            encoder,
            loss,
            modality=modality,
            student_dim=student_dim,
            projection=config.projection,
            seed=seed,
        )

    def _encode(self, texts: list[str]) -> Tensor:
        with torch.no_grad():
            return F.normalize(self.encoder.encode(list(texts)).detach().float().cpu(), dim=-1)

    def text_embeddings(self, captions: Sequence[str]) -> Tensor:
        """``[B, W]`` caption embeddings (normalised; projected when widths differ)."""
        new = sorted({c for c in captions if c not in self._cache})
        if new:
            for text, emb in zip(new, self._encode(new), strict=True):
                self._cache[text] = emb
        out = torch.stack([self._cache[c] for c in captions])  # [B, D]
        if self.proj is not None:
            out = out.to(self.proj.device) @ self.proj  # [B, W]
        return F.normalize(out, dim=-1)

    def loss(self, student: Tensor, batch: Sequence[PatchTokens]) -> Tensor:
        """Scalar loss for ``student [B, W]`` (pooled head output) and the batch's captions."""
        captions = []
        for tokens in batch:
            caption = tokens.meta.get("caption")
            if not caption:
                raise ConfigError(
                    f"{self.modality} understanding: a sample has no caption (its source must"
                    " give one: a .txt next to each file or a txt member in shards)"
                )
            captions.append(str(caption))
        texts = self.text_embeddings(captions).to(student.device)
        return self.loss_fn(student.float(), texts)


# ====================================================================== registrations
def _check_distill(section, semantic, name: str | None) -> str | None:
    """What ``[semantic]`` lacks for ``distill`` (phase two), or None."""
    if semantic is None:
        return "a [semantic] section (teacher = SigLIP2 directory, text_model, prompts)"
    missing = [k for k in ("teacher", "text_model", "prompts") if getattr(semantic, k) is None]
    if missing:
        return f"[semantic] {', '.join(missing)} (teacher = SigLIP2 directory, text_model, prompts)"
    return None


def _build_distill(section: SemanticConfig, context: UnderstandingContext) -> SemanticDistiller:
    return SemanticDistiller.from_config(
        section,
        components=context.components,
        student_dim=context.width,
        device=context.device,
        task=context.tasks[0],
    )


def _check_caption_contrast(section, semantic, name: str | None) -> str | None:
    """What ``[semantic.<name>]`` lacks for ``caption_contrast`` (phase two), or None."""
    if section is None:
        return (
            f"a [semantic.{name}] section (text_model = a registered text tower such as"
            " 'minilm', loss = 'siglip_sigmoid'); captions come from a .txt next to each sample"
        )
    if section.text_model is None and semantic.text_model is None:
        return f"[semantic.{name}] text_model (or [semantic] text_model)"
    return None


def _build_caption_contrast(section, context: UnderstandingContext) -> CaptionContrast:
    semantic = context.semantic
    return CaptionContrast.from_config(
        section,
        modality=context.section,
        fallback_text_model=semantic.text_model if semantic is not None else None,
        components=context.components,
        student_dim=context.width,
        seed=context.seed,
    ).to(context.device)


@hookimpl
def atoken_register_understanding_objectives(registry) -> None:
    """atoken's understanding objectives: ``distill`` (``image_und``) and ``caption_contrast``
    (``video_und``, ``3d_und``)."""
    registry.add(
        "distill",
        UnderstandingSpec(build=_build_distill, check=_check_distill),
        description="KL distillation from a frozen SigLIP2 teacher ([semantic])",
    )
    registry.add(
        "caption_contrast",
        UnderstandingSpec(
            build=_build_caption_contrast,
            check=_check_caption_contrast,
            sections=True,
            captions=True,
        ),
        description="pooled embeddings against caption embeddings ([semantic.<section>])",
    )
