"""The pretrained directory: one on-disk format for every model atoken or a plugin saves.

A pretrained directory holds

- ``config.json``: a config document ``{"format": NAME, "format_version": N, <config key>:
  {...}, <provenance keys>..., "companions": {...}}`` plus the class identification
  (`CLASS_KEYS`: ``"_class_name": "Tokenizer", "_library": "atoken", "_library_version":
  "0.1.0"``, in the spirit of diffusers' ``_class_name`` / ``_diffusers_version``; documents
  written before it existed load unchanged). It is read size-checked (`MAX_CONFIG_BYTES`), its
  top-level keys are the format's and nothing else, and the config object is validated by the
  model's own config model (unknown keys refused). A document of another format that names its
  class says so in the one-line error (a Gaussian decoder folder given as a tokenizer);
- ``model.safetensors``: the state dict. Its header is compared with the state dict the config
  builds on the meta device before any parameter is allocated (names, shapes, dtype kinds, and
  the model-size budget), then it is loaded strictly. Nothing is ever unpickled;
- ``README.md``, a model card with the Hub's YAML front matter (`atoken.core.model_card.render_card`;
  written unless a card is given, ``card=False`` for none);
- optionally companion models in subfolders (``gaussian_decoder/``, ...), each a pretrained
  directory of its own, declared in the parent's ``companions`` (name -> format).

`PretrainedMixin` gives an ``nn.Module`` ``save_pretrained`` (all files land together, or none:
`atoken.core.serialization.outputs_together`) and ``from_pretrained``; a class declares its
`PretrainedFormat` and three small hooks (its config as a dict, the config back from a dict,
building the module for a config). ``from_pretrained`` also takes a Hugging Face repo id
(``org/name[@revision]``) resolved through huggingface_hub's cache
(`atoken.core.hub.resolve_pretrained`; a local directory of the same name wins), and
``push_to_hub`` uploads a ``save_pretrained`` folder. The tokenizer (`atoken.core.tokenizer.Tokenizer`) and the
3D plugin's Gaussian decoder use it; checkpoint export writes through the tokenizer's
``save_pretrained``.

References: the ``save_pretrained`` / ``from_pretrained`` shape of Hugging Face transformers and
diffusers (``config.json`` + ``model.safetensors`` + model card; ``ModelMixin``), written here.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from atoken.core.hub import resolve_pretrained
from atoken.core.model_card import CardInfo, render_card
from atoken.core.serialization import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    check_state_layout,
    load_tensors,
    outputs_together,
    read_json,
    save_tensors,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: the key of a config document that declares its companion subfolders
COMPANIONS_KEY = "companions"
#: the class identification of every config document: class name, its distribution and version
CLASS_NAME_KEY, LIBRARY_KEY, LIBRARY_VERSION_KEY = "_class_name", "_library", "_library_version"
CLASS_KEYS = (CLASS_NAME_KEY, LIBRARY_KEY, LIBRARY_VERSION_KEY)

#: largest ``config.json`` read (a real one is a few KiB)
MAX_CONFIG_BYTES = 1 << 20
#: largest model card read
MAX_CARD_BYTES = 1 << 20

Self = TypeVar("Self", bound="PretrainedMixin")


@dataclass(frozen=True)
class PretrainedFormat:
    """The config document of one kind of pretrained directory.

    Attributes:
        name: the document's ``format`` value (e.g. ``"atoken"``).
        version: the newest ``format_version`` written and read.
        config_key: the key holding the config object (``"model"``, ``"config"``).
        keys: other top-level keys a document may hold (provenance such as ``converted_from``).
        what: what the directory holds, for messages (``"model"``, ``"Gaussian decoder"``).
        card_facts: what the default model card says of a config object: ``(facts, tags)``,
            facts as ``(label, text)`` lines of its ``Model`` list, tags added to the card's
            (default: none beyond ``atoken``).
    """

    name: str
    version: int
    config_key: str
    keys: tuple[str, ...] = ()
    what: str = "model"
    card_facts: (
        Callable[[Mapping[str, Any]], tuple[Sequence[tuple[str, str]], Sequence[str]]] | None
    ) = None

    @property
    def document_keys(self) -> tuple[str, ...]:
        """Every top-level key a document of this format may hold."""
        return (
            "format",
            "format_version",
            *CLASS_KEYS,
            self.config_key,
            *self.keys,
            COMPANIONS_KEY,
        )

    def document(
        self,
        config: Mapping[str, Any],
        *,
        extra: Mapping[str, Any] | None = None,
        companions: Mapping[str, str] | None = None,
        model_class: type | None = None,
    ) -> dict[str, Any]:
        """The config document of ``config`` (``extra``: provenance keys of `keys`;
        ``model_class``: the class identified in it, `class_identity`).

        Raises:
            ValueError: a key of ``extra`` that is not one of `keys`.
        """
        doc: dict[str, Any] = {"format": self.name, "format_version": self.version}
        if model_class is not None:
            doc.update(class_identity(model_class))
        for key, value in (extra or {}).items():
            if key not in self.keys:
                raise ValueError(
                    f"{key!r} is not a key of a {self.name} config document (it holds"
                    f" {', '.join(self.document_keys)})"
                )
            doc[key] = value
        doc[self.config_key] = dict(config)
        if companions:
            doc[COMPANIONS_KEY] = dict(companions)
        return doc

    def check(
        self, doc: Any, where: os.PathLike[str] | str, *, expected_class: str | None = None
    ) -> dict[str, Any]:
        """``doc`` checked as a document of this format (top level only; the config object is
        validated by the model's config model).

        Args:
            doc: the parsed ``config.json``.
            where: its path, for messages.
            expected_class: the class loading it, named when ``doc`` is of another format.

        Raises:
            CheckpointError: another format (naming the class the document identifies, if it
                does), a bad or newer ``format_version``, an unknown top-level key, a class
                identification that is not a string, or a config / companions entry that is
                not an object.
        """
        named = doc.get(CLASS_NAME_KEY) if isinstance(doc, dict) else None
        if isinstance(named, str) and doc.get("format") != self.name and named != expected_class:
            lib = ", ".join(
                [" ".join(str(doc[k]) for k in (LIBRARY_KEY, LIBRARY_VERSION_KEY) if doc.get(k))]
                + [f"format {doc.get('format')!r}"]
            ).lstrip(", ")
            wanted = f"{expected_class}, " if expected_class else ""
            raise CheckpointError(
                f"{where} holds a {named} ({lib}), not {_article(self.what)} {self.what}"
                f" ({wanted}format {self.name!r}); load it with {named}.from_pretrained, or give"
                " the model directory it belongs to"
            )
        if (
            not isinstance(doc, dict)
            or doc.get("format") != self.name
            or self.config_key not in doc
        ):
            raise CheckpointError(
                f"{where} is not {_article(self.name)} {self.name} {self.what} config (expected"
                f" format {self.name!r}"
                + (f", got {doc.get('format')!r})" if isinstance(doc, dict) else ")")
            )
        version = doc.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise CheckpointError(f"{where}: format_version: expected an integer, got {version!r}")
        unknown = sorted(str(k) for k in doc if k not in self.document_keys)
        if unknown:
            raise CheckpointError(
                f"{where}: {', '.join(unknown)}: unknown key (a {self.name} config.json holds"
                f" {', '.join(self.document_keys)})"
            )
        bad = [
            k
            for k in CLASS_KEYS
            if k in doc
            and not (isinstance(doc[k], str) or (doc[k] is None and k != CLASS_NAME_KEY))
        ]
        if bad:
            raise CheckpointError(f"{where}: {bad[0]}: expected a string, got {doc[bad[0]]!r}")
        if not isinstance(doc[self.config_key], dict):
            raise CheckpointError(
                f"{where}: {self.config_key}: expected an object, got"
                f" {type(doc[self.config_key]).__name__}"
            )
        companions = doc.get(COMPANIONS_KEY, {})
        if not isinstance(companions, dict) or not all(
            isinstance(k, str) and _is_folder_name(k) and isinstance(v, str)
            for k, v in companions.items()
        ):
            raise CheckpointError(
                f"{where}: {COMPANIONS_KEY}: expected an object of subfolder name -> format,"
                f" got {companions!r}"
            )
        if version > self.version:
            raise CheckpointError(
                f"{where} has format_version {version}; this atoken reads up to {self.version}."
                " Upgrade atoken."
            )
        return doc


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def class_identity(cls: type) -> dict[str, Any]:
    """``{"_class_name", "_library", "_library_version"}`` of ``cls``: its name, the
    distribution that provides its top-level package (the package name when none does) and
    that distribution's version (None when unknown)."""
    library, version = _library_of(cls.__module__.split(".")[0])
    return {CLASS_NAME_KEY: cls.__name__, LIBRARY_KEY: library, LIBRARY_VERSION_KEY: version}


@functools.lru_cache(maxsize=64)
def _library_of(package: str) -> tuple[str, str | None]:
    for name in (package, package.replace("_", "-")):
        try:
            return md.metadata(name)["Name"] or name, md.version(name)
        except md.PackageNotFoundError:
            continue
    for name in md.packages_distributions().get(package, ()):
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:
            continue
    return package, None


def _is_folder_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and os.sep not in name


def _read_small(where: Path, what: str, limit: int, hint: str) -> None:
    """Check ``where`` is a regular file of at most ``limit`` bytes."""
    try:
        size = where.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{what} {str(where)!r} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"{what} {str(where)!r} cannot be read: {exc}") from None
    if not where.is_file():
        raise CheckpointError(f"{what} {str(where)!r} is not a regular file")
    if size > limit:
        raise CheckpointError(
            f"{what} {str(where)!r} is {size:,} bytes; {hint} (at most {limit:,} are read)."
            " Is it the right file?"
        )


