"""Hugging Face Hub conventions: repo ids resolved through the local cache, and upload.

- `resolve_pretrained`: a name given to ``from_pretrained`` / ``load_tokenizer`` / ``--model``
  that is not an existing directory but reads as a Hub repo id (``org/name``, optionally
  ``org/name@revision``) is resolved to its snapshot folder in huggingface_hub's cache
  (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default; read at each call).
  With ``HF_HUB_OFFLINE=1`` only the cache is used, and a repo that is not cached is one line
  naming the command that fetches it (``hf download org/name``). Online, only the files a
  pretrained directory holds are fetched (`ALLOW_PATTERNS`: JSON, safetensors, Markdown, at any
  depth, so companion folders come too); pickles are never downloaded nor read.
- The model card that ``save_pretrained`` writes is `atoken.core.model_card`'s.
- `push_to_hub`: ``save_pretrained`` into a temporary folder, then ``create_repo`` +
  ``upload_folder``.

huggingface_hub is optional: nothing here imports it until a repo id is resolved or pushed.

References: the Hub cache layout and ``snapshot_download`` / ``upload_folder`` of
huggingface_hub; the ``push_to_hub`` shape of transformers / diffusers. Written here.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoken.core.model_card import LIBRARY_NAME, CardInfo
from atoken.core.serialization import CheckpointError

if TYPE_CHECKING:
    from atoken.core.pretrained import PretrainedMixin

#: files of a pretrained directory fetched from the Hub (fnmatch: ``*`` crosses ``/``)
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.md")

# the Hub's repo-id rule: [org/]name of letters, digits, '-', '_', '.', no '--' or '..', <= 96
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO_ID = re.compile(rf"^(?P<repo>{_PART}/{_PART})(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9._/-]*))?$")
_TRUE = {"1", "true", "yes", "on", "y", "t"}


# =============================================================================== resolving
@dataclass(frozen=True)
class RepoRef:
    """A Hub model reference: ``repo_id`` and an optional ``revision`` (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo_id(name: str | os.PathLike[str]) -> RepoRef | None:
    """``name`` as a Hub repo reference (``org/name`` or ``org/name@rev``), or None when it does
    not read as one (an absolute or ``./`` path, more than one ``/``, a ``..``, ...)."""
    text = os.fspath(name)
    m = _REPO_ID.match(text)
    if m is None:
        return None
    repo = m.group("repo")
    if "--" in repo or ".." in repo or repo.endswith((".", "-")) or repo.split("/")[1] == ".":
        return None
    return RepoRef(repo, m.group("rev"))


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The huggingface_hub cache in use: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the
    library's default (``~/.cache/huggingface/hub``); read at each call."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def download_command(ref: RepoRef) -> str:
    """The command that puts ``ref`` into the cache (huggingface_hub's ``hf`` CLI)."""
    rev = f" --revision {ref.revision}" if ref.revision else ""
    return f"hf download {ref.repo_id}{rev}"


def resolve_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    what: str = "model",
    local_files_only: bool | None = None,
) -> Path:
    """The local directory of ``name_or_path``: itself when it is an existing directory (a local
    directory always wins) or does not read as a repo id; else the snapshot folder of that Hub
    repo in the cache (fetched first when online and not cached).

    Args:
        name_or_path: a directory, or ``org/name`` / ``org/name@revision``.
        what: what is loaded, for messages (``"model"``, ``"Gaussian decoder"``).
        local_files_only: use only the cache (default: when ``HF_HUB_OFFLINE`` is set).

    Raises:
        CheckpointError: a repo id that is not cached while offline (naming `download_command`),
            huggingface_hub missing, a repo or revision the Hub does not have, or a snapshot
            without ``config.json`` / ``model.safetensors``.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    ref = parse_repo_id(name_or_path)
    if ref is None:
        return path
    offline = hub_offline() if local_files_only is None else local_files_only
    cache = hub_cache_dir()
    try:
        import huggingface_hub as hf
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise CheckpointError(
            f"{what} {str(ref)!r} is neither a local directory nor usable as a Hugging Face repo"
            " id: huggingface_hub is not installed (pip install huggingface_hub)"
        ) from None
    from atoken.core.plugins import _atoken_version

    try:
        found = hf.snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            cache_dir=cache,
            local_files_only=offline,
            allow_patterns=list(ALLOW_PATTERNS),
            library_name=LIBRARY_NAME,
            library_version=_atoken_version(),
        )
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        how = "HF_HUB_OFFLINE is set" if offline and local_files_only is None else "offline"
        raise CheckpointError(
            f"{what} {str(ref)!r} is not a local directory and not in the Hugging Face cache"
            f" {str(cache)!r} ({how}); fetch it with `{download_command(ref)}` (online), or pass"
            " a local directory"
        ) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
        raise CheckpointError(
            f"{what} {str(ref)!r} is not a local directory, and the Hugging Face Hub has no such"
            f" repo or revision ({_one_line(exc)})"
        ) from None
    except (hf_errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{what} {str(ref)!r} could not be fetched from the Hugging Face Hub"
            f" ({_one_line(exc)}); fetch it with `{download_command(ref)}`, or set"
            " HF_HUB_OFFLINE=1 to use the cache only"
        ) from None
    snapshot = Path(str(found))
    from atoken.core.pretrained import CONFIG_NAME, WEIGHTS_NAME

    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (snapshot / n).is_file()]
    if missing:
        raise CheckpointError(
            f"the cached snapshot of {str(ref)!r} ({snapshot}) has no {' or '.join(missing)};"
            f" it is incomplete or not an atoken {what}: fetch it whole with"
            f" `{download_command(ref)}`"
        )
    return snapshot


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# =============================================================================== upload
def push_to_hub(
    model: PretrainedMixin,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    card: str | CardInfo | None = None,
    **save_kwargs: Any,
) -> Any:
    """Save ``model`` (`save_pretrained`, with its model card) into a temporary folder and
    upload it as the Hub repo ``repo_id`` (created if needed).

    Args:
        model: any pretrained model (`atoken.core.pretrained.PretrainedMixin`).
        repo_id: ``org/name``.
        commit_message: default ``"Upload <class> with atoken"``.
        private, token, revision, create_pr: as huggingface_hub's ``create_repo`` /
            ``upload_folder``.
        card: the model card (text, or `CardInfo` for the generated one).
        **save_kwargs: more ``save_pretrained`` keywords (``companions``, ``provenance``).

    Returns:
        huggingface_hub's ``CommitInfo``.

    Raises:
        ValueError: ``repo_id`` is not ``org/name``.
        ModuleNotFoundError: huggingface_hub is not installed.
    """
    ref = parse_repo_id(repo_id)
    if ref is None or ref.revision is not None:
        raise ValueError(f"repo_id {repo_id!r}: expected a Hugging Face repo id 'org/name'")
    try:
        import huggingface_hub as hf
    except ImportError:
        raise ModuleNotFoundError(
            "push_to_hub needs huggingface_hub: pip install huggingface_hub"
        ) from None
    with tempfile.TemporaryDirectory(prefix="atoken-push-") as tmp:
        folder = model.save_pretrained(
            Path(tmp) / ref.repo_id.split("/")[1], card=card, **save_kwargs
        )
        hf.create_repo(ref.repo_id, token=token, private=private, exist_ok=True)
        return hf.upload_folder(
            repo_id=ref.repo_id,
            folder_path=folder,
            commit_message=commit_message or f"Upload {type(model).__name__} with atoken",
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
