"""`atoken train`: config validation, schedule, stage hand-over, a real short run, resume."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import atoken
from atoken import ConfigError
from atoken.train.config import load_train_config, scale_steps, validate_train_config
from atoken.train.optim import group_of, lr_factor, param_groups
from atoken.train.trainer import Trainer, stage_at, task_schedule


def _config(**over):
    base = {
        "model": {"preset": "atoken-tiny"},
        "data": [{"name": "samples", "task": "image_rec", "options": {"video_frames": False}}],
        "stages": [
            {"name": "s1", "steps": 3, "min_res": 32, "max_res": 96, "tokens_per_batch": 192},
            {
                "name": "s2",
                "steps": 2,
                "min_res": 32,
                "max_res": 96,
                "tokens_per_batch": 192,
                "quantizer": {"name": "fsq"},
            },
        ],
        "optimizer": {"lr": 1e-3, "warmup_steps": 1},
        "run": {"log_every": 1, "checkpoint_every": 2, "sample_every": 5, "eval_images": 1},
        "eval": {"lpips": False, "max_res": 128},
    }
    base.update(over)
    return validate_train_config(base)


def test_config_errors_name_key_paths(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"stages\.0\.stpes: unknown key"):
        validate_train_config({"stages": [{"stpes": 3}]})
    with pytest.raises(ConfigError, match=r"optimizer\.lr: Input should be greater than 0"):
        validate_train_config({"stages": [{"steps": 3}], "optimizer": {"lr": -1}})
    unknown = (
        r"stages\.0\.tasks\.audio_rec: no task named 'audio_rec'.*\n.*tasks: .*image_rec \(atoken"
    )
    with pytest.raises(ConfigError, match=unknown):
        validate_train_config({"stages": [{"steps": 3, "tasks": {"audio_rec": 1}}]})
    path = tmp_path / "c.toml"
    path.write_text("[[stages]]\nsteps = 'many'\n")
    with pytest.raises(ConfigError, match=r"c\.toml: stages\.0\.steps"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "missing.toml")


def test_repository_configs_validate() -> None:
    """Every shipped config is a config of atoken's one trainer and validates (3d-gs.toml too)."""
    from pathlib import Path

    checked = 0
    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.toml")):
        assert load_train_config(path).total_steps > 0, path
        checked += 1
    assert checked >= 5  # quickstart, pretrain-tiny, stage2-video, stage3-3d, 3d-gs


def test_schedule_warmup_cosine_and_floor() -> None:
    f = [lr_factor(s, total=100, warmup=10, lr=3e-4, min_lr=3e-5) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # monotone decay after warm-up
    mid = lr_factor(55, total=100, warmup=10, lr=3e-4, min_lr=3e-5)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_param_groups_apply_encoder_multiplier_and_no_decay(components) -> None:
    model = atoken.build_tokenizer("atoken-tiny", components=components)
    cfg = _config().optimizer
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert groups["encoder"]["lr"] == pytest.approx(cfg.lr * cfg.encoder_lr_mult)
    assert groups["rest"]["lr"] == pytest.approx(cfg.lr)
    assert all(g["weight_decay"] == 0 for n, g in groups.items() if n.endswith("no_decay"))
    assert (
        group_of("encoder.head.probe") == "head"
        and group_of("decoder.out_layer.weight") == "decoder"
    )
    n_params = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())


def test_stages_and_round_robin_tasks() -> None:
    cfg = _config()
    assert [stage_at(cfg, s).stage.name for s in range(5)] == ["s1", "s1", "s1", "s2", "s2"]
    tasks = task_schedule({"image_rec": 2.0, "video_rec": 1.0})
    seq = [next(tasks) for _ in range(9)]
    assert seq.count("image_rec") == 6 and seq.count("video_rec") == 3
    assert scale_steps(cfg, 10).total_steps == 10


