"""One sample through a tokenizer, in memory: find its adapter, encode, decode, compare.

What evaluation, training's monitor, the CLI (through `atoken.pipeline`) and plugins (through
`atoken.plugin`) share; nothing here writes a file. `adapter_for` picks the adapter of a path from
the registry, built for the model it will serve (its `AdapterContext`: token geometry, device,
companion models; the one place that context is built), `reconstruct_sample` runs one sample
through encode and decode and returns the reference, the reconstruction and the adapter's
metrics.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atoken.core.adapter_context import AdapterContext
from atoken.core.errors import InputError
from atoken.core.modality import ModalityAdapter
from atoken.core.plugins import Components, default_components
from atoken.core.tokenizer import Tokenizer
from atoken.core.tokens import PatchTokens


def adapter_for(
    path: str | os.PathLike[str],
    modality: str | None = None,
    options: dict[str, Any] | None = None,
    components: Components | None = None,
    *,
    model: Tokenizer | None = None,
) -> ModalityAdapter:
    """The adapter named ``modality``, or the one whose ``extensions`` include the file's suffix.

    Suffix matching builds each adapter with its default options (an adapter whose factory
    fails, e.g. for a missing optional dependency, is skipped unless nothing else matches), then
    builds the one match with ``options``. Two adapters claiming the suffix is an error.

    Args:
        path: the input file (its suffix picks the adapter when ``modality`` is None).
        modality: the adapter's registry name.
        options: the adapter's options.
        components: registries; default: the installed plugins.
        model: the tokenizer the adapter will serve: the adapter is built with its context
            (`AdapterContext.of`: token geometry, device, companion models). None: the default
            context (the default model config's geometry, the CPU, no companions).

    Raises:
        InputError: no adapter or several read the suffix, or the chosen adapter cannot serve
            the model's token geometry.
    """
    comps = components or default_components()
    context = AdapterContext.of(model) if model is not None else AdapterContext()
    if modality is not None:
        return comps.adapters.build(modality, options or None, context=context)
    suffix = Path(path).suffix.lower()
    matches: list[str] = []
    known: list[str] = []
    failures: dict[str, str] = {}
    for entry in comps.adapters.entries():
        try:
            extensions = tuple(comps.adapters.build(entry.name).extensions)
        except Exception as exc:  # noqa: BLE001 - an unusable plugin must not block the others
            failures[entry.name] = f"{type(exc).__name__}: {exc}"
            continue
        known.append(f"{entry.name} ({' '.join(extensions)})")
        if suffix in extensions:
            matches.append(entry.name)
    if len(matches) > 1:
        raise InputError(
            f"several adapters read {suffix} files ({', '.join(matches)}); choose one with --modality"
        )
    if not matches:
        broken = "".join(f"; adapter {n} could not be built ({why})" for n, why in failures.items())
        raise InputError(
            f"no adapter reads {suffix or 'files without a suffix'!s} files ({path});"
            f" adapters and their suffixes: {', '.join(known) or 'none'}{broken}."
            " Use --modality to choose one."
        )
    return comps.adapters.build(matches[0], options or None, context=context)


@dataclass
class Reconstruction:
    """One input run through encode and decode."""

    source: Path
    reference: torch.Tensor
    reconstruction: torch.Tensor
    tokens: int
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def on_cpu(patch: PatchTokens) -> PatchTokens:
    """A decoded sample's tokens on the CPU in float32, coords included (adapters rebuild,
    compare and write samples on the CPU, whatever device the model ran on)."""
    return patch.replace(feats=patch.feats.to("cpu", torch.float32), coords=patch.coords.cpu())


def reconstruct_sample(
    model: Tokenizer,
    adapter: ModalityAdapter,
    sample: torch.Tensor,
    source: Path | str = "<tensor>",
) -> Reconstruction:
    """Tokenize, encode, decode and compare one sample (no files written).

    ``adapter`` is built for ``model`` (`adapter_for` with ``model=``) when it needs the model's
    companions or device; any adapter of the model's token geometry works.
    """
    t0 = time.perf_counter()
    tokens = adapter.to_tokens(sample)
    t1 = time.perf_counter()
    with torch.inference_mode():
        latents = model.encode([tokens])
        t2 = time.perf_counter()
        decoded = model.decode(latents)
        t3 = time.perf_counter()
    # back on the CPU, coords included: adapters compare and write on the CPU whatever --device
    rec = adapter.from_tokens(on_cpu(decoded.split()[0]))
    reference = adapter.target(sample, tokens.meta)
    return Reconstruction(
        source=Path(source),
        reference=reference,
        reconstruction=rec,
        tokens=len(tokens),
        metrics=adapter.metrics(reference, rec),
        timings={"tokenize_s": t1 - t0, "encode_s": t2 - t1, "decode_s": t3 - t2},
    )
