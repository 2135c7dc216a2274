"""Ablation: the main job with L1 only against the paper's full reconstruction objective.

Both runs take ``configs/quickstart.toml`` (PCA start, same data order, same seed) for the same
number of steps (``ATOKEN_ABLATION_STEPS``, default 150) and differ only in the losses:

* ``l1``: the recipe as shipped (L1, the paper's video/3D reconstruction loss);
* ``full``: the paper's image objective, ``1·L1 + 10·LPIPS + 1000·Gram`` with the perceptual
  terms on 224² resizes (PAPER_FACTS.md, "Losses"; VGG16 for both, as the paper does not say).

Each is judged on the built-in ``final`` photos beside PCA-48 (`atoken.eval.heldout`); the table
goes to stdout and ``.benchmarks/objective_ablation.json``. The perceptual terms cost about 20x an
L1 step on a CPU, so the two runs take very different times; the table gives both.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from atoken.eval.heldout import compare_on_held_out, fit_pca_baseline
from atoken.plugins.image.samples import SampleImagesSource
from atoken.train.config import LossSpec, load_train_config
from atoken.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

OBJECTIVES = {
    "l1": [LossSpec(name="l1", weight=1.0)],
    "full": [
        LossSpec(name="l1", weight=1.0),
        LossSpec(name="lpips", weight=10.0),
        LossSpec(name="gram", weight=1000.0),
    ],
}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> dict:
    steps = int(os.environ.get("ATOKEN_ABLATION_STEPS", "150"))
    base = load_train_config(ROOT / "configs/quickstart.toml")
    images = list(SampleImagesSource("final"))
    if len(images) < 2:
        pytest.skip("the 'final' photos need scikit-learn")
    pca = fit_pca_baseline([im for _, im in SampleImagesSource("train")])
    out: dict = {"steps": steps, "runs": {}}
    for name, losses in OBJECTIVES.items():
        stage = base.stages[0].model_copy(update={"steps": steps, "losses": losses})
        run = base.run.model_copy(update={"checkpoint_every": 10**9, "sample_every": 10**9})
        config = base.model_copy(update={"stages": [stage], "run": run})
        trainer = Trainer(config, tmp_path_factory.mktemp(name), progress=False)
        t0 = time.perf_counter()
        while trainer.step < steps:
            trainer.train_step()
            if trainer.step % 25 == 0 or trainer.step == steps:
                rate = trainer.step / (time.perf_counter() - t0)
                eta = (steps - trainer.step) / rate
                print(f"{name}: step {trainer.step}/{steps}, {rate:.2f} steps/s, ETA {eta:.0f} s")
        seconds = time.perf_counter() - t0
        report = compare_on_held_out(trainer.ema.module, images, pca, split="final")
        out["runs"][name] = {"seconds": round(seconds, 1), **report.means()["model"]}
        out["protocol"] = report.protocol
        out["pca48"] = report.means()["pca48"]
    (ROOT / ".benchmarks").mkdir(exist_ok=True)
    (ROOT / ".benchmarks" / "objective_ablation.json").write_text(json.dumps(out, indent=2))
    print(f"\n{out['protocol']}\nobjective  steps  seconds  PSNR dB   SSIM    LPIPS")
    for name, r in out["runs"].items():
        print(
            f"{name:9s} {steps:6d} {r['seconds']:8.1f} {r['psnr']:8.2f} {r['ssim']:7.4f} {r.get('lpips', float('nan')):7.4f}"
        )
    p = out["pca48"]
    print(
        f"{'PCA-48':9s} {'':6s} {'':8s} {p['psnr']:8.2f} {p['ssim']:7.4f} {p.get('lpips', float('nan')):7.4f}"
    )
    return out


def test_objective_ablation_runs_both_objectives(ablation) -> None:
    """Both runs train and are measured (the figures are the report; no winner is assumed)."""
    for name, r in ablation["runs"].items():
        assert r["psnr"] > 20 and 0 < r["ssim"] <= 1 and "lpips" in r, (name, r)