def read_document(
    directory: str | os.PathLike[str], fmt: PretrainedFormat, *, expected_class: str | None = None
) -> dict[str, Any]:
    """The checked config document of a pretrained directory (size checked before reading;
    ``expected_class``: the loading class, named when the document is of another format)."""
    where = Path(directory) / CONFIG_NAME
    what = f"{fmt.what} config"
    _read_small(
        where, what, MAX_CONFIG_BYTES, f"{_article(fmt.what)} {fmt.what} config.json is a few KiB"
    )
    return fmt.check(read_json(where, what=what), where, expected_class=expected_class)


def read_card(directory: str | os.PathLike[str]) -> str | None:
    """The model card (``README.md``) of a pretrained directory, or None when it has none."""
    where = Path(directory) / CARD_NAME
    if not where.exists():
        return None
    _read_small(where, "model card", MAX_CARD_BYTES, "a model card is a few KiB")
    try:
        return where.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"model card {str(where)!r} cannot be read: {exc}") from None


# --------------------------------------------------------------------------- weights
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


StateLayout = dict[str, tuple[tuple[int, ...], torch.dtype]]


def meta_state(build: Callable[[], nn.Module]) -> StateLayout:
    """Name -> (shape, dtype) of the state dict of the module ``build()`` makes, built on the
    meta device (no memory is allocated for its parameters).

    Raises:
        CheckpointError: the build fails (a config that cannot be built).
    """
    try:
        with torch.device("meta"), _MetaBuild():
            model = build()
    except (RuntimeError, OverflowError, MemoryError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"the model config cannot be built: {reason}") from None
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_weights_header(
    weights: str | os.PathLike[str],
    expected: StateLayout,
    *,
    max_bytes: int | None = None,
) -> None:
    """Check, before anything is allocated, that ``weights`` holds exactly the tensors of
    ``expected`` (`meta_state` of the config beside it) and that their size is within the model
    budget. Only the safetensors header is read.

    Args:
        weights: the ``model.safetensors`` file (its ``config.json`` is beside it).
        expected: name -> (shape, dtype) the config builds.
        max_bytes: parameter-byte budget (default `atoken.core.budgets.max_model_bytes`).

    Raises:
        CheckpointError: the config implies more parameter bytes than the budget, the weights
            file is missing or unreadable, or a tensor is missing, unexpected, or of another
            shape or dtype kind than the config implies.
    """
    from safetensors import SafetensorError, safe_open

    from atoken.core import budgets

    weights = Path(weights)
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


