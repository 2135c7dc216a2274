"""The latents file `atoken encode` writes and `atoken decode` reads, validated in full.

A latents file is safetensors with

- tensors ``coords [N, 4]`` int32 ``(t, x, y, z)`` and either ``codes [N, Cz]`` float (continuous
  quantizers) or ``indices [N, G]`` int32 (discrete ones, e.g. FSQ), and nothing else;
- string metadata: ``format`` (``"atoken-latents"``), ``version`` (``"1"``), ``model_id``,
  ``model``, ``quantizer``, ``modality``, ``source``, and the JSON objects ``adapter_options``
  and ``sample_meta`` (the tokens' meta the adapter decodes with); optionally ``model_kind``.

The model is referenced robustly (`model_reference`): ``model`` is the resolved absolute path of
a model directory, or the name of a shipped model, a preset or a hub id, and ``model_kind`` says
which (``directory``, ``shipped``, ``preset``, ``hub``); ``model_id`` is the fingerprint the
decoding model must match. Files written before ``model_kind`` existed hold ``--model`` as it
was typed; they stay readable (`resolve_model`). The latent shards of `atoken.data` carry the
same reference in every sample's JSON and check each sample with the same functions
(`header_from_parts`, `check_values`).

Everything is checked before a byte of tensor data is read or anything is allocated from the
file's claims: the metadata's structure (`read_header`), then each tensor's dtype and shape from
the safetensors header against the model (`check_against_model`), then the layout the sample meta
declares against the coords and the budgets (`check_layout`), and only then the values (codes
finite, indices in range, coords in range and unique). Each error is one line naming the file
and the key, what was found and what was expected.

Layouts: pixel-frame adapters (image, video and third-party ones built on
`atoken.core.patching`) record ``crop = [top, left, height, width]`` in the sample meta, and
videos ``frames`` (and ``pad``); their tokens are the full patch grid ``t < latent frames``,
``x < height / patch``, ``y < width / patch``, ``z = 0``, one row per cell. A file whose coords do
not cover exactly that grid is refused, so a small file cannot declare a huge picture. Budgets:
one frame's pixels against `atoken.core.budgets.max_pixels`, the tokens decoded at once (the whole
file, or one latent frame when the adapter streams) against `atoken.core.budgets.max_tokens`.

References: safetensors format (header-only reads with ``safe_open``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from atoken.core import budgets
from atoken.core.errors import InputError
from atoken.core.presets import PRESETS
from atoken.core.serialization import CheckpointError
from atoken.core.tokens import COORD_LIMIT

LATENTS_FORMAT = "atoken-latents"
LATENTS_VERSION = "1"

#: string metadata every latents file carries
STRING_KEYS = ("format", "version", "model_id", "model", "quantizer", "modality", "source")
#: metadata holding a JSON object
JSON_KEYS = ("adapter_options", "sample_meta")
#: what ``model`` names (metadata ``model_kind``; absent in files of older versions)
MODEL_KINDS = ("directory", "shipped", "preset", "hub")

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_INT_DTYPES = {"I8", "I16", "I32", "I64", "U8", "U16", "U32"}


class LatentsError(CheckpointError, InputError):
    """A latents file that is not one, is corrupt, or does not fit the model decoding it."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the safetensors header declares it (nothing read)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class LatentsHeader:
    """A latents file's validated header.

    Attributes:
        path: the file.
        metadata: the raw string metadata.
        adapter_options: ``adapter_options`` parsed (a dict).
        sample_meta: ``sample_meta`` parsed (a dict).
        tensors: name -> dtype and shape, from the header.
    """

    path: Path
    metadata: dict[str, str]
    adapter_options: dict[str, Any]
    sample_meta: dict[str, Any]
    tensors: dict[str, TensorInfo]

    @property
    def rows(self) -> int:
        return self.tensors["coords"].shape[0]

    def fail(self, what: str) -> LatentsError:
        return LatentsError(f"latents file '{self.path}': {what}")


def _fail(path: Path, what: str) -> LatentsError:
    return LatentsError(f"latents file '{path}': {what}")


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ----------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class ModelReference:
    """How a latents file names its model.

    Attributes:
        ref: the resolved absolute path of a model directory, or a shipped model's, a preset's
            or a hub repository's name.
        kind: one of `MODEL_KINDS`.
    """

    ref: str
    kind: str

    def as_metadata(self) -> dict[str, str]:
        """The ``model`` and ``model_kind`` metadata entries."""
        return {"model": self.ref, "model_kind": self.kind}


