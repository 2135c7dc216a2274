"""What reconstruction losses receive: predicted and target tokens, plus pixel views on demand.

Token-space losses (L1) read ``pred`` / ``target``. Perceptual losses (LPIPS, Gram) need pictures;
``images()`` asks the adapters (through the callback the trainer installs) to turn each sample
with a pixel view into ``[H, W, 3]`` tensors, once, and caches them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from atoken.core.tokens import SparseTokens

ImagePairs = tuple[list[Tensor], list[Tensor]]


@dataclass
class LossInputs:
    """Inputs of a reconstruction loss for one batch.

    Attributes:
        pred: decoded patch values, ``feats [N, P]``.
        target: input patch values, ``feats [N, P]`` (same layout).
        render: callback giving (predicted images, target images) of the samples that have a pixel
            view (``[H, W, 3]`` in [-1, 1]); None when no adapter provides one.
        patch_frames: frames per patch (4), to mask padded frames of samples whose meta says
            ``valid_frames < patch_frames`` (images: 1 real frame of 4).
        mean / logvar: posterior parameters ``[N, Cz]`` (for the KL term), when available.
    """

    pred: SparseTokens
    target: SparseTokens
    mean: Tensor | None = None
    logvar: Tensor | None = None
    render: Callable[[], ImagePairs] | None = None
    patch_frames: int = 4
    _images: ImagePairs | None = field(default=None, repr=False)

    def images(self) -> ImagePairs:
        """Predicted and target pixel views (cached); empty lists if there are none."""
        if self._images is None:
            self._images = self.render() if self.render is not None else ([], [])
        return self._images

    def value_mask(self) -> Tensor | None:
        """``[N, P]`` bool: values that hold data (False on zero-padded frames); None = all."""
        frames = [int(m.get("valid_frames", self.patch_frames)) for m in self.target.meta]
        if all(f >= self.patch_frames for f in frames):
            return None
        per_frame = self.target.feats.shape[1] // self.patch_frames
        rows = torch.tensor(frames, device=self.target.feats.device).repeat_interleave(
            torch.tensor(self.target.seqlens, device=self.target.feats.device)
        )  # [N] valid frames of each row's sample
        frame_of_value = (
            torch.arange(self.target.feats.shape[1], device=rows.device) // per_frame
        )  # [P]
        return frame_of_value[None, :] < rows[:, None]  # [N, P]
