"""Options of the perceptual losses (kept apart so registering them imports no network code)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class PerceptualOptions(BaseModel):
    """Options shared by ``lpips`` and ``gram``.

    Attributes:
        net: ImageNet trunk (``vgg`` as in the paper's usual choice, or ``alex``; gram: vgg only).
        weights: trunk weights file (default: found offline, see trunk_weights).
        random_trunk: use a randomly initialised trunk (tests only; numbers are meaningless).
        size: side of the square resize before the network; ``"native"``: each image at its
            own resolution (no resize), as LPIPS is measured.
        window: compare one random ``window`` x ``window`` crop (the same for prediction and
            target) of each image instead of the whole image: the trunk's cost (about 20 µs a
            pixel for VGG16 forward and backward on a CPU core pair) then no longer grows with
            the batch's pixels. Drawn from torch's global generator (checkpointed with a run).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    net: Literal["vgg", "alex"] = "vgg"
    weights: str | None = None
    random_trunk: bool = False
    size: Annotated[int, Field(ge=32)] | Literal["native"] = 224
    window: int | None = Field(default=None, ge=32)


class GramOptions(PerceptualOptions):
    """Options of ``gram``: which VGG stages (1..5 = relu1_2 .. relu5_3) to compare."""

    net: Literal["vgg"] = "vgg"
    layers: tuple[int, ...] = (1, 2, 3, 4, 5)
