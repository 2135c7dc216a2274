"""Checkpoints and EMA: exact resume, pruning, corruption handling, the model folder, SIGKILL."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import atoken
from atoken import CheckpointError
from atoken.core.serialization import load_tensors
from atoken.train.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    from_json,
    latest,
    list_checkpoints,
    load,
    load_optimizer_state,
    optimizer_state_to_tensors,
    restore_rng_state,
    to_json,
    verify_checkpoint,
)
from atoken.train.ema import ModelEma

LOGGER = "atoken.train.checkpoint"


@pytest.fixture(autouse=True)
def _global_state():
    """Seeded global RNGs are given back afterwards; one intra-op thread, as in `child_main`.

    Bit-exact comparisons need the same thread count in every process, and tiny ops run far
    faster on one thread than on contended ones.
    """
    saved, threads = capture_rng_state(), torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    restore_rng_state(saved)


# ====================================================================== a tiny training run
class TinyNet(nn.Module):
    """Linear, BatchNorm, GELU, Dropout, Linear: dropout and BN make RNG and buffers matter."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(16, 32), nn.BatchNorm1d(32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, 16] -> [B, 4]


@dataclass
class Run:
    model: nn.Module
    ema: ModelEma
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def objects(self) -> dict:
        return dict(
            model=self.model, ema=self.ema, optimizer=self.optimizer, scheduler=self.scheduler
        )


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def build_run(init_seed: int = 0, device: str = "cpu") -> Run:
    torch.manual_seed(init_seed)
    model = TinyNet().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + 0.1 * s))
    return Run(model, ModelEma(model, decay=0.9), optimizer, scheduler)


def train_step(run: Run) -> None:
    """One step whose data and dropout come from the torch, ``random`` and numpy global RNGs."""
    x = torch.randn(8, 16).to(next(run.model.parameters()).device)  # [B, 16]
    y = x[:, :4] * random.uniform(0.5, 1.5) + float(np.random.rand())  # [B, 4]
    loss = F.mse_loss(run.model(x), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    run.ema.update(run.model)


def straight_run(steps: int, device: str = "cpu") -> Run:
    run = build_run(device=device)
    seed_all(1)
    for _ in range(steps):
        train_step(run)
    return run


def child_main(run_dir: str, total: int, every: int, stall_in_save: int) -> None:
    """Entry point of the process the SIGKILL test kills: train, checkpoint every ``every``.

    The save of step ``stall_in_save`` stalls after writing its first file (and says so), so
    the kill lands in the middle of a checkpoint write, the hardest place for it.
    """
    import time

    import atoken.train.checkpoint as ckpt

    write = ckpt._write_tensors

    def stalling_write(path, tensors, metadata=None):
        info = write(path, tensors, metadata)
        if path.parent.name.startswith(f".tmp-step-{stall_in_save:08d}-"):
            print("inside a save", flush=True)
            time.sleep(30)
        return info

    ckpt._write_tensors = stalling_write
    torch.set_num_threads(1)
    run = build_run()
    seed_all(1)
    manager = CheckpointManager(run_dir, keep_last=2)
    for step in range(1, total + 1):
        train_step(run)
        print(f"step {step} done", flush=True)
        if step % every == 0:
            manager.save(step, **run.objects(), data_state={"batches": step})


def assert_same_state(a: Run, b: Run) -> None:
    """Bit-identical model, EMA, optimizer and scheduler state."""
    assert_same_tensors(a.model.state_dict(), b.model.state_dict())
    assert_same_tensors(a.ema.state_dict(), b.ema.state_dict())
    assert a.ema.num_updates == b.ema.num_updates
    assert_same_tree(a.optimizer.state_dict(), b.optimizer.state_dict())
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), f"{k} differs"


