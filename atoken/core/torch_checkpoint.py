"""Reading a foreign PyTorch checkpoint's tensors without unpickling objects.

Official AToken checkpoints come as ``.safetensors`` or as torch ``.pt`` files; the latter are read
with ``torch.load(weights_only=True)`` (tensors and plain containers only), the state dict is
unwrapped from the usual training containers (``{"state_dict": ...}``, ``{"ema": ...}``) and a
DDP ``module.`` prefix is dropped. Core owns this so that the official converter and plugins'
converters (the 3D Gaussian decoder) read checkpoints the same way.

References: PyTorch ``torch.load(weights_only=True)`` (the safe unpickler of tensors and
containers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from atoken.core.serialization import CheckpointError, load_tensors

#: keys under which training scripts nest the model's state dict
_CONTAINER_KEYS = ("state_dict", "model", "module", "ema", "model_ema", "ema_state_dict")


def read_official_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of an official checkpoint (``.safetensors`` or ``.pt``), never unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        state: Any = load_tensors(path, what="official checkpoint")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - pickle errors have many types
            raise CheckpointError(
                f"cannot read {str(path)!r} as a weights-only torch checkpoint ({type(exc).__name__}:"
                f" {str(exc).splitlines()[0] if str(exc) else ''}); atoken never unpickles"
                " arbitrary objects — convert it to safetensors where you trust it"
            ) from None
    for _ in range(3):  # unwrap {"state_dict": {...}} and similar containers
        if isinstance(state, Mapping) and not all(isinstance(v, Tensor) for v in state.values()):
            inner = [k for k in _CONTAINER_KEYS if isinstance(state.get(k), Mapping)]
            if not inner:
                break
            state = state[inner[0]]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path} holds no state dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if len(tensors) != len(state):
        others = sorted(k for k, v in state.items() if not isinstance(v, Tensor))[:5]
        raise CheckpointError(f"{path}: entries that are not tensors: {others}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors
