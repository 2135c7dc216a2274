"""Token geometry: the size of one space-time patch and its colour channels.

A model reads patch rows of ``token_dim = frames * rows * cols * channels`` values (AToken:
``4 x 16 x 16 x 3 = 3072``). The model config owns the geometry (`ModelConfig.geometry`, from
its ``patch_size`` and ``channels``); adapters receive it when they are built (through their
`atoken.core.adapter_context.AdapterContext`) and read every size from it, never from module
constants, so a model of another geometry is served, or refused at build time with one line.

References: AToken (arXiv 2509.14476) 4 x 16 x 16 space-time patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from atoken.core.errors import InputError

#: AToken's patch: (frames, rows, cols)
DEFAULT_PATCH = (4, 16, 16)
#: AToken's colour channels per pixel (RGB)
DEFAULT_CHANNELS = 3


@dataclass(frozen=True)
class TokenGeometry:
    """The patch geometry one model reads and writes.

    Attributes:
        patch: ``(frames, rows, cols)`` of one space-time patch.
        channels: colour channels per pixel.
    """

    patch: tuple[int, int, int] = DEFAULT_PATCH
    channels: int = DEFAULT_CHANNELS

    def __post_init__(self) -> None:
        patch = tuple(self.patch)
        if len(patch) != 3 or not all(
            isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch
        ):
            raise InputError(
                f"token geometry patch must be three positive integers (frames, rows, cols),"
                f" got {self.patch!r}"
            )
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise InputError(f"token geometry channels must be an integer, got {self.channels!r}")
        if self.channels <= 0:
            raise InputError(f"token geometry channels must be positive, got {self.channels}")
        object.__setattr__(self, "patch", patch)

    @property
    def frames(self) -> int:
        """Frames per patch (the temporal side)."""
        return self.patch[0]

    @property
    def rows(self) -> int:
        """Pixel rows per patch."""
        return self.patch[1]

    @property
    def cols(self) -> int:
        """Pixel columns per patch."""
        return self.patch[2]

    @property
    def frame_dim(self) -> int:
        """Values of one frame of a patch (``rows * cols * channels``; AToken: 768)."""
        return self.rows * self.cols * self.channels

    @property
    def token_dim(self) -> int:
        """Values per patch row (``frames * rows * cols * channels``; AToken: 3072)."""
        return math.prod(self.patch) * self.channels

    def describe(self) -> str:
        """``"4x16x16 x 3 channels"``, for messages."""
        return f"{'x'.join(map(str, self.patch))} x {self.channels} channels"

    def require(
        self,
        who: str,
        *,
        patch: tuple[int | None, int | None, int | None] = (None, None, None),
        channels: int | None = None,
    ) -> TokenGeometry:
        """This geometry, checked against what ``who`` (an adapter) can serve.

        Args:
            who: the adapter's name, for the message.
            patch: the patch sides it needs (None: any).
            channels: the channel count it needs (None: any).

        Raises:
            InputError: one line naming the model's geometry and what ``who`` serves.
        """
        fits = all(w is None or w == p for w, p in zip(patch, self.patch, strict=True))
        if fits and (channels is None or channels == self.channels):
            return self
        want = "x".join("N" if p is None else str(p) for p in patch)
        want_c = "any number of" if channels is None else str(channels)
        raise InputError(
            f"adapter {who!r} cannot serve a model of patch geometry {self.describe()}; it"
            f" serves {want} patches of {want_c} channels (use a model of that geometry)"
        )
