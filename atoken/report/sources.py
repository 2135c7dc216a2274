"""What a report is made of: the training runs and reconstructions found under a folder.

- A **training run** is a folder with ``metrics.jsonl`` or ``eval.jsonl`` (what `atoken train`
  writes, `atoken.train.monitor`), read with its ``samples/`` pictures.
- A **reconstruction** is a folder with ``metrics.json`` beside a ``reconstruction.*`` file (what
  `atoken reconstruct` writes per input, `atoken.pipeline.write_reconstruction`), with its
  ``side_by_side.*`` view.

The folder given may be either kind, or hold several of both (``atoken reconstruct`` writes one
subfolder per input); it is searched `MAX_DEPTH` levels deep, leaving out checkpoints, models and
the ``discarded-*`` folders a restarted run sets aside.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoken.core.errors import InputError
from atoken.train.monitor import NAME, ROWS, STEP_LOGS

MAX_DEPTH = 4
#: reconstructions shown at most (a larger folder: the first ones by path, and the page says so)
MAX_ITEMS = 200
_SKIP = {"checkpoints", "model", "__pycache__"}


@dataclass
class Run:
    """A training run folder's logs."""

    path: Path
    metrics: list[dict[str, Any]]  # metrics.jsonl records
    evals: list[dict[str, Any]]  # eval.jsonl records
    samples: list[Path]  # samples/step-XXXXXXXX.png, by step

    def rows(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The per-sample rows of an ``eval.jsonl`` record (each named under ``name``)."""
        return [
            {"name": str(r.get(NAME, "")), **r} for r in record.get(ROWS, []) if isinstance(r, dict)
        ]


@dataclass
class Reconstruction:
    """One reconstruction folder."""

    path: Path
    metrics: dict[str, Any]
    reconstruction: Path
    side_by_side: Path | None
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """``image``, ``video`` or ``splats`` by the reconstruction's suffix, else ``other``."""
        suffix = self.reconstruction.suffix.lower()
        if suffix in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}:
            return "image"
        if suffix in {".mp4", ".webm", ".mov", ".mkv", ".avi"}:
            return "video"
        if suffix == ".ply":
            return "splats"
        return "other"


@dataclass
class Found:
    runs: list[Run]
    items: list[Reconstruction]
    more_items: int  # reconstructions left out (over `MAX_ITEMS`)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON object lines of ``path``; a line a kill cut short is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def number(value: Any) -> float | None:
    """A finite float of a metric value (``"nan"``/``"inf"`` strings and non-numbers: None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _read_run(path: Path) -> Run:
    samples = sorted((path / "samples").glob("step-*.png")) if (path / "samples").is_dir() else []
    return Run(path, read_jsonl(path / STEP_LOGS[0]), read_jsonl(path / STEP_LOGS[1]), samples)


def _read_item(path: Path, files: list[str]) -> Reconstruction:
    rec = sorted(f for f in files if f.startswith("reconstruction."))[0]
    sbs = sorted(f for f in files if f.startswith("side_by_side."))
    problems = []
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        metrics = {}
        problems.append(f"metrics.json could not be read: {exc}")
    return Reconstruction(path, metrics, path / rec, path / sbs[0] if sbs else None, problems)


def find(path: str | os.PathLike[str]) -> Found:
    """The runs and reconstructions at or under ``path``.

    Raises:
        InputError: ``path`` is not a folder, or holds neither kind.
    """
    root = Path(path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise InputError(
            f"'{root}' {what}; give a training run folder (`atoken train --out`) or a"
            " reconstruction folder (`atoken reconstruct -o`)"
        )
    runs: list[Run] = []
    items: list[Reconstruction] = []
    base = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=True):  # depth-limited: no loops
        here = Path(folder)
        dirs[:] = sorted(
            d for d in dirs if d not in _SKIP and not d.startswith((".", "discarded-"))
        )
        if len(here.parts) - base >= MAX_DEPTH:
            dirs[:] = []
        if any(name in files for name in STEP_LOGS):
            runs.append(_read_run(here))
            dirs[:] = []  # samples/ etc. belong to the run
        elif "metrics.json" in files and any(f.startswith("reconstruction.") for f in files):
            items.append(_read_item(here, files))
            dirs[:] = []
    if not runs and not items:
        raise InputError(
            f"'{root}' is neither a training run folder (metrics.jsonl / eval.jsonl, as `atoken"
            " train --out` writes) nor a reconstruction folder (metrics.json beside"
            " reconstruction.*, as `atoken reconstruct -o` writes), and holds none"
        )
    items.sort(key=lambda it: (it.path.as_posix().lower(), it.path.as_posix()))
    return Found(runs, items[:MAX_ITEMS], max(0, len(items) - MAX_ITEMS))
