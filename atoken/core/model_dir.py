"""The model directory: ``config.json`` + ``model.safetensors``, and loading a model by name.

`config_document` / `config_from_document` write and read a model ``config.json`` (format
``atoken``, `FORMAT_VERSION`); `read_model_config` reads one from a directory, size checked
first. `check_weights_header` compares a weights file's safetensors header with the state dict
a config builds on the meta device (`meta_state`) before anything is allocated;
`load_state_dict_checked` loads weights strictly, listing every mismatch. `load_tokenizer`
resolves a shipped model's name, a ``save_pretrained`` directory or a preset name
(`is_untrained`). `Tokenizer.save_pretrained` / ``from_pretrained`` are built on these.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from atoken.core.config import ConfigError, ModelConfig, validate_model_config
from atoken.core.plugins import Components
from atoken.core.presets import PRESETS
from atoken.core.registry import UnknownComponentError
from atoken.core.serialization import CheckpointError, check_state_layout, read_json

if TYPE_CHECKING:
    from atoken.core.tokenizer import Tokenizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "atoken"
FORMAT_VERSION = 1


#: largest ``config.json`` read (a real one is a few KiB)
MAX_CONFIG_BYTES = 1 << 20


def read_model_config(directory: str | os.PathLike[str]) -> ModelConfig:
    """The validated `ModelConfig` of a model directory's ``config.json`` (size checked first)."""
    where = Path(directory) / CONFIG_NAME
    try:
        size = where.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"model config {str(where)!r} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"model config {str(where)!r} cannot be read: {exc}") from None
    if not where.is_file():
        raise CheckpointError(f"model config {str(where)!r} is not a regular file")
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"model config {str(where)!r} is {size:,} bytes; a model config.json is a few KiB"
            f" (at most {MAX_CONFIG_BYTES:,} are read). Is it the right file?"
        )
    return config_from_document(read_json(where, what="model config"), where)


