"""What a run shows and leaves behind: progress bar, metrics.jsonl, curves, sample grids.

Rank 0 only. The progress bar shows the step, stage, loss terms and tokens/s; every
``log_every`` steps a record goes to ``metrics.jsonl`` (and a line to stderr when no live bar is
shown); every ``sample_every`` steps the run's held-out images (its ``[eval]`` section) are
reconstructed with the EMA model into ``samples/step-XXXXXXXX.png`` with PSNR, SSIM and LPIPS
(`atoken.eval.metrics.METRIC_CONVENTION`) in ``eval.jsonl``, and ``loss_curve.png`` is redrawn:
reconstruction losses, the KL term, and held-out PSNR and LPIPS, each on its own panel.

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
from atoken.train.plots import reconstruction_grid, run_curves

if TYPE_CHECKING:
    from atoken.train.trainer import Trainer

#: the run folder's per-step logs: one JSON record per line, each with its ``step``
STEP_LOGS = ("metrics.jsonl", "eval.jsonl")

_SHOWN = ("loss", "l1", "mse", "lpips", "gram", "sem", "kl")
_KL = ("kl",)


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
        self._held_out: list[tuple[str, torch.Tensor]] | None = None
        self.evals: list[dict[str, Any]] = []

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
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        if self.enabled and self.trainer.history:
            self.draw_curve()

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
            if not self.live:
                print(
                    f"step {step}/{self.trainer.config.total_steps} {info}",
                    file=sys.stderr,
                    flush=True,
                )

    def draw_curve(self) -> None:
        """``loss_curve.png``: losses, KL, held-out PSNR and LPIPS on separate panels."""
        history = self.trainer.history

        def series(keys, rows, skip=()):
            found = [k for k in keys if k not in skip and any(k in r for r in rows)]
            return {k: [(r["step"], r[k]) for r in rows if r.get(k) is not None] for k in found}

        panels = [
            ("training losses (log scale)", series(_SHOWN, history, skip=_KL), True),
            ("KL term (log scale)", series(_KL, history), True),
            (f"held-out PSNR, dB ({self._eval_name()})", series(("psnr",), self.evals), False),
            ("held-out LPIPS (lower is better)", series(("lpips",), self.evals), False),
        ]
        run_curves(panels, self.run_dir / "loss_curve.png")

    def _eval_name(self) -> str:
        return self.trainer.config.eval.describe()

    def held_out(self) -> list[tuple[str, torch.Tensor]]:
        if self._held_out is None:
            from atoken.train.data.build import held_out_images

            self._held_out = held_out_images(
                self.trainer.config, limit=self.trainer.config.run.eval_images
            )
        return self._held_out

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, Any]:
        """Held-out metrics of ``model`` (means and per image) and the picture pairs."""
        from atoken.core.reconstruct import reconstruct_sample
        from atoken.eval.metrics import METRIC_CONVENTION

        spec = self.trainer.config.eval
        adapter = self.trainer.components.adapters.build(
            "image", {"max_res": spec.max_res, "lpips": spec.lpips}
        )
        rows, pairs = [], []
        for name, img in self.held_out():
            result = reconstruct_sample(model, adapter, img, name)
            rows.append({"image": name, "tokens": result.tokens, **result.metrics})
            pairs.append((result.reference, result.reconstruction))
        summary: dict[str, Any] = {}
        if rows:
            keys = [k for k in ("psnr", "ssim", "lpips") if all(k in r for r in rows)]
            summary = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
        summary.update(data=self._eval_name(), convention=METRIC_CONVENTION, images=rows)
        return {"summary": summary, "pairs": pairs}

    def on_sample(self, step: int) -> None:
        """Reconstruct held-out images with the EMA model; write a grid and eval metrics."""
        if not self.held_out():
            self.draw_curve()
            return
        model = self.trainer.ema.module.eval()
        result = self.evaluate(model)
        summary = {"step": step, **result["summary"]}
        self.evals.append(summary)
        captions = [
            f"{r['image']}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}"
            + (f", LPIPS {r['lpips']:.3f}" if "lpips" in r else "")
            for r in summary["images"]
        ]
        reconstruction_grid(
            result["pairs"], self.run_dir / "samples" / f"step-{step:08d}.png", captions=captions
        )
        with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(summary) + "\n")
        self.draw_curve()
        lp = f", LPIPS {summary['lpips']:.3f}" if "lpips" in summary else ""
        msg = (
            f"step {step}: held-out PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.3f}{lp}"
            f" ({len(summary['images'])} images: {self._eval_name()})"
        )
        if self._progress is not None:
            self._progress.console.print(msg)
        else:
            print(msg, file=sys.stderr, flush=True)
