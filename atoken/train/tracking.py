"""Experiment trackers (``[run] log_to``): TensorBoard and W&B, sinks of a run's logs.

``metrics.jsonl`` and ``eval.jsonl`` stay the record of a run. The monitor (rank 0 only) hands
every row it writes there, and every reconstruction grid it draws into ``samples/``, to the
trackers the config names; nothing is ever read back from a tracker. Tags:

- ``train/<key>``: every number of a ``metrics.jsonl`` row (``train/loss``, ``train/l1``,
  ``train/kl``, ``train/lr``, ``train/grad_norm``, ``train/tokens``, ``train/tokens_per_s``, a
  task objective's own terms), at the row's ``step``;
- ``heldout/<key>``: the numbers of an ``eval.jsonl`` row (``heldout/psnr``, ``heldout/ssim``,
  ``heldout/lpips``: the means over the held-out samples);
- ``samples/reconstructions``: the picture ``samples/step-XXXXXXXX.png`` of that evaluation.

A tracker that raises is switched off with one warning; training, ``metrics.jsonl`` and
``eval.jsonl`` go on unaffected. A missing package is a `ConfigError` naming the extra to install.

Resuming: TensorBoard writes into ``<run>/tensorboard/`` with ``purge_step`` one past the
checkpoint's step, so the steps an interrupted run logged after its checkpoint are hidden and
not shown twice (a new run purges everything earlier). W&B continues the same run: its id is
kept in ``<run>/wandb-id.txt`` (``resume="allow"``); a new run at step 0 gets a new id.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from atoken.core.config import ConfigError

logger = logging.getLogger(__name__)

#: the trackers ``[run] log_to`` may name
KNOWN_TRACKERS = ("tensorboard", "wandb")
#: where TensorBoard's event files go, inside the run folder
TENSORBOARD_DIR = "tensorboard"
#: the W&B run id of the run folder (a resumed run continues the same W&B run)
WANDB_ID_FILE = "wandb-id.txt"
#: the tag of the held-out reconstruction grid
SAMPLES_TAG = "samples/reconstructions"


@runtime_checkable
class Tracker(Protocol):
    """One sink of a run's scalars and pictures."""

    name: str

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """``{tag: value}`` at ``step``."""

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A ``[H, W, 3]`` uint8 picture at ``step``."""

    def close(self) -> None:
        """Flush and release (called once, also when the run fails)."""


def scalars(row: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of a log row as ``{"<prefix>/<key>": value}`` (``step``, text, booleans,
    tables and lists skipped)."""
    return {
        f"{prefix}/{k}": float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


#: the module each tracker needs (`check_available` imports it)
_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}


def check_available(names: Sequence[str]) -> None:
    """Import what each tracker of ``names`` needs, so a missing package fails when the trainer
    is built, before any model or data is loaded.

    Raises:
        ConfigError: a package is missing (the message names the extra to install).
    """
    import importlib

    for name in dict.fromkeys(names):
        if name in _MODULES:
            try:
                importlib.import_module(_MODULES[name])
            except ImportError as exc:
                raise _missing(name, exc) from None


def _missing(name: str, exc: ImportError) -> ConfigError:
    return ConfigError(
        f"[run] log_to names {name!r}, but it cannot be imported ({exc}); install it with:"
        f" pip install 'atoken[{name}]'"
    )


