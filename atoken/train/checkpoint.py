"""Training checkpoints: atomic, pickle-free, verified on resume, pruned to the newest N.

A run folder looks like this::

    RUN/
      checkpoints/
        step-00000500/
          model.safetensors       trained (raw) weights
          config.json             for a Tokenizer: the model config, so this folder also loads
                                  with ``Tokenizer.from_pretrained`` (raw weights)
          ema.safetensors         EMA weights, same names as model.safetensors (if an EMA is kept)
          optimizer.safetensors   per-parameter optimizer state as ``state.{index}.{name}``
          objectives.safetensors  the task objectives' weights (`atoken.core.objective`) as
                                  ``{objective}.{name}``, and objectives_ema.safetensors their
                                  EMA (only when the run trains a task objective)
          state.json              step, scheduler, data position, RNG, extra, EMA counter,
                                  optimizer hyper-parameters, size + sha256 of every file, and
                                  its own sha256 (``state_sha256``)
        step-00001000/
        .tmp-step-00001500-k2j3/  a save in progress or one killed midway: ignored, removed later
      model/                      ``from_pretrained`` directory of the newest checkpoint: EMA
        config.json               weights if an EMA is kept, else the raw weights; it is what
        model.safetensors         ``atoken reconstruct --model RUN/model`` and ``atoken eval``
        source.json               take (source.json says which step and which weights)
        gaussian_decoder/         companions a task objective exports (EMA weights), e.g.
                                  atoken-plugin-3d's Gaussian decoder
      discarded-20261202T061500Z/ what a run set aside instead of deleting: checkpoints newer
                                  than the one it resumed from, an earlier run on --restart

Everything is safetensors or JSON; nothing is ever unpickled. A checkpoint is written into a
``.tmp-*`` sibling, fsynced, and renamed to ``step-XXXXXXXX`` only when complete, so a process
killed mid-save (even by SIGKILL) leaves the previous checkpoints untouched and at most one
checkpoint interval of work is lost. `latest` checks every file's size and sha256 against
``state.json`` and skips (with a logged reason) a checkpoint that was truncated or corrupted
afterwards, falling back to the one before it; `CheckpointManager.resume_point` refuses (and
lists them) when there are checkpoints and none verifies, rather than start over.

``RUN/model`` is replaced by writing ``RUN/model.tmp``, renaming ``model`` to ``model.old``,
``model.tmp`` to ``model`` and deleting ``model.old``; `repair_model_dir` (run whenever a
`CheckpointManager` is created) restores ``model.old`` if a crash hit between the two renames.

Only one process may write a run folder (rank 0 under data parallelism); every rank may load.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from atoken.core.model_card import CardInfo
from atoken.core.model_dir import config_document
from atoken.core.pretrained import CONFIG_NAME, load_state_dict_checked
from atoken.core.serialization import (
    CheckpointError,
    clean_stale_temporaries,
    fsync_dir,
    load_tensors,
)
from atoken.core.tokenizer import Tokenizer
from atoken.train.checkpoint_files import (
    _STEP_DIR,
    CHECKPOINTS_DIR,
    DISCARDED_PREFIX,
    EMA_FILE,
    MODEL_DIR,
    MODEL_FILE,
    OPTIMIZER_FILE,
    SOURCE_NAME,
    STATE_FORMAT,
    STATE_NAME,
    STATE_VERSION,
    TMP_PREFIX,
    _discard_dir,
    _json_bytes,
    _make_temp_dir,
    _read_state,
    _sealed_state_bytes,
    _write_file,
    _write_tensors,
    set_aside,
    verify_checkpoint,
)
from atoken.train.ema import ModelEma, unwrap_model
from atoken.train.rng import capture_rng_state, restore_rng_state
from atoken.train.state_codec import (
    from_json,
    load_optimizer_state,
    optimizer_state_to_tensors,
    to_json,
)

logger = logging.getLogger(__name__)

#: the task objectives' weights (raw, EMA) in a checkpoint, keyed ``{objective}.{name}``
OBJECTIVES_FILE = "objectives.safetensors"
OBJECTIVES_EMA_FILE = "objectives_ema.safetensors"
#: ``name -> (module, its EMA or None)``: the task objectives a checkpoint holds
Objectives = Mapping[str, tuple[nn.Module, ModelEma | None]]

#: what `CheckpointManager.restart` moves aside: everything a run writes into its folder
RUN_OUTPUTS = (
    CHECKPOINTS_DIR,
    MODEL_DIR,
    "metrics.jsonl",
    "eval.jsonl",
    "samples",
    "loss_curve.png",
    # experiment trackers' copies (`atoken.train.tracking`)
    "tensorboard",
    "wandb",
    "wandb-id.txt",
)


# ====================================================================== files
def step_dir_name(step: int) -> str:
    """``step-00000500`` for step 500."""
    return f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint directories of ``run_dir`` (renamed into place, not verified), oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest(run_dir: str | os.PathLike[str], *, check_hashes: bool = True) -> Path | None:
    """The newest complete, intact checkpoint of ``run_dir``, or None if there is none.

    A checkpoint that fails `verify_checkpoint` is skipped with a logged warning naming it and
    the reason, and the one before it is tried. ``.tmp-*`` directories (saves in progress or
    killed) are never considered.
    """
    path, skipped = _newest_intact(run_dir, check_hashes=check_hashes)
    _log_skipped(skipped)
    return path


def _log_skipped(skipped: list[tuple[Path, str]]) -> None:
    for path, reason in skipped:
        logger.warning("skipping checkpoint %s: %s; trying an older one", path.name, reason)


def _newest_intact(
    run_dir: str | os.PathLike[str], *, check_hashes: bool
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(The newest checkpoint that verifies or None, the newer ones skipped with their reasons)."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path, check_hashes=check_hashes)
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
            continue
        return path, skipped
    return None, skipped


class NoUsableCheckpointError(CheckpointError):
    """A run folder holds checkpoints but none of them verifies: resuming would lose the run.

    Attributes:
        failures: ``(checkpoint directory, reason)`` for each of them, newest first.
    """

    def __init__(self, run_dir: Path, failures: list[tuple[Path, str]]) -> None:
        self.failures = failures
        listed = "; ".join(f"{path.name}: {reason}" for path, reason in failures)
        super().__init__(
            f"cannot resume: run folder {str(run_dir)!r} holds {len(failures)} checkpoint(s)"
            f" and none verifies ({listed}). Nothing was changed. Restore the damaged files, or"
            f" start over with 'atoken train CONFIG --out {run_dir} --restart', which moves the"
            f" old checkpoints and model to {str(run_dir / 'discarded-<time>')!r} (nothing is"
            " deleted)"
        )


# ====================================================================== loading
def load(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    ema: ModelEma | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    verify: bool = True,
    objectives: Objectives | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint into the given objects (in place).

    Args:
        path: a ``step-XXXXXXXX`` directory, e.g. from `latest`.
        model: receives the raw weights (strictly: names and shapes must match).
        ema: receives the EMA weights and update counter. If the checkpoint has none, the EMA
            restarts from the loaded model weights (logged).
        optimizer: receives the optimizer state (logged and left fresh if the checkpoint has
            none).
        scheduler: an LR scheduler (anything with ``load_state_dict``) for the saved state.
        restore_rng: also restore torch, CUDA, ``random`` and numpy RNG states, so the run
            continues with the same random draws.
        verify: check sizes and sha256 of every file first (`verify_checkpoint`).
        objectives: task objectives (and their EMAs) receiving their saved weights, strictly:
            the checkpoint must hold exactly these objectives (``{}``: none); None: not checked.

    Returns:
        ``{"path", "step", "data_state", "extra"}``: where it came from, the step that was
        completed when it was saved, and the data position and extra state given to ``save``.

    Raises:
        CheckpointError: a file is missing or corrupt, or the state does not fit the objects.
    """
    path = Path(path)
    doc = verify_checkpoint(path, check_hashes=verify) if verify else _read_state(path)
    module = unwrap_model(model)
    source = str(path / MODEL_FILE)
    weights = load_tensors(source, what="checkpoint weights")
    if ema is not None and doc.get("ema") is None:  # restarts from the weights as saved
        ema.load_state_dict(weights, num_updates=0)
        logger.info("checkpoint %s has no EMA; the EMA restarts from the loaded weights", path)
        ema = None
    load_state_dict_checked(module, weights, source=source)
    if ema is not None:
        ema.load_state_dict(
            load_tensors(path / EMA_FILE, what="checkpoint EMA weights"),
            num_updates=doc["ema"]["num_updates"],
        )
    if objectives is not None:
        _load_objectives(path, doc, objectives)
    _load_training_state(path, doc, optimizer, scheduler, restore_rng=restore_rng)
    return {
        "path": path,
        "step": int(doc["step"]),
        "data_state": from_json(doc.get("data_state")),
        "extra": from_json(doc.get("extra")),
    }


