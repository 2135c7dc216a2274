"""One latent shard sample as the `Latents` a tokenizer decodes, checked as a latents file is.

References: `atoken.latents_file` (the same header, layout and value checks).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from atoken import latents_file
from atoken.core.plugins import Components
from atoken.core.tokenizer import Latents, Tokenizer
from atoken.data.format import ShardError


def safe_key(key: str, where: str) -> str:
    """``key`` when it is a relative path without ``..`` (it names an output file)."""
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or ".." in parts or "\\" in key:
        raise ShardError(f"{where}: sample key {key!r} is not a plain relative name")
    return key


def sample_latents(
    model: Tokenizer, sample: dict[str, Any], components: Components | None = None
) -> tuple[Latents, Any, dict[str, Any]]:
    """The latents of a `atoken.data.iter_shard` sample, the adapter that decodes them and the
    sample meta, after `atoken.latents_file`'s checks against ``model`` (fingerprint, widths,
    layout, budgets, values).

    Raises:
        LatentsError: the sample does not fit the model or is corrupt (the message names
            ``shard.tar:key``).
    """
    from atoken.pipeline import latents_from_header

    meta = sample["meta"]
    where = f"{sample.get('shard', '?')}:{sample['key']}"
    safe_key(sample["key"], where)
    name = "codes" if "codes" in sample else "indices"
    raw = {"coords": sample["coords"], name: sample[name]}
    tensors = {
        k: latents_file.TensorInfo("F32" if k == "codes" else "I32", tuple(v.shape))
        for k, v in raw.items()
    }
    strings = {k: str(meta[k]) for k in ("model", "model_id", "quantizer", "modality", "source")}
    header = latents_file.header_from_parts(
        where, strings, meta["adapter_options"], meta["sample_meta"], tensors
    )
    return latents_from_header(
        model,
        header,
        lambda: latents_file.check_values(header, raw),
        components,
    )