def assert_same_tree(a, b) -> None:
    """Structural equality where tensors must match exactly (dtype too) and tuples stay tuples."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def save_run(manager: CheckpointManager, step: int, run: Run, **kw) -> Path:
    return manager.save(step, **run.objects(), **kw)


# ====================================================================== EMA
def test_ema_update_is_the_exact_lerp() -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.copy_(torch.tensor([1.0, -2.0]))
    ema = ModelEma(model, decay=0.75, warmup=False)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        model.weight.fill_(4.0)
        model.bias.copy_(torch.tensor([3.0, 2.0]))
    assert ema.update(model) == 0.75
    # shadow + (1 - 0.75) * (param - shadow): 0 -> 1, 1 -> 1.5, -2 -> -1
    assert torch.equal(ema.module.weight, torch.full((2, 3), 1.0))
    assert torch.equal(ema.module.bias, torch.tensor([1.5, -1.0]))
    for k, v in ema.state_dict().items():
        assert torch.equal(v, torch.lerp(before[k], model.state_dict()[k], 0.25))
    assert ema.num_updates == 1


def test_ema_warmup_ramps_the_decay() -> None:
    ema = ModelEma(nn.Linear(2, 2), decay=0.5)
    used = [ema.update(ema.module) for _ in range(11)]
    ramp = [(1 + n) / (10 + n) for n in range(9)]  # 0.1, 0.18, ..., 9/18 = 0.5
    assert used == pytest.approx(ramp + [0.5, 0.5])
    assert (
        used[0] == pytest.approx(0.1)
        and ModelEma(nn.Linear(2, 2), 0.5, warmup=False).current_decay == 0.5
    )
    assert ema.update(ema.module, step=0) == pytest.approx(0.1)  # an explicit step wins
    assert ema.num_updates == 12
    with pytest.raises(ValueError, match="decay must be in"):
        ModelEma(nn.Linear(2, 2), decay=1.0)


def test_ema_shadow_is_fp32_for_a_bf16_model() -> None:
    model = nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEma(model, decay=0.9999, warmup=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    for _ in range(3):
        ema.update(model)
    assert ema.module.weight.dtype == torch.float32 and model.weight.dtype == torch.bfloat16
    # 1 + (1 - 0.9999^3) = 1.00029997; bf16 (spacing 2^-7 at 1.0) would have stayed at 1.0
    expected = torch.full((4, 4), 1 + (1 - 0.9999**3))
    assert torch.allclose(ema.module.weight, expected, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_averages_float_buffers_and_copies_integer_ones() -> None:
    model = nn.BatchNorm1d(3)
    ema = ModelEma(model, decay=0.5, warmup=False)
    model.train()(torch.randn(16, 3) + 10.0)  # running_mean moves, num_batches_tracked = 1
    ema.update(model)
    assert ema.module.num_batches_tracked.item() == 1
    assert torch.equal(ema.module.running_mean, model.running_mean / 2)  # lerp(0, m, 0.5)


def test_ema_swapped_into_restores_the_weights_even_on_error() -> None:
    model = nn.Linear(3, 3)
    ema = ModelEma(model, decay=0.5, warmup=False)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_into(model):
        assert torch.allclose(model.weight, original["weight"] + 0.5, rtol=0, atol=1e-6)
    assert_same_tensors(model.state_dict(), trained)
    with pytest.raises(RuntimeError, match="boom"), ema.swapped_into(model):
        raise RuntimeError("boom")
    assert_same_tensors(model.state_dict(), trained)
    fresh = nn.Linear(3, 3)
    ema.copy_to(fresh)
    assert_same_tensors(fresh.state_dict(), ema.state_dict())


def test_ema_state_dict_round_trip_is_strict() -> None:
    run = straight_run(3)
    other = ModelEma(TinyNet(), decay=0.9)
    other.load_state_dict(run.ema.state_dict(), num_updates=run.ema.num_updates)
    assert_same_tensors(other.state_dict(), run.ema.state_dict())
    assert other.num_updates == 3
    with pytest.raises(CheckpointError, match="missing"):
        other.load_state_dict({"net.0.weight": torch.zeros(32, 16)})


# ====================================================================== JSON, optimizer, RNG
def test_json_codec_round_trips_types_exactly() -> None:
    value = {
        "betas": (0.9, 0.95),
        "lr": 3e-4 / 7,
        "odd": [float("inf"), None, True, "x"],
        1: {"nested": (1, (2, 3))},
        "__type__": "not a tag",
        "t": torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16),
        "n": np.arange(3, dtype=np.int16),
        "np_scalar": np.int64(7),
    }
    text = json.dumps(to_json(value))
    back = from_json(json.loads(text))
    assert back["betas"] == (0.9, 0.95) and type(back["betas"]) is tuple
    assert back["lr"] == 3e-4 / 7 and back[1] == {"nested": (1, (2, 3))}
    assert back["odd"] == [float("inf"), None, True, "x"] and back["__type__"] == "not a tag"
    assert back["t"].dtype == torch.bfloat16 and torch.equal(back["t"], value["t"])
    assert (
        back["n"].dtype == np.int16 and back["n"].tolist() == [0, 1, 2] and back["np_scalar"] == 7
    )
    with pytest.raises(CheckpointError, match=r"data_state\.f: cannot store a function"):
        to_json({"f": lambda: 0}, "data_state")
    with pytest.raises(CheckpointError, match="too large"):
        to_json(torch.zeros(5000))


def test_optimizer_state_round_trip_is_identical() -> None:
    run = straight_run(4)
    tensors, meta = optimizer_state_to_tensors(run.optimizer)
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= tensors.keys()
    assert len(tensors) == 3 * len(list(run.model.parameters()))
    assert torch.equal(tensors["state.0.step"], torch.tensor(4.0))
    meta = json.loads(json.dumps(meta))  # it really is JSON
    fresh = build_run(init_seed=5)
    load_optimizer_state(fresh.optimizer, tensors, meta)
    assert_same_tree(fresh.optimizer.state_dict(), run.optimizer.state_dict())
    assert fresh.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(CheckpointError, match="holds AdamW state but the optimizer is SGD"):
        load_optimizer_state(torch.optim.SGD(fresh.model.parameters(), lr=0.1), tensors, meta)


def test_rng_state_round_trip() -> None:
    seed_all(3)
    state = json.loads(json.dumps(capture_rng_state()))
    first = (torch.rand(4), random.random(), np.random.rand(3), np.random.randn())
    torch.rand(100), random.random(), np.random.rand(7)
    restore_rng_state(state)
    again = (torch.rand(4), random.random(), np.random.rand(3), np.random.randn())
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert np.array_equal(first[2], again[2]) and first[3] == again[3]


# ====================================================================== save, resume, prune
def test_resume_is_bit_exact(tmp_path) -> None:
    reference = straight_run(6)

    first = build_run()
    seed_all(1)
    for _ in range(3):
        train_step(first)
    manager = CheckpointManager(tmp_path, keep_last=3)
    path = save_run(manager, 3, first, data_state={"epoch": 0, "offset": 24}, extra={"stage": "a"})
    assert path == tmp_path / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in path.iterdir()) == [
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in path.iterdir()} == {0o666 & ~umask}

    resumed = build_run(init_seed=7)  # different weights and RNG until the checkpoint is loaded
    seed_all(99)
    state = CheckpointManager(tmp_path).resume(**resumed.objects())
    assert state == {
        "path": path,
        "step": 3,
        "data_state": {"epoch": 0, "offset": 24},
        "extra": {"stage": "a"},
    }
    for _ in range(3):
        train_step(resumed)
    assert_same_state(resumed, reference)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_restores_cuda_rng_and_state(tmp_path) -> None:
    reference = straight_run(6, device="cuda")
    first = build_run(device="cuda")
    seed_all(1)
    for _ in range(3):
        train_step(first)
    saved_rng = torch.cuda.get_rng_state()
    path = CheckpointManager(tmp_path).save(3, **first.objects())
    assert "cuda" in json.loads((path / "state.json").read_text())["rng"]

    resumed = build_run(init_seed=7, device="cuda")
    seed_all(99)
    load(path, **resumed.objects())
    assert torch.equal(torch.cuda.get_rng_state(), saved_rng)
    assert resumed.optimizer.state_dict()["state"][0]["exp_avg"].is_cuda
    for _ in range(3):
        train_step(resumed)
    for k, v in reference.model.state_dict().items():  # dropout masks come from the CUDA RNG
        assert torch.allclose(resumed.model.state_dict()[k], v, rtol=1e-5, atol=1e-6), k


def test_tokenizer_resume_and_model_folder_hold_ema_weights(tmp_path, components) -> None:
    from atoken.plugins.image.adapter import ImageAdapter

    def build():
        model = atoken.build_tokenizer("atoken-tiny", components=components).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
        return Run(model, ModelEma(model, decay=0.999), opt, sched)

    images = [
        torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(2)
    ]
    batch = atoken.collate([ImageAdapter().to_tokens(im) for im in images])

    def step(run: Run) -> None:
        out = run.model(batch)  # KL posterior sampling draws from the global torch RNG
        loss = F.mse_loss(out.reconstruction.feats, batch.feats) + 1e-6 * out.latents.aux_loss
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        run.ema.update(run.model)

    seed_all(1)
    reference = build()
    for _ in range(4):
        step(reference)

    seed_all(1)
    run = build()
    for _ in range(2):
        step(run)
    manager = CheckpointManager(tmp_path)
    ckpt = save_run(manager, 2, run)
    resumed = build()
    seed_all(5)
    load(ckpt, **resumed.objects())
    for _ in range(2):
        step(resumed)
    assert_same_state(resumed, reference)
    save_run(manager, 4, resumed)

    exported = atoken.Tokenizer.from_pretrained(tmp_path / "model", components=components)
    assert_same_tensors(exported.state_dict(), resumed.ema.state_dict())
    raw = resumed.model.state_dict()
    assert not torch.equal(exported.proj.weight, raw["proj.weight"])  # EMA, not the raw weights
    assert json.loads((tmp_path / "model" / "source.json").read_text()) == {
        "step": 4,
        "weights": "ema",
        "ema_decay": 0.999,
        "ema_num_updates": 4,
    }
    # the checkpoint folder itself loads too, with the raw weights
    from_ckpt = atoken.Tokenizer.from_pretrained(manager.latest(), components=components)
    assert_same_tensors(from_ckpt.state_dict(), raw)
    assert not (tmp_path / "model.tmp").exists() and not (tmp_path / "model.old").exists()


def test_keep_last_prunes_the_oldest(tmp_path) -> None:
    run = straight_run(1)
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (2, 4, 6, 8):
        save_run(manager, step, run, export=False)
    assert [p.name for p in manager.checkpoints()] == ["step-00000006", "step-00000008"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000006",
        "step-00000008",
    ]
    assert not (tmp_path / "model").exists()  # export=False


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _discarded(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("discarded-*"))


def test_saving_an_older_step_sets_newer_checkpoints_aside(tmp_path, caplog) -> None:
    """Pruning never deletes a checkpoint newer than the step saved: it is moved aside intact,
    and the next resume continues the lineage that was just saved."""
    run = straight_run(1)
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (2, 4, 6):
        save_run(manager, step, run, export=False)
    before = _tree(tmp_path / "checkpoints")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        save_run(manager, 4, run, extra={"again": True}, export=False)  # resumed from 4, say
    assert [p.name for p in manager.checkpoints()] == ["step-00000002", "step-00000004"]
    assert (
        "moved checkpoints/step-00000006 to" in caplog.text and "nothing was deleted" in caplog.text
    )
    aside = {}
    for folder in _discarded(tmp_path):
        aside |= _tree(folder / "checkpoints")
    # the earlier step 4 and the newer step 6, byte for byte
    assert aside == {k: v for k, v in before.items() if not k.startswith("step-00000002")}
    assert load(manager.latest(), model=TinyNet(), restore_rng=False)["extra"] == {"again": True}


def test_resume_sets_newer_damaged_checkpoints_aside_and_prunes_only_older(tmp_path) -> None:
    run = straight_run(2)
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        save_run(manager, step, run, export=False)
    assert [p.name for p in manager.checkpoints()] == ["step-00000004", "step-00000006"]
    weights = tmp_path / "checkpoints" / "step-00000006" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size - 7)
    damaged = _tree(tmp_path / "checkpoints" / "step-00000006")
    state = CheckpointManager(tmp_path, keep_last=2).resume(**build_run().objects())
    assert state["step"] == 4
    assert [p.name for p in manager.checkpoints()] == ["step-00000004"]
    (aside,) = _discarded(tmp_path)
    assert _tree(aside / "checkpoints" / "step-00000006") == damaged
    for step in (6, 8, 10):  # the resumed run goes on; only ever older ones are pruned
        save_run(manager, step, run, export=False)
        names = [p.name for p in manager.checkpoints()]
        assert names[-1] == f"step-{step:08d}" and len(names) <= 2
    assert _tree(aside / "checkpoints" / "step-00000006") == damaged  # never touched


def test_resume_at_an_older_step_keeps_the_newer_model_folder(tmp_path) -> None:
    """RUN/model exported from a checkpoint that is damaged now may be the only intact copy of
    those weights: resuming at an older step moves it aside with the checkpoint."""
    run = straight_run(2)
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (2, 4, 6):
        save_run(manager, step, run)
    opt = tmp_path / "checkpoints" / "step-00000006" / "optimizer.safetensors"
    data = bytearray(opt.read_bytes())
    data[100] ^= 0x40
    opt.write_bytes(bytes(data))
    model = _tree(tmp_path / "model")
    assert json.loads(model["source.json"])["step"] == 6
    assert CheckpointManager(tmp_path).resume(**build_run().objects())["step"] == 4
    (aside,) = _discarded(tmp_path)
    assert _tree(aside / "model") == model
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "model"]
    assert not (tmp_path / "model").exists()
    save_run(manager, 6, run)  # the resumed run exports its own
    assert json.loads((tmp_path / "model" / "source.json").read_text())["step"] == 6
    assert _tree(aside / "model") == model


def test_no_verifying_checkpoint_refuses_to_resume_and_changes_nothing(tmp_path) -> None:
    """Every checkpoint damaged (truncated, a flipped byte, an edited state.json): resume stops
    with an error listing each one and its reason, and the run folder is left exactly as is."""
    from atoken.train.checkpoint import NoUsableCheckpointError

    run = straight_run(2)
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (2, 4, 6):
        save_run(manager, step, run)
    ckpts = tmp_path / "checkpoints"
    opt = ckpts / "step-00000002" / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 3])
    ema = ckpts / "step-00000004" / "ema.safetensors"
    data = bytearray(ema.read_bytes())
    data[len(data) // 2] ^= 0x01
    ema.write_bytes(bytes(data))
    state = ckpts / "step-00000006" / "state.json"
    doc = json.loads(state.read_text())
    doc["data_state"] = {"batches": 999}
    state.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    before = _tree(tmp_path)
    with pytest.raises(NoUsableCheckpointError) as info:
        CheckpointManager(tmp_path).resume(**build_run().objects())
    msg = str(info.value)
    assert "holds 3 checkpoint(s) and none verifies" in msg and "--restart" in msg
    assert "step-00000002: " in msg and "(truncated)" in msg
    assert "step-00000004: " in msg and "does not match the sha256" in msg
    assert "step-00000006: " in msg and "was changed after it was written" in msg
    assert [p.name for p, _ in info.value.failures] == [
        "step-00000006",
        "step-00000004",
        "step-00000002",
    ]
    assert _tree(tmp_path) == before and not _discarded(tmp_path)
    assert isinstance(info.value, CheckpointError)


def test_edited_state_json_fails_verification(tmp_path, caplog) -> None:
    run = straight_run(2)
    manager = CheckpointManager(tmp_path, keep_last=3)
    save_run(manager, 2, run, export=False)
    newest = save_run(manager, 4, run, data_state={"batches": 4}, export=False)
    state = newest / "state.json"
    original = state.read_text()
    doc = json.loads(original)
    assert doc["format_version"] == 2 and len(doc["state_sha256"]) == 64
    verify_checkpoint(newest)
    # one value edited, the file otherwise as atoken writes it
    state.write_text(original.replace('"batches": 4', '"batches": 5'))
    with pytest.raises(CheckpointError, match=r"state\.json' was changed after it was written"):
        verify_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert manager.latest().name == "step-00000002"
    assert "skipping checkpoint step-00000004" in caplog.text
    # the digest removed
    del doc["state_sha256"]
    state.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="has no state_sha256"):
        verify_checkpoint(newest, check_hashes=False)
    # a state of format 1 (before the digest) still loads
    doc["format_version"] = 1
    state.write_text(json.dumps(doc))
    assert load(newest, model=TinyNet(), restore_rng=False)["data_state"] == {"batches": 4}


def test_restart_moves_the_earlier_run_aside_byte_for_byte(tmp_path, caplog) -> None:
    run = straight_run(1)
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (2, 4):
        save_run(manager, step, run)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "notes.txt").write_text("mine")  # not a run output: stays
    before = _tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        aside = manager.restart()
    assert aside is not None and aside.name.startswith("discarded-")
    assert "--restart: a new run starts at step 0" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside.name, "notes.txt"]
    assert _tree(aside) == {k: v for k, v in before.items() if k != "notes.txt"}
    assert manager.latest() is None and manager.resume_point() is None
    assert manager.restart() is None  # nothing left to move: no empty folder either
    assert len(_discarded(tmp_path)) == 1


def test_stale_temporaries_of_killed_runs_are_removed_and_nothing_else(tmp_path) -> None:
    """Only atoken-marked temporaries of processes that are gone; other hidden files, a live
    writer's temporary and discarded runs stay."""
    from atoken.core.serialization import _HOST, _TEMP_MARK

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    (tmp_path / "samples").mkdir()
    stale = [
        tmp_path / f".loss_curve.png.{_TEMP_MARK}.{_HOST}.{dead_pid}.k2j3x9.tmp",
        tmp_path / "samples" / f".step-00000004.png.{_TEMP_MARK}.{_HOST}.{dead_pid}.a1b2c3.tmp",
    ]
    kept = [
        tmp_path / ".loss_curve.png.k2j3x9.tmp",  # not our mark
        tmp_path / ".hidden",
        tmp_path / "samples" / f".x.png.{_TEMP_MARK}.{_HOST}.{os.getppid()}.zz.tmp",  # alive
        tmp_path / "discarded-20260101T000000Z" / f".a.{_TEMP_MARK}.{_HOST}.{dead_pid}.q.tmp",
    ]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    CheckpointManager(tmp_path)
    assert [p.exists() for p in stale] == [False, False]
    assert all(p.read_bytes() == b"partial" for p in kept)