def model_reference(given: str | os.PathLike[str]) -> ModelReference:
    """The robust reference of the model loaded from ``given`` (what ``--model`` said).

    Resolved in `atoken.core.model_dir.load_tokenizer`'s order: a preset name, then an existing
    directory (stored as its resolved absolute path, so decoding works from any working
    directory), then a shipped model's name; anything else loaded by name is a hub id.
    """
    from atoken.models import SHIPPED_MODELS

    name = os.fspath(given)
    if name in PRESETS:
        return ModelReference(name, "preset")
    path = Path(name)
    if path.is_dir():
        return ModelReference(str(path.resolve()), "directory")
    if name in SHIPPED_MODELS:
        return ModelReference(name, "shipped")
    return ModelReference(name, "hub")


def resolve_model(ref: str, kind: str | None, model_id: str, where: str) -> str:
    """What to load (`load_tokenizer`) for a file's model reference, when no ``--model`` is given.

    Args:
        ref: the ``model`` metadata.
        kind: ``model_kind`` (None: a file of an older version, ``model`` as it was typed).
        model_id: the fingerprint, for the message.
        where: names the file in the message.

    Raises:
        LatentsError: the model directory the file names does not exist (moved or deleted);
            the message says to pass ``--model``.
    """
    from atoken.models import SHIPPED_MODELS

    if kind is not None and kind not in MODEL_KINDS:
        raise LatentsError(
            f"{where}: metadata key 'model_kind': expected one of {', '.join(MODEL_KINDS)}, got"
            f" {kind!r}"
        )
    named = kind in ("shipped", "preset", "hub") or (
        kind is None and (ref in PRESETS or ref in SHIPPED_MODELS) and not Path(ref).is_dir()
    )
    if named or Path(ref).is_dir():
        return ref
    said = "the model directory" if kind == "directory" else "the model"
    raise LatentsError(
        f"{where} was encoded by {said} '{ref}' (model id {model_id}), which is not there (moved"
        " or deleted?); pass --model with that model's directory or name"
    )


def header_from_parts(
    where: str | os.PathLike[str],
    metadata: dict[str, str],
    adapter_options: dict[str, Any],
    sample_meta: dict[str, Any],
    tensors: dict[str, TensorInfo],
) -> LatentsHeader:
    """A `LatentsHeader` for latents that do not come from a safetensors file (one sample of a
    latent shard), its tensor names, dtypes and shapes checked as `read_header` checks them.

    Args:
        where: names the sample in messages (``shard.tar:key``).
        metadata: at least ``model_id``, ``model`` and ``quantizer``.
    """
    header = LatentsHeader(Path(where), dict(metadata), adapter_options, sample_meta, tensors)
    _check_tensor_names(header)
    return header


def json_entry(key: str, value: Any) -> str:
    """``value`` as the JSON text of metadata ``key`` (what `read_header` parses back).

    Raises:
        InputError: ``value`` is not a dict of JSON values (e.g. a plugin put a tensor or a NaN
            into its tokens' meta), so the file could not be read back.
    """
    if not isinstance(value, dict):
        raise InputError(f"latents metadata {key!r} must be a dict, got {_type(value)}")
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"latents metadata {key!r} cannot be stored as JSON ({exc}); an adapter's tokens"
            " meta and options must hold only JSON values (str, int, finite float, bool, None,"
            " lists, dicts)"
        ) from None