def test_short_run_trains_hands_over_and_resumes(tmp_path) -> None:
    cfg = _config()
    run = tmp_path / "run"
    result = Trainer(cfg, run, progress=False).fit()
    assert result.steps == 5
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in records] == ["s1"] * 3 + ["s2"] * 2
    assert all(math.isfinite(r["loss"]) and r["tokens"] <= 192 for r in records)
    assert (run / "loss_curve.png").is_file() and (run / "samples" / "step-00000005.png").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
        "step-00000005",
    ]
    # the exported model loads, has switched to FSQ in stage 2, and gives indices
    model = atoken.Tokenizer.from_pretrained(run / "model")
    assert model.config.quantizer.name == "fsq"
    tokens = (
        atoken.default_components().adapters.build("image").to_tokens(torch.rand(32, 48, 3) * 2 - 1)
    )
    assert model.encode([tokens]).indices.shape == (6, 8)
    # resuming a finished run continues from its last checkpoint and does nothing more
    again = Trainer(cfg, run, resume=True, progress=False)
    assert again.step == 5
    # a damaged step 5: resuming falls back to step 4, sets step 5 aside intact, cuts the logs
    # back to step 4, and reproduces step 5 exactly
    from safetensors.torch import load_file

    first = {  # copies: the file is about to be truncated under the mapping
        k: v.clone()
        for k, v in load_file(
            str(run / "checkpoints" / "step-00000005" / "model.safetensors")
        ).items()
    }
    weights = run / "checkpoints" / "step-00000005" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    damaged = weights.read_bytes()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "lo')  # a record a kill cut short
    resumed = Trainer(cfg, run, resume=True, progress=False)
    assert resumed.step == 4
    assert _steps(run / "metrics.jsonl") == [1, 2, 3, 4]
    assert _steps(run / "eval.jsonl") == [0]  # step 5's evaluation came after the checkpoint
    (aside,) = sorted(run.glob("discarded-*"))
    assert (aside / "checkpoints" / "step-00000005" / "model.safetensors").read_bytes() == damaged
    resumed.fit()
    second = load_file(str(run / "checkpoints" / "step-00000005" / "model.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], atol=0, rtol=0, msg=key)
    assert _steps(run / "metrics.jsonl") == [1, 2, 3, 4, 5]  # no step logged twice
    assert _steps(run / "eval.jsonl") == [0, 5]


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _tree(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_resume_with_no_verifying_checkpoint_stops_and_restart_sets_the_run_aside(
    tmp_path, capsys
) -> None:
    """Every checkpoint damaged: ``--resume`` refuses with the list and changes nothing (the
    issue's data loss: it used to start at step 0 and its first save deleted them); a run
    without either flag refuses too; ``--restart`` moves the old run aside byte for byte."""
    from atoken.train.checkpoint import NoUsableCheckpointError

    one = [{"name": "s1", "steps": 4, "min_res": 32, "max_res": 64, "tokens_per_batch": 96}]
    cfg = _config(
        stages=one,
        run={"log_every": 1, "checkpoint_every": 2, "sample_every": 100, "eval_images": 1},
    )
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False).fit()
    weights = run / "checkpoints" / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    state = run / "checkpoints" / "step-00000004" / "state.json"
    state.write_text(state.read_text().replace('"step": 4', '"step": 3'))  # edited
    before = _tree(run)
    with pytest.raises(
        NoUsableCheckpointError,
        match=r"step-00000004: .*was changed after .*step-00000002: .*truncated.*--restart",
    ):
        Trainer(cfg, run, resume=True, progress=False)
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume .* --restart"):
        Trainer(cfg, run, progress=False)
    with pytest.raises(ConfigError, match="exclude each other"):
        Trainer(cfg, run, resume=True, restart=True, progress=False)
    assert _tree(run) == before
    capsys.readouterr()
    again = Trainer(cfg, run, restart=True, progress=False)
    assert again.step == 0
    (aside,) = sorted(run.glob("discarded-*"))
    assert _tree(aside) == before  # checkpoints, model, logs, pictures: all of it, unchanged
    again.fit()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]
    assert _steps(run / "metrics.jsonl") == [1, 2, 3, 4]
    assert _tree(aside) == before


def test_a_new_run_sets_earlier_outputs_aside_instead_of_appending(tmp_path) -> None:
    """No checkpoint but an earlier run's model and logs: a run at step 0 moves them aside."""
    one = [{"name": "s1", "steps": 2, "min_res": 32, "max_res": 64, "tokens_per_batch": 96}]
    cfg = _config(
        stages=one,
        run={"log_every": 1, "checkpoint_every": 2, "sample_every": 100, "eval_images": 1},
    )
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False).fit()
    import shutil

    shutil.rmtree(run / "checkpoints")
    before = _tree(run)
    Trainer(cfg, run, resume=True, progress=False).fit()
    (aside,) = sorted(run.glob("discarded-*"))
    assert _tree(aside) == before
    assert _steps(run / "metrics.jsonl") == [1, 2]


