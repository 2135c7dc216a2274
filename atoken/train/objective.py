"""The training objective of one batch: ``rec_weight * Σ w_i L_i + sem_weight * L_sem + kl_weight * KL``.

Reconstruction batches (``*_rec`` tasks) weigh the reconstruction losses (those a loss's
``modalities`` admit for the batch's adapter), understanding batches
(``*_und``) the semantic loss the trainer computes (`atoken.train.semantic`); the quantizer's KL
term applies to every batch. Losses come from the loss registry by name, each validated against
its own options model.

The KL has one owner, the quantizer: ``out.latents.aux_loss`` (the ``kl`` quantizer's KL of the
posterior to N(0, I), zero for FSQ) is weighted by ``kl_weight`` and logged as ``kl``. No loss
computes it again, and no loss may log under the objective's own names (`RESERVED_TERMS`).

References: AToken (arXiv 2509.14476), "Losses": 0.2·L_rec + 1.0·L_sem + 1e-8·L_KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atoken.core.config import ConfigError
from atoken.core.loss import LossInputs
from atoken.core.plugins import Components
from atoken.core.tokenizer import TokenizerOutput
from atoken.core.tokens import SparseTokens
from atoken.train.config import LossSpec

#: logged terms the objective itself writes (a loss of one of these names would overwrite them)
RESERVED_TERMS = ("kl", "sem", "loss")


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
        clash = sorted({spec.name for spec in losses} & set(RESERVED_TERMS))
        if clash:
            raise ConfigError(
                f"losses {clash} clash with the objective's own terms {list(RESERVED_TERMS)}:"
                " the KL is the quantizer's (set kl_weight), sem the semantic loss (sem_weight),"
                " loss the total; remove or rename those losses"
            )
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
        kl = out.latents.aux_loss  # the quantizer's KL (its one owner)
        terms: dict[str, float] = {}
        total = self.kl_weight * kl.float()
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
        terms["kl"] = float(kl.detach())  # after the losses, as logs have always listed it
        terms["loss"] = float(total.detach())
        return ObjectiveResult(total, terms)
