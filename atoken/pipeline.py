"""File-level operations behind the CLI: reconstruct, encode to a latents file, decode one.

Everything here goes through the adapter registry, so a plugin's modality gets these for free.
Outputs are computed completely before anything is written, and every file is written atomically
(streamed video files are written to a temporary file while decoding and moved into place at the
end, so a failure leaves nothing half-written).

Adapters come from `adapter_for` built for the model they serve (``model=``: the model's token
geometry, device and companion models reach the adapter's factory in its `AdapterContext`).

Optional adapter capabilities (declared, `atoken.core.capabilities`; asked with
``has_capability``, never ``getattr``):

- ``metric_convention``: how ``metrics`` are computed (written into metrics.json as
  ``convention``; images and video: `atoken.core.metrics.METRIC_CONVENTION`).
- ``metric_lower_is_better``: names of ``metrics`` keys where lower is better (image: LPIPS);
  ``metric_info_keys``: keys that are plain facts, not quality (video: frames).
- ``output_suffixes``: every suffix ``save`` writes, chosen by the path (image: PNG, JPEG,
  WebP); `writable_suffixes` reads it, so ``atoken decode -o x.jpg`` writes a JPEG, and a suffix
  the adapter cannot write is refused before decoding.
- ``save_labelled_comparison(reference, reconstruction, path, *, metrics)``: the side-by-side
  picture with labelled halves (the reconstruction's carries its metrics); the layout it returns
  (label band height, the two pictures' boxes) goes into metrics.json as ``side_by_side_layout``.
  Without it ``save_comparison`` writes the picture. A ``stream_sink``'s ``comparison_layout``
  (video) is recorded the same way.
- ``comparison_suffix``: suffix of the side-by-side file when it differs from ``output_suffix``
  (3D writes Gaussians as ``.ply`` and compares rendered views in a ``.png``).
- ``stream_sink(meta, coords, output, *, comparison=None, reference=None, fps=None,
  progress=None)``: a context manager with ``add(coords, feats)`` and ``metrics()`` that writes
  output while `Tokenizer.decode_stream` decodes (video: frames go to the MP4 a tile step at a
  time, so a long clip is never held decoded). Its files are committed when the block ends
  without error; `reconstruct_to_dir` and `decode_to_file` use it when the adapter has it.
- ``open(path)``: a lazily read sample (video: a `VideoFile`, header budgets checked, frames
  decoded in order when needed) that the adapter's other methods accept in place of
  ``load(path)``'s tensor; `open_sample` prefers it, so `encode_to_file` and the CLI never hold
  a whole clip.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atoken import latents_file
from atoken.core.capabilities import has_capability
from atoken.core.execution import STREAM_GROUP_TOKENS
from atoken.core.modality import ModalityAdapter
from atoken.core.plugins import Components, default_components
from atoken.core.reconstruct import (  # adapter_for: the CLI (atoken.cli.model) takes it from here
    Reconstruction,
    adapter_for,
    on_cpu,
    reconstruct_sample,
)
from atoken.core.serialization import atomic_write_json, outputs_together, save_tensors
from atoken.core.tokenizer import Latents, Tokenizer
from atoken.core.tokens import PatchTokens, collate
from atoken.latents_file import LATENTS_FORMAT, LATENTS_VERSION


def open_sample(adapter: ModalityAdapter, path: str | os.PathLike[str]) -> Any:
    """``adapter.open(path)`` (a lazily read sample) when the adapter declares it, else ``load``."""
    return adapter.open(path) if has_capability(adapter, "open") else adapter.load(path)


def encode_sample(
    model: Tokenizer, adapter: ModalityAdapter, sample: Any
) -> tuple[Latents, dict[str, Any]]:
    """Tokenize and encode one sample (inference); returns the latents and the sample's meta.

    An adapter with ``to_token_chunks(sample, frames)`` (video) is encoded chunk by chunk with
    `Tokenizer.encode_chunks` whenever that gives the same latents (independent encoder tiles):
    chunks of whole tiles, about `STREAM_GROUP_TOKENS` tokens each, so a long clip's patches
    never exist all at once (and a lazily read clip, see `open_sample`, is decoded a chunk at a
    time). Otherwise ``to_tokens`` and ``encode``.
    """
    tc = model.temporal()
    chunked = has_capability(adapter, "to_token_chunks")
    if chunked and tc.tile is not None and tc.encoder_cache == 0:
        # one latent frame: the grid's token count
        nf = model.config.geometry.frames
        first = next(iter(adapter.to_token_chunks(sample[:nf], nf)))
        per_frame = max(1, len(first))
        tiles = max(1, STREAM_GROUP_TOKENS // (per_frame * tc.tile))
        frames = tiles * tc.tile * nf
        with torch.inference_mode():
            latents = model.encode_chunks(adapter.to_token_chunks(sample, frames))
        return latents, dict(latents.tokens.meta[0])
    tokens = adapter.to_tokens(sample)
    with torch.inference_mode():
        latents = model.encode([tokens])
    return latents, dict(tokens.meta)


def _json_number(value: float) -> float | str:
    """JSON has no infinities (a perfect reconstruction has PSNR inf): write them as strings."""
    return value if math.isfinite(value) else str(value)


def output_paths(adapter: ModalityAdapter, out_dir: Path) -> dict[str, Path]:
    """Where a reconstruction goes: ``reconstruction``, ``side_by_side`` and ``metrics`` files."""
    suffix = adapter.output_suffix
    comparison_suffix = (
        adapter.comparison_suffix if has_capability(adapter, "comparison_suffix") else suffix
    )
    return {
        "reconstruction": out_dir / f"reconstruction{suffix}",
        "side_by_side": out_dir / f"side_by_side{comparison_suffix}",
        "metrics": out_dir / "metrics.json",
    }


def writable_suffixes(adapter: ModalityAdapter) -> tuple[str, ...]:
    """The suffixes ``adapter.save`` writes (``output_suffixes``, else ``output_suffix``)."""
    if has_capability(adapter, "output_suffixes"):
        return tuple(adapter.output_suffixes)
    return (adapter.output_suffix.lower(),)


def _convention(adapter: ModalityAdapter) -> dict[str, Any]:
    """``{"convention": ...}`` when the adapter says how its metrics are computed."""
    convention = adapter.metric_convention if has_capability(adapter, "metric_convention") else None
    return {"convention": dict(convention)} if convention else {}


def write_reconstruction(
    result: Reconstruction, adapter: ModalityAdapter, out_dir: Path, extra: dict
) -> dict[str, Path]:
    """Write reconstruction, side-by-side view and metrics.json into ``out_dir`` (atomically)."""
    paths = output_paths(adapter, out_dir)
    adapter.save(result.reconstruction, paths["reconstruction"])
    layout = None
    if has_capability(adapter, "save_labelled_comparison"):
        layout = adapter.save_labelled_comparison(
            result.reference, result.reconstruction, paths["side_by_side"], metrics=result.metrics
        )
    else:
        adapter.save_comparison(result.reference, result.reconstruction, paths["side_by_side"])
    atomic_write_json(
        paths["metrics"],
        {
            "source": str(result.source),
            "tokens": result.tokens,
            **{k: _json_number(round(v, 6)) for k, v in result.metrics.items()},
            "timings": {k: round(v, 4) for k, v in result.timings.items()},
            **_convention(adapter),
            **_layout(layout),
            **extra,
        },
    )
    return paths


def _layout(layout: Any) -> dict[str, Any]:
    """``{"side_by_side_layout": ...}`` when the comparison reported where its halves lie."""
    return {"side_by_side_layout": dict(layout)} if layout else {}


def latents_tensors(latents: Latents) -> dict[str, torch.Tensor]:
    """What a latents file (or a latent shard sample) stores of one sample's latents, on the CPU:
    ``coords [N, 4]`` int32 and ``indices [N, G]`` int32 (discrete quantizers) or ``codes
    [N, Cz]`` float32."""
    tensors = {"coords": latents.tokens.coords.cpu().to(torch.int32)}
    if latents.indices is not None:
        tensors["indices"] = latents.indices.cpu().to(torch.int32)
    else:
        tensors["codes"] = latents.codes.float().cpu()
    return tensors


def encode_to_file(
    model: Tokenizer,
    model_ref: str,
    adapter: ModalityAdapter,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    adapter_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode one input file and write a latents safetensors file with what decoding needs.

    ``adapter`` should be built for ``model`` (``adapter_for(..., model=model)``). ``model_ref``
    is what the model was loaded from (``--model``); the file stores it robustly
    (`atoken.latents_file.model_reference`: a directory's absolute path, or the name).
    """
    sample = open_sample(adapter, source)
    latents, sample_meta = encode_sample(model, adapter, sample)
    tensors = latents_tensors(latents)
    meta = {
        "format": LATENTS_FORMAT,
        "version": LATENTS_VERSION,
        "model_id": model.model_id,
        **latents_file.model_reference(model_ref).as_metadata(),
        "quantizer": model.config.quantizer.name,
        "modality": latents.tokens.modality[0],
        "adapter_options": latents_file.json_entry("adapter_options", adapter_options or {}),
        "sample_meta": latents_file.json_entry("sample_meta", sample_meta),
        "source": Path(source).name,
    }
    save_tensors(out, tensors, metadata=meta)
    return {
        "tokens": latents.tokens.num_tokens,
        **{k: list(v.shape) for k, v in tensors.items()},
    }