class TensorBoardTracker:
    """`torch.utils.tensorboard.SummaryWriter` writing into ``<run_dir>/tensorboard/``.

    Args:
        run_dir: the run folder.
        start_step: the step the run starts from (the checkpoint's when resuming); events of
            later steps an earlier process wrote are purged (all of them when it is 0).
    """

    name = "tensorboard"

    def __init__(self, run_dir: str | Path, *, start_step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing("tensorboard", exc) from None
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(
            log_dir=str(self.log_dir),
            purge_step=start_step + 1 if start_step > 0 else 0,
            flush_secs=30,
        )

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_run_id(run_dir: str | Path, *, new: bool) -> str:
    """The W&B run id of ``run_dir`` (``wandb-id.txt``); ``new`` (a run starting at step 0) or
    no saved id: a fresh one, saved."""
    path = Path(run_dir) / WANDB_ID_FILE
    if not new and path.is_file():
        saved = path.read_text(encoding="utf-8").strip()
        if saved:
            return saved
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n", encoding="utf-8")
    return run_id


class WandbTracker:
    """A Weights & Biases run (``wandb.init(dir=run_dir, resume="allow", id=...)``).

    Args:
        run_dir: the run folder (W&B writes its files into ``<run_dir>/wandb/``).
        start_step: the step the run starts from; 0 starts a new W&B run, later steps continue
            the one whose id ``wandb-id.txt`` holds.
        config: the run's config as a plain dict (shown as the W&B run's config).
        project: the W&B project (``[run] wandb_project``).
        name: the W&B run's name (default: the run folder's name).

    W&B drops steps at or below the last one a run logged, so after a crash the steps trained
    again after the checkpoint keep their first values there (``metrics.jsonl`` has the new ones).
    """

    name = "wandb"

    def __init__(
        self,
        run_dir: str | Path,
        *,
        start_step: int = 0,
        config: Mapping[str, Any] | None = None,
        project: str = "atoken",
        name: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise _missing("wandb", exc) from None
        run_dir = Path(run_dir)
        self.wandb = wandb
        self.id = wandb_run_id(run_dir, new=start_step == 0)
        self.run = wandb.init(
            dir=str(run_dir),
            project=project,
            name=name or run_dir.resolve().name,
            config=dict(config or {}),
            resume="allow",
            id=self.id,
        )

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The run's trackers as one sink.

    Each call goes to every tracker still on; one that raises (a full disk, W&B unreachable) is
    closed and switched off with one warning, and the run goes on. ``KeyboardInterrupt`` is not
    caught.
    """

    def __init__(self, trackers: Iterable[Tracker] = ()) -> None:
        self.trackers: list[Tracker] = list(trackers)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        if values:
            self._each("log_scalars", values, step)

    def log_image(self, tag: str, image: np.ndarray | str | Path, step: int) -> None:
        """``image``: ``[H, W, 3]`` uint8, or a picture file (read once for all trackers)."""
        if not self.trackers:
            return
        if not isinstance(image, np.ndarray):
            try:
                with Image.open(image) as im:
                    image = np.asarray(im.convert("RGB"))
            except Exception as exc:  # the run goes on; the picture is in samples/ anyway
                logger.warning("could not read %s for the trackers: %s", image, _short(exc))
                return
        self._each("log_image", tag, image, step)

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close()
            except Exception as exc:
                logger.warning("closing the %s tracker failed: %s", tracker.name, _short(exc))

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                self.trackers.remove(tracker)
                logger.warning(
                    "the %s tracker failed at step %s (%s); it is off for the rest of the run,"
                    " training goes on and metrics.jsonl / eval.jsonl are unaffected",
                    tracker.name,
                    args[-1],
                    _short(exc),
                )
                try:
                    tracker.close()
                except Exception:
                    pass


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def open_trackers(
    names: Sequence[str],
    run_dir: str | Path,
    *,
    start_step: int = 0,
    config: Mapping[str, Any] | None = None,
    wandb_project: str = "atoken",
) -> Trackers:
    """The trackers ``names`` (``[run] log_to``) for the run in ``run_dir``.

    Raises:
        ConfigError: a name is unknown, or its package is missing (the message names the extra).
            Any other failure to start a tracker is a warning: the run goes on without it.
    """
    opened: list[Tracker] = []
    try:
        for name in dict.fromkeys(names):
            try:
                opened.append(_open(name, Path(run_dir), start_step, config, wandb_project))
            except ConfigError:
                raise
            except Exception as exc:
                logger.warning(
                    "the %s tracker could not start (%s); the run goes on without it",
                    name,
                    _short(exc),
                )
    except BaseException:
        Trackers(opened).close()
        raise
    return Trackers(opened)


def _open(
    name: str,
    run_dir: Path,
    start_step: int,
    config: Mapping[str, Any] | None,
    wandb_project: str,
) -> Tracker:
    if name == "tensorboard":
        return TensorBoardTracker(run_dir, start_step=start_step)
    if name == "wandb":
        return WandbTracker(run_dir, start_step=start_step, config=config, project=wandb_project)
    raise ConfigError(f"run.log_to: unknown tracker {name!r}; known: {', '.join(KNOWN_TRACKERS)}")
