"""Optional capabilities of adapters (and task objectives): small declared protocols, verified
once, queried by name.

Beyond the `atoken.core.modality.ModalityAdapter` protocol an adapter may offer optional
capabilities (streamed decoding, chunked encoding, lazy reading, examples for contract tests,
...). An adapter class declares the ones it implements in a ``capabilities`` class attribute::

    class VideoAdapter:
        capabilities = frozenset({"open", "stream_sink", "to_token_chunks", "example"})

The declaration is verified once per class (when the class is registered, or, for a lazy
factory, when its first adapter is built): every declared name must be a known capability, the
class must provide it with the protocol's signature (or attribute type), and a capability the
class provides must be declared. So a typo'd method name or a forgotten declaration is an
error at registration, never a silently disabled feature. Callers ask the registry entry
(``entry.has("stream_sink")``) or `capabilities_of` (the same verified record), never
``getattr``.

Registered task objectives (`atoken.core.objective`) declare theirs the same way, from the same
table (``export_companions``, ``evaluate_held_out``), verified when their registry builds them;
errors name the kind being verified (``adapter class ...``, ``objective class ...``).

References: PEP 544 runtime-checkable protocols; pluggy's hookimpl signature validation at
registration.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from atoken.core.errors import AtokenError
from atoken.core.tokens import PatchTokens


class CapabilityError(AtokenError, TypeError):
    """A capability declaration (an adapter's, a task objective's) does not hold (unknown name,
    missing or mismatched member, or a capability implemented but not declared)."""


# --------------------------------------------------------------------------- protocols
@runtime_checkable
class Opens(Protocol):
    """``open(path)``: a lazily read sample (e.g. a `VideoFile`), instead of ``load``."""

    def open(self, path: str | os.PathLike[str]) -> Any: ...


@runtime_checkable
class ChunksTokens(Protocol):
    """``to_token_chunks(sample, frames)``: the sample's tokens, ``frames`` frames at a time."""

    def to_token_chunks(self, sample: Any, frames: int) -> Iterator[PatchTokens]: ...