def read_latents_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """Metadata of a latents file, its structure checked (`atoken.latents_file.read_header`);
    raises `atoken.latents_file.LatentsError` (a `CheckpointError`) naming the bad key."""
    return dict(latents_file.read_header(path).metadata)


def model_of_latents(path: str | os.PathLike[str]) -> str:
    """What to load to decode a latents file without ``--model``: the model directory it names
    (an absolute path, or for files of older versions the path as typed), or the model's name.

    Raises:
        LatentsError: the directory is not there (moved or deleted); the one-line message says
            to pass ``--model``.
    """
    meta = read_latents_header(path)
    return latents_file.resolve_model(
        meta["model"], meta.get("model_kind"), meta["model_id"], f"latents file '{path}'"
    )


def load_latents(
    model: Tokenizer,
    path: str | os.PathLike[str],
    components: Components | None = None,
    *,
    whole: bool | None = None,
) -> tuple[Latents, ModalityAdapter, dict[str, Any]]:
    """A latents file's latents, the adapter that decodes them and the sample meta.

    The file is validated in full before anything is decoded (`atoken.latents_file`): it was
    made by this model, every tensor's dtype and shape, the layout its sample meta declares,
    the pixel and token budgets, the values (finite codes, indices in range, coords in range).

    Args:
        whole: the caller decodes all tokens at once (token budget on the whole file); default:
            unless the adapter streams (``stream_sink``: budget per latent frame).
    """
    header = latents_file.read_header(path)
    return latents_from_header(
        model, header, lambda: latents_file.load_tensors(header), components, whole=whole
    )