# ------------------------------------------------------------------------------------ header
def read_header(path: str | os.PathLike[str]) -> LatentsHeader:
    """Read and check a latents file's metadata and tensor header (no tensor data is read).

    Raises:
        LatentsError: the file is missing or not safetensors, a metadata key is missing, not a
            string or not the JSON object it should be, or the tensor names are not
            ``coords`` plus one of ``codes`` / ``indices``.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "does not exist" if not path.exists() else "is not a regular file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
            tensors = {}
            for name in fh.keys():
                part = fh.get_slice(name)
                tensors[name] = TensorInfo(str(part.get_dtype()), tuple(part.get_shape()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _fail(
            path, f"is not a readable safetensors file ({reason}); written by `atoken encode`?"
        ) from None
    if not metadata:
        raise _fail(path, "has no metadata: it is not an atoken latents file (`atoken encode`)")
    meta = dict(metadata)
    if meta.get("format") != LATENTS_FORMAT:
        raise _fail(
            path,
            f"metadata key 'format': expected {LATENTS_FORMAT!r}, got {meta.get('format')!r};"
            " it is not an atoken latents file (written by `atoken encode`)",
        )
    for key in STRING_KEYS:
        if key not in meta:
            raise _fail(path, f"metadata key {key!r} is missing")
        if not meta[key].strip() and key != "source":
            raise _fail(path, f"metadata key {key!r}: expected a non-empty string, got ''")
    if meta["version"] != LATENTS_VERSION:
        raise _fail(
            path,
            f"metadata key 'version': expected {LATENTS_VERSION!r}, got {meta['version']!r}"
            " (written by another atoken version; re-encode it with this one)",
        )
    parsed: dict[str, dict[str, Any]] = {}
    for key in JSON_KEYS:
        if key not in meta:
            raise _fail(path, f"metadata key {key!r} is missing")
        try:
            value = json.loads(meta[key])
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _fail(
                path, f"metadata key {key!r}: expected a JSON object, got invalid JSON ({exc})"
            ) from None
        if not isinstance(value, dict):
            raise _fail(path, f"metadata key {key!r}: expected a JSON object, got {_type(value)}")
        parsed[key] = value
    header = LatentsHeader(path, meta, parsed["adapter_options"], parsed["sample_meta"], tensors)
    _check_tensor_names(header)
    return header


def _check_tensor_names(h: LatentsHeader) -> None:
    names = set(h.tensors)
    payload = names & {"codes", "indices"}
    unexpected = sorted(names - {"coords", "codes", "indices"})
    if unexpected:
        raise h.fail(
            f"unexpected tensor(s) {', '.join(map(repr, unexpected))}; expected 'coords' and"
            " one of 'codes' or 'indices'"
        )
    if "coords" not in names:
        raise h.fail("tensor 'coords' is missing")
    if len(payload) != 1:
        raise h.fail(
            "expected exactly one of the tensors 'codes' or 'indices', got "
            + (" and ".join(sorted(payload)) or "neither")
        )
    coords = h.tensors["coords"]
    if coords.dtype not in _INT_DTYPES:
        raise h.fail(f"tensor 'coords': expected an integer dtype (I32), got {coords.dtype}")
    if len(coords.shape) != 2 or coords.shape[1] != 4:
        raise h.fail(
            f"tensor 'coords': expected shape [N, 4] (t, x, y, z), got {list(coords.shape)}"
        )
    if coords.shape[0] == 0:
        raise h.fail("tensor 'coords' has no rows: there is nothing to decode")
    (name,) = payload
    info = h.tensors[name]
    if len(info.shape) != 2:
        raise h.fail(f"tensor {name!r}: expected a 2-D shape [N, C], got {list(info.shape)}")
    if info.shape[0] != coords.shape[0]:
        raise h.fail(
            f"tensor {name!r} has {info.shape[0]} rows but 'coords' has {coords.shape[0]};"
            " expected one row per token"
        )
    if name == "codes" and info.dtype not in _FLOAT_DTYPES:
        raise h.fail(
            f"tensor 'codes': expected a floating dtype (F32, F16 or BF16), got {info.dtype}"
        )
    if name == "indices" and info.dtype not in _INT_DTYPES:
        raise h.fail(f"tensor 'indices': expected an integer dtype (I32), got {info.dtype}")


# ----------------------------------------------------------------------------- against a model
def check_against_model(h: LatentsHeader, model: Any) -> None:
    """Check the header against the model that will decode it (fingerprint, quantizer, widths).

    Args:
        h: from `read_header`.
        model: the `atoken.core.tokenizer.Tokenizer`.
    """
    meta = h.metadata
    if meta["model_id"] != model.model_id:
        raise CheckpointError(
            f"latents file '{h.path}' was encoded by another model (model id {meta['model_id']},"
            f" from {meta['model']!r}); this model's id is {model.model_id}. Decode with --model"
            f" {meta['model']} (or wherever that model is now)"
        )
    expected_q = model.config.quantizer.name
    if meta["quantizer"] != expected_q:
        raise h.fail(
            f"metadata key 'quantizer': expected {expected_q!r} (this model's), got"
            f" {meta['quantizer']!r}"
        )
    q = model.quantizer
    if q.discrete:
        if "indices" not in h.tensors:
            raise h.fail(
                f"expected tensor 'indices' (the {expected_q} quantizer is discrete), got 'codes'"
            )
        width = h.tensors["indices"].shape[1]
        if width != q.num_codebooks:
            raise h.fail(
                f"tensor 'indices': expected shape [N, {q.num_codebooks}] (one index per"
                f" {expected_q} group), got {list(h.tensors['indices'].shape)}"
            )
    else:
        if "codes" not in h.tensors:
            raise h.fail(
                f"expected tensor 'codes' (the {expected_q} quantizer is continuous), got 'indices'"
            )
        width = h.tensors["codes"].shape[1]
        if width != model.config.latent_channels:
            raise h.fail(
                f"tensor 'codes': expected shape [N, {model.config.latent_channels}] (the model's"
                f" latent channels), got {list(h.tensors['codes'].shape)}"
            )


# ----------------------------------------------------------------------------------- layout
def _int(h: LatentsHeader, key: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise h.fail(f"metadata key 'sample_meta.{key}': expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise h.fail(f"metadata key 'sample_meta.{key}': expected an integer {bound}, got {value}")
    return value


@dataclass(frozen=True)
class Grid:
    """The patch grid a pixel-frame sample meta declares: latent frames x rows x cols."""

    frames: int
    rows: int
    cols: int
    height: int
    width: int

    @property
    def cells(self) -> int:
        return self.frames * self.rows * self.cols


def pixel_grid(h: LatentsHeader, patch: tuple[int, int, int]) -> Grid | None:
    """The grid of a pixel-frame sample meta (one with ``crop``), checked; None without ``crop``."""
    meta = h.sample_meta
    if "crop" not in meta:
        return None
    crop = meta["crop"]
    if not isinstance(crop, list) or len(crop) != 4:
        raise h.fail(
            "metadata key 'sample_meta.crop': expected [top, left, height, width], got"
            f" {json.dumps(crop)[:80]}"
        )
    pt, ph, pw = patch
    for i, label in enumerate(("top", "left", "height", "width")):
        _int(h, f"crop[{i}] ({label})", crop[i], 0 if i < 2 else 1)
    _, _, ch, cw = crop
    if ch % ph or cw % pw:
        raise h.fail(
            f"metadata key 'sample_meta.crop': height and width must be multiples of the"
            f" {ph}x{pw} patch, got {ch}x{cw}"
        )
    for key in ("height", "width"):
        if key in meta:
            _int(h, key, meta[key], 1)
    resize = meta.get("resize")
    if resize is not None and not (
        isinstance(resize, list)
        and len(resize) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resize)
    ):
        raise h.fail(
            f"metadata key 'sample_meta.resize': expected null or [height, width], got"
            f" {json.dumps(resize)[:80]}"
        )
    if "fps" in meta:
        fps = meta["fps"]
        if (
            isinstance(fps, bool)
            or not isinstance(fps, int | float)
            or not math.isfinite(fps)
            or not 0 < fps <= 1000
        ):
            raise h.fail(
                f"metadata key 'sample_meta.fps': expected a number in (0, 1000], got {fps!r}"
            )
    if "valid_frames" in meta:
        _int(h, "valid_frames", meta["valid_frames"], 1, pt)
    frames = 1
    if "frames" in meta:
        t = _int(h, "frames", meta["frames"], 1)  # its grid must match the coords (below)
        pad = _int(h, "pad", meta.get("pad", -t % pt), 0, pt - 1)
        if (t + pad) % pt:
            raise h.fail(
                f"metadata key 'sample_meta.pad': frames {t} + pad {pad} must be a multiple of"
                f" {pt}, got pad {pad}"
            )
        frames = (t + pad) // pt
    return Grid(frames, ch // ph, cw // pw, ch, cw)


def check_layout(
    h: LatentsHeader,
    patch: tuple[int, int, int],
    *,
    streamed: bool,
    max_pixels: int | None = None,
    max_tokens: int | None = None,
) -> Grid | None:
    """Check the layout the sample meta declares against the coords' shape and the budgets.

    Args:
        h: from `read_header`.
        patch: the model's (frames, rows, cols) patch size.
        streamed: the decode streams (only one latent frame's tokens at a time).
        max_pixels / max_tokens: budget overrides (default `atoken.core.budgets`).

    Returns:
        The pixel grid, or None when the sample meta has no ``crop``.
    """
    grid = pixel_grid(h, patch)
    pix_budget = budgets.max_pixels(max_pixels)
    tok_budget = budgets.max_tokens(max_tokens)
    n = h.rows
    if grid is not None:
        if grid.height * grid.width > pix_budget:
            raise h.fail(
                f"metadata key 'sample_meta.crop' declares {grid.height}x{grid.width} ="
                f" {grid.height * grid.width:,} pixels a frame, above the pixel budget of"
                f" {pix_budget:,}; raise it with {budgets.PIXELS_ENV}=N"
            )
        if grid.rows >= COORD_LIMIT or grid.cols >= COORD_LIMIT:
            raise h.fail(
                f"metadata key 'sample_meta.crop' declares a {grid.rows}x{grid.cols} patch grid;"
                f" token positions allow at most {COORD_LIMIT - 1} a side"
            )
        if grid.cells != n:
            raise h.fail(
                f"metadata key 'sample_meta.crop' (and frames) declare a grid of {grid.frames} x"
                f" {grid.rows} x {grid.cols} = {grid.cells:,} tokens, but 'coords' has {n:,}"
                " rows; expected one row per grid cell"
            )
    at_once = n if not streamed or grid is None else grid.rows * grid.cols
    if at_once > tok_budget:
        what = "a latent frame of" if streamed and grid is not None else "decoding whole"
        raise h.fail(
            f"{what} {at_once:,} tokens is above the token budget of {tok_budget:,}; raise it"
            f" with {budgets.TOKENS_ENV}=N"
        )
    return grid


# ----------------------------------------------------------------------------------- values
def load_tensors(h: LatentsHeader) -> dict[str, Tensor]:
    """Read the tensors (after the header checks) and check their values.

    Returns:
        ``{"coords": int32 [N, 4], "codes": float32 [N, Cz]}`` or ``{"coords", "indices": int32}``.
    """
    try:
        with safe_open(str(h.path), framework="pt") as fh:
            tensors = {name: fh.get_tensor(name) for name in h.tensors}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise h.fail(f"tensor data cannot be read ({reason}); the file may be truncated") from None
    for name, t in tensors.items():
        if tuple(t.shape) != h.tensors[name].shape:
            raise h.fail(f"tensor {name!r} changed while it was read; read it again")
    return check_values(h, tensors)


def check_values(h: LatentsHeader, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Check the values of tensors read for ``h``: coords in range and unique, codes finite.

    Returns:
        ``{"coords": int32 [N, 4], "codes": float32 [N, Cz]}`` or ``{"coords", "indices": int64}``.
    """
    coords = tensors["coords"].long()
    lo, hi = int(coords.min()), int(coords.max())
    if lo < 0 or hi >= COORD_LIMIT:
        outside = ((coords < 0) | (coords >= COORD_LIMIT)).any(0).tolist()  # per axis
        axes = ", ".join(name for name, bad in zip("txyz", outside, strict=True) if bad)
        raise h.fail(
            f"tensor 'coords': expected values in [0, {COORD_LIMIT}), got [{lo}, {hi}] (axis"
            f" {axes})"
        )
    key = ((coords[:, 0] * COORD_LIMIT + coords[:, 1]) * COORD_LIMIT + coords[:, 2]) * COORD_LIMIT
    key = key + coords[:, 3]
    if int(torch.unique(key).numel()) != coords.shape[0]:
        raise h.fail("tensor 'coords' has repeated rows; expected one row per token position")
    out = {"coords": coords.to(torch.int32)}
    if "codes" in tensors:
        codes = tensors["codes"].float()
        if not bool(torch.isfinite(codes).all()):
            bad = int((~torch.isfinite(codes)).any(1).sum())
            raise h.fail(f"tensor 'codes' has NaN or Inf values in {bad} row(s); expected finite")
        out["codes"] = codes
    else:
        out["indices"] = tensors["indices"].long()
    return out


def check_indices(h: LatentsHeader, indices: Tensor, codebook_size: int) -> Tensor:
    """``indices`` as int32, checked to lie in ``[0, codebook_size)``."""
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= codebook_size:
        raise h.fail(
            f"tensor 'indices': expected values in [0, {codebook_size}) (the codebook), got"
            f" [{lo}, {hi}]"
        )
    return indices.to(torch.int32)


def check_grid_coords(h: LatentsHeader, grid: Grid, coords: Tensor) -> None:
    """Coords of a pixel-frame file lie inside its declared grid (z = 0)."""
    limits = (grid.frames, grid.rows, grid.cols, 1)
    for axis, (name, limit) in enumerate(zip("txyz", limits, strict=True)):
        top = int(coords[:, axis].max())
        if top >= limit:
            raise h.fail(
                f"tensor 'coords': {name} reaches {top}, outside the grid that"
                f" 'sample_meta' declares ({name} < {limit})"
            )
