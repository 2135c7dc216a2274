"""Registered task objectives (`atoken.core.objective`): a plugin's loss run by the one trainer.

A temporary plugin registers a task ``toy_rec`` (image samples) whose objective ``toy`` is its
own module with one learnable parameter; the trainer must validate its options in phase two,
give its parameters their own AdamW group, checkpoint them (raw and EMA), resume them exactly,
export its companion folder into ``model/`` and let its held-out evaluation replace ``[eval]``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from atoken import ConfigError
from atoken.plugin import (
    HeldOutReport,
    Strict,
    TaskSpec,
    atomic_write_json,
    hookimpl,
    load_tensors,
)


class ToyOptions(Strict):
    scale: float = 1.0
    log_as: str = "toy"


class Toy(nn.Module):
    """``scale * mean |reconstruction + offset - input|``; ``offset`` is learned."""

    capabilities = frozenset({"export_companions", "evaluate_held_out"})

    def __init__(self, options: ToyOptions, context) -> None:
        super().__init__()
        self.scale = options.scale
        self.log_as = options.log_as
        self.tasks = context.tasks
        self.offset = nn.Parameter(torch.full((), 0.25))

    def forward(self, out, batch):
        target = torch.cat([t.feats for t in batch]).to(out.reconstruction.feats.device)
        err = self.scale * (out.reconstruction.feats + self.offset - target).abs().mean()
        return err, {self.log_as: float(err.detach())}

    def export_companions(self, directory) -> None:
        (Path(directory) / "toy").mkdir()
        atomic_write_json(
            Path(directory) / "toy" / "offset.json", {"offset": float(self.offset.detach())}
        )

    def evaluate_held_out(self, model, samples) -> HeldOutReport:
        rows = [
            {
                "image": s.key,
                "psnr": 20.0 + float(self.offset.detach()),
                "ssim": 0.5,
                "tokens": len(s.tokens),
            }
            for s in samples
        ]
        pairs = [(torch.zeros(16, 16, 3), torch.zeros(16, 16, 3)) for _ in samples]
        return HeldOutReport(
            summary={"psnr": rows[0]["psnr"], "ssim": 0.5}, rows=rows, pairs=pairs, data="toy"
        )


class Plain:
    """Not a module: what a plugin's objective factory must not build."""

    def __init__(self, options: ToyOptions) -> None:
        self.options = options


def plain(options: ToyOptions, context):  # unannotated: the registry cannot tell
    """A factory function: what it builds shows only when it is called."""
    return Plain(options)


class ToyPlugin:
    @hookimpl
    def atoken_register_tasks(self, registry) -> None:
        registry.add("toy_rec", TaskSpec(modality="image", task_objective="toy"))
        registry.add("toy_missing", TaskSpec(modality="image", task_objective="no_such"))
        registry.add("toy_plain", TaskSpec(modality="image", task_objective="plain"))

    @hookimpl
    def atoken_register_objectives(self, registry) -> None:
        registry.add("toy", Toy, options=ToyOptions)
        registry.add("plain", plain, options=ToyOptions)


@pytest.fixture
def comps(register_plugin):
    return register_plugin(ToyPlugin(), name="toy-plugin")


def _config(steps: int = 3, *, task: str = "toy_rec", **objectives) -> dict:
    return {
        "model": {"preset": "atoken-tiny"},
        "data": [{"name": "samples", "task": task, "options": {"video_frames": False}}],
        "objectives": objectives or {"toy": {"scale": 2.0}},
        "stages": [
            {"steps": steps, "tasks": {task: 1.0}, "min_res": 32, "max_res": 64},
        ],
        "optimizer": {"lr": 1e-2, "warmup_steps": 1},
        "ema": {"decay": 0.5},
        "run": {"log_every": 1, "checkpoint_every": 2, "sample_every": 3, "eval_images": 2},
    }


