"""Perceptual reconstruction losses: ``lpips`` and ``gram`` (VGG features).

``lpips`` is LPIPS v0.1 (`lpips_net`, plain torch: no ``lpips`` package, no torchvision) on an
ImageNet trunk and learned linear heads loaded offline (see `trunk_weights`; ``atoken weights
lpips`` builds them). ``gram`` compares Gram matrices
``G(F) = F Fᵀ / (C·H·W)`` of the same trunk's activations: ``Σ_l ‖G(Φ_l(x)) − G(Φ_l(x̂))‖²``.
Both take the pixel views of a batch (``LossInputs.images()``), resize each to 224×224 (the
paper's choice; option ``size``) or keep each at its own resolution (``size = "native"``, how LPIPS
is measured), optionally compare one random window of each (``window``: a CPU budget), and
average over samples.

References: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"
(LPIPS, 2018); Gatys et al., "Image Style Transfer Using CNNs" (Gram matrices, 2016); AToken
(arXiv 2509.14476) loss weights ``1·L1 + 10·LPIPS + 1000·Gram`` on 224² inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atoken.core.loss import LossInputs
from atoken.plugins.losses.lpips_net import LPIPSNetwork
from atoken.plugins.losses.options import GramOptions, PerceptualOptions
from atoken.plugins.losses.trunk_weights import heads_state, trunk_state


def resize_batch(images: list[Tensor], size: int = 224) -> Tensor:
    """List of ``[H, W, 3]`` in [-1, 1] -> ``[B, 3, size, size]`` (bilinear, antialiased)."""
    out = [
        F.interpolate(
            img.permute(2, 0, 1)[None].float(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        for img in images
    ]
    return torch.cat(out, 0)  # [B, 3, S, S]


def random_windows(
    preds: list[Tensor], targets: list[Tensor], size: int
) -> tuple[list[Tensor], list[Tensor]]:
    """The same random ``size`` x ``size`` crop (or the whole side, if shorter) of each pair."""
    out_p, out_t = [], []
    for p, t in zip(preds, targets, strict=True):
        h, w = p.shape[:2]
        wh, ww = min(size, h), min(size, w)
        top = int(torch.randint(0, h - wh + 1, ()))
        left = int(torch.randint(0, w - ww + 1, ()))
        out_p.append(p[top : top + wh, left : left + ww])
        out_t.append(t[top : top + wh, left : left + ww])
    return out_p, out_t


def network_batches(
    preds: list[Tensor], targets: list[Tensor], options: PerceptualOptions
) -> list[tuple[Tensor, Tensor]]:
    """What the trunk sees: ``[B, 3, S, S]`` pairs, one batch of ``size`` resizes, or one pair
    per image at its own resolution (``size = "native"``); after the optional random windows."""
    if options.window is not None:
        preds, targets = random_windows(preds, targets, options.window)
    if options.size == "native":
        return [
            (p.permute(2, 0, 1)[None].float(), t.permute(2, 0, 1)[None].float())
            for p, t in zip(preds, targets, strict=True)
        ]
    return [(resize_batch(preds, options.size), resize_batch(targets, options.size))]


def _lpips_model(options: PerceptualOptions, heads: bool = True) -> LPIPSNetwork:
    """The frozen LPIPS network; ``random_trunk``: random trunk and equal heads (tests only)."""
    if options.random_trunk:
        model = LPIPSNetwork(options.net)
    else:
        model = LPIPSNetwork(
            options.net,
            trunk_state(options.net, options.weights),
            heads_state(options.net) if heads else None,
        )
    model.eval().requires_grad_(False)
    return model


class LPIPSLoss(nn.Module):
    """LPIPS distance between predicted and target pixel views (mean over samples)."""

    def __init__(self, options: PerceptualOptions | None = None) -> None:
        super().__init__()
        self.options = options or PerceptualOptions()
        self.model = _lpips_model(self.options)

    def distance(self, pred: Tensor, target: Tensor) -> Tensor:
        """``[B, 3, S, S]`` pairs in [-1, 1] -> ``[B]`` LPIPS."""
        return self.model(pred, target, normalize=False).flatten()

    def forward(self, inputs: LossInputs) -> Tensor:
        preds, targets = inputs.images()
        if not preds:
            return inputs.pred.feats.new_zeros((), dtype=torch.float32)
        dists = [self.distance(p, t) for p, t in network_batches(preds, targets, self.options)]
        return torch.cat(dists).mean()

    def train(self, mode: bool = True) -> LPIPSLoss:  # the network stays frozen in eval mode
        super().train(mode)
        self.model.eval()
        return self


def gram(features: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, C]`` normalised by C·H·W."""
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class GramLoss(nn.Module):
    """Squared Frobenius distance of VGG Gram matrices, summed over layers, mean over samples."""

    def __init__(self, options: GramOptions | None = None) -> None:
        super().__init__()
        self.options = options or GramOptions()
        bad = [layer for layer in self.options.layers if not 1 <= layer <= 5]
        if bad:
            raise ValueError(f"gram layers must be in 1..5 (relu1_2 .. relu5_3), got {bad}")
        lp = _lpips_model(self.options, heads=False)  # Gram reads the trunk only
        self.scaling = lp.scaling_layer
        self.net = lp.net

    def forward(self, inputs: LossInputs) -> Tensor:
        preds, targets = inputs.images()
        if not preds:
            return inputs.pred.feats.new_zeros((), dtype=torch.float32)
        totals = []
        for p, t in network_batches(preds, targets, self.options):
            x = self.net(self.scaling(p))
            with torch.no_grad():
                y = self.net(self.scaling(t))
            total = x[0].new_zeros(p.shape[0], dtype=torch.float32)
            for layer in self.options.layers:
                diff = gram(x[layer - 1]) - gram(y[layer - 1])  # [B, C, C]
                total = total + diff.pow(2).sum((1, 2))
            totals.append(total)
        return torch.cat(totals).mean()

    def train(self, mode: bool = True) -> GramLoss:
        super().train(mode)
        self.net.eval()
        return self
