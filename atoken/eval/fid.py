"""rFID: the FID Inception-v3, loading its weights from a local file only, and the accumulator.

FID compares the 2048-d pool3 features (the global average pool after ``Mixed_7c``) of two sets
of images: here the originals of N evaluated images and their N reconstructions (rFID).
`FIDInceptionV3` is the network of pytorch-fid / torch-fidelity (TensorFlow's
``inception-2015-12-05`` graph ported to PyTorch: torchvision's Inception-v3 layout with 1008
classes, no auxiliary head, average pools that ignore padding, and a max pool in the last
block's pooling branch), written here so neither torchvision nor pytorch-fid is needed.

atoken never downloads the weights. `load_inception` takes a file from (in order) an explicit
path (``atoken eval --inception``), ``$ATOKEN_INCEPTION``, ``$ATOKEN_CACHE/inception/``
(default ``~/.cache/atoken/inception/``), then torch.hub's ``$TORCH_HOME/hub/checkpoints/``
(where pytorch-fid caches its download), holding one of `INCEPTION_FILES`. Two formats, and
never a Python pickle:

* **safetensors**: a state dict in pytorch-fid's parameter names, i.e. the layout of
  ``pt_inception-2015-12-05-6726825d.pth`` (``Conv2d_1a_3x3.conv.weight``,
  ``Mixed_5b.branch_pool.bn.running_mean``, ..., ``fc.weight`` ``[1008, 2048]``; torch-fidelity's
  ``weights-inception-2015-12-05-6726825d.pth`` uses the same names). The ``blocks.B.I.`` names
  of a ``pytorch_fid.inception.InceptionV3().state_dict()`` are accepted too, and ``fc`` may be
  absent. Pure data, run by `FIDInceptionV3`. Convert a ``.pth`` you trust once, outside atoken,
  with `CONVERT_COMMAND`.
* **TorchScript** (``inception-2015-12-05.pt``, the detector of StyleGAN2-ADA used by clean-fid,
  or a script module of `FIDInceptionV3`): read with ``torch.jit.load``, whose deserializer
  rebuilds only tensors, containers and TorchScript modules, never Python callables; its
  TorchScript code runs when features are computed, so use a file from a source you trust.
  A module whose ``forward`` takes ``return_features`` (the StyleGAN2-ADA detector) is called
  with pixel values in [0, 255] and ``return_features=True`` and normalises inside; any other
  module gets the same ``[B, 3, 299, 299]`` in [-1, 1] as `FIDInceptionV3`.
  A ``torch.save`` checkpoint (a pickle) is refused before anything in it is read.

Input handling follows pytorch-fid: images (``[H, W, 3]`` in [-1, 1]) are taken as the uint8
levels a PNG of them holds (clamped and rounded, `atoken.core.metrics.METRIC_CONVENTION`), as
[0, 1] floats resized to 299 x 299 (bilinear, ``align_corners=False``, no antialiasing), then
mapped to [-1, 1] (``2x - 1``). FID values depend on the weights and on this preprocessing
(torch-fidelity and clean-fid resize differently): compare only numbers computed with the same
file (the result names it with its SHA-256) and the same N.

The Fréchet distance is `atoken.eval.fvd.frechet_distance` in float64: the trace term
``tr (Σ₁Σ₂)^½`` comes from the eigenvalues of the symmetric PSD matrix ``Σ₁^½ Σ₂ Σ₁^½``
(symmetric eigendecompositions, rounding negatives clamped to 0) rather than
``scipy.linalg.sqrtm(Σ₁Σ₂)``: the product is not symmetric, and with N < 2048 both covariances
are singular, where ``sqrtm`` returns complex noise and needs pytorch-fid's ``eps·I`` retry; the
eigen route stays real, needs no SciPy, and agrees with ``sqrtm`` on well-conditioned input.
FID is biased upwards for small N (Chong & Forsyth, 2020) and the 2048 x 2048 covariance has
rank < N, so a result with N < `FID_MIN_SAMPLES` is flagged ``rfid_n_limited``.

References: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision"
(Inception-v3, 2016); Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium" (FID, 2017); mseitzer/pytorch-fid (FID Inception blocks, parameter names,
input handling); toshas/torch-fidelity (the same layout); NVlabs/stylegan2-ada-pytorch and
GaParmar/clean-fid (the TorchScript detector's calling convention); Chong & Forsyth, "Effectively
Unbiased FID and Inception Score and where to find them" (2020).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atoken.core.errors import AtokenError, InputError
from atoken.core.serialization import CheckpointError, check_state_layout, load_tensors
from atoken.eval.detector_files import is_safetensors, load_torchscript
from atoken.eval.fvd import FeatureStats, frechet_distance

INCEPTION_ENV = "ATOKEN_INCEPTION"
#: file names looked for in the cache directories, in order
INCEPTION_FILES = (
    "pt_inception-2015-12-05.safetensors",
    "inception.safetensors",
    "inception-2015-12-05.pt",
)
#: pickles that pytorch-fid / torch-fidelity leave in torch.hub's cache (named in the hint)
PICKLED_FILES = (
    "pt_inception-2015-12-05-6726825d.pth",
    "weights-inception-2015-12-05-6726825d.pth",
)
INCEPTION_SIZE = 299
FID_DIMS = 2048
#: below this many images rFID is reported but flagged as N-limited (biased, rank-deficient)
FID_MIN_SAMPLES = 2048
CONVERT_COMMAND = (
    'python -c "import sys, torch, safetensors.torch as st; st.save_file({k: v.contiguous()'
    ' for k, v in torch.load(sys.argv[1], weights_only=True).items()}, sys.argv[2])"'
    " pt_inception-2015-12-05-6726825d.pth pt_inception-2015-12-05.safetensors"
)
_RESIZE = (
    "uint8 levels (clamped, rounded) / 255, resized to 299 x 299 (bilinear, align_corners=False,"
    " no antialias)"
)
#: what the network sees (pytorch-fid), and what a StyleGAN2-ADA TorchScript detector sees
INPUT_HANDLING = f"{_RESIZE}, mapped to [-1, 1] as 2x - 1 (pytorch-fid)"
DETECTOR_INPUT_HANDLING = f"{_RESIZE}, times 255; the detector normalises as (x - 128) / 128"


class InceptionUnavailable(AtokenError, FileNotFoundError):
    """No usable local Inception weights; the message says why and how to provide them."""


def inception_dir() -> Path:
    """``$ATOKEN_CACHE/inception`` (default ``~/.cache/atoken/inception``)."""
    return Path(os.environ.get("ATOKEN_CACHE", Path.home() / ".cache" / "atoken")) / "inception"


def hub_checkpoints_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where pytorch-fid caches."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def how_to_provide() -> str:
    """One line telling a user where FID Inception weights may go and how to convert a pickle."""
    return (
        "give the FID Inception-v3 with --inception PATH (or $ATOKEN_INCEPTION), or put"
        f" {INCEPTION_FILES[0]} (pytorch-fid's state dict as safetensors) or"
        f" {INCEPTION_FILES[2]} (the StyleGAN2-ADA/clean-fid TorchScript detector) in"
        f" {inception_dir()} or {hub_checkpoints_dir()}; convert pytorch-fid's pickle once"
        f" with: {CONVERT_COMMAND}; atoken does not download them"
    )


# ------------------------------------------------------------------------------ the network
class BasicConv2d(nn.Module):
    """Conv2d without bias, BatchNorm (eps 1e-3), ReLU: every convolution of Inception-v3."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))  # [B, cout, H', W']