def _fit(config: dict, run: Path, comps, **kwargs):
    from atoken.train.config import validate_train_config
    from atoken.train.trainer import Trainer

    cfg = validate_train_config(config, components=comps)
    trainer = Trainer(cfg, run, components=comps, progress=False, **kwargs)
    return trainer, trainer.fit()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_options_and_names_are_checked_in_phase_two(comps) -> None:
    from atoken.train.config import validate_train_config

    with pytest.raises(ConfigError, match=r"objective 'toy'.*\[objectives\.toy\].*scael"):
        validate_train_config(_config(toy={"scael": 2.0}), components=comps)
    with pytest.raises(ConfigError, match=r"(?s)no objective named 'no_such'.*toy \(toy-plugin\)"):
        validate_train_config(_config(task="toy_missing", no_such={}), components=comps)
    with pytest.raises(ConfigError, match=r"\[objectives\.tyo\] is the objective of no task"):
        validate_train_config(_config(toy={}, tyo={}), components=comps)
    with pytest.raises(ValueError, match="task_objective"):
        TaskSpec(
            modality="image",
            objective="understanding",
            understanding="distill",
            task_objective="toy",
        )


def test_the_trainer_trains_checkpoints_exports_and_evaluates_the_objective(
    comps, tmp_path
) -> None:
    run = tmp_path / "run"
    trainer, result = _fit(_config(), run, comps)
    assert result.steps == 3
    (group,) = [g for g in trainer.optimizer.param_groups if g.get("name") == "objective.toy"]
    assert group["params"] == [trainer.task_objectives["toy"].offset]
    assert group["weight_decay"] == 0.0
    records = _rows(run / "metrics.jsonl")
    assert all({"toy", "kl", "loss"} <= set(r) for r in records)
    assert all(r["loss"] == pytest.approx(r["toy"] + 1e-8 * r["kl"], rel=1e-5) for r in records)
    offset = float(trainer.task_objectives["toy"].offset.detach())
    assert offset != 0.25  # it learned
    saved = load_tensors(run / "checkpoints" / "step-00000003" / "objectives.safetensors")
    assert list(saved) == ["toy.offset"] and float(saved["toy.offset"]) == offset
    ema = load_tensors(run / "checkpoints" / "step-00000003" / "objectives_ema.safetensors")
    exported = json.loads((run / "model" / "toy" / "offset.json").read_text())
    assert exported["offset"] == pytest.approx(float(ema["toy.offset"]))
    assert exported["offset"] != pytest.approx(offset)  # the EMA copy is exported
    # the objective's own evaluation replaced [eval] (photos): its rows, its data name
    evals = _rows(run / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 3]
    assert evals[0]["data"] == "toy" and len(evals[0]["images"]) == 2
    assert evals[0]["psnr"] == pytest.approx(20.25)
    assert (run / "samples" / "step-00000003.png").is_file()


def test_resume_restores_the_objective_exactly(comps, tmp_path) -> None:
    _, _ = _fit(_config(), tmp_path / "full", comps)
    _fit(_config(), tmp_path / "cut", comps)
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-00000003")
    resumed, result = _fit(_config(), tmp_path / "cut", comps, resume=True)
    assert result.steps == 3
    for name in ("objectives.safetensors", "objectives_ema.safetensors", "model.safetensors"):
        a = load_tensors(tmp_path / "full" / "checkpoints" / "step-00000003" / name)
        b = load_tensors(tmp_path / "cut" / "checkpoints" / "step-00000003" / name)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_an_objective_may_not_log_the_trainers_own_terms(comps, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"objective 'toy' logs \['kl'\]"):
        _fit(_config(toy={"log_as": "kl"}), tmp_path / "run", comps)


def test_resuming_with_other_objectives_is_refused(comps, tmp_path) -> None:
    from atoken.core.serialization import CheckpointError

    _fit(_config(steps=2), tmp_path / "run", comps)
    plain = _config(steps=3, task="image_rec")
    plain.pop("objectives")
    with pytest.raises(CheckpointError, match=r"holds the task objectives \['toy'\], this run"):
        _fit(plain, tmp_path / "run", comps, resume=True)


def test_an_objective_that_builds_no_module_is_one_line_before_anything_is_written(
    comps, tmp_path
) -> None:
    from atoken.core.registry import ComponentTypeError

    run = tmp_path / "run"
    with pytest.raises(ComponentTypeError, match=r"objective 'plain' \(toy-plugin\) built a Plain"):
        _fit(_config(task="toy_plain", plain={}), run, comps)
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
