"""Built-in training samples of the ``grayscale`` modality, generated at run time.

The ``samples`` data source of a task reads what the task's adapter offers through
``sample_assets()``: ``(key, what load reads, caption)``. This plugin ships no image files; it
offers a few deterministic procedural gray images (rings, ramps, checkers, smooth blobs...),
each named ``builtin:NAME``, which ``GrayscaleAdapter.load`` makes in memory. They are enough
for a short demonstration run (``train.toml``) and for tests; real training uses ``files``.

Sizes are multiples of 16, so a training crop covers the whole image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: prefix of the names ``GrayscaleAdapter.load`` makes in memory
BUILTIN = "builtin:"

#: name -> (height, width, caption)
SAMPLES: dict[str, tuple[int, int, str]] = {
    "rings": (64, 64, "concentric rings"),
    "ramp": (48, 80, "a diagonal gray ramp"),
    "checker": (64, 48, "a soft checkerboard"),
    "blobs": (64, 80, "smooth random blobs"),
    "stripes": (48, 64, "slanted stripes"),
    "disc": (64, 64, "a bright disc on a dark ground"),
}


def sample_names() -> list[str]:
    """The built-in sample names, sorted."""
    return sorted(SAMPLES)


def make_sample(name: str) -> Tensor:
    """The built-in sample ``name`` as float32 ``[H, W]`` in [-1, 1] (identical every call).

    Raises:
        KeyError: ``name`` is not a built-in sample (the caller turns it into an InputError).
    """
    h, w, _ = SAMPLES[name]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / (w - 1), y / (h - 1)  # [H, W] in [0, 1]
    if name == "rings":
        r = np.hypot(u - 0.5, v - 0.5)
        img = np.cos(2 * np.pi * 6 * r)
    elif name == "ramp":
        img = (u + v) - 1.0
    elif name == "checker":
        img = np.tanh(3 * np.sin(2 * np.pi * 3 * u) * np.sin(2 * np.pi * 4 * v))
    elif name == "blobs":
        rng = np.random.default_rng(7)
        img = np.zeros((h, w))
        for cx, cy, s, a in rng.uniform([0, 0, 0.08, -1], [1, 1, 0.25, 1], size=(6, 4)):
            img += a * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * s * s))
        img = np.clip(img, -1, 1)
    elif name == "stripes":
        img = np.sin(2 * np.pi * 5 * (0.8 * u + 0.6 * v))
    else:  # disc
        img = np.where(np.hypot(u - 0.45, v - 0.55) < 0.3, 0.8, -0.7)
    return torch.from_numpy(img.astype(np.float32)).contiguous()  # [H, W]


def sample_assets() -> list[tuple[str, str, str]]:
    """``(key, what load reads, caption)`` for every built-in sample."""
    return [(f"builtin/{n}", f"{BUILTIN}{n}", SAMPLES[n][2]) for n in sample_names()]