class _MetaBuild(torch.overrides.TorchFunctionMode):
    """Keep a model build on the meta device off PyTorch's slow paths (used inside
    ``torch.device("meta")``).

    Meta tensors have no values, so in-place initialisers are skipped on them; some of those
    (``normal_``, ``erfinv_``, ``clamp_``) and ``arange`` have no compiled meta kernel, and their
    Python fallbacks import torch._dynamo (seconds) on first use. ``arange``-like constructors
    (small 1-D tables such as RoPE frequencies, sized by bounded config values) run on the CPU.
    """

    _FILLS = frozenset(
        "normal_ uniform_ erfinv_ clamp_ clamp_min_ clamp_max_ exponential_ bernoulli_ random_"
        " log_normal_ cauchy_ geometric_ fill_ zero_ mul_ add_ sub_ div_ copy_".split()
    )
    _RANGES = (torch.arange, torch.linspace, torch.logspace)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._RANGES and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        elif getattr(func, "__name__", "") in self._FILLS:
            target = args[0] if args else kwargs.get("tensor")  # nn.init.* pass it by keyword
            if isinstance(target, Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def meta_state(
    config: ModelConfig, *, components: Components | None = None
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of the state dict ``config`` builds, from a model on the meta
    device (no memory is allocated for its parameters)."""
    from atoken.core.tokenizer import build_tokenizer

    try:
        with torch.device("meta"), _MetaBuild():
            model = build_tokenizer(config, components=components, init=False)
    except (RuntimeError, OverflowError, MemoryError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"the model config cannot be built: {reason}") from None
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_weights_header(
    config: ModelConfig,
    weights: str | os.PathLike[str],
    *,
    components: Components | None = None,
    max_bytes: int | None = None,
) -> None:
    """Check, before anything is allocated, that ``weights`` holds exactly the tensors ``config``
    builds and that their size is within the model budget.

    The model is built on the meta device (`meta_state`) and compared with the safetensors header
    (names, shapes and dtype kinds; no tensor is read).

    Args:
        config: the model's config (from ``config.json``).
        weights: the ``model.safetensors`` file.
        components: plugin registries (default: the installed plugins).
        max_bytes: parameter-byte budget (default `atoken.core.budgets.max_model_bytes`).

    Raises:
        CheckpointError: the weights file is missing or unreadable, the config implies more
            parameter bytes than the budget, or a tensor is missing, unexpected, or of another
            shape or dtype kind than the config implies.
    """
    from safetensors import SafetensorError, safe_open

    from atoken.core import budgets

    weights = Path(weights)
    expected = meta_state(config, components=components)
    total = sum(
        math.prod(shape) * torch.empty((), dtype=dt).element_size()
        for shape, dt in expected.values()
    )
    budget = budgets.max_model_bytes(max_bytes)
    if total > budget:
        count = sum(math.prod(shape) for shape, _ in expected.values())
        raise CheckpointError(
            f"model config {str(weights.parent / CONFIG_NAME)!r} declares {count:,} parameters"
            f" ({budgets.human_bytes(total)}), above the model budget of"
            f" {budgets.human_bytes(budget)}; check its sizes (encoder/decoder width, depth,"
            f" mlp_width), or raise the budget with {budgets.MODEL_BYTES_ENV}=BYTES"
        )
    if not weights.is_file():
        raise CheckpointError(f"model weights {str(weights)!r} does not exist")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            header = {k: fh.get_slice(k) for k in fh.keys()}
            found = {k: (tuple(p.get_shape()), str(p.get_dtype())) for k, p in header.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"model weights {str(weights)!r} is not a readable safetensors file"
            f" ({' '.join(str(exc).split())}); it may be truncated or of another format"
        ) from None

    class _Shape:  # what check_state_layout reads of a tensor
        def __init__(self, shape: tuple[int, ...]) -> None:
            self.shape = shape

    check_state_layout(
        {k: _Shape(shape) for k, (shape, _) in expected.items()},
        {k: _Shape(shape) for k, (shape, _) in found.items()},
        header=f"weights in {weights} do not fit the model its config.json declares:",
        shape_label=lambda k, got, want: f"{k}: file {got} vs config {want}",
    )
    wrong = sorted(
        f"{k}: file {found[k][1]} vs model {str(dt).removeprefix('torch.')}"
        for k, (_, dt) in expected.items()
        if dt.is_floating_point != found[k][1].startswith(("F", "BF"))
        or (dt == torch.bool) != (found[k][1] == "BOOL")
    )
    if wrong:
        more = f", ... ({len(wrong)} in all)" if len(wrong) > 20 else ""
        raise CheckpointError(
            f"weights in {weights} have the wrong kind of dtype: {', '.join(wrong[:20])}{more}"
        )


def config_document(config: ModelConfig) -> dict[str, Any]:
    from atoken.core.plugins import _atoken_version

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "atoken_version": _atoken_version(),
        "model": config.model_dump(mode="json"),
    }


#: top-level keys of a model config.json (``converted_from``: written by `atoken convert`)
CONFIG_DOCUMENT_KEYS = ("format", "format_version", "atoken_version", "model", "converted_from")


def config_from_document(doc: Any, where: os.PathLike[str] | str) -> ModelConfig:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "model" not in doc:
        raise CheckpointError(f"{where} is not an atoken model config (expected format 'atoken')")
    version = doc.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{where}: format_version: expected an integer, got {version!r}")
    unknown = sorted(str(k) for k in doc if k not in CONFIG_DOCUMENT_KEYS)
    if unknown:
        raise CheckpointError(
            f"{where}: {', '.join(unknown)}: unknown key (a model config.json holds"
            f" {', '.join(CONFIG_DOCUMENT_KEYS)})"
        )
    if not isinstance(doc["model"], dict):
        raise CheckpointError(
            f"{where}: model: expected an object, got {type(doc['model']).__name__}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format_version {doc['format_version']}; this atoken reads up to"
            f" {FORMAT_VERSION}. Upgrade atoken."
        )
    try:
        return validate_model_config(doc["model"], where=str(where))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def load_state_dict_checked(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Load ``state`` strictly; any missing, unexpected or mis-shaped key is listed in the error."""
    check_state_layout(
        model.state_dict(),
        state,
        header=f"weights in {source} do not fit the model:",
        shape_label=lambda k, got, want: f"{k}: file {got} vs model {want}",
    )
    model.load_state_dict(dict(state), strict=True)


def _shipped_or_path(path: str | os.PathLike[str]) -> Path:
    """The directory of a shipped model named ``path`` (a real directory of that name wins),
    checked to hold its weights; any other ``path`` as a `Path`."""
    from atoken.models import SHIPPED_MODELS, shipped_model_dir

    name = str(path)
    if name not in SHIPPED_MODELS or Path(name).is_dir():
        return Path(path)
    found = shipped_model_dir(name)
    if not (found / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"the shipped model {name!r} is missing from this installation (expected"
            f" {found / WEIGHTS_NAME}); reinstall atoken:"
            " pip install -c constraints.txt --force-reinstall atoken"
        )
    return found


def load_tokenizer(
    name_or_path: str | os.PathLike[str], *, components: Components | None = None
) -> Tokenizer:
    """A shipped trained model's name (`atoken.models`), a `save_pretrained` directory, or a
    preset name (a freshly initialised, untrained model: see `is_untrained`)."""
    from atoken.core.tokenizer import Tokenizer, build_tokenizer
    from atoken.models import SHIPPED_MODELS

    name = str(name_or_path)
    if name in PRESETS:
        return build_tokenizer(name, components=components)
    if name in SHIPPED_MODELS or Path(name).is_dir():
        return Tokenizer.from_pretrained(name, components=components)
    if os.sep in name or name.startswith("."):
        raise CheckpointError(f"model directory {name!r} does not exist")
    names = [*SHIPPED_MODELS, *PRESETS]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    raise UnknownComponentError(
        f"no model named {name!r}{hint}\n  trained models: {', '.join(SHIPPED_MODELS)}"
        f"\n  untrained presets: {', '.join(PRESETS)}"
        "\n  or pass a directory written by save_pretrained (e.g. RUN/model of `atoken train`)"
    )


def is_untrained(name_or_path: str | os.PathLike[str]) -> bool:
    """True when ``name_or_path`` names a preset, which `load_tokenizer` builds at random."""
    return str(name_or_path) in PRESETS
