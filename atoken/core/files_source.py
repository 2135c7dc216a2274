"""Modality-agnostic training sources: files read by the task's adapter (``files``, ``samples``).

`FilesSource` lists every file under a folder whose suffix the adapter claims
(``adapter.extensions``), and reads a sample with ``adapter.load(path)``; the stream then
tokenizes it with ``adapter.to_tokens(sample, train=True, generator=...)``. This is how a
modality plugin's data (3D meshes of ``atoken-plugin-3d``, say) reaches the trainer without atoken
importing the plugin: only the adapter registry is used.

- **Scene folders.** When the adapter claims ``.json`` (NeRF-synthetic scenes), a directory that
  holds ``transforms.json`` or ``transforms_train.json`` is one sample (its path is handed to
  ``adapter.load``) and is not searched further; loose ``.json`` files are never samples.
- **Captions** (``*_und`` tasks): the UTF-8 text of the sidecar ``NAME.txt`` beside
  ``NAME.ext`` (beside the folder ``NAME/`` for a scene).
- **Bad files** follow the sources' skip-and-count rule (`ImageSource.load`): whatever
  ``adapter.load`` raises (a corrupt mesh, an empty file, a scene without depth) skips that
  sample, counts it in ``skipped``, keeps the reason and logs the first one as a warning.
- **Budget.** An adapter without a ``max_res`` option (3D voxel tokens cannot be downscaled by
  the stream) gets its samples tokenized here when ``max_tokens`` is set; a sample with more
  tokens than one batch holds is skipped with that reason instead of stopping training.
- **Cache.** Loading can be slow (rendering and voxelizing a mesh takes about 0.5-3 s), so the
  last ``cache`` loaded samples are kept in memory (least recently used first out), in one cache
  per process keyed by adapter, adapter options and path: ``3d_rec`` and ``3d_und`` reading the
  same folder load each asset once (`clear_cache` empties it). Adapters that cache their tokens
  on the sample (``mesh3d`` does) then tokenize it only once.

`AdapterSamplesSource` is the built-in ``samples`` source of such a modality: it asks the adapter
for its bundled assets through the optional method ``adapter.sample_assets()``, which returns
``[(key, path, caption), ...]`` where ``path`` is whatever ``adapter.load`` reads (a file, e.g. a
scanned mesh a PyPI package ships, or a name such as ``builtin:cube`` for a primitive the plugin
generates at run time).

References: NeRF-synthetic scene layout (Mildenhall et al., 2020, ``transforms_*.json``);
WebDataset-style sample keys (`atoken.core.folder_files.sample_keys`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from atoken.core.config import Strict
from atoken.core.errors import InputError
from atoken.core.folder_files import sample_keys
from atoken.core.sample_source import ImageSource

#: files that make their directory one scene sample (for adapters claiming ``.json``)
SCENE_MARKERS: tuple[str, ...] = ("transforms.json", "transforms_train.json")

#: default number of loaded samples kept in memory by `FilesSource`
DEFAULT_CACHE = 8


class FilesOptions(Strict):
    """Options of a ``files`` source: the files under ``path`` that the task's adapter reads.

    Attributes:
        recursive: include subdirectories.
        cache: loaded samples kept in memory.
        adapter: options of the task's adapter (sources of one task must agree on them).
    """

    recursive: bool = True
    cache: int = Field(default=DEFAULT_CACHE, ge=0)
    adapter: dict[str, Any] = {}


def list_files(root: Path, extensions: tuple[str, ...], recursive: bool = True) -> list[str]:
    """Sorted relative POSIX paths of the samples under ``root`` (hidden entries skipped).

    Files whose lower-case suffix is in ``extensions`` count, except ``.json`` files; when
    ``.json`` is claimed, directories holding a `SCENE_MARKERS` file count as one sample each
    (``root`` itself included, then it is the only sample); without ``recursive``, files and
    scene folders directly inside ``root``.
    """
    exts = {e.lower() for e in extensions}
    scenes = ".json" in exts
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        if scenes and any(m in filenames for m in SCENE_MARKERS):
            found.append(rel_dir.as_posix())
            dirnames[:] = []  # the scene's own images are not samples
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if not recursive:  # scene folders directly inside root are still samples of root
            if scenes:
                found.extend(
                    (rel_dir / d).as_posix()
                    for d in dirnames
                    if any((here / d / m).is_file() for m in SCENE_MARKERS)
                )
            dirnames[:] = []
        for name in filenames:
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith(".") or suffix == ".json" or suffix not in exts:
                continue
            found.append((rel_dir / name).as_posix())
    return sorted(found)


#: loaded samples shared by the sources of this process (least recently used first), so that
#: e.g. ``3d_rec`` and ``3d_und`` reading one folder with the same adapter options load it once
_LOADED: OrderedDict[tuple[str, str, str], Any] = OrderedDict()


def _cache_key(adapter: Any, path: Any) -> tuple[str, str, str]:
    """``(adapter type, its options, path)``: a sample loaded under other options is another one."""
    opts = getattr(adapter, "options", None)
    dump = opts.model_dump_json() if hasattr(opts, "model_dump_json") else repr(opts)
    return (f"{type(adapter).__module__}.{type(adapter).__qualname__}", dump, str(path))


def clear_cache() -> None:
    """Forget every loaded sample (frees their memory)."""
    _LOADED.clear()


class _AdapterSource(ImageSource):
    """Shared reading path of the adapter-driven sources: LRU cache, checks, token budget."""

    adapter: Any
    max_tokens: int | None
    cache_size: int

    def _init_adapter(
        self,
        adapter: Any,
        cache: int,
        max_tokens: int | None,
        check: Callable[[Any], None] | None = None,
    ) -> None:
        if cache < 0:
            raise InputError(f"cache must be >= 0 samples, got {cache}")
        if max_tokens is not None and max_tokens < 1:
            raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
        self.adapter = adapter
        self.cache_size = cache
        self.max_tokens = max_tokens
        self._check_sample = check
        opts = getattr(adapter, "options", None)
        # the stream shrinks oversize samples through max_res; without it the budget is checked here
        self._check_budget = max_tokens is not None and not hasattr(opts, "max_res")

    def path(self, index: int) -> Path:
        """The file (or scene folder) of sample ``index``."""
        raise NotImplementedError

    def read(self, index: int) -> Any:
        """``adapter.load`` of sample ``index`` (from the cache when it was loaded lately)."""
        path = self.path(index)
        key = _cache_key(self.adapter, path)
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        sample = self.adapter.load(path)
        if self.cache_size:
            _LOADED[key] = sample
            while len(_LOADED) > self.cache_size:
                _LOADED.popitem(last=False)
        return sample

    def read_sample(self, index: int, generator: torch.Generator | None) -> Any:
        sample = self.read(index)
        if self._check_budget:
            n = len(self.adapter.to_tokens(sample, train=True, generator=generator))
            if n > self.max_tokens:
                raise InputError(
                    f"{n} tokens, more than one batch holds (tokens_per_batch = {self.max_tokens});"
                    " raise tokens_per_batch or make the sample smaller (adapter options)"
                )
        return sample

    def check(self, sample: Any) -> None:
        """The ``check`` the source was given (e.g. `check_image` for image files: ``[H, W, 3]``
        >= 16 px); without one, samples were checked by the adapter's ``load``."""
        if self._check_sample is not None:
            self._check_sample(sample)

    def __len__(self) -> int:  # pragma: no cover - subclasses define it
        raise NotImplementedError


