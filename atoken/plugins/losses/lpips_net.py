"""LPIPS v0.1 in plain torch: an ImageNet trunk (VGG16 or AlexNet ``features``) plus the learned
linear heads, with no dependency on the ``lpips`` package or torchvision.

``d(x, y) = Σ_l mean_hw( w_l · (n(Φ_l(s(x))) − n(Φ_l(s(y))))² )`` where ``s`` is LPIPS' input
scaling, ``Φ_l`` the trunk's l-th ReLU stage, ``n`` the unit-norm over channels and ``w_l`` the
non-negative 1x1 head of stage l. Weights come from `trunk_weights` (``trunk_state`` and
``heads_state``; ``atoken weights lpips`` writes both into atoken's cache).

References: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"
(LPIPS, 2018; the v0.1 definition and its input scaling constants); the ``features`` layouts of
torchvision's VGG16 and AlexNet (Simonyan & Zisserman 2014; Krizhevsky 2014 "one weird trick").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: VGG16 ``features``: conv widths (3x3, padding 1, each followed by a ReLU) and max-pools
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
#: exclusive end index in ``features`` of each LPIPS stage (after its ReLU)
STAGE_ENDS = {"vgg": (4, 9, 16, 23, 30), "alex": (2, 5, 8, 10, 12)}
#: channels of each stage (the heads' input widths)
STAGE_CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(width, int(item), kernel_size=3, padding=1), nn.ReLU()]
            width = int(item)
    return nn.Sequential(*layers)  # 30 layers: indices 0..29


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
    )  # 12 layers (torchvision's final max-pool is not an LPIPS stage)


class ScalingLayer(nn.Module):
    """LPIPS' input scaling of ``[B, 3, H, W]`` in [-1, 1] towards ImageNet statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale  # [B, 3, H, W]


class Trunk(nn.Module):
    """An ImageNet ``features`` stack that returns its five LPIPS stage activations."""

    def __init__(self, net: str) -> None:
        super().__init__()
        if net not in STAGE_ENDS:
            raise ValueError(f"LPIPS trunk must be one of {sorted(STAGE_ENDS)}, got {net!r}")
        self.net = net
        self.features = _vgg16_features() if net == "vgg" else _alexnet_features()

    def forward(self, x: Tensor) -> list[Tensor]:
        outs, start = [], 0
        for end in STAGE_ENDS[self.net]:
            x = self.features[start:end](x)  # [B, C_l, H_l, W_l]
            outs.append(x)
            start = end
        return outs


def _unit_norm(feats: Tensor, eps: float = 1e-10) -> Tensor:
    return feats / (feats.pow(2).sum(1, keepdim=True).sqrt() + eps)  # [B, C, H, W]


class LPIPSNetwork(nn.Module):
    """LPIPS distance ``(pred, target) [B, 3, H, W] in [-1, 1] -> [B, 1, 1, 1]``.

    Args:
        net: ``vgg`` or ``alex``.
        trunk: ``features.{i}.weight/bias`` (torchvision names); None keeps the random init.
        heads: ``lin{l}.weight`` ``[1, C_l, 1, 1]``; None uses equal heads ``1 / C_l`` (tests).
    """

    def __init__(
        self, net: str = "vgg", trunk: dict[str, Tensor] | None = None, heads=None
    ) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = Trunk(net)
        self.lins = nn.ModuleList(
            nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in STAGE_CHANNELS[net]
        )
        if trunk is not None:
            own = self.net.features.state_dict()
            missing = sorted(k for k in own if f"features.{k}" not in trunk)
            if missing:
                raise ValueError(
                    f"{net} trunk weights lack {', '.join(missing[:4])}; expected torchvision's"
                    f" features.* names (rebuild them with `atoken weights lpips`)"
                )
            self.net.features.load_state_dict({k: trunk[f"features.{k}"] for k in own})
        with torch.no_grad():
            for i, (lin, c) in enumerate(zip(self.lins, STAGE_CHANNELS[net], strict=True)):
                if heads is None:
                    lin.weight.fill_(1.0 / c)
                    continue
                weight = heads.get(f"lin{i}.weight")
                if weight is None or tuple(weight.shape) != (1, c, 1, 1):
                    got = None if weight is None else tuple(weight.shape)
                    raise ValueError(
                        f"LPIPS {net} head lin{i}.weight must be [1, {c}, 1, 1], got {got}"
                        " (rebuild them with `atoken weights lpips`)"
                    )
                lin.weight.copy_(weight)

    def forward(self, pred: Tensor, target: Tensor, normalize: bool = False) -> Tensor:
        """``normalize=True`` takes inputs in [0, 1] (as the lpips package does)."""
        if normalize:
            pred, target = 2 * pred - 1, 2 * target - 1
        fp = self.net(self.scaling_layer(pred))
        ft = self.net(self.scaling_layer(target))
        total = pred.new_zeros(pred.shape[0], 1, 1, 1)
        for lin, a, b in zip(self.lins, fp, ft, strict=True):
            diff = (_unit_norm(a) - _unit_norm(b)).pow(2)  # [B, C_l, H_l, W_l]
            total = total + lin(diff).mean((2, 3), keepdim=True)  # [B, 1, 1, 1]
        return total
