"""The official reference fixture set the ``official`` tests read, and every setting it records.

The set lives in ``$ATOKEN_OFFICIAL_FIXTURES`` (default ``<workspace>/shared/reference/official``;
its README describes the layout). Nothing about one particular set is assumed here: sizes, frame
counts and crops come from the tensors' shapes, the architecture, patch size, temporal tiling and
KV-cache mode from ``tiny-soc.json``, the FSQ layout from ``config-atoken-sod.json``. A missing
file or tensor skips the tests that need it (a partial set); a setting a test needs that the JSON
does not record fails with the key's name.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from atoken import ModelConfig, TemporalConfig, TransformerConfig
from atoken.convert.official import temporal_from_official
from atoken.core.geometry import DEFAULT_PATCH as VIDEO_PATCH
from atoken.plugins.video.adapter import VideoAdapter, VideoOptions

FIXTURES = Path(
    os.environ.get(
        "ATOKEN_OFFICIAL_FIXTURES",
        Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official",
    )
)
#: the release puts every voxel of a 3D sample at t = 1 (PAPER_FACTS: "the release uses t = 1")
VOXEL_T = 1
#: README "Tolerances": encoder side / PE / RoPE, decoder outputs; None means exact
ENC, DEC, EXACT = 1e-5, 2e-5, None
TINY = "tiny-soc.json"
SOD = "config-atoken-sod.json"
SOD_RESOLVED = (
    "resolved_arch_cfg (AutoencoderKLConfig defaults filled in, as passed by ATokenWrapper)"
)


def fixture_file(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"{name} is not in {FIXTURES}")
    return path


@cache
def _tensors(path: Path) -> dict[str, Tensor]:
    return load_file(path)


def tensors(name: str) -> dict[str, Tensor]:
    """The tensors of ``<name>.safetensors`` (loaded once; do not mutate)."""
    return _tensors(fixture_file(f"{name}.safetensors"))


def need(data: dict[str, Tensor], key: str) -> Tensor:
    if key not in data:
        pytest.skip(f"{key} is not in the fixture set")
    return data[key]


@cache
def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def document(name: str) -> dict[str, Any]:
    return _json(fixture_file(name))


def setting(name: str, *path: str) -> Any:
    """``doc[path[0]][path[1]]...`` of fixture JSON ``name``; fails naming a missing key."""
    value: Any = document(name)
    for i, key in enumerate(path):
        if not isinstance(value, dict) or key not in value:
            where = ".".join(path[: i + 1])
            pytest.fail(
                f"{FIXTURES / name} has no key {where!r}; the official tests read this setting"
                " from the fixture set instead of assuming it (see its README)"
            )
        value = value[key]
    return value


# ---------------------------------------------------------------- architecture and settings


def arch() -> dict[str, Any]:
    return setting(TINY, "arch_cfg")


def patch_size() -> tuple[int, int, int]:
    """The fixture model's patch ``(frames, rows, cols)``; the adapters' patch must equal it."""
    patch = tuple(setting(TINY, "arch_cfg", "patch_size"))
    if patch != VIDEO_PATCH:
        pytest.fail(f"{TINY} patch_size {list(patch)}: atoken's adapters patch {list(VIDEO_PATCH)}")
    return patch  # type: ignore[return-value]


def in_channels() -> int:
    return int(setting(TINY, "arch_cfg", "in_channels"))


def transformer(side: str) -> TransformerConfig:
    keys = ("model_channels", "num_blocks", "num_heads", "mlp_channels")
    width, depth, heads, mlp = (setting(TINY, "arch_cfg", f"{side}_{k}") for k in keys)
    return TransformerConfig(width=width, depth=depth, num_heads=heads, mlp_width=mlp)


def tiny_config() -> ModelConfig:
    """The fixture model as an atoken `ModelConfig` (tiling: the release's runtime settings)."""
    return ModelConfig(
        patch_size=patch_size(),
        latent_channels=setting(TINY, "arch_cfg", "latent_channels"),
        encoder=transformer("encoder"),
        decoder=transformer("decoder"),
        temporal=release_temporal(),
    )


def head_dim(side: str = "encoder") -> int:
    return transformer(side).width // transformer(side).num_heads


def release_temporal() -> TemporalConfig:
    """The tiling the fixture model ran with (``runtime_settings``; cache off)."""
    run = setting(TINY, "runtime_settings")
    for key in ("num_sample_frames_batch_size", "num_sample_frames_stride", "kv_cache_size"):
        setting(TINY, "runtime_settings", key)
    return temporal_from_official(
        run["num_sample_frames_batch_size"],
        run["num_sample_frames_stride"],
        run["kv_cache_size"],
        patch_frames=patch_size()[0],
    )


def release_kv_temporal() -> TemporalConfig:
    """The decoder KV-cache mode of ``*.dec_mean_kvcache`` (``spec.kv``, in input frames)."""
    return temporal_from_official(
        setting(TINY, "runtime_settings", "num_sample_frames_batch_size"),
        setting(TINY, "spec", "kv", "stride_frames"),
        setting(TINY, "spec", "kv", "cache_frames"),
        patch_frames=patch_size()[0],
    )


def posterior_seed() -> int:
    """Generator seed of ``main.posterior_sample``.

    ``spec.posterior_seed`` where the set records it; otherwise the README's rule, input seed +2
    (pixels from ``spec.input_seed``, the FSQ input from +1, the posterior sample from +2).
    """
    spec = setting(TINY, "spec")
    if "posterior_seed" in spec:
        return int(spec["posterior_seed"])
    return int(setting(TINY, "spec", "input_seed")) + 2


def fsq_options() -> dict[str, Any]:
    """The So/D quantizer as atoken options, from ``config-atoken-sod.json``'s FSQ facts."""
    fsq = setting(SOD, "derived", "fsq")
    for key in ("levels", "num_codebooks", "dim"):
        setting(SOD, "derived", "fsq", key)
    if len(fsq["levels"]) * fsq["num_codebooks"] != fsq["dim"]:
        pytest.fail(
            f"{SOD}: FSQ levels {fsq['levels']} x {fsq['num_codebooks']} != dim {fsq['dim']}"
        )
    return {"levels": list(fsq["levels"]), "groups": int(fsq["num_codebooks"])}


def release_video() -> VideoAdapter:
    """The video adapter in the release's frame mode (T cut to a multiple of 4)."""
    return VideoAdapter(VideoOptions(frame_mode="release"))


# ---------------------------------------------------------------- samples of a batch


def pixel_samples(data: dict[str, Tensor], prefix: str) -> list[tuple[int, Tensor]]:
    """``[(b, pixels)]`` of ``<prefix>.pixels_<b>``, by b; a 3-d tensor is an image, 4-d a video."""
    found = []
    for key, value in data.items():
        m = re.fullmatch(rf"{re.escape(prefix)}\.pixels_(\d+)", key)
        if m:
            found.append((int(m.group(1)), value))
    return sorted(found, key=lambda item: item[0])


def rows_of(data: Tensor, coords5: Tensor, b: int) -> Tensor:
    """Rows of sample ``b`` of a per-token tensor whose coords are ``[b, t, x, y, z]``."""
    return data[coords5[:, 0] == b]


def sample_ids(coords5: Tensor) -> list[int]:
    return torch.unique(coords5[:, 0]).tolist()


def discover(name: str, prefix: str, ndim: int) -> list[tuple[str, str, int]]:
    """``(name, prefix, b)`` of every pixel sample with ``ndim`` dims, for parametrization.

    Read at collection time; an absent file gives no cases (the test is then skipped).
    """
    path = FIXTURES / f"{name}.safetensors"
    if not path.is_file():
        return []
    return [(name, prefix, b) for b, px in pixel_samples(_tensors(path), prefix) if px.ndim == ndim]