def load_training_state(
    path: str | os.PathLike[str],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    convert: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> None:
    """Restore the optimizer, scheduler and RNG parts of a checkpoint `load` has already
    verified and read the weights of (for objects built after the weights were loaded, e.g. an
    optimizer over FSDP-sharded parameters; ``convert(param, tensor)`` as in
    `atoken.train.state_codec.load_optimizer_state`)."""
    path = Path(path)
    _load_training_state(path, _read_state(path), optimizer, scheduler, restore_rng, convert)


def _load_training_state(
    path: Path,
    doc: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    restore_rng: bool,
    convert: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> None:
    if optimizer is not None:
        _load_optimizer(path, doc, optimizer, convert)
    if scheduler is not None:
        if doc.get("scheduler") is None:
            logger.warning("checkpoint %s has no scheduler state; the scheduler starts fresh", path)
        else:
            scheduler.load_state_dict(from_json(doc["scheduler"]))
    if restore_rng:
        restore_rng_state(doc["rng"])


def _load_objectives(path: Path, doc: Mapping[str, Any], objectives: Objectives) -> None:
    saved = doc.get("objectives") or {}
    if not saved and not objectives:
        return
    if sorted(saved) != sorted(objectives):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds the task objectives {sorted(saved) or 'none'}, this"
            f" run trains {sorted(objectives)}; resume it with the config it was trained with"
        )
    raw = load_tensors(path / OBJECTIVES_FILE, what="checkpoint objective weights")
    emas = None
    if any(ema is not None for _, ema in objectives.values()):
        emas = load_tensors(path / OBJECTIVES_EMA_FILE, what="checkpoint objective EMA weights")
    for name, (module, ema) in objectives.items():
        prefix = f"{name}."
        own = {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}
        load_state_dict_checked(module, own, source=f"{path / OBJECTIVES_FILE} [{name}]")
        if ema is not None:
            shadow = {k.removeprefix(prefix): v for k, v in emas.items() if k.startswith(prefix)}
            ema.load_state_dict(shadow, num_updates=saved[name].get("ema_num_updates"))


def _load_optimizer(
    path: Path,
    doc: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    convert: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> None:
    if doc.get("optimizer") is None:
        logger.warning("checkpoint %s has no optimizer state; the optimizer starts fresh", path)
        return
    tensors = load_tensors(path / OPTIMIZER_FILE, what="checkpoint optimizer state")
    load_optimizer_state(optimizer, tensors, doc["optimizer"], convert)


# ====================================================================== model directory
def repair_model_dir(run_dir: str | os.PathLike[str]) -> None:
    """Finish or undo an interrupted replacement of ``run_dir/model``.

    If ``model`` is missing but ``model.old`` exists (killed between the two renames), the old
    directory is put back; leftover ``model.old`` and ``model.tmp`` directories are removed.
    """
    run_dir = Path(run_dir)
    current, old, tmp = (run_dir / f"{MODEL_DIR}{s}" for s in ("", ".old", ".tmp"))
    if old.is_dir():
        if current.is_dir():
            shutil.rmtree(old)
        else:
            logger.info(
                "restoring %s from %s (a previous run stopped while replacing it)", current, old
            )
            os.rename(old, current)
    if tmp.is_dir():
        shutil.rmtree(tmp)


def export_model_dir(
    run_dir: str | os.PathLike[str],
    model: nn.Module,
    ema: ModelEma | None = None,
    *,
    step: int | None = None,
    companions: Sequence[Callable[[Path], None]] = (),
    base_model: str | None = None,
) -> Path:
    """(Re)write ``run_dir/model`` as a ``from_pretrained`` directory, replacing it atomically.

    It holds the EMA weights if ``ema`` is given, else ``model``'s own. A `Tokenizer` is written
    with ``save_pretrained`` (``config.json`` + ``model.safetensors`` + a model card stating the
    step, the weights, ``base_model`` (the ``model.from_pretrained`` it was fine-tuned from) and
    the run's latest held-out metrics with their protocol: `run_card_info`); any other module
    gets ``model.safetensors`` only. ``source.json`` records the step and which weights these are.
    Each of ``companions`` is called with the new directory before it replaces the old one, to
    write its companion folders (a task objective's ``export_companions``).

    Returns:
        The ``run_dir/model`` path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    repair_model_dir(run_dir)
    target = ema.module if ema is not None else unwrap_model(model)
    tmp = run_dir / f"{MODEL_DIR}.tmp"
    tmp.mkdir()
    if isinstance(target, Tokenizer):
        target.save_pretrained(
            tmp, card=run_card_info(run_dir, step, ema is not None, base_model=base_model)
        )
    else:
        _write_tensors(tmp / MODEL_FILE, target.state_dict())
    for write in companions:
        write(tmp)
    source = {"step": step, "weights": "ema" if ema is not None else "model"}
    if ema is not None:
        source |= {"ema_decay": ema.decay, "ema_num_updates": ema.num_updates}
    _write_file(tmp / SOURCE_NAME, _json_bytes(source))
    fsync_dir(tmp)
    return _swap_in(tmp, run_dir / MODEL_DIR)


def run_card_info(
    run_dir: Path, step: int | None, ema: bool, *, base_model: str | None = None
) -> CardInfo:
    """The model card facts of a run's exported model: how it was trained, what it started
    from, and the newest held-out evaluation in ``run_dir/eval.jsonl`` at or before ``step``
    (means of PSNR / SSIM / LPIPS, with N, the data, the tokens per sample and the metric
    convention as the protocol). Unreadable log lines are skipped."""
    from atoken.core.hub import parse_repo_id
    from atoken.core.model_card import CardInfo, Metric

    record: dict[str, Any] | None = None
    try:
        lines = (run_dir / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            if step is None or rec["step"] <= step:
                record = rec
    weights = "EMA weights" if ema else "raw weights"
    text = f"Trained with `atoken train` ({weights}" + (
        f", step {step})." if step is not None else ")."
    )
    relation = None
    if base_model is not None:
        text += f" Started from `{base_model}`."
        relation = "finetune"
        if parse_repo_id(base_model) is None:  # a local folder is no Hub id
            base_model = relation = None
    metrics: list[Metric] = []
    protocol: dict[str, Any] = {}
    units = {"psnr": ("PSNR", "dB"), "ssim": ("SSIM", ""), "lpips": ("LPIPS", "")}
    if record is not None:
        for key, (label, unit) in units.items():
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics.append(Metric(label, float(value), key, unit))
        rows = [r for r in record.get("images") or [] if isinstance(r, dict)]
        tokens = sorted({r["tokens"] for r in rows if isinstance(r.get("tokens"), int)})
        protocol = {
            "step": record["step"],
            "weights": weights,
            "N": len(rows),
            "samples": ", ".join(str(r.get("image")) for r in rows) or None,
            "tokens_per_sample": (
                f"{tokens[0]}" if len(tokens) == 1 else f"{tokens[0]}-{tokens[-1]}"
            )
            if tokens
            else None,
            **{
                f"{k}_convention": v
                for k, v in (record.get("convention") or {}).items()
                if isinstance(v, str)
            },
        }
    data = record.get("data") if record is not None else None
    return CardInfo(
        description=text,
        base_model=base_model,
        base_model_relation=relation,
        metrics=metrics,
        dataset=f"held-out {data}" if isinstance(data, str) else "held-out data",
        protocol=protocol,
    )


def _swap_in(tmp: Path, current: Path) -> Path:
    """Replace directory ``current`` by ``tmp``, keeping the old one until the new is in place.

    A complete ``current`` exists at every moment except between the two renames, which
    `repair_model_dir` recovers from.
    """
    old = current.with_name(current.name + ".old")
    if current.exists():
        os.rename(current, old)
    os.rename(tmp, current)
    fsync_dir(current.parent)
    if old.exists():
        shutil.rmtree(old)
    return current


# ====================================================================== the manager
class CheckpointManager:
    """Writes, prunes, finds and loads the checkpoints of one run folder.

    Creating it repairs an interrupted ``run_dir/model`` replacement and removes the temporaries
    of killed runs: ``.tmp-*`` leftovers of saves under ``checkpoints/``, and atoken's marked
    temporary files (``.NAME.~atoken.HOST.PID.*.tmp`` of a process that is gone, see
    `atoken.core.serialization.clean_stale_temporaries`) in the run folder and its subfolders.
    Nothing else is touched.

    Nothing is deleted that a resume could still need: pruning removes only checkpoints older
    than the one just saved, a checkpoint newer than the one resumed from (it failed
    verification) is moved to ``run_dir/discarded-<UTC time>/``, and `restart` moves the whole
    earlier run there.

    Args:
        run_dir: the run folder (created if needed).
        keep_last: how many checkpoints to keep; older ones are deleted after each save.
        check_hashes: `latest` / `resume` verify sha256 of every file (else sizes + headers).

    Example::

        ckpt = CheckpointManager(run_dir, keep_last=cfg.run.keep_last)
        state = ckpt.resume(model=model, ema=ema, optimizer=opt, scheduler=sched)
        start = 0 if state is None else state["step"]
        for step in range(start + 1, total + 1):
            ...
            if step % every == 0 or step == total:
                ckpt.save(step, model=model, ema=ema, optimizer=opt, scheduler=sched,
                          data_state=loader.state_dict())
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], keep_last: int = 3, *, check_hashes: bool = True
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.check_hashes = check_hashes
        self.run_dir.mkdir(parents=True, exist_ok=True)
        repair_model_dir(self.run_dir)
        self._remove_temporaries()
        self._remove_stale_files()

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS_DIR

    @property
    def model_dir(self) -> Path:
        return self.run_dir / MODEL_DIR

    def checkpoints(self) -> list[Path]:
        """Checkpoint directories, oldest first (not verified)."""
        return list_checkpoints(self.run_dir)

    def latest(self) -> Path | None:
        """The newest intact checkpoint (see the module-level `latest`)."""
        return latest(self.run_dir, check_hashes=self.check_hashes)

    # ------------------------------------------------------------------ saving
    def save(
        self,
        step: int,
        *,
        model: nn.Module,
        ema: ModelEma | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        data_state: Any = None,
        extra: Any = None,
        export: bool = True,
        objectives: Objectives | None = None,
        companions: Sequence[Callable[[Path], None]] = (),
        model_state: Mapping[str, Tensor] | None = None,
        optimizer_state: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of the completed ``step``, prune, and refresh ``run_dir/model``.

        Call it after the optimizer step, EMA update and scheduler step of ``step``: the RNG
        state captured here is the one the next step starts from.

        Args:
            step: the number of completed training steps.
            model: the trained model (wrappers are unwrapped).
            ema: its EMA, if one is kept.
            optimizer: any ``torch.optim`` optimizer.
            scheduler: an LR scheduler; its ``state_dict()`` must be JSON-encodable
                (`to_json`).
            data_state: JSON-encodable data position (e.g. the loader's ``state_dict()``).
            extra: any other JSON-encodable state (curriculum stage, best metric, ...).
            export: also rewrite ``run_dir/model`` (`export_model_dir`).
            objectives: the run's task objectives and their EMAs (their weights are saved).
            companions: writers of the model directory's companion folders (`export_model_dir`).
            model_state: the model's weights as whole tensors, when ``model.state_dict()``
                holds shards (FSDP: gathered by every rank first); default ``model``'s.
            optimizer_state: the same for ``optimizer.state_dict()``.

        Returns:
            The new ``checkpoints/step-XXXXXXXX`` directory.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        final = self.checkpoint_dir / step_dir_name(step)
        tmp = _make_temp_dir(self.checkpoint_dir, final.name)
        try:
            _write_checkpoint(
                tmp,
                step,
                model=unwrap_model(model),
                ema=ema,
                optimizer=optimizer,
                scheduler=scheduler,
                data_state=data_state,
                extra=extra,
                objectives=objectives,
                model_state=model_state,
                optimizer_state=optimizer_state,
            )
            fsync_dir(tmp)
            verify_checkpoint(tmp, check_hashes=False)  # sizes and headers, before any pruning
            if final.exists():  # the same step saved again: keep the earlier one aside
                self._set_aside([final], f"step {step} was saved again")
            os.rename(tmp, final)
            fsync_dir(self.checkpoint_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(step)
        if export:
            start = ((extra or {}).get("config") or {}).get("model") or {}
            export_model_dir(
                self.run_dir,
                model,
                ema,
                step=step,
                companions=companions,
                base_model=start.get("from_pretrained") if isinstance(start, dict) else None,
            )
        return final

    def _prune(self, step: int) -> None:
        """Keep the newest ``keep_last`` checkpoints up to ``step``; never touch newer ones.

        Only checkpoints older than ``step`` are removed. A checkpoint newer than the one just
        saved is left from before this run resumed at an older one (`resume` has normally set
        such checkpoints aside already): it is moved to ``discarded-<time>/``, never deleted, so
        the next resume continues this run and the older one can still be inspected.
        """
        older, newer = [], []
        for path in self.checkpoints():
            (newer if int(_STEP_DIR.fullmatch(path.name).group(1)) > step else older).append(path)
        if newer:
            self._set_aside(newer, f"newer than step {step}, which was just saved")
        for path in older[: -self.keep_last]:
            _discard_dir(path)

    def _set_aside(self, paths: list[Path], why: str) -> Path | None:
        where = set_aside(self.run_dir, paths)
        if where is not None:
            names = ", ".join(str(p.relative_to(self.run_dir)) for p in paths)
            logger.warning("moved %s to %s (%s); nothing was deleted", names, where, why)
        return where

    def _remove_temporaries(self) -> None:
        if not self.checkpoint_dir.is_dir():
            return
        for path in self.checkpoint_dir.iterdir():
            if path.name.startswith(TMP_PREFIX):
                logger.info("removing %s (left by an interrupted save)", path)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _remove_stale_files(self) -> None:
        """atoken's marked temporaries of dead processes in the run folder and its subfolders."""
        folders = [self.run_dir]
        for entry in sorted(self.run_dir.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                if entry.name not in (CHECKPOINTS_DIR,) and not entry.name.startswith(
                    (DISCARDED_PREFIX, ".")
                ):
                    folders.append(entry)
        for folder in folders:
            for path in clean_stale_temporaries(folder):
                logger.info("removed %s (a temporary file left by a killed run)", path)

    def restart(self, reason: str = "--restart") -> Path | None:
        """Move every output of an earlier run aside, so a new run starts at step 0.

        ``checkpoints/``, ``model/``, the per-step logs and pictures (`RUN_OUTPUTS`) go to
        ``run_dir/discarded-<UTC time>/`` (logged); nothing is deleted. Anything else in the
        run folder stays where it is.

        Returns:
            The ``discarded-*`` folder, or None when there was nothing to move.
        """
        paths = [self.run_dir / name for name in RUN_OUTPUTS]
        return self._set_aside(paths, f"{reason}: a new run starts at step 0")

    def export_model(
        self, model: nn.Module, ema: ModelEma | None = None, *, step: int | None = None
    ) -> Path:
        """Rewrite ``run_dir/model`` (e.g. at the end of a run); see `export_model_dir`."""
        return export_model_dir(self.run_dir, model, ema, step=step)

    # ------------------------------------------------------------------ loading
    def resume_point(self) -> Path | None:
        """The checkpoint to resume from: the newest that verifies (the newer ones are logged).

        Returns:
            Its directory, or None when the run folder has no checkpoint at all.

        Raises:
            NoUsableCheckpointError: checkpoints exist but none verifies (each is listed with
                its reason); nothing is changed, so no run is lost by resuming.
        """
        path, skipped = _newest_intact(self.run_dir, check_hashes=self.check_hashes)
        if path is None and skipped:
            raise NoUsableCheckpointError(self.run_dir, skipped)  # it lists them: no log lines
        _log_skipped(skipped)
        return path

    def set_aside_newer(self, path: Path) -> Path | None:
        """Move what is newer than ``path`` (the checkpoint resumed from) to ``discarded-*/``.

        The checkpoints newer than it failed verification (else `resume_point` would have
        chosen one); kept out of ``checkpoints/``, they can neither be pruned nor be jumped onto
        by a later resume. ``model/`` goes with them when its ``source.json`` names a newer
        step: it may be the only intact copy of those weights, and the next save would
        overwrite it.
        """
        step = int(_STEP_DIR.fullmatch(path.name).group(1))
        newer = [p for p in self.checkpoints() if int(_STEP_DIR.fullmatch(p.name).group(1)) > step]
        if _exported_step(self.model_dir) > step:
            newer.append(self.model_dir)
        return self._set_aside(
            newer, f"newer than step {step}, which the run resumes from; damaged or abandoned"
        )

    def resume(
        self,
        *,
        model: nn.Module,
        ema: ModelEma | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        restore_rng: bool = True,
        objectives: Objectives | None = None,
    ) -> dict[str, Any] | None:
        """Load the newest intact checkpoint into the given objects.

        Checkpoints newer than it (they failed verification) are then moved aside
        (`set_aside_newer`).

        Returns:
            What `load` returns (``path``, ``step``, ``data_state``, ``extra``), or None when the
            run folder has no checkpoint (start from scratch).

        Raises:
            NoUsableCheckpointError: there are checkpoints, but none verifies.
        """
        path = self.resume_point()
        if path is None:
            logger.info(
                "no checkpoint to resume from in %s; starting from scratch", self.checkpoint_dir
            )
            return None
        state = load(
            path,
            model=model,
            ema=ema,
            optimizer=optimizer,
            scheduler=scheduler,
            restore_rng=restore_rng,
            verify=False,  # resume_point() has just verified it
            objectives=objectives,
        )
        self.set_aside_newer(path)
        logger.info("resuming from %s (step %d)", path, state["step"])
        return state


def _exported_step(model_dir: Path) -> int:
    """The step ``model_dir/source.json`` records, or -1 when it records none."""
    try:
        step = json.loads((model_dir / SOURCE_NAME).read_text(encoding="utf-8")).get("step")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return -1
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def _write_checkpoint(
    directory: Path,
    step: int,
    *,
    model: nn.Module,
    ema: ModelEma | None,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    data_state: Any,
    extra: Any,
    objectives: Objectives | None = None,
    model_state: Mapping[str, Tensor] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
) -> None:
    """Write every file of one checkpoint into ``directory``; ``state.json`` last."""
    from atoken import __version__

    # JSON parts first: a value that cannot be stored fails before any large file is written
    doc: dict[str, Any] = {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "atoken_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "step": int(step),
        "scheduler": to_json(scheduler.state_dict(), "scheduler")
        if scheduler is not None
        else None,
        "data_state": to_json(data_state, "data_state"),
        "extra": to_json(extra, "extra"),
        "ema": None,
        "optimizer": None,
        "rng": capture_rng_state(),
    }
    files: dict[str, Any] = {}
    tokenizer = isinstance(model, Tokenizer)
    metadata = {"format": "atoken"} if tokenizer else None
    weights = model.state_dict() if model_state is None else model_state
    files[MODEL_FILE] = _write_tensors(directory / MODEL_FILE, weights, metadata)
    if tokenizer:
        files[CONFIG_NAME] = _write_file(
            directory / CONFIG_NAME, _json_bytes(config_document(model.config))
        )
    if ema is not None:
        files[EMA_FILE] = _write_tensors(directory / EMA_FILE, ema.state_dict(), metadata)
        doc["ema"] = {"decay": ema.decay, "warmup": ema.warmup, "num_updates": ema.num_updates}
    if objectives:
        raw = {f"{n}.{k}": v for n, (m, _) in objectives.items() for k, v in m.state_dict().items()}
        files[OBJECTIVES_FILE] = _write_tensors(directory / OBJECTIVES_FILE, raw)
        emas = {n: e for n, (_, e) in objectives.items() if e is not None}
        if emas:
            shadow = {f"{n}.{k}": v for n, e in emas.items() for k, v in e.state_dict().items()}
            files[OBJECTIVES_EMA_FILE] = _write_tensors(directory / OBJECTIVES_EMA_FILE, shadow)
        doc["objectives"] = {
            n: {"ema_num_updates": e.num_updates if e is not None else None}
            for n, (_, e) in objectives.items()
        }
    if optimizer is not None:
        tensors, doc["optimizer"] = optimizer_state_to_tensors(optimizer, optimizer_state)
        files[OPTIMIZER_FILE] = _write_tensors(directory / OPTIMIZER_FILE, tensors)
    doc["files"] = files
    _write_file(directory / STATE_NAME, _sealed_state_bytes(doc))