def _avg_pool_3x3(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that ignores the zero padding (TensorFlow's "SAME" average)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + ``pool_features``."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)  # [B, 224 + pool, H, W]


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 480 + ``cin``."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, 3, stride=2)
        return torch.cat([self.branch3x3(x), b3, pool], 1)  # [B, 480 + cin, H/2, W/2]


class InceptionC(nn.Module):
    """17 x 17 block with factorised 7x7 convolutions (``c7`` inner channels) -> 768."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = BasicConv2d(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, row[0], padding=row[1])
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        d = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(d)))
        pool = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([self.branch1x1(x), b7, d, pool], 1)  # [B, 768, H, W]


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 512 + ``cin``."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        pool = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, pool], 1)  # [B, 512 + cin, H/2, W/2]


class InceptionE(nn.Module):
    """8 x 8 block with split 1x3/3x1 branches -> 2048; the FID graph's last one max-pools.

    Args:
        cin: input channels.
        max_pool: pool branch uses a 3x3 max pool (``Mixed_7c`` of the FID Inception) instead
            of the padding-excluding average pool.
    """

    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)  # [B, 384, H, W]
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)  # [B, 768, H, W]
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))  # [B, 384, H, W]
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)  # [B, 768, H, W]
        if self.max_pool:
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3(x)
        pool = self.branch_pool(pooled)  # [B, 192, H, W]
        return torch.cat([self.branch1x1(x), b3, d, pool], 1)  # [B, 2048, H, W]


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 with pytorch-fid's parameter names; ``forward`` gives pool3 features.

    Args:
        classes: width of the (unused for FID) ``fc`` layer kept so the published state dict
            loads strictly: 1008 as in the TensorFlow graph; None leaves ``fc`` out.
    """

    def __init__(self, classes: int | None = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        if classes is not None:
            self.fc = nn.Linear(FID_DIMS, classes)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, 299, 299]`` in [-1, 1] -> pool3 features ``[B, 2048]``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 64, 147, 147]
        x = F.max_pool2d(x, 3, stride=2)  # [B, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B, 192, 71, 71]
        x = F.max_pool2d(x, 3, stride=2)  # [B, 192, 35, 35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [B, 288, 35, 35]
        x = self.Mixed_6a(x)  # [B, 768, 17, 17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # [B, 768, 17, 17]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [B, 2048, 8, 8]
        return x.mean(dim=(2, 3))  # [B, 2048]


# pytorch_fid.inception.InceptionV3's ``blocks.B.I`` -> the Inception-v3 names above
_BLOCK_NAMES = {
    "blocks.0.0": "Conv2d_1a_3x3",
    "blocks.0.1": "Conv2d_2a_3x3",
    "blocks.0.2": "Conv2d_2b_3x3",
    "blocks.1.0": "Conv2d_3b_1x1",
    "blocks.1.1": "Conv2d_4a_3x3",
    **{f"blocks.2.{i}": f"Mixed_{n}" for i, n in enumerate("5b 5c 5d 6a 6b 6c 6d 6e".split())},
    **{f"blocks.3.{i}": f"Mixed_{n}" for i, n in enumerate(("7a", "7b", "7c"))},
}


def _renamed(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """pytorch-fid wrapper names (``blocks.2.0.branch1x1...``) -> Inception-v3 names."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "blocks":
            b, i, tail = rest.split(".", 2) if rest.count(".") >= 2 else (rest, "", "")
            key = f"{_BLOCK_NAMES.get(f'blocks.{b}.{i}', f'blocks.{b}.{i}')}.{tail}"
        out[key] = value
    return out


# ----------------------------------------------------------------------------- feature extractor
@runtime_checkable
class ImageFeatureExtractor(Protocol):
    """Maps images ``[B, H, W, 3]`` in [-1, 1] to features ``[B, D]``.

    Attributes:
        name: what the features are (recorded with the result).
        info: the protocol facts of the extractor (file, fingerprint, input handling, ...).
    """

    name: str
    info: dict[str, Any]

    def __call__(self, images: Tensor) -> Tensor: ...


def fid_inputs(images: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    """``[B, H, W, 3]`` in [-1, 1] -> ``[B, 3, size, size]`` in [0, 1] (uint8 levels, bilinear)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"FID: expected images [B, H, W, 3], got {list(images.shape)}")
    levels = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # [B, H, W, 3] in 0..255
    x = levels.permute(0, 3, 1, 2) / 255  # [B, 3, H, W] in [0, 1]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class InceptionFeatures:
    """An `ImageFeatureExtractor` around the FID Inception (atoken's or a TorchScript module).

    Args:
        network: `FIDInceptionV3` or a loaded TorchScript module.
        name: the extractor's name in results.
        info: protocol facts recorded with the result (file, SHA-256, format).
        device: where features are computed.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        name: str,
        info: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.network = network.eval().to(device)
        self.name = name
        self.device = torch.device(device)
        schema = getattr(getattr(network, "forward", None), "schema", None)
        names = {a.name for a in schema.arguments} if schema is not None else set()
        self.pixel_range = "return_features" in names  # StyleGAN2-ADA: [0, 255], normalises inside
        self.info = {
            **(info or {}),
            "dims": FID_DIMS,
            "input": DETECTOR_INPUT_HANDLING if self.pixel_range else INPUT_HANDLING,
        }

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = fid_inputs(images.to(self.device))  # [B, 3, 299, 299] in [0, 1]
        if self.pixel_range:
            out = self.network(x * 255, return_features=True)
        else:
            out = self.network(2 * x - 1)
        out = out.flatten(1) if out.ndim > 2 else out  # [B, D]
        if out.shape != (x.shape[0], FID_DIMS):
            raise CheckpointError(
                f"Inception {self.name!r} returned features {list(out.shape)} for"
                f" {x.shape[0]} image(s); FID needs pool3 features [B, {FID_DIMS}]"
            )
        return out.float()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (the fingerprint recorded with every rFID)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_inception(path: str | os.PathLike[str] | None = None) -> Path:
    """The Inception file to use: ``path``, else ``$ATOKEN_INCEPTION``, else one in the caches.

    Raises:
        CheckpointError: the file named by ``path`` or ``$ATOKEN_INCEPTION`` does not exist.
        InceptionUnavailable: nothing was named and no usable file is cached (the message names
            a cached pickle, if there is one, and how to convert it).
    """
    given = path if path is not None else os.environ.get(INCEPTION_ENV) or None
    if given is not None:
        p = Path(given).expanduser()
        if not p.is_file():
            source = "--inception" if path is not None else f"${INCEPTION_ENV}"
            raise CheckpointError(
                f"Inception weights {str(p)!r} (from {source}) do not exist; {how_to_provide()}"
            )
        return p
    dirs = (inception_dir(), hub_checkpoints_dir())
    for folder in dirs:
        for name in INCEPTION_FILES:
            if (folder / name).is_file():
                return folder / name
    pickles = [folder / n for folder in dirs for n in PICKLED_FILES if (folder / n).is_file()]
    found = (
        f" ({pickles[0]} is a pickle, which atoken does not read: convert it)" if pickles else ""
    )
    raise InceptionUnavailable(f"no local FID Inception weights found{found}; {how_to_provide()}")


def load_inception(
    path: str | os.PathLike[str] | None = None, *, device: torch.device | str = "cpu"
) -> InceptionFeatures:
    """Build the FID feature extractor from local weights (see the module docstring).

    Raises:
        InceptionUnavailable: none named and none found (the message says where they may go).
        CheckpointError: the named file is missing, is a pickle or neither format, or its
            tensors do not fit the FID Inception (names or shapes, listed).
    """
    file = find_inception(path)
    info: dict[str, Any] = {"file": str(file), "sha256": file_sha256(file)}
    if is_safetensors(file):
        state = _renamed(load_tensors(file, what="Inception weights"))
        classes = state["fc.bias"].shape[0] if "fc.bias" in state else None
        net = FIDInceptionV3(classes)
        # BatchNorm step counters are bookkeeping; the published weights lack them
        counters = {k: v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")}
        weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        full = {**counters, **weights}
        check_state_layout(
            net.state_dict(),
            full,
            header=f"Inception weights {str(file)!r} do not fit the FID Inception-v3 (expected"
            " pytorch-fid's pt_inception-2015-12-05 parameter names and shapes):",
            shape_label=lambda k, got, want: f"{k}: file {got} vs Inception-v3 {want}",
        )
        net.load_state_dict(full, strict=True)
        info["format"] = "safetensors"
        return InceptionFeatures(net, name=f"fid-inception:{file.name}", info=info, device=device)
    info["format"] = "torchscript"
    return InceptionFeatures(
        load_torchscript(
            file,
            what="Inception",
            convert=f"Convert a pytorch-fid/torch-fidelity checkpoint you trust once, outside atoken: {CONVERT_COMMAND}",
        ),
        name=f"fid-inception-torchscript:{file.name}",
        info=info,
        device=device,
    )


# ----------------------------------------------------------------------------------- rFID
class FIDAccumulator:
    """Streams (original, reconstruction) image pairs through an extractor; `result` gives rFID.

    Each pair may have its own size (the extractor resizes to 299 x 299). Features are merged
    into running float64 moments, so memory stays O(D²) for any N.

    Args:
        extractor: images ``[B, H, W, 3]`` in [-1, 1] -> features ``[B, D]``.
    """

    def __init__(self, extractor: ImageFeatureExtractor) -> None:
        self.extractor = extractor
        self.real = FeatureStats()
        self.fake = FeatureStats()

    def add(self, reference: Tensor, reconstruction: Tensor) -> None:
        """Add one pair ``[H, W, 3]`` (both in [-1, 1]; the reconstruction is clamped)."""
        if reference.shape != reconstruction.shape or reference.ndim != 3:
            raise InputError(
                "rFID: an image and its reconstruction must both be [H, W, 3] of one shape, got"
                f" {list(reference.shape)} and {list(reconstruction.shape)}"
            )
        feats = self.extractor(torch.stack([reference, reconstruction]))  # [2, D]
        self.real.update(feats[:1])
        self.fake.update(feats[1:])

    def result(self) -> dict[str, Any]:
        """``rfid`` (None below 2 images, with the reason), ``rfid_samples``, ``rfid_features``,
        ``rfid_n_limited`` (N < `FID_MIN_SAMPLES`: biased upwards) and ``rfid_unavailable``."""
        n = self.real.n
        out: dict[str, Any] = {
            "rfid": None,
            "rfid_samples": n,
            "rfid_features": self.extractor.name,
            "rfid_n_limited": n < FID_MIN_SAMPLES,
            "rfid_unavailable": None,
        }
        if n < 2:
            out["rfid_unavailable"] = f"rFID needs at least 2 images, got {n}"
            return out
        value = frechet_distance(*self.real.moments(), *self.fake.moments())
        out["rfid"] = value if math.isfinite(value) else None
        return out


def n_limited_note(n: int) -> str | None:
    """The warning recorded with an rFID over ``n < FID_MIN_SAMPLES`` images, else None."""
    if n >= FID_MIN_SAMPLES:
        return None
    return (
        f"N-limited: rFID over N={n} < {FID_MIN_SAMPLES} images is biased upwards and its"
        f" {FID_DIMS}x{FID_DIMS} covariances have rank < N; compare only values at the same N"
        " (papers report N=50000 on ImageNet val)"
    )
