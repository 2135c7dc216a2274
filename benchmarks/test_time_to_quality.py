"""Time to quality: the README's main job, held-out quality against training time, one run.

Trains ``configs/quickstart.toml`` (the recipe `make demo` runs) and, at each mark of training
time (default 0, 1, 2, 5 and 10 minutes; evaluation time excluded from the clock), evaluates the
EMA weights on the built-in ``final`` photos -- held out of training and of the recipe's tuning
(`atoken.plugins.image.samples`) -- beside the PCA-48 and bicubic x4 baselines measured in the
same run (`atoken.eval.heldout`). The table is printed and written to
``.benchmarks/time_to_quality.json``; the curve to ``.benchmarks/time_to_quality.png``.

Targets (issue "Training that learns", item 2), at the last mark:

* held-out PSNR >= PCA-48's (nothing lost against the optimal linear code);
* held-out PSNR and LPIPS better than at the first mark after the start (training adds quality);
* held-out LPIPS <= 0.8 x PCA-48's -- not reached by the current recipe (marked xfail; the
  README gives the measured ratio; `test_lpips_headroom.py` measures what the target asks).

Environment: ``ATOKEN_TTQ_MINUTES`` (e.g. ``"0,0.5,1"`` for a quick look), ``ATOKEN_TTQ_CONFIG``
(another training file to time). One run takes the last mark plus about a minute of evaluation
per mark on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from atoken.eval.heldout import compare_on_held_out, fit_pca_baseline, format_table
from atoken.plugins.image.samples import SampleImagesSource
from atoken.train.config import load_train_config
from atoken.train.plots import run_curves
from atoken.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
LPIPS_TARGET = 0.8


def _marks() -> list[float]:
    text = os.environ.get("ATOKEN_TTQ_MINUTES", "0,1,2,5,10")
    try:
        marks = sorted({float(m) for m in text.split(",") if m.strip()})
    except ValueError:
        raise pytest.UsageError(
            f"ATOKEN_TTQ_MINUTES: comma-separated minutes, got {text!r}"
        ) from None
    return marks if marks and marks[0] == 0 else [0.0, *marks]


@pytest.fixture(scope="module")
def curve(tmp_path_factory) -> dict:
    """Train the recipe, evaluating at every mark; returns the rows and the baselines."""
    config = load_train_config(
        os.environ.get("ATOKEN_TTQ_CONFIG", ROOT / "configs/quickstart.toml")
    )
    config = config.model_copy(
        update={
            "run": config.run.model_copy(update={"checkpoint_every": 10**9, "sample_every": 10**9})
        }
    )
    images = list(SampleImagesSource("final"))
    if len(images) < 2:
        pytest.skip(
            "the 'final' photos need scikit-learn (pip install -c constraints.txt 'atoken[samples]')"
        )
    pca = fit_pca_baseline([im for _, im in SampleImagesSource("train")])
    trainer = Trainer(config, tmp_path_factory.mktemp("ttq"), progress=False)
    rows, clock, cpu = [], 0.0, 0.0
    for minutes in _marks():
        while clock < minutes * 60 and trainer.step < config.total_steps:
            w0, c0 = time.perf_counter(), time.process_time()
            trainer.train_step()
            clock += time.perf_counter() - w0
            cpu += time.process_time() - c0
        report = compare_on_held_out(trainer.ema.module, images, pca, split="final")
        means = report.means()
        rows.append(
            {
                "minutes": round(clock / 60, 2),
                "cpu_minutes": round(cpu / 60, 2),
                "step": trainer.step,
                **means["model"],
            }
        )
        print(
            f"\n{clock / 60:5.2f} min (step {trainer.step}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in means["model"].items())
        )
    baselines = {k: v for k, v in report.means().items() if k != "model"}
    result = {
        "config": str(os.environ.get("ATOKEN_TTQ_CONFIG", "configs/quickstart.toml")),
        "threads": torch.get_num_threads(),
        "protocol": report.protocol,
        "rows": rows,
        "baselines": baselines,
        "final_table": format_table(report),
        "per_image": report.rows,
    }
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / "time_to_quality.json").write_text(json.dumps(result, indent=2))
    steps = [(r["step"], r) for r in rows]
    panels = [
        (
            "held-out PSNR dB (final photos)",
            {
                "model": [(s, r["psnr"]) for s, r in steps],
                "PCA-48": [(s, baselines["pca48"]["psnr"]) for s, _ in steps],
            },
            False,
        ),
        (
            "held-out LPIPS (final photos)",
            {
                "model": [(s, r["lpips"]) for s, r in steps if "lpips" in r],
                "PCA-48": [(s, baselines["pca48"].get("lpips", float("nan"))) for s, _ in steps],
            },
            False,
        ),
    ]
    run_curves(panels, out / "time_to_quality.png")
    print("\n" + "\n".join(_table(result)))
    return result


def _table(result: dict) -> list[str]:
    lines = [
        result["protocol"],
        f"{'minutes':>8s} {'step':>6s} {'PSNR dB':>8s} {'SSIM':>7s} {'LPIPS':>7s}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['minutes']:8.2f} {r['step']:6d} {r['psnr']:8.2f} {r['ssim']:7.4f} {r.get('lpips', float('nan')):7.4f}"
        )
    for name, m in result["baselines"].items():
        lines.append(
            f"{name:>15s} {m['psnr']:8.2f} {m['ssim']:7.4f} {m.get('lpips', float('nan')):7.4f}"
        )
    return lines


def test_time_to_quality_psnr_at_least_pca48(curve) -> None:
    last, pca = curve["rows"][-1], curve["baselines"]["pca48"]
    assert last["psnr"] >= pca["psnr"], _table(curve)


def test_time_to_quality_improves_over_the_run(curve) -> None:
    rows = curve["rows"]
    if len(rows) < 3:
        pytest.skip("needs two marks after the start")
    first, last = rows[1], rows[-1]
    assert last["psnr"] > first["psnr"] and last["lpips"] < first["lpips"], _table(curve)
    assert last["psnr"] > rows[0]["psnr"] and last["lpips"] < rows[0]["lpips"], _table(curve)


@pytest.mark.xfail(
    reason="the quickstart recipe reaches about 0.89 x PCA-48's LPIPS, not 0.8", strict=False
)
def test_time_to_quality_lpips_target(curve) -> None:
    last, pca = curve["rows"][-1], curve["baselines"]["pca48"]
    assert last["lpips"] <= LPIPS_TARGET * pca["lpips"], _table(curve)