def latents_from_header(
    model: Tokenizer,
    header: latents_file.LatentsHeader,
    read_tensors: Callable[[], dict[str, torch.Tensor]],
    components: Components | None = None,
    *,
    whole: bool | None = None,
) -> tuple[Latents, ModalityAdapter, dict[str, Any]]:
    """`load_latents` for any latents with a checked header (a file's, or a latent shard
    sample's from `atoken.latents_file.header_from_parts`).

    Args:
        read_tensors: reads the tensors with their values checked
            (`atoken.latents_file.check_values`); called after the header and layout checks.
    """
    latents_file.check_against_model(header, model)
    comps = components or default_components()
    modality = header.metadata["modality"]
    adapter = adapter_for(header.path, modality, header.adapter_options or None, comps, model=model)
    if whole is None:
        whole = not has_capability(adapter, "stream_sink")
    grid = latents_file.check_layout(header, tuple(model.config.patch_size), streamed=not whole)
    tensors = read_tensors()
    coords = tensors["coords"]
    if grid is not None:
        latents_file.check_grid_coords(header, grid, coords)
    sample_meta = header.sample_meta
    layout_feats = torch.zeros(coords.shape[0], 1)
    layout = collate([PatchTokens(layout_feats, coords, modality, sample_meta)])
    if "indices" in tensors:
        indices = latents_file.check_indices(
            header, tensors["indices"], model.quantizer.codebook_size
        )
        latents = model.latents_from_indices(indices, layout)
    else:
        latents = Latents(tokens=layout.replace(tensors["codes"]))
    return latents, adapter, sample_meta


def decode_from_file(
    model: Tokenizer, path: str | os.PathLike[str], components: Components | None = None
) -> tuple[torch.Tensor, ModalityAdapter]:
    """Decode a latents file back into a sample; checks it was made by this model."""
    latents, adapter, _ = load_latents(model, path, components, whole=True)
    with torch.inference_mode():
        decoded = model.decode(latents)
    patch = decoded.split()[0]
    sample = adapter.from_tokens(on_cpu(patch))
    return sample, adapter


#: ``progress(done, total)`` in the adapter's units (video: frames)
ProgressFn = Callable[[int, int], None]


