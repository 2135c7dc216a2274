"""Options of the perceptual losses (kept apart so registering them imports no network code)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PerceptualOptions(BaseModel):
    """Options shared by ``lpips`` and ``gram``.

    Attributes:
        net: ImageNet trunk (``vgg`` as in the paper's usual choice, or ``alex``; gram: vgg only).
        weights: trunk weights file (default: found offline, see trunk_weights).
        random_trunk: use a randomly initialised trunk (tests only; numbers are meaningless).
        size: side of the square resize before the network.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    net: Literal["vgg", "alex"] = "vgg"
    weights: str | None = None
    random_trunk: bool = False
    size: int = Field(default=224, ge=32)


class GramOptions(PerceptualOptions):
    """Options of ``gram``: which VGG stages (1..5 = relu1_2 .. relu5_3) to compare."""

    net: Literal["vgg"] = "vgg"
    layers: tuple[int, ...] = (1, 2, 3, 4, 5)
