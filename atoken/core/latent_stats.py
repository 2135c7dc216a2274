"""Per-channel statistics of a tokenizer's latents, stored with the model.

A generator trained on latents wants them at about zero mean and unit variance per channel
(diffusers' ``latents_mean`` / ``latents_std``, the LDM ``scaling_factor``). `LatentStats`
holds the mean and standard deviation of each of the ``Cz`` latent channels over a data set, as
the decoder reads them with ``sample=False``: the posterior means for a continuous (``kl``)
model, the quantized codes for a discrete (``fsq``) one. Every token counts once (a large image
weighs more than a small one), as the per-pixel statistics of diffusers' VAEs do.

They live in the model directory's ``config.json`` under the top-level key ``latent_stats``
(`STATS_KEY`), beside the ``model`` config and not inside it: `Tokenizer.model_id` hashes the
``ModelConfig``, so storing statistics does not change the fingerprint latents files carry. The
statistics record the ``model_id`` they were computed with; a tokenizer whose weights changed
since (a fine-tuned copy) drops them on load and on save, so stale statistics never normalise
latents silently.

``{"latent_stats": {"mean": [Cz floats], "std": [Cz floats], "tokens": N, "samples": n,
"model_id": "...", "of": "posterior means" | "codes", "data": "what they were computed on"}}``

`LatentAccumulator` merges batches in float64 (Chan et al.'s pairwise update, so millions of
tokens do not lose precision); `compute_latent_stats` runs a model over token batches;
`stats_of_files` over files and folders read by the registered adapters (with progress and an
ETA on a terminal); `read_latent_stats` / `write_latent_stats` read and update a model
directory (the write is atomic: the old ``config.json`` or the new one, never half of one).

References: Chan, Golub and LeVeque, "Updating formulae and a pairwise algorithm for computing
sample variances" (1979); diffusers ``AutoencoderKL`` config (``scaling_factor``,
``shift_factor``, ``latents_mean``, ``latents_std``); Rombach et al. (2022) latent scaling.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from atoken.core.errors import InputError
from atoken.core.serialization import CheckpointError

if TYPE_CHECKING:
    from atoken.core.plugins import Components
    from atoken.core.tokenizer import TokenInput, Tokenizer

logger = logging.getLogger(__name__)

#: the top-level key of a model's ``config.json`` holding its latent statistics
STATS_KEY = "latent_stats"
#: the keys of the ``latent_stats`` object
STATS_FIELDS = ("mean", "std", "tokens", "samples", "model_id", "of", "data")
#: how to compute statistics, for error messages
STATS_HINT = "compute them with: atoken stats --model MODEL_DIR --data FOLDER"


@dataclass(frozen=True)
class LatentStats:
    """Per-channel mean and standard deviation of a model's latents over a data set.

    Attributes:
        mean: ``Cz`` channel means.
        std: ``Cz`` channel standard deviations (population, all > 0).
        tokens: latent tokens (positions) they were computed over.
        samples: samples (images, clips) those tokens came from.
        model_id: `Tokenizer.model_id` of the model that produced the latents.
        of: ``"posterior means"`` (continuous model) or ``"codes"`` (discrete model).
        data: a short description of the data (paths or a name).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    tokens: int
    samples: int
    model_id: str
    of: str = "posterior means"
    data: str = ""

    @property
    def channels(self) -> int:
        return len(self.mean)

    def tensors(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``(mean [Cz], std [Cz])`` as tensors."""
        return (
            torch.tensor(self.mean, device=device, dtype=dtype),
            torch.tensor(self.std, device=device, dtype=dtype),
        )

    def _check_width(self, z: Tensor, dim: int) -> int:
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.ndim == 0:
            got = f"{z.dtype} {tuple(z.shape)}" if isinstance(z, Tensor) else type(z).__name__
            raise InputError(f"latents must be a float tensor with a channel axis, got {got}")
        dim = dim % z.ndim
        if z.shape[dim] != self.channels:
            raise InputError(
                f"latents have {z.shape[dim]} channels on axis {dim}, the statistics have"
                f" {self.channels}"
            )
        return dim

    def _shaped(self, z: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        mean, std = self.tensors(z.device, z.dtype)  # [Cz]
        shape = [1] * z.ndim
        shape[dim] = self.channels
        return mean.view(shape), std.view(shape)

    def normalize(self, z: Tensor, dim: int = -1) -> Tensor:
        """``(z - mean) / std`` along channel axis ``dim`` (``-1``: ``[N, Cz]`` rows; ``1``:
        dense ``[B, Cz, ...]``)."""
        dim = self._check_width(z, dim)
        mean, std = self._shaped(z, dim)
        return (z - mean) / std

    def denormalize(self, z: Tensor, dim: int = -1) -> Tensor:
        """``z * std + mean``, the inverse of `normalize`."""
        dim = self._check_width(z, dim)
        mean, std = self._shaped(z, dim)
        return z * std + mean

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The ``latent_stats`` object of a ``config.json``."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "tokens": self.tokens,
            "samples": self.samples,
            "model_id": self.model_id,
            "of": self.of,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str, latent_channels: int | None = None) -> LatentStats:
        """The statistics of a ``latent_stats`` object, checked.

        Raises:
            CheckpointError: naming ``where`` and the key that is missing, unknown or wrong
                (means and stds of another width than ``latent_channels``, a std that is not
                finite and positive, ...).
        """
        key = f"{where}: {STATS_KEY}"
        if not isinstance(obj, dict):
            raise CheckpointError(f"{key}: expected an object, got {type(obj).__name__}")
        unknown = sorted(str(k) for k in obj if k not in STATS_FIELDS)
        missing = [k for k in STATS_FIELDS[:5] if k not in obj]
        if unknown or missing:
            what = unknown and f"unknown key(s) {', '.join(unknown)}"
            what = what or f"missing key(s) {', '.join(missing)}"
            raise CheckpointError(f"{key}: {what} (it holds {', '.join(STATS_FIELDS)})")
        values: dict[str, tuple[float, ...]] = {}
        for name in ("mean", "std"):
            row = obj[name]
            if not isinstance(row, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in row
            ):
                raise CheckpointError(f"{key}.{name}: expected a list of finite numbers")
            if latent_channels is not None and len(row) != latent_channels:
                raise CheckpointError(
                    f"{key}.{name}: {len(row)} values, the model has {latent_channels} latent"
                    f" channels; recompute them ({STATS_HINT})"
                )
            values[name] = tuple(float(v) for v in row)
        if len(values["mean"]) != len(values["std"]) or not values["mean"]:
            raise CheckpointError(f"{key}: mean and std must be non-empty and of equal length")
        if min(values["std"]) <= 0:
            raise CheckpointError(f"{key}.std: every value must be above 0")
        for name in ("tokens", "samples"):
            if isinstance(obj[name], bool) or not isinstance(obj[name], int) or obj[name] < 1:
                raise CheckpointError(f"{key}.{name}: expected a positive integer")
        for name in ("model_id", "of", "data"):
            if name in obj and not isinstance(obj[name], str):
                raise CheckpointError(f"{key}.{name}: expected a string")
        return cls(
            mean=values["mean"],
            std=values["std"],
            tokens=obj["tokens"],
            samples=obj["samples"],
            model_id=obj["model_id"],
            of=obj.get("of", "posterior means"),
            data=obj.get("data", ""),
        )


class LatentAccumulator:
    """Running per-channel count, mean and sum of squared deviations (float64).

    Batches merge with Chan et al.'s pairwise formula, so the result equals the statistics of
    all rows at once up to float64 rounding, however the rows were batched.
    """

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.count = 0
        self.samples = 0
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)

    def update(self, rows: Tensor, samples: int = 1) -> None:
        """Add ``rows [n, Cz]`` (the latents of ``samples`` samples)."""
        if rows.ndim != 2 or rows.shape[1] != self.channels:
            raise InputError(f"latent rows must be [n, {self.channels}], got {tuple(rows.shape)}")
        x = rows.detach().to("cpu", torch.float64)  # [n, Cz]
        n = x.shape[0]
        if n == 0:
            return
        if not torch.isfinite(x).all():
            raise InputError(
                "the model produced NaN or Inf latents; statistics would be meaningless"
            )
        mean_b = x.mean(0)  # [Cz]
        m2_b = ((x - mean_b) ** 2).sum(0)  # [Cz]
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n / total)
        self.count = total
        self.samples += samples

    def result(self, *, model_id: str, of: str, data: str) -> LatentStats:
        """The statistics so far.

        Raises:
            InputError: no rows were added, or a channel is constant over them (its std is 0,
                normalising by it would divide by zero).
        """
        if self.count == 0:
            raise InputError("no latents to compute statistics from; give at least one sample")
        std = (self.m2 / self.count).sqrt()  # [Cz] population std
        flat = [int(c) for c in torch.nonzero(std <= 0).flatten()]
        if flat:
            raise InputError(
                f"latent channel(s) {flat[:8]} are constant over the {self.count} tokens given;"
                " compute the statistics on more (or more varied) data"
            )
        return LatentStats(
            mean=tuple(float(v) for v in self.mean),
            std=tuple(float(v) for v in std),
            tokens=self.count,
            samples=self.samples,
            model_id=model_id,
            of=of,
            data=data,
        )


def latents_kind(model: Tokenizer) -> str:
    """What a model's statistics describe: ``"codes"`` (discrete) or ``"posterior means"``."""
    return "codes" if model.quantizer.discrete else "posterior means"


@torch.inference_mode()
def encode_for_stats(model: Tokenizer, tokens: TokenInput) -> Tensor:
    """``[N, Cz]``: what the decoder reads for ``tokens`` without sampling (the posterior means
    of a continuous model, the codes of a discrete one), un-normalised."""
    return model.encode(tokens, sample=False).codes


def compute_latent_stats(
    model: Tokenizer, batches: Iterable[TokenInput], *, data: str = ""
) -> LatentStats:
    """Statistics of ``model``'s latents over token batches.

    Args:
        model: the tokenizer (in eval mode).
        batches: `SparseTokens`, `PatchTokens` or lists of them (one batch per item).
        data: what the batches are, recorded in the result.

    Raises:
        InputError: no tokens, or a constant channel.
    """
    from atoken.core.tokens import PatchTokens, SparseTokens

    acc = LatentAccumulator(model.config.latent_channels)
    for batch in batches:
        count = (
            batch.batch_size
            if isinstance(batch, SparseTokens)
            else 1
            if isinstance(batch, PatchTokens)
            else len(batch)
        )
        acc.update(encode_for_stats(model, batch), samples=count)
    return acc.result(model_id=model.model_id, of=latents_kind(model), data=data)


# --------------------------------------------------------------------------- files
def data_files(inputs: Sequence[str | os.PathLike[str]], extensions: Iterable[str]) -> list[Path]:
    """Files named in ``inputs``, folders expanded to the files under them (recursively, sorted,
    hidden entries skipped) whose suffix is in ``extensions``.

    Raises:
        InputError: an input that does not exist, or nothing to read.
    """
    from atoken.core.folder_files import list_suffixed

    exts = tuple(sorted({e.lower() for e in extensions}))
    out: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            out += [path / rel for rel in list_suffixed(path, True, exts)]
        elif path.is_file():
            out.append(path)
        else:
            raise InputError(
                f"data {str(path)!r} does not exist; give image/video files or folders"
            )
    if not out:
        raise InputError(
            f"no files any adapter reads ({' '.join(exts)}) in {', '.join(map(str, inputs))}"
        )
    return out


def stats_of_files(
    model: Tokenizer,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    components: Components | None = None,
    max_res: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[LatentStats, dict[str, str]]:
    """Statistics of ``model``'s latents over the files and folders ``inputs``.

    Each file goes through the adapter that claims its suffix (`adapter_for`, built for the
    model), at eval settings (centre crop to the patch grid, the adapter's default resize), one
    file per encode. A file the adapter cannot read is skipped and reported.

    Args:
        model: the tokenizer (in eval mode).
        inputs: files and folders (folders: every file under them an adapter reads).
        components: registries; default: the installed plugins.
        max_res: downscale inputs whose longer side exceeds this (adapters with ``max_res``).
        limit: use only the first ``limit`` files.
        progress: a progress bar with an ETA on a terminal (stderr).

    Returns:
        ``(stats, skipped)``: skipped maps a file to the reason it could not be read.

    Raises:
        InputError: nothing to read, no readable file, or a constant channel.
    """
    from atoken.core.plugins import default_components
    from atoken.core.progress import progress_bar
    from atoken.core.reconstruct import adapter_for

    comps = components or default_components()
    extensions: set[str] = set()
    for entry in comps.adapters.entries():
        try:
            extensions.update(comps.adapters.build(entry.name).extensions)
        except Exception:  # noqa: BLE001 - an adapter that cannot be built reads nothing here
            continue
    files = data_files(inputs, extensions)[:limit]
    adapters: dict[str, Any] = {}  # suffix -> adapter built for the model
    acc = LatentAccumulator(model.config.latent_channels)
    skipped: dict[str, str] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("latent statistics (files)", total=len(files)) if bar else None
        for path in files:
            suffix = path.suffix.lower()
            if suffix not in adapters:
                probe = adapter_for(path, components=comps, model=model)
                opts = {"max_res": max_res} if max_res and _has_option(probe, "max_res") else None
                adapters[suffix] = (
                    adapter_for(path, probe.name, opts, comps, model=model) if opts else probe
                )
            adapter = adapters[suffix]
            try:
                tokens = adapter.to_tokens(adapter.load(path))
            except (InputError, OSError, ValueError) as exc:
                skipped[str(path)] = " ".join(str(exc).split()) or type(exc).__name__
                logger.warning("latent statistics: skipped %s (%s)", path, skipped[str(path)])
            else:
                acc.update(encode_for_stats(model, [tokens]))
            if bar is not None:
                bar.advance(task)
    if acc.count == 0:
        raise InputError(
            f"none of the {len(files)} file(s) could be read; first: "
            + next(f"{k}: {v}" for k, v in skipped.items())
        )
    described = ", ".join(str(p) for p in inputs)
    stats = acc.result(model_id=model.model_id, of=latents_kind(model), data=described)
    return stats, skipped


def _has_option(adapter: Any, name: str) -> bool:
    options = getattr(adapter, "options", None)
    return options is not None and name in type(options).model_fields


# --------------------------------------------------------------------------- model directories
def read_latent_stats(
    directory: str | os.PathLike[str], latent_channels: int | None = None
) -> LatentStats | None:
    """The statistics a model directory's ``config.json`` holds, or None.

    Raises:
        CheckpointError: a ``config.json`` that does not hold, or a malformed ``latent_stats``.
    """
    from atoken.core.model_dir import TOKENIZER_FORMAT
    from atoken.core.pretrained import CONFIG_NAME, read_document

    doc = read_document(directory, TOKENIZER_FORMAT)
    if STATS_KEY not in doc:
        return None
    return LatentStats.from_json(
        doc[STATS_KEY], str(Path(directory) / CONFIG_NAME), latent_channels
    )


def write_latent_stats(directory: str | os.PathLike[str], stats: LatentStats | None) -> Path:
    """Store ``stats`` in (None: remove them from) a model directory's ``config.json``.

    The rest of the document is kept as it is; the file is replaced atomically.

    Raises:
        CheckpointError: the directory's ``config.json`` does not hold.
    """
    from atoken.core.model_dir import TOKENIZER_FORMAT
    from atoken.core.pretrained import CONFIG_NAME, read_document
    from atoken.core.serialization import atomic_write_json

    doc = dict(read_document(directory, TOKENIZER_FORMAT))
    if stats is None:
        doc.pop(STATS_KEY, None)
    else:
        doc[STATS_KEY] = stats.to_json()
    return atomic_write_json(Path(directory) / CONFIG_NAME, doc)


def stats_for(model: Tokenizer, stats: LatentStats | None, where: str) -> LatentStats | None:
    """``stats`` when they belong to ``model`` (same `model_id` and width), else None with one
    logged line saying why (statistics of other weights would normalise wrongly)."""
    if stats is None:
        return None
    if stats.channels != model.config.latent_channels:
        logger.warning(
            "%s: latent statistics of %d channels dropped (the model has %d); %s",
            where,
            stats.channels,
            model.config.latent_channels,
            STATS_HINT,
        )
        return None
    current = model.model_id
    if stats.model_id != current:
        logger.warning(
            "%s: latent statistics of model %s dropped (these weights are model %s); %s",
            where,
            stats.model_id,
            current,
            STATS_HINT,
        )
        return None
    return stats
