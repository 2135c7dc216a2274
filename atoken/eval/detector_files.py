"""Reading a feature detector's weight file (FID's Inception, FVD's I3D) without unpickling it.

A detector file is either safetensors (a state dict, checked against the network) or a
TorchScript archive (``torch.jit.load``: a zip holding ``constants.pkl`` and ``code/``). A
plain ``torch.save`` checkpoint is a pickle that can run code when loaded, so it is refused
unread, with the conversion the caller names.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from atoken.core.serialization import CheckpointError


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file (an 8-byte header length, then ``{``)."""
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") > 0 and head[8:9] == b"{"


def load_torchscript(path: Path, *, what: str, convert: str) -> nn.Module:
    """``torch.jit.load`` a TorchScript archive; a ``torch.save`` pickle is refused unread.

    Args:
        path: the file.
        what: the detector, for messages (``"Inception"``, ``"I3D"``).
        convert: the sentence that tells how to convert a pickled checkpoint.

    Raises:
        CheckpointError: a pickle, neither safetensors nor a zip, or a broken archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        names = []
    if not any(n.endswith("constants.pkl") for n in names) or not any("/code/" in n for n in names):
        kind = "a torch.save checkpoint (a pickle)" if names else "neither safetensors nor a zip"
        raise CheckpointError(
            f"{what} file {str(path)!r} is {kind}; atoken reads only safetensors or TorchScript"
            f" archives and never unpickles weights. {convert}"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(
                f"{what} file {str(path)!r} is not a loadable TorchScript ({first})"
            ) from None
