"""The training objective of one batch: ``rec_weight * Σ w_i L_i + sem_weight * L_sem + kl_weight * KL``.

Reconstruction batches (``*_rec`` tasks) weigh the reconstruction losses (those a loss's
``modalities`` admit for the batch's adapter), understanding batches
(``*_und``) the semantic loss the trainer computes (`atoken.train.semantic`); the quantizer's KL
term applies to every batch. Losses come from the loss registry by name, each validated against
its own options model.

References: AToken (arXiv 2509.14476), "Losses": 0.2·L_rec + 1.0·L_sem + 1e-8·L_KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atoken.core.loss import LossInputs
from atoken.core.plugins import Components
from atoken.core.tokenizer import TokenizerOutput
from atoken.core.tokens import SparseTokens
from atoken.train.config import LossSpec


@dataclass
class ObjectiveResult:
    total: Tensor
    terms: dict[str, float]


class ReconstructionObjective(nn.Module):
    """Weighted reconstruction losses plus the KL regulariser.

    Args:
        losses: (name, weight, options) specs resolved in ``components.losses``.
        components: plugin registries.
        rec_weight: weight of the summed reconstruction terms (paper: 0.2).
        kl_weight: weight of the quantizer's KL term (paper: 1e-8).
        sem_weight: weight of the semantic loss on understanding batches (paper: 1.0).
        render: ``render(pred, target) -> (pred_images, target_images)`` for perceptual losses.
    """

    def __init__(
        self,
        losses: list[LossSpec],
        components: Components,
        *,
        rec_weight: float,
        kl_weight: float,
        sem_weight: float = 1.0,
        render=None,
    ) -> None:
        super().__init__()
        self.names = [spec.name for spec in losses]
        self.weights = [spec.weight for spec in losses]
        self.modalities = [spec.modalities for spec in losses]
        self.losses = nn.ModuleList(
            components.losses.build(spec.name, spec.options) for spec in losses
        )
        self.rec_weight = rec_weight
        self.kl_weight = kl_weight
        self.sem_weight = sem_weight
        self.render = render

    def forward(
        self,
        out: TokenizerOutput,
        target: SparseTokens,
        *,
        reconstruct: bool = True,
        semantic: Tensor | None = None,
        modality: str | None = None,
    ) -> ObjectiveResult:
        """Total loss and its logged terms.

        Args:
            out: the model's forward pass.
            target: the input tokens (reconstruction target).
            reconstruct: add the weighted reconstruction losses (reconstruction batches).
            semantic: the semantic loss of an understanding batch, weighted by ``sem_weight``
                and logged as ``sem``.
            modality: the batch's adapter; losses whose ``modalities`` leave it out are skipped
                (None: every loss applies).
        """
        terms: dict[str, float] = {}
        total = self.kl_weight * out.latents.aux_loss.float()
        if reconstruct:
            inputs = LossInputs(
                pred=out.reconstruction,
                target=target,
                mean=out.latents.mean,
                logvar=out.latents.logvar,
                render=(lambda: self.render(out.reconstruction, target))
                if self.render is not None
                else None,
            )
            rec = out.reconstruction.feats.new_zeros((), dtype=torch.float32)
            for name, weight, loss, only in zip(
                self.names, self.weights, self.losses, self.modalities, strict=True
            ):
                if modality is not None and only is not None and modality not in only:
                    continue
                value = loss(inputs)
                terms[name] = float(value.detach())
                rec = rec + weight * value
            total = total + self.rec_weight * rec
        if semantic is not None:
            terms["sem"] = float(semantic.detach())
            total = total + self.sem_weight * semantic.float()
        terms["kl"] = float(out.latents.aux_loss.detach())
        terms["loss"] = float(total.detach())
        return ObjectiveResult(total, terms)