@runtime_checkable
class StreamsOutput(Protocol):
    """``stream_sink(meta, coords, output, *, comparison, reference, progress)``: a context
    manager with ``add(coords, feats)``, ``frames_done`` and ``metrics()``, writing decoded rows
    as they arrive (and, optionally, ``comparison_layout``: where the comparison's halves lie, as
    `LabelsComparison` returns it)."""

    def stream_sink(
        self,
        meta: Mapping[str, Any],
        coords: Tensor,
        output: str | os.PathLike[str],
        *,
        comparison: str | os.PathLike[str] | None = None,
        reference: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any: ...


@runtime_checkable
class HasExample(Protocol):
    """``example(generator)``: a small valid sample, for contract tests and demos."""

    def example(self, generator: Any = None) -> Any: ...


@runtime_checkable
class SamplesAssets(Protocol):
    """``sample_assets()``: bundled ``(key, what load reads, caption)`` triples for training."""

    def sample_assets(self) -> list[tuple[str, str, str]]: ...


@runtime_checkable
class LabelsComparison(Protocol):
    """``save_labelled_comparison(reference, reconstruction, path, *, metrics)``: the comparison
    picture with its halves labelled (the reconstruction's with ``metrics``, e.g. PSNR / SSIM);
    returns where the two pictures lie in it (``{"label_band": px, "reference": [x0, y0, x1,
    y1], "reconstruction": [...]}``, written to metrics.json as ``side_by_side_layout``) or None.
    Without it ``save_comparison`` writes the picture and no layout is recorded."""

    def save_labelled_comparison(
        self,
        reference: Any,
        reconstruction: Any,
        path: str | os.PathLike[str],
        *,
        metrics: Mapping[str, float] | None = None,
    ) -> Mapping[str, Any] | None: ...


@runtime_checkable
class ComparisonSuffix(Protocol):
    """``comparison_suffix``: suffix of the side-by-side file when it differs from the output's."""

    comparison_suffix: str


@runtime_checkable
class OutputSuffixes(Protocol):
    """``output_suffixes``: every suffix ``save`` writes, the format chosen by the path's suffix
    (``output_suffix`` first); without it ``save`` writes ``output_suffix`` only."""

    output_suffixes: tuple[str, ...]


@runtime_checkable
class MetricConvention(Protocol):
    """``metric_convention``: a mapping that says how the metrics are computed (metrics.json)."""

    metric_convention: Mapping[str, Any]


@runtime_checkable
class MetricLowerIsBetter(Protocol):
    """``metric_lower_is_better``: metric names that are distances (e.g. LPIPS)."""

    metric_lower_is_better: tuple[str, ...]


@runtime_checkable
class MetricInfoKeys(Protocol):
    """``metric_info_keys``: metric names that are plain facts (counts), not quality."""

    metric_info_keys: tuple[str, ...]


@runtime_checkable
class SaveTolerance(Protocol):
    """``save_tolerance``: mean absolute error a lossy ``save`` + ``load`` may introduce."""

    save_tolerance: float


@runtime_checkable
class EmbedPerFrame(Protocol):
    """``embed_per_frame``: whether samples are embedded frame by frame (True) or whole."""

    embed_per_frame: bool


@runtime_checkable
class ExportsCompanions(Protocol):
    """``export_companions(directory)`` (task objectives, `atoken.core.objective`): write
    companion model folders (e.g. ``gaussian_decoder/``) into a run's ``model/`` directory."""

    def export_companions(self, directory: os.PathLike[str]) -> None: ...


@runtime_checkable
class EvaluatesHeldOut(Protocol):
    """``evaluate_held_out(model, samples)`` (task objectives): held-out metrics and pictures
    of the trained model on its task's samples, a `atoken.core.objective.HeldOutReport`."""

    def evaluate_held_out(self, model: Any, samples: Any) -> Any: ...


# --------------------------------------------------------------------------- the table
def _is_suffix(v: Any) -> bool:
    return isinstance(v, str) and v.startswith(".") and v == v.lower()


def _is_names(v: Any) -> bool:
    return isinstance(v, tuple | list | frozenset | set) and all(isinstance(s, str) for s in v)


def _is_tolerance(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 < float(v) < 2


@dataclass(frozen=True)
class Capability:
    """One optional capability.

    Attributes:
        name: the member the adapter provides, and the name it declares.
        protocol: the runtime-checkable protocol.
        args: positional arguments (after ``self``) a method must accept; None for attributes.
        kwargs: keyword arguments a method must accept.
        value: check of an attribute's value, with ``expected`` saying what it should be.
    """

    name: str
    protocol: type
    args: tuple[str, ...] | None = None
    kwargs: tuple[str, ...] = ()
    value: Callable[[Any], bool] | None = None
    expected: str = ""

    @property
    def is_method(self) -> bool:
        return self.args is not None


#: every known adapter capability, by name
CAPABILITIES: dict[str, Capability] = {
    c.name: c
    for c in (
        Capability("open", Opens, args=("path",)),
        Capability("to_token_chunks", ChunksTokens, args=("sample", "frames")),
        Capability(
            "stream_sink",
            StreamsOutput,
            args=("meta", "coords", "output"),
            kwargs=("comparison", "reference", "progress"),
        ),
        Capability("example", HasExample, args=("generator",)),
        Capability(
            "save_labelled_comparison",
            LabelsComparison,
            args=("reference", "reconstruction", "path"),
            kwargs=("metrics",),
        ),
        Capability("sample_assets", SamplesAssets, args=()),
        Capability(
            "comparison_suffix", ComparisonSuffix, value=_is_suffix, expected="a '.suffix' string"
        ),
        Capability(
            "output_suffixes",
            OutputSuffixes,
            value=lambda v: isinstance(v, tuple) and bool(v) and all(map(_is_suffix, v)),
            expected="a non-empty tuple of lower-case '.suffix' strings",
        ),
        Capability(
            "metric_convention",
            MetricConvention,
            value=lambda v: isinstance(v, Mapping),
            expected="a mapping",
        ),
        Capability(
            "metric_lower_is_better",
            MetricLowerIsBetter,
            value=_is_names,
            expected="a tuple of metric names",
        ),
        Capability(
            "metric_info_keys", MetricInfoKeys, value=_is_names, expected="a tuple of metric names"
        ),
        Capability(
            "save_tolerance",
            SaveTolerance,
            value=_is_tolerance,
            expected="a number in (0, 2) (mean absolute error on [-1, 1] samples)",
        ),
        Capability(
            "embed_per_frame",
            EmbedPerFrame,
            value=lambda v: isinstance(v, bool),
            expected="True or False",
        ),
        Capability("export_companions", ExportsCompanions, args=("directory",)),
        Capability("evaluate_held_out", EvaluatesHeldOut, args=("model", "samples")),
    )
}

_VERIFIED: dict[type, frozenset[str]] = {}


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_member(cls: type, cap: Capability) -> str | None:
    """Why ``cls`` does not provide ``cap`` as its protocol says, or None if it does."""
    try:
        member = inspect.getattr_static(cls, cap.name)
    except AttributeError:
        return "it has no such member"
    if cap.is_method:
        if isinstance(member, staticmethod | classmethod):
            func, bound = member.__func__, isinstance(member, classmethod)
        else:
            func, bound = member, False
        if not callable(func):
            return f"it is {type(member).__name__} {member!r}, not a method"
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return None  # a builtin or C callable: nothing to check
        lead = () if isinstance(member, staticmethod) else ("self",)
        if bound:
            lead = ()
        try:
            sig.bind(*lead, *cap.args, **dict.fromkeys(cap.kwargs))
        except TypeError as exc:
            want = ", ".join([*cap.args, *(f"{k}=..." for k in cap.kwargs)])
            return f"its signature {cap.name}{sig} cannot be called as {cap.name}({want}) ({exc})"
        return None
    if isinstance(member, property):
        return None  # an instance value: checked on instances by `capabilities_of`
    if cap.value is not None and not cap.value(member):
        return f"it is {member!r}, expected {cap.expected}"
    return None


def _provides(cls: type, name: str) -> bool:
    try:
        inspect.getattr_static(cls, name)
    except AttributeError:
        return False
    return True


def declared_capabilities(cls: type, *, kind: str = "adapter") -> frozenset[str]:
    """Verify ``cls``'s ``capabilities`` declaration once and return it.

    Args:
        cls: the class declaring them.
        kind: the registry kind ``cls`` serves (``adapter``, ``objective``), named in errors.

    Raises:
        CapabilityError: an unknown capability name (with a suggestion), a declared capability
            the class does not provide with the protocol's signature or attribute type, or a
            capability the class provides without declaring it.
    """
    done = _VERIFIED.get(cls)
    if done is not None:
        return done
    try:
        raw = inspect.getattr_static(cls, "capabilities")
    except AttributeError:
        raw = ()
    if isinstance(raw, str) or not isinstance(raw, tuple | list | set | frozenset):
        raise CapabilityError(
            f"{kind} class {_where(cls)}: capabilities must be a frozenset of capability names,"
            f" got {raw!r}"
        )
    declared = frozenset(raw)
    problems = []
    for name in sorted(declared):
        cap = CAPABILITIES.get(name) if isinstance(name, str) else None
        if cap is None:
            close = difflib.get_close_matches(str(name), list(CAPABILITIES), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{name!r} is not a known capability{hint}")
            continue
        why = _check_member(cls, cap)
        if why is not None:
            problems.append(f"declares {name!r} but {why}")
    undeclared = [n for n in sorted(set(CAPABILITIES) - declared) if _provides(cls, n)]
    if undeclared:
        problems.append(
            f"provides {', '.join(map(repr, undeclared))} without declaring"
            f" {'it' if len(undeclared) == 1 else 'them'} (add to its capabilities, or rename"
            " a member that is not that capability)"
        )
    if problems:
        raise CapabilityError(
            f"{kind} class {_where(cls)}: " + "; ".join(problems) + f". Known capabilities:"
            f" {', '.join(sorted(CAPABILITIES))}"
        )
    _VERIFIED[cls] = declared
    return declared


def capabilities_of(adapter: Any, *, kind: str = "adapter") -> frozenset[str]:
    """The verified capabilities of an adapter (or task objective) instance: its class's
    declaration, ``kind`` naming what it is in errors.

    An attribute capability defined as a property is checked on this instance.
    """
    declared = declared_capabilities(type(adapter), kind=kind)
    for name in declared:
        cap = CAPABILITIES[name]
        if cap.value is not None and isinstance(
            inspect.getattr_static(type(adapter), name), property
        ):
            value = getattr(adapter, name)
            if not cap.value(value):
                raise CapabilityError(
                    f"{kind} {_where(type(adapter))}.{name} is {value!r}, expected {cap.expected}"
                )
    return declared


def has_capability(adapter: Any, name: str, *, kind: str = "adapter") -> bool:
    """Whether ``adapter`` (or a task objective, ``kind="objective"``) declares (verified)
    capability ``name``; unknown names are an error."""
    if name not in CAPABILITIES:
        raise CapabilityError(
            f"no capability named {name!r}; known: {', '.join(sorted(CAPABILITIES))}"
        )
    return name in capabilities_of(adapter, kind=kind)


class DeclaresCapabilities(Protocol):
    """A class with a ``capabilities`` declaration."""

    capabilities: ClassVar[frozenset[str]]
