"""``[run] log_to``: TensorBoard and W&B fed from the rows of metrics.jsonl / eval.jsonl, resumed
without duplicated steps, a failing tracker does not stop training; the panels of loss_curve.png."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import types

import pytest

from atoken import ConfigError
from atoken.train.config import load_train_config, validate_train_config
from atoken.train.plots import Panel, as_array, run_curves, training_panels
from atoken.train.tracking import (
    SAMPLES_TAG,
    TENSORBOARD_DIR,
    WANDB_ID_FILE,
    Trackers,
    open_trackers,
)
from atoken.train.trainer import Trainer


def _config(steps: int = 4, **run):
    return validate_train_config(
        {
            "model": {"preset": "atoken-tiny"},
            "data": [{"name": "samples", "task": "image_rec", "options": {"video_frames": False}}],
            "stages": [
                {"name": "s1", "steps": steps, "min_res": 32, "max_res": 64, "tokens_per_batch": 96}
            ],
            "optimizer": {"lr": 1e-3, "warmup_steps": 1},
            "run": {
                "log_every": 1,
                "checkpoint_every": 2,
                "sample_every": 2,
                "eval_images": 1,
                **run,
            },
            "eval": {"lpips": False, "max_res": 64},
        }
    )


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _numbers(row: dict, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/{k}": v
        for k, v in row.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _expected(run) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as metrics.jsonl and eval.jsonl hold them."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name, prefix in (("metrics.jsonl", "train"), ("eval.jsonl", "heldout")):
        for row in _rows(run / name):
            for tag, value in _numbers(row, prefix).items():
                out.setdefault(tag, []).append((row["step"], value))
    return out


def _events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _assert_tensorboard_equals_logs(run) -> None:
    acc = _events(run)
    expected = _expected(run)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag  # same steps, none twice
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_tensorboard_gets_the_logged_rows_and_grids_and_a_resume_logs_no_step_twice(
    tmp_path,
) -> None:
    run = tmp_path / "run"
    Trainer(_config(2, log_to=["tensorboard"]), run, progress=False).fit()
    _assert_tensorboard_equals_logs(run)
    # continue the run to 4 steps, then lose the last checkpoint (a crash after steps 3 and 4
    # were logged): the resumed run trains them again and TensorBoard shows each step once
    cfg = _config(4, log_to=["tensorboard"])
    Trainer(cfg, run, resume=True, progress=False).fit()
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2, 3, 4]
    _assert_tensorboard_equals_logs(run)
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    resumed = Trainer(cfg, run, resume=True, progress=False)
    assert resumed.step == 2
    resumed.fit()
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2, 3, 4]
    _assert_tensorboard_equals_logs(run)

    acc = _events(run)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/l1", "train/kl", "train/lr", "train/grad_norm"} <= tags
    assert {"train/tokens_per_s", "heldout/psnr", "heldout/ssim"} <= tags
    assert [e.step for e in acc.Scalars("heldout/psnr")] == [0, 2, 4]
    images = acc.Images(SAMPLES_TAG)
    assert [e.step for e in images] == [0, 2, 4]
    grid = as_array(run / "samples" / "step-00000004.png")
    assert (images[-1].height, images[-1].width) == grid.shape[:2]
    assert as_array(run / "loss_curve.png").shape == (3 * 360, 2 * 640, 3)  # six panels
    # --restart: a new run at step 0 hides everything the earlier one logged
    Trainer(_config(2, log_to=["tensorboard"]), run, restart=True, progress=False).fit()
    _assert_tensorboard_equals_logs(run)
    assert [e.step for e in _events(run).Images(SAMPLES_TAG)] == [0, 2]


class _FakeWandb:
    """A stand-in for the ``wandb`` package that records what a run sends it."""

    def __init__(self, *, fail_log: bool = False) -> None:
        self.inits: list[dict] = []
        self.logs: list[tuple[dict, int]] = []
        self.finished = 0
        self.fail_log = fail_log
        self.module = types.ModuleType("wandb")
        self.module.init = self.init
        self.module.Image = self.Image

    class Image:
        def __init__(self, data) -> None:
            self.data = data

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, values, step=None):
                if fake.fail_log:
                    raise OSError("W&B is unreachable")
                fake.logs.append((dict(values), step))

            def finish(self):
                fake.finished += 1

        return Run()

    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for values, step in self.logs:
            for tag, v in values.items():
                if not isinstance(v, self.Image):
                    out.setdefault(tag, []).append((step, v))
        return out


def test_wandb_gets_the_logged_rows_and_keeps_its_run_id_across_a_resume(
    tmp_path, monkeypatch
) -> None:
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake.module)
    run = tmp_path / "run"
    cfg = _config(2, log_to=["wandb"], wandb_project="tiny-runs")
    Trainer(cfg, run, progress=False).fit()
    (first,) = fake.inits
    assert first["dir"] == str(run) and first["project"] == "tiny-runs"
    assert first["name"] == "run" and first["resume"] == "allow"
    assert first["config"] == json.loads(cfg.model_dump_json())
    assert (run / WANDB_ID_FILE).read_text().strip() == first["id"]
    assert fake.scalars() == _expected(run)
    images = [(v[SAMPLES_TAG], s) for v, s in fake.logs if SAMPLES_TAG in v]
    assert [s for _, s in images] == [0, 2]
    assert images[-1][0].data.shape == as_array(run / "samples" / "step-00000002.png").shape
    assert fake.finished == 1

    Trainer(_config(4, log_to=["wandb"]), run, resume=True, progress=False).fit()
    assert fake.inits[1]["id"] == first["id"]  # the same W&B run continues
    assert fake.scalars() == _expected(run)  # steps 3 and 4 added, none twice
    assert fake.finished == 2
    Trainer(_config(2, log_to=["wandb"]), run, restart=True, progress=False).fit()
    assert fake.inits[2]["id"] != first["id"]  # a new run at step 0 is a new W&B run


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError) as info:
        open_trackers(["wandb"], tmp_path)
    assert "pip install 'atoken[wandb]'" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'atoken\[tensorboard\]'"):
        open_trackers(["tensorboard"], tmp_path)
    # building the trainer fails, before the model is built or any step is logged
    run = tmp_path / "run"
    built = []
    monkeypatch.setattr(Trainer, "_build_model", lambda self: built.append(1))
    with pytest.raises(ConfigError, match=r"atoken\[tensorboard\]"):
        Trainer(_config(2, log_to=["tensorboard"]), run, progress=False)
    assert built == [] and not (run / "metrics.jsonl").exists()


def test_an_unknown_tracker_is_one_line_naming_the_known_ones(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        _config(2, log_to=["tensorbord"])
    message = str(info.value)
    assert "\n" not in message
    assert "run.log_to: unknown tracker 'tensorbord' (did you mean 'tensorboard'?)" in message
    assert "'tensorboard', 'wandb'" in message
    path = tmp_path / "c.toml"
    path.write_text('[[stages]]\nsteps = 1\n\n[run]\nlog_to = ["wandb", "mlflow"]\n')
    with pytest.raises(
        ConfigError, match=r"c\.toml: run\.log_to: unknown tracker 'mlflow'; log_to"
    ):
        load_train_config(path)
    assert _config(2).run.log_to == []  # the default: no tracker
    assert _config(2, log_to="tensorboard").run.log_to == ["tensorboard"]


def test_a_failing_tracker_warns_once_and_training_goes_on(tmp_path, monkeypatch, caplog) -> None:
    fake = _FakeWandb(fail_log=True)
    monkeypatch.setitem(sys.modules, "wandb", fake.module)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="atoken.train.tracking"):
        result = Trainer(_config(4, log_to=["wandb", "tensorboard"]), run, progress=False).fit()
    assert result.steps == 4
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2, 3, 4]
    warned = [r for r in caplog.records if "wandb tracker failed" in r.getMessage()]
    assert len(warned) == 1 and "W&B is unreachable" in warned[0].getMessage()
    assert fake.finished == 1  # closed when it was switched off, not again at the end
    _assert_tensorboard_equals_logs(run)  # the other tracker got everything


def test_trackers_are_closed_when_training_is_interrupted(tmp_path, monkeypatch) -> None:
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake.module)
    trainer = Trainer(_config(4, log_to=["wandb"]), tmp_path / "run", progress=False)
    step = trainer.train_step

    def interrupted():
        if trainer.step == 2:
            raise KeyboardInterrupt
        return step()

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert fake.finished == 1
    assert [s for v, s in fake.logs if "train/loss" in v] == [1, 2]


def test_trackers_fan_out_and_drop_only_the_one_that_fails(caplog) -> None:
    class Recorder:
        name = "recorder"

        def __init__(self) -> None:
            self.calls: list = []

        def log_scalars(self, values, step):
            self.calls.append((dict(values), step))

        def log_image(self, tag, image, step):
            self.calls.append((tag, step))

        def close(self):
            self.calls.append("closed")

    class Broken(Recorder):
        name = "broken"

        def log_scalars(self, values, step):
            raise OSError("No space left on device")

    good, bad = Recorder(), Broken()
    trackers = Trackers([bad, good])
    with caplog.at_level(logging.WARNING, logger="atoken.train.tracking"):
        for step in (1, 2, 3):
            trackers.log_scalars({"train/loss": 0.5}, step)
    assert [c[1] for c in good.calls] == [1, 2, 3]
    assert bad.calls == ["closed"] and trackers.names == ["recorder"]
    assert len([r for r in caplog.records if "broken" in r.getMessage()]) == 1
    trackers.close()
    assert good.calls[-1] == "closed"


def test_loss_curve_panels_keep_kl_apart_and_show_heldout_metrics_and_lr(tmp_path) -> None:
    history = [
        {"step": s, "stage": "s1", "lr": 1e-3 / s, "tokens": 96, "tokens_per_s": 500.0}
        | {"l1": 0.5 / s, "lpips": 0.3, "kl": 40.0 + s, "loss": 0.1 / s, "grad_norm": 0.05}
        for s in (1, 2, 3)
    ]
    evals = [{"step": 0, "psnr": 9.5, "ssim": 0.02, "data": "photos"}]
    panels = training_panels(history, evals, eval_name="photos")
    assert [p.title for p in panels] == [
        "training losses (log scale)",
        "KL term (log scale)",
        "held-out PSNR (photos)",
        "held-out SSIM (higher is better)",
        "held-out LPIPS (lower is better)",
        "learning rate",
    ]
    assert all(p.y_label for p in panels)
    losses, kl, psnr, ssim, lpips, lr = panels
    assert sorted(losses.series) == ["l1", "loss", "lpips"] and losses.log_y
    assert list(kl.series) == ["kl"] and kl.log_y
    assert psnr.series == {"psnr": [(0, 9.5)]} and ssim.series == {"ssim": [(0, 0.02)]}
    assert lpips.series == {}  # not evaluated: the panel says "no data yet"
    assert lr.series == {"lr": [(1, 1e-3), (2, 5e-4), (3, 1e-3 / 3)]} and not lr.log_y
    path = tmp_path / "curves.png"
    run_curves(panels, path, panel_size=(640, 360), columns=2)
    assert as_array(path).shape == (3 * 360, 2 * 640, 3)
    run_curves([Panel("one", {"a": [(1, 1.0)]}), ("old style", {}, False)], path)  # 3-tuples too
    assert as_array(path).shape == (360, 2 * 640, 3)