def decode_to_file(
    model: Tokenizer,
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    components: Components | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Decode a latents file and write the sample to ``output`` (atomically).

    An adapter with ``stream_sink`` (video) gets the decoded rows a temporal tile step at a
    time and writes them as they come; others decode whole and ``save``.

    Returns:
        ``{"streamed": bool, "shape": [...]}`` of what was written.
    """
    latents, adapter, meta = load_latents(model, path, components)
    return decode_latents_to_file(model, latents, adapter, meta, output, progress)


def decode_latents_to_file(
    model: Tokenizer,
    latents: Latents,
    adapter: ModalityAdapter,
    meta: dict[str, Any],
    output: str | os.PathLike[str],
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Decode checked latents (`load_latents`, `latents_from_header`) into ``output``
    (atomically; streamed through ``stream_sink`` when the adapter has it)."""
    if not has_capability(adapter, "stream_sink"):
        with torch.inference_mode():
            decoded = model.decode(latents)
        patch = decoded.split()[0]
        sample = adapter.from_tokens(on_cpu(patch))
        adapter.save(sample, output)
        return {"streamed": False, "shape": list(getattr(sample, "shape", ()))}
    sink = adapter.stream_sink(meta, latents.tokens.coords, output, progress=progress)
    with sink, torch.inference_mode():
        for chunk in model.decode_stream(latents):
            sink.add(chunk.coords, chunk.feats)
            del chunk
    shape = [sink.frames_done, *_frame_shape(meta, model.config.geometry.channels)]
    return {"streamed": True, "shape": shape}


def _frame_shape(meta: dict[str, Any], channels: int) -> list[int]:
    _, _, h, w = meta["crop"]
    return [h, w, channels]


@dataclass
class StreamedReconstruction:
    """What `reconstruct_to_dir` wrote for one input."""

    source: Path
    tokens: int
    metrics: dict[str, float]
    paths: dict[str, Path]
    streamed: bool
    timings: dict[str, float] = field(default_factory=dict)


def reconstruct_to_dir(
    model: Tokenizer,
    adapter: ModalityAdapter,
    sample: torch.Tensor,
    source: Path | str,
    out_dir: Path,
    extra: dict,
    progress: ProgressFn | None = None,
) -> StreamedReconstruction:
    """Reconstruct one sample into ``out_dir``: reconstruction, side-by-side, metrics.json.

    With an adapter that has ``stream_sink`` (video) the decoded output is streamed: frames go
    to the reconstruction and side-by-side files and into the per-frame metrics a tile step at
    a time, so a long clip is never held decoded. Otherwise `reconstruct_sample` and
    `write_reconstruction`. ``sample`` may be what `open_sample` returns (video: a `VideoFile`,
    read in order for the encoder and again, beside the decoder, for the metrics and the
    side-by-side view). The three files are written in one `outputs_together` block: they
    appear together or, on any error (a full disk, an interrupted decode), not at all.
    """
    if not has_capability(adapter, "stream_sink"):
        result = reconstruct_sample(model, adapter, sample, source)
        with outputs_together():
            paths = write_reconstruction(result, adapter, out_dir, extra)
        return StreamedReconstruction(
            Path(source), result.tokens, result.metrics, paths, False, result.timings
        )
    paths = output_paths(adapter, out_dir)
    t0 = time.perf_counter()
    latents, meta = encode_sample(model, adapter, sample)
    t1 = t2 = time.perf_counter()
    with outputs_together(), torch.inference_mode():
        sink = adapter.stream_sink(
            meta,
            latents.tokens.coords,
            paths["reconstruction"],
            comparison=paths["side_by_side"],
            reference=sample,
            progress=progress,
        )
        with sink:
            for chunk in model.decode_stream(latents):
                sink.add(chunk.coords, chunk.feats)
                del chunk
        t3 = time.perf_counter()
        metrics = sink.metrics()
        timings = {"tokenize_encode_s": t1 - t0, "decode_s": t3 - t2}
        n_tokens = latents.tokens.num_tokens
        atomic_write_json(
            paths["metrics"],
            {
                "source": str(source),
                "tokens": n_tokens,
                **{k: _json_number(round(v, 6)) for k, v in metrics.items()},
                "timings": {k: round(v, 4) for k, v in timings.items()},
                **_convention(adapter),
                # a sink may say where its comparison's halves lie (video: `VideoSink`)
                **_layout(getattr(sink, "comparison_layout", None)),
                **extra,
            },
        )
    return StreamedReconstruction(Path(source), n_tokens, metrics, paths, True, timings)