def test_truncated_newest_checkpoint_is_skipped(tmp_path, caplog) -> None:
    run = straight_run(2)
    manager = CheckpointManager(tmp_path, keep_last=3)
    save_run(manager, 2, run)
    newest = save_run(manager, 4, run)
    weights = newest / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert latest(tmp_path) == tmp_path / "checkpoints" / "step-00000002"
    assert "skipping checkpoint step-00000004" in caplog.text
    assert (
        f"model.safetensors' has {size // 2} bytes but state.json recorded {size} (truncated)"
        in caplog.text
    )
    with pytest.raises(CheckpointError, match="truncated"):
        load(newest, model=TinyNet())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):  # header-only check catches it too
        assert latest(tmp_path, check_hashes=False).name == "step-00000002"
    assert "truncated" in caplog.text


def test_corrupt_bytes_and_missing_state_are_skipped(tmp_path, caplog) -> None:
    run = straight_run(2)
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (2, 4, 6):
        save_run(manager, step, run, export=False)
    opt_file = tmp_path / "checkpoints" / "step-00000006" / "optimizer.safetensors"
    data = bytearray(opt_file.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    opt_file.write_bytes(bytes(data))
    (tmp_path / "checkpoints" / "step-00000004" / "state.json").unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert manager.latest().name == "step-00000002"
    assert "step-00000006" in caplog.text and "does not match the sha256" in caplog.text
    assert "step-00000004" in caplog.text and "state.json' does not exist" in caplog.text
    verify_checkpoint(tmp_path / "checkpoints" / "step-00000002")


def test_no_checkpoint_means_start_from_scratch(tmp_path) -> None:
    run = build_run()
    assert latest(tmp_path) is None
    assert CheckpointManager(tmp_path).resume(**run.objects()) is None


def test_leftover_temporary_directory_is_ignored_and_cleaned(tmp_path) -> None:
    run = straight_run(1)
    manager = CheckpointManager(tmp_path)
    save_run(manager, 2, run)
    leftover = tmp_path / "checkpoints" / ".tmp-step-00000004-abcd"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 10)  # a save killed midway
    assert latest(tmp_path).name == "step-00000002"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    CheckpointManager(tmp_path)  # a new run cleans up
    assert not leftover.exists()


