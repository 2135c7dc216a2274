"""Token-space reconstruction losses: ``l1`` and ``mse`` (masked, averaged over patches).

The KL regulariser is the ``kl`` quantizer's (`atoken.plugins.quantizers.kl`), not a loss.

References: AToken (arXiv 2509.14476) "Losses": L1 averaged over patches.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from atoken.core.loss import LossInputs


class L1Options(BaseModel):
    """Options of ``l1``.

    Attributes:
        mask_padding: ignore zero-padded frames (an image fills 1 of a patch's 4 frames).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    mask_padding: bool = True


def patch_mean(err: Tensor, inputs: LossInputs, mask_padding: bool) -> Tensor:
    """``err [N, P]`` averaged per patch over its real values (padded frames left out when
    ``mask_padding``), then over patches: every token weighs the same."""
    mask = inputs.value_mask() if mask_padding else None
    if mask is None:
        return err.mean()
    per_patch = (err * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # [N]
    return per_patch.mean()


class L1Loss(nn.Module):
    """Mean absolute error per patch, averaged over patches (every token weighs the same)."""

    def __init__(self, options: L1Options | None = None) -> None:
        super().__init__()
        self.options = options or L1Options()

    @staticmethod
    def error(diff: Tensor) -> Tensor:
        return diff.abs()

    def forward(self, inputs: LossInputs) -> Tensor:
        diff = inputs.pred.feats.float() - inputs.target.feats.float()  # [N, P]
        return patch_mean(self.error(diff), inputs, self.options.mask_padding)


class MSELoss(L1Loss):
    """Mean squared error per patch, averaged over patches (the error PSNR measures); options
    as ``l1``."""

    @staticmethod
    def error(diff: Tensor) -> Tensor:
        return diff.square()