def load_state_dict_checked(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Load ``state`` strictly; any missing, unexpected or mis-shaped key is listed in the error."""
    check_state_layout(
        model.state_dict(),
        state,
        header=f"weights in {source} do not fit the model:",
        shape_label=lambda k, got, want: f"{k}: file {got} vs model {want}",
    )
    model.load_state_dict(dict(state), strict=True)


# --------------------------------------------------------------------------- companions
def companion_dirs(
    directory: str | os.PathLike[str], declared: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """Name -> folder of the companion models of a pretrained directory.

    The companions its ``config.json`` declares must be there (each with a ``config.json``);
    a subfolder holding a ``config.json`` that the document does not declare (a directory
    written before companions were declared, or one a plugin added beside the model) is a
    companion too.

    Raises:
        CheckpointError: a declared companion is missing.
    """
    directory = Path(directory)
    found: dict[str, Path] = {}
    for name in declared or {}:
        sub = directory / name
        if not (sub / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"{directory / CONFIG_NAME} declares the companion {name!r}, but"
                f" {str(sub / CONFIG_NAME)!r} does not exist; copy the whole model directory"
            )
        found[name] = sub
    try:
        children = sorted(directory.iterdir())
    except OSError:
        children = []
    for sub in children:
        if sub.name not in found and sub.is_dir() and (sub / CONFIG_NAME).is_file():
            found[sub.name] = sub
    return found


def write_pretrained(
    directory: str | os.PathLike[str],
    fmt: PretrainedFormat,
    config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    *,
    provenance: Mapping[str, Any] | None = None,
    card: str | CardInfo | bool | None = None,
    companions: Mapping[str, PretrainedMixin] | None = None,
    model_class: type | None = None,
) -> Path:
    """Write a pretrained directory from its parts; every file lands together, or none does.

    What `PretrainedMixin.save_pretrained` does, for a state dict that is not held by a module
    (e.g. converted release weights, written without building the network).

    Args:
        directory: created if needed; files of the same names are replaced.
        fmt: the document format.
        config: the config object.
        state: the state dict.
        provenance: top-level keys of ``fmt.keys``.
        card: the model card's text; a `CardInfo` (or None) for the generated one
            (`default_card`); False for none.
        companions: subfolder name -> pretrained model saved there (without a card).
        model_class: the class identified in ``config.json`` (`class_identity`).

    Raises:
        ValueError: a companion name that is not a plain folder name, a companion that is not
            a `PretrainedMixin`, or a provenance key ``fmt`` does not hold.
    """
    directory = Path(directory)
    companions = dict(companions or {})
    for name, model in companions.items():
        if not (isinstance(name, str) and _is_folder_name(name)) or name in (
            CONFIG_NAME,
            WEIGHTS_NAME,
            CARD_NAME,
        ):
            raise ValueError(f"companion name {name!r} is not a plain subfolder name")
        if not isinstance(model, PretrainedMixin):
            raise ValueError(
                f"companion {name!r} is a {type(model).__name__}, not a pretrained model"
                " (PretrainedMixin)"
            )
    doc = fmt.document(
        config,
        extra=provenance,
        companions={n: m.pretrained_format.name for n, m in companions.items()},
        model_class=model_class,
    )
    if card is True:
        card = None
    if card is not False and not isinstance(card, str):
        card = default_card(directory.name, doc, fmt, state, card)
    with outputs_together():  # weights first: they are renamed into place before config.json
        save_tensors(directory / WEIGHTS_NAME, state, metadata={"format": fmt.name})
        atomic_write_json(directory / CONFIG_NAME, doc)
        if isinstance(card, str):
            atomic_write_bytes(directory / CARD_NAME, card.encode("utf-8"))
        for name, model in companions.items():
            model.save_pretrained(directory / name, card=False)
    return directory


def default_card(
    name: str,
    doc: Mapping[str, Any],
    fmt: PretrainedFormat,
    state: Mapping[str, Tensor],
    info: CardInfo | None = None,
) -> str:
    """The model card ``save_pretrained`` writes when none is given: the Hub's YAML front matter
    (licence, ``library_name: atoken``, tags, ``base_model``, metrics with their protocol, from
    ``info``) and what the directory holds (class, format, parameters, the format's
    ``card_facts``, companions, provenance).

    Args:
        name: the model's name (the directory's).
        doc: its config document.
        fmt: its format.
        state: its state dict (counted, never read).
        info: what the model does not know of itself (`atoken.core.model_card.CardInfo`).
    """
    info = info or CardInfo()
    numbers = sum(math.prod(v.shape) for v in state.values())
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    facts: list[tuple[str, str]] = []
    if doc.get(CLASS_NAME_KEY):
        lib = " ".join(
            str(doc[k]) for k in (LIBRARY_KEY, LIBRARY_VERSION_KEY) if doc.get(k) is not None
        )
        facts.append(("Class", f"`{doc[CLASS_NAME_KEY]}`" + (f" ({lib})" if lib else "")))
    facts.append(("Format", f"`{fmt.name}` version {fmt.version} ({fmt.what})"))
    facts.append(("Parameters", f"{numbers:,} ({', '.join(dtypes) or 'none'}, safetensors)"))
    tags: list[str] = []
    if fmt.card_facts is not None:
        more, tags_more = fmt.card_facts(doc[fmt.config_key])
        facts += list(more)
        tags += list(tags_more)
    if doc.get(COMPANIONS_KEY):
        facts.append(
            ("Companions", ", ".join(f"`{n}/` ({f})" for n, f in doc[COMPANIONS_KEY].items()))
        )
    for key in fmt.keys:
        if doc.get(key) is not None and key not in ("atoken_version",):
            facts.append((key.replace("_", " ").capitalize(), f"`{json.dumps(doc[key])}`"))
    return render_card(info, tags=tags, model_name=name, facts=facts)


# --------------------------------------------------------------------------- the mixin
class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` (see the module docstring).

    A class sets `pretrained_format` and implements `pretrained_config`,
    `config_from_pretrained` and `build_pretrained` (and `pretrained_provenance` to record
    more top-level keys); ``from_pretrained`` forwards its extra keywords to
    `build_pretrained`. A loaded model knows its companion folders (`companions`).
    """

    pretrained_format: ClassVar[PretrainedFormat]

    # ------------------------------------------------------------------ what a class provides
    def pretrained_config(self) -> dict[str, Any]:
        """This model's config as a JSON-able dict (the document's config object)."""
        raise NotImplementedError

    def pretrained_provenance(self) -> dict[str, Any]:
        """Top-level document keys written with every save (default: none)."""
        return {}

    @classmethod
    def config_from_pretrained(cls, data: Mapping[str, Any], where: str) -> Any:
        """The validated config of a document's config object (unknown keys refused).

        Raises:
            CheckpointError: naming ``where`` and the bad key.
        """
        raise NotImplementedError

    @classmethod
    def build_pretrained(cls: type[Self], config: Any, **kwargs: Any) -> Self:
        """A model of ``config`` whose weights are about to be loaded (no initialisation needed)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ saving and loading
    @property
    def companions(self) -> Mapping[str, Path]:
        """Name -> folder of the companion models beside this model (set by ``from_pretrained``;
        empty for a model built in memory)."""
        return MappingProxyType(self.__dict__.get("_pretrained_companions", {}))

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        card: str | CardInfo | bool | None = None,
        companions: Mapping[str, PretrainedMixin] | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``config.json`` (with the class identification) + ``model.safetensors`` +
        ``README.md`` (+ companion folders) into ``directory``; every file lands together when
        all are written, or none does.

        Args:
            directory: created if needed; files of the same names are replaced.
            card: the model card (Markdown) written as ``README.md``; None (or a
                `atoken.core.model_card.CardInfo` with base model, metrics and their protocol, ...)
                writes the generated card (`default_card`); False writes none.
            companions: subfolder name -> pretrained model saved there and declared in the
                document (e.g. ``{"gaussian_decoder": decoder}``).
            provenance: more top-level keys of the format (e.g. ``trained_by``).

        Raises:
            ValueError: a companion name that is not a plain folder name, or a provenance key
                the format does not hold.
        """
        fmt = self.pretrained_format
        return write_pretrained(
            directory,
            fmt,
            self.pretrained_config(),
            self.state_dict(),  # type: ignore[attr-defined]
            provenance={**self.pretrained_provenance(), **(provenance or {})},
            card=card,
            companions=companions,
            model_class=type(self),
        )

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload this model as the Hugging Face repo ``repo_id`` (needs huggingface_hub):
        `save_pretrained` into a temporary folder (model card included), then ``create_repo``
        and ``upload_folder``. The keywords (``commit_message``, ``private``, ``token``,
        ``revision``, ``create_pr``, ``card`` and ``save_pretrained``'s) are those of
        `atoken.core.hub.push_to_hub`.

        Returns:
            huggingface_hub's ``CommitInfo``.
        """
        from atoken.core.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls: type[Self],
        directory: str | os.PathLike[str],
        *,
        map_location: torch.device | str | None = "cpu",
        config_overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Self:
        """Load a directory written by `save_pretrained`, or a Hugging Face repo id
        (``org/name[@revision]``, resolved through huggingface_hub's cache:
        `atoken.core.hub.resolve_pretrained`; a local directory of that name wins); no pickle is
        ever read.

        Nothing is allocated until the weights file's header fits what ``config.json``
        declares (built on the meta device first). A ``config.json`` of another format that
        names its class says which class it holds.

        Args:
            directory: the pretrained directory, or a Hub repo id.
            map_location: device to move the model to (None: leave it on the CPU as loaded).
            config_overrides: config values replacing the document's (top-level keys of the
                config object), validated with them.
            **kwargs: forwarded to `build_pretrained`.

        Raises:
            CheckpointError: a missing directory, a config document or weights file that does
                not hold (see `read_document`, `check_weights_header`), or a declared companion
                that is missing.
        """
        fmt = cls.pretrained_format
        path = resolve_pretrained(directory, what=fmt.what)
        if not path.is_dir():
            raise CheckpointError(f"{fmt.what} directory {str(path)!r} does not exist")
        doc = read_document(path, fmt, expected_class=cls.__name__)
        data = {**doc[fmt.config_key], **(config_overrides or {})}
        config = cls.config_from_pretrained(data, str(path / CONFIG_NAME))
        companions = companion_dirs(path, doc.get(COMPANIONS_KEY))
        check_weights_header(
            path / WEIGHTS_NAME, meta_state(lambda: cls.build_pretrained(config, **kwargs))
        )
        model = cls.build_pretrained(config, **kwargs)
        state = load_tensors(path / WEIGHTS_NAME, what=f"{fmt.what} weights")
        load_state_dict_checked(model, state, source=str(path / WEIGHTS_NAME))  # type: ignore[arg-type]
        model.__dict__["_pretrained_companions"] = companions
        return model.to(map_location) if map_location is not None else model  # type: ignore[attr-defined]
