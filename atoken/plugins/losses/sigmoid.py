"""The SigLIP pairwise sigmoid loss, with a learnable logit scale and bias.

Every image-text pair of the batch is a binary problem: matched pairs (the diagonal) are
positives, all others negatives. With L2-normalised ``x_i`` (images) and ``y_j`` (texts),

    loss = -1/|B| * sum_i sum_j log sigmoid(z_ij * (t * x_i . y_j + b)),   z_ij = 1 if i == j else -1

where ``t = exp(t')`` with ``t' = log 10`` and ``b = -10`` at initialisation. The sum over pairs is
divided by the batch size, not by the number of pairs, as in the paper's pseudo-code. AToken uses
it for the video and 3D semantic objectives.

References: X. Zhai, B. Mustafa, A. Kolesnikov, L. Beyer, "Sigmoid Loss for Language Image
Pre-Training" (SigLIP, ICCV 2023), Algorithm 1; AToken (arXiv 2509.14476), semantic losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from atoken.core.errors import InputError


class SigLIPSigmoidOptions(BaseModel):
    """Options of the ``siglip_sigmoid`` loss.

    Attributes:
        init_log_scale: initial t' (the scale is ``exp(t')``); the paper uses log 10.
        init_bias: initial bias b; the paper uses -10.
        learnable: train t' and b with the model (False keeps them fixed buffers).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    init_log_scale: float = math.log(10.0)
    init_bias: float = -10.0
    learnable: bool = True


class SigLIPSigmoidLoss(nn.Module):
    """Pairwise sigmoid loss over a batch of matched (image, text) embeddings.

    Args:
        options: initial scale and bias, and whether they are learned.
    """

    def __init__(self, options: SigLIPSigmoidOptions | None = None) -> None:
        super().__init__()
        self.options = options or SigLIPSigmoidOptions()
        log_scale = torch.tensor(float(self.options.init_log_scale))
        bias = torch.tensor(float(self.options.init_bias))
        if self.options.learnable:
            self.log_scale = nn.Parameter(log_scale)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("log_scale", log_scale)
            self.register_buffer("bias", bias)

    def logits(self, images: Tensor, texts: Tensor) -> Tensor:
        """``exp(t') * x_i . y_j + b`` for every pair, ``[B, B]``."""
        x = F.normalize(images.float(), dim=-1)  # [B, D]
        y = F.normalize(texts.float(), dim=-1)  # [B, D]
        return self.log_scale.exp() * x @ y.T + self.bias  # [B, B]

    def forward(self, images: Tensor, texts: Tensor) -> Tensor:
        """Scalar loss; row i of ``images`` and row i of ``texts`` are the matched pair.

        Args:
            images: ``[B, D]`` image (or video / 3D) embeddings.
            texts: ``[B, D]`` text embeddings.
        """
        if images.ndim != 2 or texts.ndim != 2 or images.shape != texts.shape:
            raise InputError(
                "siglip_sigmoid: images and texts must both be [B, D] with matching rows, got"
                f" {tuple(images.shape)} and {tuple(texts.shape)}"
            )
        logits = self.logits(images, texts)  # [B, B]
        n = logits.shape[0]
        labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1  # z_ij: +1 / -1
        return -F.logsigmoid(labels * logits).sum() / n
