"""Two-layer MLP with tanh-approximated GELU."""

from __future__ import annotations

from torch import Tensor, nn


class Mlp(nn.Module):
    """``Linear -> GELU(tanh) -> Linear``; parameters live at ``mlp.0`` and ``mlp.2``.

    Args:
        width: input and output channels.
        hidden: hidden channels.
        bias: whether the linears have biases.
    """

    def __init__(self, width: int, hidden: int, *, bias: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden, bias=bias),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden, width, bias=bias),
        )

    def forward(self, x: Tensor) -> Tensor:  # [N, C] -> [N, C]
        return self.mlp(x)
