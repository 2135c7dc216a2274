"""What a run shows and leaves behind: progress bar, metrics.jsonl, curves, sample grids.

Rank 0 only. The progress bar shows the step, stage, loss terms and tokens/s; every
``log_every`` steps a record goes to ``metrics.jsonl`` (and a line to stderr when no live bar is
shown); every ``sample_every`` steps the run's held-out data (its ``[eval]`` section,
`atoken.train.data.build.held_out_samples`) is reconstructed with the EMA model through the
adapter of the evaluated task (``[eval] task``, else the run's first reconstruction task), the
adapter's metrics (PSNR, SSIM, LPIPS for images, with their convention) go to ``eval.jsonl``,
and ``loss_curve.png`` is redrawn: the loss terms, the KL term, held-out PSNR, SSIM and LPIPS,
and the learning rate, each on its own titled panel. Pictures (``[H, W, 3]`` references) are
drawn as one labelled grid ``samples/step-XXXXXXXX.png``; other samples (clips, ...) are
written by their adapter's ``save_comparison`` into ``samples/step-XXXXXXXX/``.

The trackers ``[run] log_to`` names (`atoken.train.tracking`: TensorBoard, W&B) get the same
rows as they are written, and the grids; they are sinks, closed when the run ends or fails.

An ``eval.jsonl`` record lists its samples under `ROWS` (each named under `NAME`), whatever the
modality: the field names are the log format's, shared with a task objective's own report.

On resume the per-step logs (`STEP_LOGS`) are cut back to the checkpoint's step (`cut_logs`),
so the steps trained again after it are not logged twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from atoken.core.serialization import atomic_write
from atoken.train.plots import reconstruction_grid, run_curves, training_panels
from atoken.train.tracking import SAMPLES_TAG, Trackers, open_trackers, scalars

if TYPE_CHECKING:
    from atoken.train.data.build import HeldOut
    from atoken.train.trainer import Trainer

#: the run folder's per-step logs: one JSON record per line, each with its ``step``
STEP_LOGS = ("metrics.jsonl", "eval.jsonl")

_SHOWN = ("loss", "l1", "mse", "lpips", "gram", "sem", "kl")

#: ``eval.jsonl``: the key of a record's per-sample rows, and of a row's sample name
ROWS, NAME = "images", "image"

#: held-out metrics shown in captions and messages: key -> (label, format)
_QUALITY = {"psnr": ("PSNR", "{:.2f} dB"), "ssim": ("SSIM", "{:.3f}"), "lpips": ("LPIPS", "{:.3f}")}


def _quality(values: dict[str, Any]) -> str:
    """``PSNR 31.20 dB, SSIM 0.912, LPIPS 0.203`` for the metrics ``values`` has."""
    return ", ".join(
        f"{label} {fmt.format(values[k])}" for k, (label, fmt) in _QUALITY.items() if k in values
    )


def _is_picture(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[-1] == 3


def cut_logs(run_dir: str | Path, step: int) -> list[Path]:
    """Cut each of `STEP_LOGS` in ``run_dir`` back to the records of steps ``<= step``.

    Records of later steps (the part of an interrupted run after its checkpoint) and lines a
    kill cut short are dropped; each file is replaced atomically, and only when something is
    dropped.

    Returns:
        The files that were rewritten.
    """
    changed = []
    for name in STEP_LOGS:
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        keep = [line for line in text.splitlines(keepends=True) if _at_or_before(line, step)]
        kept = "".join(keep)
        if kept != text:
            atomic_write(path, lambda fh, kept=kept: fh.write(kept), mode="w")
            changed.append(path)
    return changed


def _at_or_before(line: str, step: int) -> bool:
    if not line.endswith("\n"):
        return False  # cut short by a kill
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step


class Monitor:
    """Progress and outputs of one run."""

    def __init__(self, trainer: Trainer, *, enabled: bool, progress: bool) -> None:
        self.trainer = trainer
        self.enabled = enabled
        self.run_dir = Path(trainer.run_dir)
        self.console = Console(stderr=True)
        self.live = progress and enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._held_out: HeldOut | None = None
        self.evals: list[dict[str, Any]] = []
        self.trackers = Trackers()

    def __enter__(self) -> Monitor:
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.evals = self._earlier_evals()
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]train[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=self.trainer.config.total_steps, completed=self.trainer.step, info=""
            )
        if self.enabled:
            try:
                self.trackers = self._open_trackers()
            except BaseException:
                if self._progress is not None:
                    self._progress.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._progress is not None:
                self._progress.__exit__(*exc)
            if self.enabled and self.trainer.history:
                self.draw_curve()
        finally:
            self.trackers.close()

    def _open_trackers(self) -> Trackers:
        """The ``[run] log_to`` trackers, continuing at the step the run starts from."""
        run = self.trainer.config.run
        if not run.log_to:
            return Trackers()
        return open_trackers(
            run.log_to,
            self.run_dir,
            start_step=self.trainer.step,
            config=json.loads(self.trainer.config.model_dump_json()),
            wandb_project=run.wandb_project,
        )

    def _earlier_evals(self) -> list[dict[str, Any]]:
        """Evaluations a resumed run made up to its checkpoint (for the curves)."""
        path = self.run_dir / "eval.jsonl"
        rows: list[dict[str, Any]] = []
        if self.trainer.step == 0 or not path.is_file():
            return rows
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if isinstance(row, dict) and row.get("step", 1 << 62) <= self.trainer.step:
                    rows.append(row)
        return rows

    def on_step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        terms = " ".join(f"{k} {record[k]:.4g}" for k in _SHOWN if k in record)
        info = f"{record['stage']} | {terms} | {record['tokens_per_s']:.0f} tok/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], info=info)
        step = record["step"]
        if step % self.trainer.config.run.log_every == 0 or step == self.trainer.config.total_steps:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            self.trackers.log_scalars(scalars(record, "train"), step)
            if not self.live:
                print(
                    f"step {step}/{self.trainer.config.total_steps} {info}",
                    file=sys.stderr,
                    flush=True,
                )

    def draw_curve(self) -> None:
        """``loss_curve.png``: loss terms, KL, held-out PSNR / SSIM / LPIPS and the learning rate,
        each on its own titled panel (`atoken.train.plots.training_panels`)."""
        panels = training_panels(self.trainer.history, self.evals, eval_name=self._eval_name())
        run_curves(panels, self.run_dir / "loss_curve.png")

    def _eval_name(self) -> str:
        return self.trainer.config.eval.describe()

    def held_out_data(self) -> HeldOut:
        """The run's ``[eval]`` data and the adapter that reconstructs it (read once)."""
        if self._held_out is None:
            from atoken.train.data.build import held_out_samples

            self._held_out = held_out_samples(
                self.trainer.config,
                limit=self.trainer.config.run.eval_images,
                components=self.trainer.components,
            )
        return self._held_out

    def held_out(self) -> list[tuple[str, Any]]:
        """The ``(name, sample)`` pairs of the run's ``[eval]`` data."""
        return self.held_out_data().samples

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, Any]:
        """Held-out metrics of ``model`` (means and per sample, from the evaluated task's
        adapter), the ``(reference, reconstruction)`` pairs and that adapter."""
        from atoken.core.capabilities import has_capability
        from atoken.core.reconstruct import reconstruct_sample

        held = self.held_out_data()
        rows, pairs = [], []
        for name, sample in held.samples:
            result = reconstruct_sample(model, held.adapter, sample, name)
            rows.append({NAME: name, "tokens": result.tokens, **result.metrics})
            pairs.append((result.reference, result.reconstruction))
        summary: dict[str, Any] = {}
        if rows:
            keys = [k for k in _QUALITY if all(k in r for r in rows)]
            summary = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
        summary["data"] = self._eval_name()
        if has_capability(held.adapter, "metric_convention"):
            summary["convention"] = dict(held.adapter.metric_convention)
        summary[ROWS] = rows
        return {"summary": summary, "pairs": pairs, "adapter": held.adapter}

    def _draw_samples(self, result: dict[str, Any], step: int) -> Path | None:
        """Pictures as one labelled grid (its path is returned); other samples through their
        adapter's comparison (None)."""
        from atoken.core.capabilities import has_capability

        rows, pairs = result["summary"][ROWS], result["pairs"]
        if all(_is_picture(ref) for ref, _ in pairs):
            captions = [f"{r[NAME]}: {_quality(r)}" for r in rows]
            path = self.run_dir / "samples" / f"step-{step:08d}.png"
            reconstruction_grid(pairs, path, captions=captions)
            return path if pairs else None
        adapter = result.get("adapter")
        if adapter is None:
            return None
        suffix = (
            adapter.comparison_suffix
            if has_capability(adapter, "comparison_suffix")
            else adapter.output_suffix
        )
        folder = self.run_dir / "samples" / f"step-{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for row, (ref, rec) in zip(rows, pairs, strict=True):
            adapter.save_comparison(ref, rec, folder / f"{row[NAME]}{suffix}")
        return None

    def on_sample(self, step: int) -> None:
        """Reconstruct the held-out data with the EMA model; write pictures and eval metrics."""
        result = self.trainer.held_out_report()  # a task objective's own evaluation, if any
        if result is None:
            if not self.held_out():
                self.draw_curve()
                return
            result = self.evaluate(self.trainer.ema.module.eval())
        summary = {"step": step, **result["summary"]}
        self.evals.append(summary)
        grid = self._draw_samples(result, step)
        with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(summary) + "\n")
        self.trackers.log_scalars(scalars(summary, "heldout"), step)
        if grid is not None and self.trackers:
            self.trackers.log_image(SAMPLES_TAG, grid, step)
        self.draw_curve()
        msg = (
            f"step {step}: held-out {_quality(summary)}"
            f" ({len(summary[ROWS])} images: {summary.get('data', self._eval_name())})"
        )
        if self._progress is not None:
            self._progress.console.print(msg)
        else:
            print(msg, file=sys.stderr, flush=True)
