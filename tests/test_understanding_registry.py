"""Registered understanding objectives (`atoken.core.objective.UnderstandingSpec`).

A temporary plugin registers an understanding task ``toy_und`` (image samples, its own
``[semantic.toy]`` table) and the objective ``toy_align`` it names: cosine alignment of the pooled
embedding with a fixed direction plus one learnable scalar. Nothing in atoken names either: the
trainer must build it from its table, train the head and the scalar (``loss`` group), log ``sem``,
checkpoint the scalar under its section and restore it on resume. Phase two refuses an unknown
name (one line, then the registry's list) and missing declarations or tables (one line).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atoken import ConfigError
from atoken.plugin import TaskSpec, UnderstandingSpec, hookimpl


class ToyAlign(nn.Module):
    """``mean(1 - cos(embedding, direction)) + (shift - target)^2``; ``shift`` is learned."""

    def __init__(self, section, context) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(context.seed)
        self.register_buffer(
            "direction", F.normalize(torch.randn(context.width, generator=g), dim=0), False
        )
        self.target = section.weight  # read from its own [semantic.toy] table
        self.shift = nn.Parameter(torch.zeros(()))
        self.cosines: list[float] = []
        self.built_for = (context.name, context.section, context.tasks)

    def loss(self, embedding, batch):
        assert len(batch) == embedding.shape[0]
        cos = F.cosine_similarity(embedding.float(), self.direction[None].to(embedding.device))
        self.cosines.append(float(cos.mean().detach()))
        return (1 - cos).mean() + (self.shift - self.target) ** 2


def _needs_target(section, semantic, name):
    return None if section is not None else f"a [semantic.{name}] section (weight = target)"


class ToyUnderstandingPlugin:
    @hookimpl
    def atoken_register_tasks(self, registry) -> None:
        und = {"modality": "image", "objective": "understanding"}
        registry.add("toy_und", TaskSpec(**und, understanding="toy_align", section="toy"))
        registry.add("toy_nameless", TaskSpec(**und, understanding="no_such_objective"))
        registry.add("toy_uncaptioned", TaskSpec(**und, understanding="caption_contrast"))

    @hookimpl
    def atoken_register_understanding_objectives(self, registry) -> None:
        registry.add(
            "toy_align", UnderstandingSpec(build=ToyAlign, check=_needs_target, sections=True)
        )


@pytest.fixture
def comps(register_plugin):
    return register_plugin(ToyUnderstandingPlugin(), name="toy-und-plugin")


def _config(task: str = "toy_und", steps: int = 12, semantic=None) -> dict:
    return {
        "model": {"preset": "atoken-tiny"},
        "data": [{"name": "samples", "task": task, "options": {"video_frames": False}}],
        "semantic": {"toy": {"weight": 0.5}} if semantic is None else semantic,
        "stages": [
            {"name": "s", "steps": steps, "tasks": {task: 1.0}, "min_res": 32, "max_res": 48},
        ],
        "optimizer": {"lr": 1e-2, "warmup_steps": 1, "grad_clip": None},
        "run": {"log_every": 1, "checkpoint_every": 6, "sample_every": 100, "eval_images": 1},
    }


def _trainer(config: dict, run, comps, **kwargs):
    from atoken.train.config import validate_train_config
    from atoken.train.trainer import Trainer

    cfg = validate_train_config(config, components=comps)
    return Trainer(cfg, run, components=comps, progress=False, **kwargs)


def test_a_plugin_objective_trains_the_head_and_its_own_parameter(comps, tmp_path) -> None:
    trainer = _trainer(_config(), tmp_path / "run", comps)
    toy = trainer.understanding["toy"]
    assert isinstance(toy, ToyAlign)
    assert toy.built_for == ("toy_align", "toy", ("toy_und",))
    (group,) = [g for g in trainer.optimizer.param_groups if g.get("name") == "loss"]
    assert group["params"] == [toy.shift] and group["weight_decay"] == 0.0
    head = {k: v.detach().clone() for k, v in trainer.model.encoder.head.named_parameters()}
    records = [trainer.train_step() for _ in range(12)]
    sems = [r["sem"] for r in records]
    assert all(r["task"] == "toy_und" and "l1" not in r for r in records)
    assert sum(sems[-3:]) / 3 < sum(sems[:3]) / 3  # the loss falls
    assert sum(toy.cosines[-3:]) / 3 > sum(toy.cosines[:3]) / 3  # the head moved towards it
    after = dict(trainer.model.encoder.head.named_parameters())
    assert any(not torch.equal(head[k], after[k].detach()) for k in head)
    assert 0.0 < float(toy.shift.detach()) <= 0.6  # learned towards its table's target
    assert trainer._objective_state()["toy"]["shift"] == toy.shift.detach().cpu()


def test_resume_restores_the_plugin_objectives_state(comps, tmp_path) -> None:
    first = _trainer(_config(steps=6), tmp_path / "run", comps)
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    shift = float(first.understanding["toy"].shift.detach())
    assert shift != 0.0
    again = _trainer(_config(steps=6), tmp_path / "run", comps, resume=True)
    assert again.step == 3 and float(again.understanding["toy"].shift.detach()) == shift


def test_unknown_objective_and_missing_declarations_are_one_line(comps) -> None:
    from atoken.train.config import validate_train_config

    with pytest.raises(ConfigError) as info:
        validate_train_config(_config(task="toy_nameless"), components=comps)
    first, *listing = str(info.value).splitlines()  # one line, then the registry's usual list
    assert "task 'toy_nameless'" in first
    assert "no understanding_objective named 'no_such_objective'" in first
    assert "toy_align (toy-und-plugin)" in listing[0] and "distill (atoken" in listing[0]
    with pytest.raises(ConfigError, match=r"'caption_contrast' \(atoken.*declare section.*and"):
        validate_train_config(_config(task="toy_uncaptioned"), components=comps)
    with pytest.raises(ConfigError, match=r"toy_und.*needs a \[semantic\.toy\] section") as info:
        validate_train_config(_config(semantic={}), components=comps)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="names its registered understanding objective"):
        TaskSpec(modality="image", objective="understanding")