def test_a_failing_save_leaves_no_checkpoint(tmp_path) -> None:
    run = straight_run(1)
    manager = CheckpointManager(tmp_path)
    save_run(manager, 2, run)
    with pytest.raises(CheckpointError, match="cannot store a object"):
        save_run(manager, 4, run, data_state={"loader": object()})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]


def test_interrupted_model_folder_swap_is_repaired(tmp_path) -> None:
    run = straight_run(1)
    manager = CheckpointManager(tmp_path)
    save_run(manager, 2, run)
    expected = load_tensors(tmp_path / "model" / "model.safetensors")
    os.rename(tmp_path / "model", tmp_path / "model.old")  # killed between the two renames
    (tmp_path / "model.tmp").mkdir()
    CheckpointManager(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "model"]
    assert_same_tensors(load_tensors(tmp_path / "model" / "model.safetensors"), expected)
    assert_same_tensors(expected, run.ema.state_dict())


def test_sigkill_mid_save_resumes_within_one_interval(tmp_path) -> None:
    total, every = 30, 2
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r});"
        f" import test_checkpoint as t; t.child_main({str(tmp_path)!r}, {total}, {every}, 6)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = []
    try:
        for line in child.stdout:
            seen.append(line.strip())
            if line.strip() == "inside a save":
                child.send_signal(signal.SIGKILL)
                break
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, err
    last_done = max(int(line.split()[1]) for line in seen if line.startswith("step"))
    assert last_done == 6
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left[0].startswith(".tmp-step-00000006-") and left[1:] == [
        "step-00000002",
        "step-00000004",
    ]

    manager = CheckpointManager(tmp_path, keep_last=2)  # cleans up what the kill left
    remaining = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert remaining == ["step-00000002", "step-00000004"]
    exported = load_tensors(tmp_path / "model" / "model.safetensors")  # complete, EMA weights
    assert exported.keys() == build_run().model.state_dict().keys()
    assert json.loads((tmp_path / "model" / "source.json").read_text())["step"] == 4

    resumed = build_run(init_seed=3)
    seed_all(42)
    state = manager.resume(**resumed.objects())
    assert state["step"] == 4 >= last_done - every
    assert state["data_state"] == {"batches": 4}
    for _ in range(state["step"], total):
        train_step(resumed)
    assert_same_state(resumed, straight_run(total))


def test_wrapped_models_are_unwrapped(tmp_path) -> None:
    run = straight_run(2)
    wrapped = nn.DataParallel(run.model)  # state_dict names gain a "module." prefix
    ema = ModelEma(wrapped, decay=0.5)
    ema.update(wrapped)
    assert ema.state_dict().keys() == run.model.state_dict().keys()
    path = CheckpointManager(tmp_path).save(2, model=wrapped, ema=ema)
    assert load_tensors(path / "model.safetensors").keys() == run.model.state_dict().keys()
    load(path, model=nn.DataParallel(TinyNet()), ema=ModelEma(TinyNet()), restore_rng=False)