class FilesSource(_AdapterSource):
    """Files under ``root`` that ``adapter`` reads, as samples (see the module docstring).

    Keys follow `sample_keys` (relative path without suffix).

    Args:
        root: the directory.
        adapter: a built modality adapter (``extensions``, ``load``, ``to_tokens``).
        recursive: include subdirectories.
        cache: loaded samples kept in memory (0: none). A ``mesh3d`` asset with its tokens at
            the default render settings takes about 0.2 GB.
        max_tokens: the batch budget; samples of an adapter without ``max_res`` that exceed it
            are skipped (None: not checked).
        check: raises `InputError` for a loaded sample the source must skip (the image sources
            pass `check_image`); None: what ``adapter.load`` returns is used as it is.

    Raises:
        InputError: ``root`` is not a directory, the adapter claims no suffix, or no sample found.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        adapter: Any,
        *,
        recursive: bool = True,
        cache: int = DEFAULT_CACHE,
        max_tokens: int | None = None,
        check: Callable[[Any], None] | None = None,
    ) -> None:
        self.root = Path(root)
        name = getattr(adapter, "name", type(adapter).__name__)
        super().__init__(f"{name} files '{self.root}'")
        self._init_adapter(adapter, cache, max_tokens, check)
        if not self.root.is_dir():
            raise InputError(f"data folder '{self.root}' does not exist or is not a directory")
        exts = tuple(getattr(adapter, "extensions", ()) or ())
        if not exts:
            raise InputError(f"the {name!r} adapter claims no file suffix (adapter.extensions)")
        self.relpaths = list_files(self.root, exts, recursive)
        if not self.relpaths:
            where = "under" if recursive else "directly in"
            scenes = " or scene folders with transforms.json" if ".json" in exts else ""
            shown = ", ".join(e for e in exts if e != ".json")
            raise InputError(f"no {name} files ({shown}){scenes} {where} '{self.root}'")
        self._keys = sample_keys(self.relpaths)

    def __len__(self) -> int:
        return len(self.relpaths)

    def key(self, index: int) -> str:
        return self._keys[index] if self.relpaths[index] != "." else self.root.name

    def path(self, index: int) -> Path:
        return self.root / self.relpaths[index]

    def caption(self, index: int) -> str | None:
        path = self.path(index)
        side = path.parent / f"{path.name}.txt" if path.is_dir() else path.with_suffix(".txt")
        if not side.is_file():
            return None
        text = side.read_text(encoding="utf-8", errors="replace").strip()
        return text or None


class AdapterSamplesSource(_AdapterSource):
    """The bundled samples an adapter offers through ``adapter.sample_assets()``.

    Args:
        adapter: a built adapter with ``sample_assets() -> [(key, path, caption), ...]``.
        cache: loaded samples kept in memory.
        max_tokens: the batch budget (as `FilesSource`).

    Raises:
        InputError: the adapter offers no samples (no ``sample_assets`` method, or it returned
            none).
    """

    def __init__(self, adapter: Any, *, cache: int = DEFAULT_CACHE, max_tokens: int | None = None):
        name = getattr(adapter, "name", type(adapter).__name__)
        super().__init__(f"built-in {name} samples")
        self._init_adapter(adapter, cache, max_tokens)
        from atoken.core.capabilities import has_capability

        if not has_capability(adapter, "sample_assets"):
            raise InputError(
                f"the {name!r} adapter offers no built-in samples (it declares no sample_assets"
                f' capability); use name = "files" with a folder of {name} files'
            )
        self.entries = [(str(k), p, str(c)) for k, p, c in adapter.sample_assets()]
        if not self.entries:
            raise InputError(f"the {name!r} adapter's sample_assets() returned no sample")

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, index: int) -> str:
        return self.entries[index][0]

    def path(self, index: int) -> Any:
        """What ``adapter.load`` reads for sample ``index`` (a path, or a name the adapter knows)."""
        return self.entries[index][1]

    def caption(self, index: int) -> str | None:
        return self.entries[index][2] or None
