"""What a run shows and leaves behind: progress bar, metrics.jsonl, loss curve, sample grids.

Rank 0 only. The progress bar shows the step, stage, loss terms and tokens/s; every
``log_every`` steps a record goes to ``metrics.jsonl`` (and a line to stderr when no live bar is
shown); every ``sample_every`` steps the held-out photos are reconstructed with the EMA model into
``samples/step-XXXXXXXX.png`` with PSNR/SSIM in ``eval.jsonl``, and ``loss_curve.png`` is redrawn.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from atoken.train.plots import loss_curve, reconstruction_grid

if TYPE_CHECKING:
    from atoken.train.trainer import Trainer

_SHOWN = ("loss", "l1", "lpips", "gram", "sem", "kl")


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

    def __enter__(self) -> Monitor:
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
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
        keys = [k for k in _SHOWN if any(k in r for r in self.trainer.history)]
        series = {k: [(r["step"], r[k]) for r in self.trainer.history if k in r] for k in keys}
        loss_curve(series, self.run_dir / "loss_curve.png", title="training losses (log scale)")

    def held_out(self) -> list[tuple[str, torch.Tensor]]:
        if self._held_out is None:
            from atoken.train.data.build import held_out_images

            self._held_out = held_out_images(
                self.trainer.config, limit=self.trainer.config.run.eval_images
            )
        return self._held_out

    @torch.no_grad()
    def on_sample(self, step: int) -> None:
        """Reconstruct held-out images with the EMA model; write a grid and eval metrics."""
        from atoken.pipeline import reconstruct_sample

        images = self.held_out()
        self.draw_curve()
        if not images:
            return
        model = self.trainer.ema.module.eval()
        adapter = self.trainer.components.adapters.build("image")
        pairs, captions, rows = [], [], []
        for name, img in images:
            result = reconstruct_sample(model, adapter, img, name)
            pairs.append((result.reference, result.reconstruction))
            captions.append(
                f"{name}: PSNR {result.metrics['psnr']:.2f} dB, SSIM {result.metrics['ssim']:.3f}"
            )
            rows.append({"image": name, **result.metrics})
        reconstruction_grid(
            pairs, self.run_dir / "samples" / f"step-{step:08d}.png", captions=captions
        )
        summary = {
            "step": step,
            "psnr": sum(r["psnr"] for r in rows) / len(rows),
            "ssim": sum(r["ssim"] for r in rows) / len(rows),
            "images": rows,
        }
        with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(summary) + "\n")
        msg = f"step {step}: held-out PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.3f}"
        if self._progress is not None:
            self._progress.console.print(msg)
        else:
            print(msg, file=sys.stderr, flush=True)
