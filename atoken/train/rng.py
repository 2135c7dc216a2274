"""Capture and restore the global RNG states (torch CPU and CUDA, ``random``, numpy) as JSON."""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

# the checkpoint module's logger, as before this code moved here: log filters keep working
logger = logging.getLogger("atoken.train.checkpoint")


# ====================================================================== RNG state
def capture_rng_state() -> dict[str, Any]:
    """JSON-able state of torch's CPU RNG, every CUDA device's RNG, ``random`` and numpy's global.

    These are the calling process's states; under data parallelism each rank has its own, and
    a checkpoint written by rank 0 holds rank 0's. Explicit ``torch.Generator`` objects (e.g. a
    data loader's) are not global: save their ``get_state()`` in ``data_state`` or ``extra``.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": _bytes_text(torch.get_rng_state()),
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # else no CUDA draw happened
        state["cuda"] = [_bytes_text(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what `capture_rng_state` captured (CUDA states where devices exist)."""
    torch.set_rng_state(_text_bytes(state["torch"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    _restore_cuda_rng(state.get("cuda"))


def _restore_cuda_rng(saved: list[str] | None) -> None:
    if not saved:
        return
    if not torch.cuda.is_available():
        logger.warning("the checkpoint holds CUDA RNG states but CUDA is not available; skipped")
        return
    count = torch.cuda.device_count()
    if count != len(saved):
        logger.warning(
            "the checkpoint holds RNG states of %d CUDA devices, this machine has %d;"
            " restoring the first %d",
            len(saved),
            count,
            min(count, len(saved)),
        )
    for device, text in enumerate(saved[:count]):
        torch.cuda.set_rng_state(_text_bytes(text), device)


def _bytes_text(state: Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _text_bytes(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


__all__ = ["capture_rng_state", "restore_rng_state"]
