"""Work-arounds for third-party packages that break on CPU-only machines.

The PyPI torchvision built for torch 2.13 is a CUDA build; on a CPU build of torch its extension
fails to load and ``import torchvision`` raises ``operator torchvision::nms does not exist`` —
which also breaks ``import transformers``, ``diffusers``, ``timm`` and ``torchmetrics`` (each
imports torchvision when it is installed). atoken itself no longer installs torchvision (its LPIPS
is its own, `atoken.plugins.losses.lpips_net`; the ``lpips`` package that pulled torchvision is gone
from its extras), so a venv made from atoken's extras has none. This shim stays for environments
where the user installed that torchvision (``pip install timm`` does: install torchvision's CPU
build from PyTorch's CPU index instead, see the README). `ensure_torchvision_importable` declares
the two operator schemas torchvision's Python side looks for, before its first import, on CPU
builds of torch only. Detection ops (nms) then stay unavailable; nothing atoken uses needs them.
Called by atoken right before it imports transformers or diffusers; a no-op everywhere else.
"""

from __future__ import annotations

import importlib.util
import sys

import torch

_LIBRARY = None  # the schema library must stay alive for the life of the process


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` work on CPU torch; returns True if the shim was installed."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules or torch.version.cuda is not None:
        return False
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        torch.ops.torchvision.nms  # noqa: B018 - already registered by a working torchvision
        return False
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True
