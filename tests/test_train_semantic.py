"""`image_und` training: SigLIP2 teacher distillation, task mixing, head training, config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_siglip2 import make_tiny_siglip2

from atoken import ConfigError
from atoken.train.config import validate_train_config
from atoken.train.semantic import SemanticDistiller, load_teacher, teacher_inputs
from atoken.train.trainer import Trainer

PROMPTS = ["a photo of a cat.", "a photo of a dog.", "a cup of coffee on a table"]
STAGE = {"name": "s", "steps": 4, "min_res": 32, "max_res": 64, "tokens_per_batch": 64}
DATA = {"name": "samples", "options": {"video_frames": False}}


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    return make_tiny_siglip2(tmp_path_factory.mktemp("siglip2"))


@pytest.fixture(scope="module")
def siglip_wide(tmp_path_factory):
    return make_tiny_siglip2(tmp_path_factory.mktemp("siglip2-wide"), hidden=64)


def _config(siglip, tasks, *, semantic=True, **over):
    base = {
        "model": {"preset": "atoken-tiny"},
        "data": [{**DATA, "task": "image_rec"}, {**DATA, "task": "image_und"}],
        "stages": [{**STAGE, "tasks": tasks}],
        "optimizer": {"lr": 1e-3, "warmup_steps": 1, "grad_clip": None},
        "run": {"log_every": 1, "checkpoint_every": 100, "sample_every": 100, "eval_images": 1},
    }
    if semantic is True:
        base["semantic"] = {"teacher": str(siglip), "text_model": str(siglip), "prompts": PROMPTS}
    elif semantic:
        base["semantic"] = semantic
    base.update(over)
    return validate_train_config(base)


def _head_params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.encoder.head.named_parameters()}


def _changed(before, model) -> bool:
    after = dict(model.encoder.head.named_parameters())
    return any(not torch.equal(before[k], after[k].detach()) for k in before)


def test_mixed_rec_und_run_logs_sem_and_trains_the_head(siglip, tmp_path, monkeypatch) -> None:
    from atoken.train.monitor import Monitor

    monkeypatch.setattr(
        Monitor, "on_sample", lambda self, step: None
    )  # held-out grid: slow, untested here
    cfg = _config(siglip, {"image_rec": 1, "image_und": 1})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.semantic is not None and trainer.semantic.text.shape == (3, 144)
    before = _head_params(trainer.model)
    result = trainer.fit()
    assert result.steps == 4
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tasks = [r["task"] for r in records]
    assert tasks in (["image_rec", "image_und"] * 2, ["image_und", "image_rec"] * 2)
    for r in records:
        assert math.isfinite(r["loss"]) and math.isfinite(r["kl"])
        if r["task"] == "image_und":
            assert math.isfinite(r["sem"]) and r["sem"] >= 0 and "l1" not in r
        else:
            assert "sem" not in r and math.isfinite(r["l1"])
    assert _changed(before, trainer.model)


def test_reconstruction_only_stage_leaves_the_head_alone(siglip, tmp_path) -> None:
    cfg = _config(siglip, {"image_rec": 1}, semantic=False, data=[{**DATA, "task": "image_rec"}])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.semantic is None
    before = _head_params(trainer.model)
    for _ in range(2):
        record = trainer.train_step()
        assert record["task"] == "image_rec" and "sem" not in record
    assert not _changed(before, trainer.model)


def test_distiller_loss_vanishes_when_the_student_is_the_teacher(siglip, components) -> None:
    cfg = _config(siglip, {"image_und": 1})
    distiller = SemanticDistiller.from_config(cfg.semantic, components=components, student_dim=144)
    adapter = components.adapters.build("image")
    gen = torch.Generator().manual_seed(0)
    batch = [
        adapter.to_tokens(torch.rand(h, w, 3, generator=gen) * 2 - 1)
        for h, w in ((48, 64), (32, 32))
    ]
    teacher = distiller.teacher_embeddings(batch)
    assert teacher.shape == (2, 144) and not teacher.requires_grad
    assert float(distiller.loss(teacher.clone(), batch)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 144, generator=gen, requires_grad=True)
    value = distiller.loss(other, batch)
    assert float(value.detach()) > 1e-4
    value.backward()
    assert other.grad is not None and float(other.grad.abs().sum()) > 0


def test_teacher_sees_the_student_pixels(siglip, components) -> None:
    """Rebuilt inputs give the same embedding as one image fed alone without padding."""
    adapter = components.adapters.build("image")
    img = torch.rand(48, 80, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    small = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cfg = _config(siglip, {"image_und": 1})
    distiller = SemanticDistiller.from_config(cfg.semantic, components=components)
    both = distiller.teacher_embeddings([adapter.to_tokens(small), adapter.to_tokens(img)])
    teacher = load_teacher(siglip)
    with torch.no_grad():
        alone = teacher(**teacher_inputs([img], 16)).pooler_output
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
    inputs = teacher_inputs([small, img], 16)
    assert inputs["spatial_shapes"].tolist() == [[2, 2], [3, 5]]
    assert inputs["pixel_attention_mask"].sum(1).tolist() == [4, 15]
    # the distill task's registered adapter rebuilds the pixels; other tokens are refused
    assert (distiller.task, distiller.modality) == ("image_und", "image")
    clip = components.adapters.build("video").to_tokens(torch.zeros(4, 32, 32, 3))
    with pytest.raises(ConfigError, match=r"image_und: got 'video' tokens, expected 'image'"):
        distiller.teacher_embeddings([clip])


def test_config_errors(siglip, siglip_wide, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"image_und.*\[semantic\]"):
        _config(siglip, {"image_rec": 1, "image_und": 1}, semantic=False)
    with pytest.raises(ConfigError, match="at least one prompt"):
        _config(
            siglip, {"image_und": 1}, semantic={"teacher": "x", "text_model": "x", "prompts": []}
        )
    wide = {"teacher": str(siglip_wide), "text_model": str(siglip_wide), "prompts": PROMPTS}
    cfg = _config(siglip, {"image_und": 1}, semantic=wide)
    with pytest.raises(ConfigError, match=r"student's pooled embeddings are 144-d.*64-d"):
        Trainer(cfg, tmp_path / "wide", progress=False)
    mixed = {"teacher": str(siglip_wide), "text_model": str(siglip), "prompts": PROMPTS}
    cfg = _config(siglip, {"image_und": 1}, semantic=mixed)
    with pytest.raises(ConfigError, match=r"teacher's image embeddings are 64-d.*144-d"):
        Trainer(cfg, tmp_path / "mixed", progress=False)
    missing = {"teacher": str(tmp_path / "nope"), "text_model": str(siglip), "prompts": PROMPTS}
    cfg = _config(siglip, {"image_und": 1}, semantic=missing)
    with pytest.raises(ConfigError, match="does not exist"):
        Trainer(cfg, tmp_path / "missing", progress=False)


def test_prompts_file(siglip, tmp_path, components) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# bank\na photo of a cat.\n\na photo of a dog.\n", encoding="utf-8")
    cfg = _config(siglip, {"image_und": 1})
    sem = cfg.semantic.model_copy(update={"prompts": str(path)})
    assert sem.prompt_list() == ["a photo of a cat.", "a photo of a dog."]
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.semantic.model_copy(update={"prompts": str(tmp_path / "none.txt")}).prompt_list()
