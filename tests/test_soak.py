"""SIGKILL soak: ``atoken train --resume`` killed 20 times at random moments, many mid-save.

A tiny run (atoken-tiny, 32-64 px crops of the built-in photos) checkpoints every 2 steps, so a
save (three safetensors files, state.json, the model folder) is in progress much of the time.
Each launch is killed with SIGKILL: some at a random moment after start-up (import, resume,
cutting the logs, training), most the moment a save starts or at a random point inside it. After
every kill each checkpoint directory present must verify (sizes and sha256 of every file and of
state.json); every resume must restart within one checkpoint interval of the furthest step any
launch reached; at the end metrics.jsonl must hold each step once, the final weights must equal
those of an uninterrupted run bit for bit, and ``RUN/model`` must load with
``atoken.load_tokenizer``.

The test reads its sizes from the config it writes; nothing in production code knows about it.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import atoken
from atoken.core.serialization import load_tensors
from atoken.train.checkpoint import list_checkpoints, verify_checkpoint
from atoken.train.config import load_train_config

KILLS = 20
CONFIG = """\
[model]
preset = "atoken-tiny"

[[data]]
name = "samples"
task = "image_rec"
options = { video_frames = false }

[[stages]]
name = "s1"
steps = 48
min_res = 32
max_res = 64
tokens_per_batch = 96

[optimizer]
lr = 1e-3
warmup_steps = 1

[run]
seed = 3
log_every = 1
checkpoint_every = 2
keep_last = 3
sample_every = 1000000
eval_images = 1

[eval]
lpips = false
max_res = 64
"""

_STEP_LINE = re.compile(r"^step (\d+)/\d+ ")
_RESUMED = re.compile(r"resuming from .* \(step (\d+)\)")


class Launch:
    """One ``atoken train --resume`` process with its output collected line by line."""

    def __init__(self, config: Path, run_dir: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atoken", "train", str(config), "--out", str(run_dir)]
            + ["--resume"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.steps: list[int] = []
        self.resumed: int | None = None
        self._readers = [
            threading.Thread(target=self._read, args=(pipe,), daemon=True)
            for pipe in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self.lines.append(line.rstrip("\n"))
            if match := _STEP_LINE.match(line):
                self.steps.append(int(match.group(1)))
            elif match := _RESUMED.search(line):
                self.resumed = int(match.group(1))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.finish()

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def _wait_until(condition, deadline_s: float, proc: subprocess.Popen) -> bool:
    """Poll ``condition`` every millisecond until it holds, the process ends, or the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.001)
    return False


def _saving(run_dir: Path) -> bool:
    """A save is under way: a checkpoint temporary, or the model folder being replaced."""
    try:
        names = os.listdir(run_dir / "checkpoints")
    except OSError:
        names = []
    return any(n.startswith(".tmp-") for n in names) or (run_dir / "model.tmp").exists()


def _leftovers(run_dir: Path) -> list[str]:
    """What a killed save leaves: checkpoint temporaries, a half-replaced model folder."""
    found = []
    if (run_dir / "checkpoints").is_dir():
        found += [n for n in os.listdir(run_dir / "checkpoints") if n.startswith(".tmp-")]
    found += [n for n in ("model.tmp", "model.old") if (run_dir / n).exists()]
    return found


def _run_to_the_end(config: Path, run_dir: Path) -> Launch:
    launch = Launch(config, run_dir)
    code = launch.finish()
    assert code == 0, "\n".join(launch.lines[-30:])
    return launch


@pytest.mark.slow
def test_sigkill_soak_twenty_kills_lose_nothing(tmp_path) -> None:
    config = tmp_path / "soak.toml"
    config.write_text(CONFIG)
    cfg = load_train_config(config)
    total, every = cfg.total_steps, cfg.run.checkpoint_every
    run_dir = tmp_path / "run"
    rng = random.Random(12)
    t0 = time.monotonic()

    kills = mid_save = 0
    furthest = 0  # the most steps any launch has completed (printed)
    report = []
    while kills < KILLS:
        had_checkpoint = bool(list_checkpoints(run_dir))
        earlier = set(_leftovers(run_dir))  # a launch killed before it cleaned up keeps these
        launch = Launch(config, run_dir)
        mode = ("startup", "save", "random", "save")[kills % 4]
        if mode == "startup":  # anywhere in start-up, resume and the first steps
            time.sleep(rng.uniform(0.5, 5.0))
        else:
            started = _wait_until(lambda launch=launch: launch.steps, 120, launch.proc)
            assert started or launch.proc.poll() is not None, "no training step within 120 s"
            if mode == "save":
                _wait_until(lambda: _saving(run_dir), 30, launch.proc)
                # somewhere inside the save: its first files, or anywhere up to the model folder
                time.sleep(rng.uniform(0.0, 0.02) if rng.random() < 0.5 else rng.uniform(0.0, 0.15))
            else:
                time.sleep(rng.uniform(0.0, 1.0))
        if launch.proc.poll() is not None:  # finished on its own: the run is too short
            pytest.fail(f"the run ended after {kills} kills; make it longer\n" + launch.lines[-1])
        launch.kill()
        kills += 1
        left = sorted(set(_leftovers(run_dir)) - earlier)
        mid_save += bool(left)  # this kill interrupted a save
        # 1. no checkpoint directory present is corrupt
        for path in list_checkpoints(run_dir):
            verify_checkpoint(path, check_hashes=True)
        # 2. this launch resumed within one interval of the furthest step reached before it
        if launch.resumed is not None:
            assert furthest - every <= launch.resumed <= furthest, (launch.resumed, furthest)
        elif had_checkpoint and launch.steps:
            pytest.fail(f"launch {kills} trained without saying where it resumed from")
        elif not had_checkpoint:
            assert furthest <= every  # a run that got further has a checkpoint
        furthest = max([furthest, *launch.steps])
        report.append((mode, launch.resumed, launch.steps[-1] if launch.steps else None, left))

    final = _run_to_the_end(config, run_dir)
    assert final.resumed is not None and furthest - every <= final.resumed <= furthest
    wall = time.monotonic() - t0
    print(f"\nSIGKILL soak: {kills} kills, {mid_save} mid-save, {wall:.1f} s wall")
    for i, (mode, resumed, reached, left) in enumerate(report, 1):
        print(f"  kill {i:2d} ({mode}): resumed {resumed}, reached {reached}, left {left}")
    assert kills == KILLS and mid_save >= KILLS // 5

    # 3. every step logged exactly once, no line cut short
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, total + 1))
    # nothing valid was ever set aside (only a first launch's logs, before any checkpoint)
    assert not list(run_dir.glob("discarded-*/checkpoints"))
    assert not _leftovers(run_dir)

    # 4. the result equals an uninterrupted run's, and RUN/model loads
    reference = tmp_path / "reference"
    _run_to_the_end(config, reference)
    name = f"step-{total:08d}"
    for file in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        got = load_tensors(run_dir / "checkpoints" / name / file)
        want = load_tensors(reference / "checkpoints" / name / file)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=0, rtol=0, msg=f"{file}: {key}")
    model = atoken.load_tokenizer(str(run_dir / "model"))
    assert json.loads((run_dir / "model" / "source.json").read_text())["step"] == total
    exported = model.state_dict()
    ema = load_tensors(run_dir / "checkpoints" / name / "ema.safetensors")
    for key, value in ema.items():
        torch.testing.assert_close(exported[key], value, atol=0, rtol=0, msg=key)
    assert atoken.Tokenizer.from_pretrained(run_dir / "model").config == model.config
