"""`ShardEncoder`: pre-tokenise a folder or a set of shards into latent shards, resumably.

``atoken encode DIR|SHARDS -o OUT/ --shard-size N`` runs it. The inputs are listed in a fixed
order (a folder: the files its adapter reads, sorted by relative path and keyed as a folder
source keys them, `atoken.core.folder_files`; shards: in pattern order, members in tar order),
and input ``i`` goes into shard ``i // N``: which sample lands in which shard depends only on the
sorted input list and ``N``. That makes the run resumable and parallel:

- **Resume.** Every shard is written to a temporary file beside it and renamed when complete;
  its done marker (``shard-000003.done.json``) is renamed into place right after it. A rerun with
  the same inputs, model and options skips every shard whose marker is there (and whose tar has
  the size the marker records), removes the temporaries a killed run left (`atoken.core.
  serialization.clean_stale_temporaries`), and writes the others again, whole. No sample can
  appear twice: a shard is written completely or not at all, and its samples are fixed.
- **Many processes.** Under ``torchrun`` (``RANK`` / ``WORLD_SIZE``) rank ``r`` writes the shards
  ``i`` with ``i % world == r`` (disjoint, no communication). Whichever process finds every
  shard's marker present when it finishes writes ``manifest.json`` from the markers; the
  manifest is deterministic (no clock, no host), so two ranks finishing together write the same
  bytes, each atomically.
- **A different run.** Markers record a fingerprint of the plan (model id, quantizer, modality,
  adapter options, precision, shard size, the keys and sizes of the inputs). Markers of another
  plan in ``OUT`` are refused unless ``overwrite`` (then each rank replaces its own shards and
  rank 0 removes the manifest and shards beyond the new count).

Unreadable inputs are skipped and counted (the sources' rule): they are listed in the shard's
marker and the manifest with their reasons.

References: WebDataset's ``ShardWriter`` naming (``prefix-%06d.tar``); the resumable,
rank-sharded pre-tokenisation of large vision datasets (e.g. MAGVIT / LlamaGen feature
extraction scripts) for the layout, written here for atoken's adapters.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoken import latents_file
from atoken.core.braces import expand_urls
from atoken.core.errors import InputError
from atoken.core.execution import autocast_dtype
from atoken.core.folder_files import list_suffixed, sample_keys
from atoken.core.plugins import Components, default_components
from atoken.core.serialization import (
    atomic_write,
    atomic_write_json,
    clean_stale_temporaries,
    outputs_together,
)
from atoken.core.webdataset import add_member, index_shard
from atoken.data.format import (
    MANIFEST_NAME,
    PREFIX,
    SHARDS_FORMAT,
    SHARDS_VERSION,
    json_bytes,
    marker_name,
    npy_bytes,
    shard_name,
)

#: characters of an unreadable input's reason kept in markers and the manifest
MAX_REASON = 200


@dataclass(frozen=True)
class InputItem:
    """One input sample: its key, where its bytes are, its size and its caption's location.

    ``shard`` is None for a file (``path`` is the file); else ``path`` is the shard and
    ``offset`` / ``size`` locate the member (``member`` its name, ``ext`` its suffix).
    """

    key: str
    path: Path
    size: int
    ext: str
    shard: int | None = None
    member: str = ""
    offset: int = 0
    caption_offset: int = 0
    caption_size: int = -1

    @property
    def source(self) -> str:
        """What the sample JSON's ``source`` says: the file's relative path or ``shard:member``."""
        return self.member if self.shard is None else f"{self.path.name}:{self.member}"


def _adapter_suffixes(adapter: Any) -> tuple[str, ...]:
    return tuple(e.lower() for e in adapter.extensions if e.lower() != ".json")


def _folder_inputs(root: Path, adapter: Any) -> list[InputItem]:
    relpaths = list_suffixed(root, True, _adapter_suffixes(adapter))
    if not relpaths:
        raise InputError(f"no {adapter.name} files under '{root}'")
    items = []
    for key, rel in zip(sample_keys(relpaths), relpaths, strict=True):
        path = root / rel
        side = path.with_suffix(".txt")
        items.append(
            InputItem(
                key,
                path,
                path.stat().st_size,
                path.suffix.lower(),
                member=rel,
                caption_size=side.stat().st_size if side.is_file() else -1,
            )
        )
    return items


def _shard_inputs(paths: list[Path], adapter: Any) -> list[InputItem]:
    exts = [e.lstrip(".") for e in _adapter_suffixes(adapter)]
    items, taken = [], set()
    for i, path in enumerate(paths):
        members, problem = index_shard(path, i, exts)
        if problem is not None and not members:
            raise InputError(f"shard '{path}': {problem}")
        for m in members:
            key, n = m.key, 2
            while key in taken:  # the same key in two shards: keep both, distinctly named
                key, n = f"{m.key}_{n}", n + 1
            taken.add(key)
            items.append(
                InputItem(
                    key, path, m.size, f".{m.ext}", i, m.name, m.offset, m.caption_offset,
                    m.caption_size,
                )
            )  # fmt: skip
    if not items:
        raise InputError(f"no {adapter.name} members ({', '.join(exts)}) in the shards given")
    return items


def _shard_modality(paths: list[Path], components: Components) -> str:
    """The one adapter whose files the first shard holds (as `folder_adapter` for folders)."""
    from atoken.train.data.pack import sole_adapter

    def members(adapter: Any) -> int:
        found, _ = index_shard(paths[0], 0, [e.lstrip(".") for e in _adapter_suffixes(adapter)])
        return len(found)

    return sole_adapter(
        components.adapters,
        members,
        where=f"'{paths[0]}'",
        none_found=f"no member of '{paths[0]}' has a suffix that an installed adapter reads",
    )[0]


def list_inputs(
    source: str | os.PathLike[str], modality: str | None, components: Components
) -> tuple[list[InputItem], str]:
    """The inputs of a folder (recursive) or a shard pattern, in order, and the modality."""
    src = os.fspath(source)
    if Path(src).is_dir():
        from atoken.train.data.pack import folder_adapter

        adapter = folder_adapter(src, modality=modality, components=components)
        return _folder_inputs(Path(src), adapter), adapter.name
    paths = [Path(p) for p in expand_urls(src)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"shard '{missing[0]}' does not exist (from {src!r})")
    name = modality or _shard_modality(paths, components)
    return _shard_inputs(paths, components.adapters.build(name)), name


def _read_range(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise InputError(f"'{path}' is truncated ({len(data)} of {size} bytes)")
    return data


def _caption(item: InputItem) -> str | None:
    if item.caption_size < 0:
        return None
    if item.shard is None:
        data = item.path.with_suffix(".txt").read_bytes()
    else:
        data = _read_range(item.path, item.caption_offset, item.caption_size)
    return data.decode("utf-8", errors="replace").strip() or None


@contextmanager
def _input_file(item: InputItem, scratch: Path) -> Iterator[Path]:
    """A path the adapter reads: the file itself, or a shard member copied to ``scratch``."""
    if item.shard is None:
        yield item.path
        return
    tmp = scratch / f"input{item.ext}"
    tmp.write_bytes(_read_range(item.path, item.offset, item.size))
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:MAX_REASON]


class ShardEncoder:
    """Encode a folder or shard set into latent shards in ``out_dir`` (this rank's part).

    Args:
        model: the tokenizer, in eval mode, on its device.
        model_given: what the model was loaded from (``--model``); stored robustly
            (`atoken.latents_file.model_reference`).
        source: a folder (recursive) or a ``.tar`` shard path, brace pattern or glob.
        out_dir: the output folder.
        shard_size: inputs per shard.
        modality: the adapter's name (default: the one adapter whose files the input holds).
        adapter_options: options of that adapter.
        rank / world: this process's part (default: ``RANK`` / ``WORLD_SIZE``, as torchrun sets).
        precision: the execution plan's precision (part of the plan's fingerprint).
        overwrite: replace shards of another plan instead of refusing.

    Attributes:
        items: every input, in order; ``shards``: how many shards the dataset has;
        owned: this rank's shard indices; ``finished``: those already done (skipped).

    Raises:
        InputError: bad arguments, no inputs, or ``out_dir`` holding another plan's shards.
    """

    def __init__(
        self,
        model: Any,
        model_given: str,
        source: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        shard_size: int,
        *,
        modality: str | None = None,
        adapter_options: dict[str, Any] | None = None,
        rank: int | None = None,
        world: int | None = None,
        precision: str = "auto",
        overwrite: bool = False,
        components: Components | None = None,
    ) -> None:
        from atoken.core.reconstruct import adapter_for

        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise InputError(f"shard_size must be a positive int, got {shard_size!r}")
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
        if not 0 <= self.rank < self.world:
            raise InputError(f"rank {self.rank} is outside a world of {self.world} process(es)")
        self.out = Path(out_dir)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"output '{self.out}' exists and is not a directory")
        comps = components or default_components()
        self.model = model
        self.reference = latents_file.model_reference(model_given)
        self.items, name = list_inputs(source, modality, comps)
        self.options = dict(adapter_options or {})
        latents_file.json_entry("adapter_options", self.options)  # storable, or one clear line
        self.adapter = adapter_for(
            self.items[0].path, name, self.options or None, comps, model=model
        )
        self.shard_size = shard_size
        self.shards = math.ceil(len(self.items) / shard_size)
        device = next(model.parameters()).device
        dtype = autocast_dtype(precision, device)
        q = model.quantizer
        self.description = {
            "model": {**self.reference.__dict__, "model_id": model.model_id},
            "model_id": model.model_id,
            "quantizer": model.config.quantizer.name,
            "payload": "indices" if q.discrete else "codes",
            "channels": q.num_codebooks if q.discrete else model.config.latent_channels,
            "codebook_size": q.codebook_size if q.discrete else None,
            "modality": name,
            "adapter_options": self.options,
            "precision": "bf16" if dtype is not None else "fp32",
            "shard_size": shard_size,
        }
        identity = {
            **{k: v for k, v in self.description.items() if k != "model"},
            "inputs": [(it.key, it.size) for it in self.items],
        }
        self.plan = hashlib.sha256(json_bytes(identity)).hexdigest()[:16]
        self.owned = [i for i in range(self.shards) if i % self.world == self.rank]
        self._prepare(overwrite)
        self.finished = [i for i in self.owned if self._done(i) is not None]

    # -------------------------------------------------------------------- markers
    def _marker(self, index: int) -> dict[str, Any] | None:
        path = self.out / marker_name(index)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # unreadable: not done, and not another plan's
        return doc if isinstance(doc, dict) else {}

    def _done(self, index: int) -> dict[str, Any] | None:
        """The marker of a finished shard of this plan, or None."""
        doc = self._marker(index)
        if not doc or doc.get("plan") != self.plan:
            return None
        tar = self.out / shard_name(index)
        if not tar.is_file() or tar.stat().st_size != doc.get("bytes"):
            return None
        return doc

    def _foreign(self, indices) -> list[int]:
        return [i for i in indices if (d := self._marker(i)) and d.get("plan") != self.plan]

    def _prepare(self, overwrite: bool) -> None:
        if not self.out.is_dir():
            return
        clean_stale_temporaries(self.out)  # parts left by a killed run of this host
        beyond = [
            int(p.name[len(PREFIX) + 1 : -len(".done.json")])
            for p in self.out.glob(f"{PREFIX}-*.done.json")
            if p.name[len(PREFIX) + 1 : -len(".done.json")].isdigit()
        ]
        beyond = [i for i in beyond if i >= self.shards]
        manifest = self.out / MANIFEST_NAME
        old_manifest = None
        if manifest.is_file():
            try:
                old_manifest = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                old_manifest = {}
        stale_manifest = old_manifest is not None and (
            not isinstance(old_manifest, dict) or old_manifest.get("plan") != self.plan
        )
        if not overwrite:
            foreign = self._foreign(range(self.shards)) + beyond
            if foreign or stale_manifest:
                what = marker_name(foreign[0]) if foreign else MANIFEST_NAME
                raise InputError(
                    f"'{self.out}' holds latent shards of another run ({what}: other inputs,"
                    " model, options or shard size); pass --overwrite to replace them, or"
                    " choose another output folder"
                )
            return
        stale = self._foreign(self.owned)
        if self.rank == 0:
            stale += beyond
            if stale_manifest:
                manifest.unlink(missing_ok=True)
        for i in stale:
            (self.out / marker_name(i)).unlink(missing_ok=True)
            (self.out / shard_name(i)).unlink(missing_ok=True)

    # -------------------------------------------------------------------- writing
    def inputs_of(self, index: int) -> range:
        """The input indices shard ``index`` holds (before unreadable ones are left out)."""
        return range(index * self.shard_size, min(len(self.items), (index + 1) * self.shard_size))

    @property
    def pending(self) -> list[int]:
        """This rank's shards still to write, in order."""
        done = set(self.finished)
        return [i for i in self.owned if i not in done]

    def _sample_members(self, item: InputItem, scratch: Path) -> list[tuple[str, bytes]] | str:
        """The members of one input's sample, or the reason it is left out."""
        from atoken.pipeline import encode_sample, latents_tensors, open_sample

        try:
            with _input_file(item, scratch) as path:
                sample = open_sample(self.adapter, path)
                latents, sample_meta = encode_sample(self.model, self.adapter, sample)
                caption = _caption(item)
        except (InputError, OSError, ValueError) as exc:
            return _reason(exc)
        tensors = latents_tensors(latents)
        latents_file.json_entry("sample_meta", sample_meta)  # storable, or one clear line
        meta = {
            "key": item.key,
            "source": item.source,
            "modality": self.adapter.name,
            "sample_meta": sample_meta,
            "adapter_options": self.options,
            "model": self.reference.ref,
            "model_kind": self.reference.kind,
            "model_id": self.model.model_id,
            "quantizer": self.description["quantizer"],
            "tokens": int(tensors["coords"].shape[0]),
        }
        members = [(f"{item.key}.{name}.npy", npy_bytes(t, name)) for name, t in tensors.items()]
        members.append((f"{item.key}.json", json_bytes(meta)))
        if caption is not None:
            members.append((f"{item.key}.txt", caption.encode("utf-8")))
        return members

    def write_shard(self, index: int, on_input: Callable[[], None] | None = None) -> dict:
        """Encode and write shard ``index`` and its done marker (both atomically, in order)."""
        skipped: list[str] = []
        count = size = 0

        def write(fh) -> None:
            nonlocal count, size
            with (
                tempfile.TemporaryDirectory(prefix=".atoken-encode-") as scratch,
                tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for i in self.inputs_of(index):
                    item = self.items[i]
                    members = self._sample_members(item, Path(scratch))
                    if isinstance(members, str):
                        skipped.append(f"{item.key}: {members}")
                    else:
                        for name, data in members:
                            add_member(tar, name, data)
                        count += 1
                    if on_input is not None:
                        on_input()
            size = fh.tell()  # the tar is closed (padded); the file object is not

        tar_path = self.out / shard_name(index)
        inputs = self.inputs_of(index)
        with outputs_together():  # the tar is renamed first, then its marker
            atomic_write(tar_path, write)
            marker = {
                "format": SHARDS_FORMAT,
                "version": SHARDS_VERSION,
                "plan": self.plan,
                "index": index,
                "name": tar_path.name,
                "samples": count,
                "inputs": [inputs.start, inputs.stop],
                "skipped": skipped,
                "bytes": size,
            }
            atomic_write_json(self.out / marker_name(index), marker)
        return marker

    def run(self, on_input: Callable[[], None] | None = None) -> dict[str, Any]:
        """Write this rank's pending shards; then the manifest when every shard is done.

        Returns:
            ``{"written": [indices], "skipped_shards": [finished indices], "samples": n written,
            "unreadable": n, "manifest": path or None}``.
        """
        written, samples, unreadable = [], 0, 0
        for index in self.pending:
            marker = self.write_shard(index, on_input)
            written.append(index)
            samples += marker["samples"]
            unreadable += len(marker["skipped"])
        manifest = self.write_manifest()
        return {
            "written": written,
            "skipped_shards": list(self.finished),
            "samples": samples,
            "unreadable": unreadable,
            "manifest": manifest,
        }

    def write_manifest(self) -> Path | None:
        """Write ``manifest.json`` when every shard's marker (of this plan) is present."""
        markers = []
        for i in range(self.shards):
            doc = self._done(i)
            if doc is None:
                return None
            markers.append(doc)
        doc = {
            "format": SHARDS_FORMAT,
            "version": SHARDS_VERSION,
            "plan": self.plan,
            **self.description,
            "inputs": len(self.items),
            "samples": sum(m["samples"] for m in markers),
            "skipped": sum(len(m["skipped"]) for m in markers),
            "shards": [
                {k: m[k] for k in ("name", "samples", "inputs", "bytes", "skipped")}
                for m in markers
            ],
        }
        return atomic_write_json(self.out / MANIFEST_NAME, doc)
