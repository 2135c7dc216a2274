"""I3D video features for FVD: the network, and loading its weights from a local file only.

FVD compares the I3D (Inception-v1 inflated to 3D, Kinetics-400) logits of real and generated
clips. atoken never downloads the weights; `load_i3d` takes a file from (in order) an explicit
path, ``$ATOKEN_I3D``, or ``$ATOKEN_CACHE/i3d/`` (default ``~/.cache/atoken/i3d/``) holding
``i3d.safetensors`` or ``i3d_torchscript.pt``. Two formats, and never a Python pickle:

* **safetensors**: an I3D state dict in the pytorch-i3d key layout (``Conv3d_1a_7x7.conv3d.weight``,
  ``Mixed_3b.b1b.bn.running_mean``, ..., ``logits.conv3d.bias``), run by atoken's own `I3D`
  module below. Pure data; nothing in the file executes. Convert a checkpoint you trust once,
  outside atoken: load its state dict with ``torch.load(path, weights_only=True)`` and write
  it with ``safetensors.torch.save_file(state, "i3d.safetensors")``.
* **TorchScript** (``i3d_torchscript.pt``, the detector most FVD code uses): read with
  ``torch.jit.load``, whose C++ deserializer rebuilds only tensors, primitive containers and
  TorchScript modules, never Python callables (the restriction ``weights_only=True`` gives
  ``torch.load``). The module's TorchScript code does run when features are computed, inside
  the TorchScript interpreter; use a file from a source you trust. A ``torch.save`` checkpoint
  (a pickle) is refused before anything in it is read.

Clips are resized frame by frame to 224 x 224 (bilinear, as the original FVD code) and passed
in [-1, 1] as ``[B, 3, T, 224, 224]``; the feature is the 400 logits averaged over the
remaining time steps (TorchScript detectors are called with ``rescale=False, resize=False,
return_features=True`` when their ``forward`` takes those arguments). FVD values depend on the
weights (TF-Hub's I3D, its TorchScript port and pytorch-i3d's checkpoints differ): compare only
numbers computed with the same file, which the result names (``rfvd_features``).

References: Carreira & Zisserman, "Quo Vadis, Action Recognition?" (I3D, 2017); Unterthiner et
al., "Towards Accurate Generative Models of Video: A New Metric & Challenges" (FVD, 2018) and its
preprocessing; piergiaj/pytorch-i3d (state-dict layout, TF "SAME" padding); StyleGAN-V's
``i3d_torchscript.pt`` calling convention.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atoken.core.errors import AtokenError
from atoken.core.pretrained import load_state_dict_checked
from atoken.core.serialization import CheckpointError, load_tensors
from atoken.eval.detector_files import is_safetensors, load_torchscript

I3D_ENV = "ATOKEN_I3D"
I3D_FILES = ("i3d.safetensors", "i3d_torchscript.pt")
I3D_SIZE = 224
I3D_MIN_FRAMES = 9  # the final 2 x 7 x 7 average pool needs 2 time steps after 3 stride-2 stages


class I3DUnavailable(AtokenError, FileNotFoundError):
    """No usable local I3D weights; the message says why and how to provide them."""


def i3d_dir() -> Path:
    """``$ATOKEN_CACHE/i3d`` (default ``~/.cache/atoken/i3d``), where `load_i3d` looks last."""
    return Path(os.environ.get("ATOKEN_CACHE", Path.home() / ".cache" / "atoken")) / "i3d"


def how_to_provide() -> str:
    """One line telling a user where I3D weights may go."""
    return (
        "give an I3D file with --i3d PATH (or $ATOKEN_I3D), or put i3d.safetensors (pytorch-i3d"
        f" layout) or i3d_torchscript.pt (the usual FVD detector) in {i3d_dir()}; atoken does"
        " not download them"
    )


# ------------------------------------------------------------------------------ the network
def _same_pad(x: Tensor, kernel: Sequence[int], stride: Sequence[int]) -> Tensor:
    """Zero-pad ``[B, C, T, H, W]`` as TensorFlow's "SAME" (extra pixel at the end)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d with "SAME" padding, then BatchNorm (eps 1e-3) and ReLU where the layer has them."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        norm: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=not norm)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))  # [B, cout, T', H', W']
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class SamePool(nn.Module):
    """Max pooling with "SAME" zero padding (inputs are post-ReLU, so zeros never win)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """An Inception block: 1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1, concatenated on channels."""

    def __init__(self, cin: int, widths: Sequence[int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        k3 = (3, 3, 3)
        self.b0 = Unit3D(cin, w0)
        self.b1a, self.b1b = Unit3D(cin, w1a), Unit3D(w1a, w1b, k3)
        self.b2a, self.b2b = Unit3D(cin, w2a), Unit3D(w2a, w2b, k3)
        self.b3a, self.b3b = SamePool(k3, (1, 1, 1)), Unit3D(cin, w3)

    def forward(self, x: Tensor) -> Tensor:
        branches = [
            self.b0(x),
            self.b1b(self.b1a(x)),
            self.b2b(self.b2a(x)),
            self.b3b(self.b3a(x)),
        ]
        return torch.cat(branches, dim=1)  # [B, sum(widths), T, H, W]


# (name, cin, widths) of the Inception blocks, and where the stride-2 pools sit
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class I3D(nn.Module):
    """Inception-v1 I3D (RGB) with the pytorch-i3d parameter names; `features` gives FVD's input.

    Args:
        num_classes: logits (400 for Kinetics-400).
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = SamePool((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = SamePool((1, 3, 3), (1, 2, 2))
        for name in ("Mixed_3b", "Mixed_3c"):
            self.add_module(name, Mixed(*_MIXED[name]))
        self.MaxPool3d_4a_3x3 = SamePool((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            self.add_module(name, Mixed(*_MIXED[name]))
        self.MaxPool3d_5a_2x2 = SamePool((2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            self.add_module(name, Mixed(*_MIXED[name]))
        self.logits = Unit3D(1024, num_classes, norm=False, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, T, 224, 224]`` in [-1, 1] -> logits ``[B, classes, T']`` (T' = T/8 - 1)."""
        for name, block in self.named_children():  # registration order = network order
            if name != "logits":
                x = block(x)  # ... -> [B, 1024, ceil(T/8), 7, 7]
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # [B, 1024, T', 1, 1]
        return self.logits(x).flatten(2)  # [B, classes, T']

    def features(self, x: Tensor) -> Tensor:
        """Logits averaged over time, ``[B, classes]`` (what FVD compares)."""
        return self.forward(x).mean(dim=2)


# ----------------------------------------------------------------------------- feature extractor
def resize_clips(clips: Tensor, size: int = I3D_SIZE) -> Tensor:
    """``[B, T, H, W, 3]`` in [-1, 1] -> ``[B, 3, T, size, size]`` (bilinear per frame, float32)."""
    b, t, h, w, c = clips.shape
    frames = clips.reshape(b * t, h, w, c).permute(0, 3, 1, 2).float()  # [B*T, 3, H, W]
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4).contiguous()


class I3DFeatures:
    """A `VideoFeatureExtractor` around an I3D network (atoken's or a TorchScript detector).

    Called with clips ``[B, T, H, W, 3]`` in [-1, 1] (``T >= 9``), returns ``[B, 400]`` float32.
    """

    min_frames = I3D_MIN_FRAMES

    def __init__(self, network: nn.Module, *, name: str, device: torch.device | str = "cpu"):
        self.network = network.eval().to(device)
        self.name = name
        self.device = torch.device(device)
        self._kwargs: dict[str, bool] = {}
        schema = getattr(getattr(network, "forward", None), "schema", None)
        if schema is not None:  # a TorchScript detector: pass the FVD options it understands
            names = {a.name for a in schema.arguments}
            wanted = {"rescale": False, "resize": False, "return_features": True}
            self._kwargs = {k: v for k, v in wanted.items() if k in names}

    @torch.no_grad()
    def __call__(self, clips: Tensor) -> Tensor:
        x = resize_clips(clips.to(self.device))  # [B, 3, T, 224, 224]
        if isinstance(self.network, I3D):
            out = self.network.features(x)  # [B, 400]
        else:
            out = self.network(x, **self._kwargs)
            out = out.flatten(2).mean(dim=2) if out.ndim > 2 else out  # [B, D]
        return out.float()


def find_i3d(path: str | os.PathLike[str] | None = None) -> Path:
    """The I3D file to use: ``path``, else ``$ATOKEN_I3D``, else one in `i3d_dir`.

    Raises:
        CheckpointError: the file named by ``path`` or ``$ATOKEN_I3D`` does not exist (a typo
            should stop an evaluation before it starts, not silently drop rFVD).
        I3DUnavailable: nothing was named and none is in `i3d_dir`.
    """
    given = path if path is not None else os.environ.get(I3D_ENV) or None
    if given is not None:
        p = Path(given).expanduser()
        if not p.is_file():
            source = "--i3d" if path is not None else f"${I3D_ENV}"
            raise CheckpointError(f"I3D weights {str(p)!r} (from {source}) do not exist")
        return p
    for name in I3D_FILES:
        if (i3d_dir() / name).is_file():
            return i3d_dir() / name
    raise I3DUnavailable(f"no local I3D weights found; {how_to_provide()}")


def load_i3d(
    path: str | os.PathLike[str] | None = None, *, device: torch.device | str = "cpu"
) -> I3DFeatures:
    """Build the FVD feature extractor from local weights (see the module docstring).

    Raises:
        I3DUnavailable: none named and none found (the message says where they may go).
        CheckpointError: the named file is missing, is not safetensors/TorchScript, or its
            tensors do not fit I3D.
    """
    file = find_i3d(path)
    if is_safetensors(file):
        state = load_tensors(file, what="I3D weights")
        classes = state["logits.conv3d.bias"].shape[0] if "logits.conv3d.bias" in state else 400
        net = I3D(classes)
        # BatchNorm step counters are bookkeeping; older checkpoints lack them
        counters = {k: v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")}
        weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        load_state_dict_checked(net, {**counters, **weights}, source=str(file))
        return I3DFeatures(net, name=f"i3d:{file.name}", device=device)
    return I3DFeatures(
        load_torchscript(
            file,
            what="I3D",
            convert="Convert a checkpoint you trust to safetensors (pytorch-i3d layout) outside atoken",
        ),
        name=f"i3d-torchscript:{file.name}",
        device=device,
    )