def test_config_upper_bounds_name_the_key_and_the_override(tmp_path) -> None:
    """A value that sizes an allocation is bounded (the issue: min_res = 40000 reached a 46 GB
    allocation); [limits] raises a bound, and --steps is bounded too."""
    from atoken.train.config import LimitsConfig

    bounds = LimitsConfig()
    big = bounds.resolution + 1
    cases = [
        (
            {"stages": [{"steps": 3, "min_res": big, "max_res": big}]},
            r"stages\.0\.min_res: ",
            "resolution",
        ),
        (
            {"stages": [{"steps": 3, "video_max_res": big}]},
            r"stages\.0\.video_max_res: ",
            "resolution",
        ),
        (
            {"stages": [{"steps": 3, "tokens_per_batch": bounds.tokens_per_batch + 1}]},
            r"stages\.0\.tokens_per_batch: ",
            "tokens_per_batch",
        ),
        ({"stages": [{"steps": bounds.steps + 1}]}, r"stages\.0\.steps: ", "steps"),
        ({"stages": [{"steps": bounds.steps // 2 + 1}] * 2}, r"stages: ", "steps"),
        ({"stages": [{"steps": 3}], "eval": {"max_res": big}}, r"eval\.max_res: ", "resolution"),
        (
            {"stages": [{"steps": 3}], "optimizer": {"grad_accum": bounds.grad_accum + 1}},
            r"optimizer\.grad_accum: ",
            "grad_accum",
        ),
        (
            {"stages": [{"steps": 3}], "model": {"pca_images": bounds.images + 1}},
            r"model\.pca_images: ",
            "images",
        ),
        (
            {
                "stages": [{"steps": 3}],
                "data": [{"task": "video_rec", "options": {"clip_frames": bounds.clip_frames + 1}}],
            },
            r"data\.0\.options\.clip_frames: ",
            "clip_frames",
        ),
        (
            {"stages": [{"steps": 3}], "run": {"keep_last": bounds.keep_last + 1}},
            r"run\.keep_last: ",
            "keep_last",
        ),
    ]
    for data, key, name in cases:
        bound = getattr(bounds, name)
        with pytest.raises(
            ConfigError,
            match=key + rf"\d+ is above the limit of {bound}"
            rf" \(limits\.{name}\); .*\[limits\] {name} = \d+",
        ):
            validate_train_config(data)
        raised = validate_train_config({**data, "limits": {name: 2 * bound + 2}})
        assert raised.limits.model_dump()[name] == 2 * bound + 2
    at_bound = {
        "stages": [{"steps": 3, "min_res": bounds.resolution, "max_res": bounds.resolution}]
    }
    assert validate_train_config(at_bound).stages[0].max_res == bounds.resolution
    path = tmp_path / "c.toml"
    path.write_text("[[stages]]\nsteps = 3\nmin_res = 40000\nmax_res = 40000\n")
    with pytest.raises(ConfigError, match=r"c\.toml: stages\.0\.min_res: 40000 is above"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="limits.steps"):
        scale_steps(_config(), bounds.steps + 1)
    with pytest.raises(ConfigError, match=r"limits\.resolutoin: unknown key"):
        validate_train_config({"stages": [{"steps": 3}], "limits": {"resolutoin": 1}})


def test_resume_on_an_empty_run_folder_applies_the_configured_start(tmp_path, capsys) -> None:
    """``--resume`` with no checkpoint yet is a new run: the PCA start is applied, and the
    parameters after a few steps are bit-identical to a run started without ``--resume``."""
    cfg = _config(
        model={"preset": "atoken-tiny", "init": "pca", "pca_images": 4},
        stages=[{"name": "s1", "steps": 3, "min_res": 32, "max_res": 96, "tokens_per_batch": 192}],
        run={"log_every": 1, "checkpoint_every": 3, "sample_every": 100, "eval_images": 1},
    )
    fresh = Trainer(cfg, tmp_path / "fresh", progress=False)
    fresh.fit()
    assert "PCA start" in capsys.readouterr().out
    resumed = Trainer(cfg, tmp_path / "resumed", resume=True, progress=False)
    out = capsys.readouterr().out
    assert "--resume: no checkpoint in" in out and "PCA start" in out
    resumed.fit()
    a, b = fresh.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)
    # and the start really is the PCA one: without the init the weights differ
    plain = _config(
        stages=[{"name": "s1", "steps": 3, "min_res": 32, "max_res": 96, "tokens_per_batch": 192}],
        run={"log_every": 1, "checkpoint_every": 3, "sample_every": 100, "eval_images": 1},
    )
    other = Trainer(plain, tmp_path / "plain", resume=True, progress=False)
    other.fit()
    w = "encoder.input_layer.weight"
    assert not torch.equal(other.model.state_dict()[w], a[w])


def test_lr_mult_zero_freezes_and_unknown_prefixes_are_errors(tmp_path) -> None:
    one = [{"name": "s1", "steps": 2, "min_res": 32, "max_res": 64, "tokens_per_batch": 96}]
    cfg = _config(
        stages=one,
        optimizer={
            "lr": 1e-3,
            "warmup_steps": 1,
            "lr_mult": {"decoder.out_layer": 0.0, "proj": 0.5},
        },
    )
    trainer = Trainer(cfg, tmp_path / "a", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    assert torch.equal(after["decoder.out_layer.weight"], before["decoder.out_layer.weight"])
    assert not torch.equal(after["proj.weight"], before["proj.weight"])
    assert not torch.equal(
        after["decoder.blocks.0.attn.to_qkv.weight"], before["decoder.blocks.0.attn.to_qkv.weight"]
    )
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert any(n.endswith("/x0.5") for n in lrs)
    typo = _config(stages=one, optimizer={"lr": 1e-3, "lr_mult": {"decoder.outlayer": 0.0}})
    with pytest.raises(ConfigError, match=r"lr_mult: \['decoder.outlayer'\] match no parameter"):
        Trainer(typo, tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="lr_mult"):
        validate_train_config({"stages": [{"steps": 1}], "optimizer": {"lr_mult": {"proj": -1}}})


def test_eval_section_names_the_held_out_data(tmp_path, photos) -> None:
    """The monitor judges the run on the images [eval] names (a folder here), not on the
    built-in photos, with standard SSIM and LPIPS when asked."""
    from atoken.plugins.image.io import write_png

    held = tmp_path / "held"
    held.mkdir()
    write_png(photos["chelsea"][:96, :128], held / "cat.png")
    write_png(photos["coffee"][:64, :80], held / "cup.png")
    (held / "broken.png").write_bytes(b"not a png")
    one = [{"name": "s1", "steps": 2, "min_res": 32, "max_res": 64, "tokens_per_batch": 96}]
    cfg = _config(
        stages=one,
        eval={"source": "folder", "path": str(held), "lpips": False},
        run={"log_every": 1, "checkpoint_every": 2, "sample_every": 2, "eval_images": 5},
    )
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2]  # the start, then every sample_every
    assert [i["image"] for i in rows[0]["images"]] == ["cat", "cup"]  # the broken file skipped
    assert rows[0]["data"] == f"folder {str(held)!r}" and "lpips" not in rows[0]
    assert {i["tokens"] for i in rows[0]["images"]} == {6 * 8, 4 * 5}
    assert "uint8" in rows[0]["convention"]["pixels"]
    with pytest.raises(ConfigError, match="eval source 'folder' needs a path"):
        validate_train_config({"stages": [{"steps": 1}], "eval": {"source": "folder"}})
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = _config(stages=one, eval={"source": "folder", "path": str(empty)})
    from atoken.core.errors import AtokenError

    with pytest.raises(AtokenError, match="no image files .* under"):
        Trainer(bad, tmp_path / "run2", progress=False).fit()


TINY_TOML = """\
[[data]]
name = "samples"
task = "image_rec"
options = { video_frames = false }

[[stages]]
steps = 4
min_res = 32
max_res = 64
tokens_per_batch = 96

[optimizer]
lr = 1e-3
warmup_steps = 1

[run]
log_every = 1
checkpoint_every = 2
sample_every = 100
eval_images = 1

[eval]
lpips = false
max_res = 64
"""


def test_cli_resume_refusal_and_restart(tmp_path) -> None:
    """Through ``atoken train``: the refusal is one ``atoken: error:`` line with exit 1, and
    ``--restart`` trains anew with the old run set aside; ``--help`` documents both."""
    from click.testing import CliRunner

    from atoken.cli import cli

    config, run = tmp_path / "tiny.toml", tmp_path / "run"
    config.write_text(TINY_TOML)

    def invoke(*args: str):
        return CliRunner().invoke(cli, ["train", str(config), "--out", str(run), *args])

    assert invoke().exit_code == 0
    for ckpt in (run / "checkpoints").iterdir():
        opt = ckpt / "optimizer.safetensors"
        data = bytearray(opt.read_bytes())
        data[-3] ^= 0x10
        opt.write_bytes(bytes(data))
    before = _tree(run)
    for args, expected in (
        (["--resume"], "atoken: error: cannot resume: run folder .* holds 2 checkpoint"),
        (["--resume", "--restart"], "atoken: error: --resume and --restart exclude each other"),
        ([], "atoken: error: run folder .* already holds checkpoints"),
    ):
        result = invoke(*args)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert re.match(expected, lines[0]), lines[0]
    assert _tree(run) == before
    assert invoke("--restart").exit_code == 0
    (aside,) = sorted(run.glob("discarded-*"))
    assert _tree(aside) == before
    assert json.loads((run / "model" / "source.json").read_text())["step"] == 4
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--restart" in help_text and "discarded" in help_text
