"""Semantic distillation: match a frozen teacher's image-to-text similarity distribution.

For every image the teacher (frozen SigLIP2 image tower) and the student (atoken's pooling head)
each give a distribution over a shared set of text embeddings (the same frozen text tower):
``p = softmax(s * cos(image, texts) / T)``. The loss is ``KL(p_teacher || p_student)``, summed over
texts and averaged over the batch: the student is pulled towards every text the teacher finds
likely (mode-covering), the direction of Hinton-style knowledge distillation.

References: AToken (arXiv 2509.14476), semantic loss for images (KL to the SigLIP2 teacher's
image-text similarity distribution, temperature 2); G. Hinton, O. Vinyals, J. Dean, "Distilling
the Knowledge in a Neural Network" (2015) for the temperature and the T^2 factor.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from atoken.core.errors import InputError

#: log of the logit scale of the AToken release: logits = exp(4.8438) * cos + bias
RELEASE_LOG_SCALE = 4.8438


class SemanticDistillOptions(BaseModel):
    """Options of the ``semantic_distill`` loss.

    Attributes:
        temperature: softmax temperature T applied to both sides' logits (paper: 2).
        log_scale: log of the logit scale s; logits are ``exp(log_scale) * cos`` (the release's
            4.8438, i.e. s ~ 127). A logit bias would cancel in the softmax, so there is none.
        t2_scaling: multiply the loss by T^2, as Hinton et al. do to keep gradient magnitudes
            independent of T (off: the paper states only the temperature).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=2.0, gt=0)
    log_scale: float = RELEASE_LOG_SCALE
    t2_scaling: bool = False


def _check(student: Tensor, teacher: Tensor, text: Tensor) -> None:
    for name, t in (("student", student), ("teacher", teacher), ("text", text)):
        if not isinstance(t, Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise InputError(
                f"semantic_distill: {name} embeddings must be [rows, dim], got {shape}"
            )
    if student.shape[0] != teacher.shape[0]:
        raise InputError(
            f"semantic_distill: {student.shape[0]} student rows but {teacher.shape[0]} teacher rows;"
            " both must embed the same images"
        )
    for name, t in (("student", student), ("teacher", teacher)):
        if t.shape[1] != text.shape[1]:
            raise InputError(
                f"semantic_distill: {name} embeddings have dim {t.shape[1]} but text embeddings"
                f" have dim {text.shape[1]}; both sides are compared against the same text tower"
            )


class SemanticDistillLoss(nn.Module):
    """``KL(teacher || student)`` between image-to-text similarity distributions.

    Args:
        options: temperature, logit scale and the optional T^2 factor.
    """

    def __init__(self, options: SemanticDistillOptions | None = None) -> None:
        super().__init__()
        self.options = options or SemanticDistillOptions()

    def logits(self, images: Tensor, text: Tensor) -> Tensor:
        """``exp(log_scale) * cos(images, text) / T`` in float32, ``[B, K]``."""
        scale = math.exp(self.options.log_scale) / self.options.temperature
        x = F.normalize(images.float(), dim=-1)  # [B, D]
        y = F.normalize(text.float(), dim=-1)  # [K, D]
        return scale * x @ y.T  # [B, K]

    def forward(self, student: Tensor, teacher: Tensor, text: Tensor) -> Tensor:
        """Scalar loss.

        Args:
            student: ``[B, D]`` atoken image embeddings (gradients flow here).
            teacher: ``[B, D]`` frozen teacher image embeddings (detached).
            text: ``[K, D]`` frozen text embeddings shared by both sides (detached).

        Returns:
            ``sum_k p_t log(p_t / p_s)`` averaged over the B images (0 when they agree).
        """
        _check(student, teacher, text)
        text = text.detach()
        log_p_s = F.log_softmax(self.logits(student, text), dim=-1)  # [B, K]
        log_p_t = F.log_softmax(self.logits(teacher.detach(), text), dim=-1)  # [B, K]
        # kl_div(input=log q, target=log p, log_target) = sum p (log p - log q): KL(teacher || student)
        loss = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        if self.options.t2_scaling:
            loss = loss * self.options.temperature**2
        return loss
