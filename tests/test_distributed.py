"""Two CPU processes under torchrun (gloo), with DDP and with FSDP2, match one process with
the same global batch; an FSDP run resumes from its gathered checkpoint; compiled blocks under
FSDP give the same parameters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import SKIMAGE_DATA

CONFIG = """
[model]
preset = "atoken-tiny"
overrides = {{ quantizer = {{ name = "fsq" }} }}   # deterministic latents: no sampling noise

[[data]]
name = "folder"
task = "image_rec"
path = "{data}"
options = {{ crop_scale = [1.0, 1.0], aspect = [1.0, 1.0], hflip = 0.0 }}

[[stages]]
steps = {steps}
min_res = 32
max_res = 64
tokens_per_batch = 8          # one 32x64 image per micro-batch

[optimizer]
lr = 1e-3
warmup_steps = 1
grad_accum = {accum}

[run]
distributed = "{distributed}"
activation_checkpointing = {checkpointing}
checkpoint_every = {every}
sample_every = 1000
log_every = 1
"""


def _write(
    tmp_path,
    accum: int,
    distributed: str = "ddp",
    steps: int = 3,
    every: int = 3,
    checkpointing: str = '"auto"',
):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name, box in (("a.png", (0, 0, 64, 32)), ("b.png", (100, 100, 164, 132))):
        with Image.open(SKIMAGE_DATA / "astronaut.png") as im:
            im.crop(box).save(data / name)
    cfg = tmp_path / f"{distributed}-accum{accum}-{steps}.toml"
    cfg.write_text(
        CONFIG.format(
            data=data.as_posix(),
            accum=accum,
            distributed=distributed,
            steps=steps,
            every=every,
            checkpointing=checkpointing,
        )
    )
    return cfg


def _run(args, tmp_path, **env):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run(
        args, capture_output=True, text=True, cwd=tmp_path, env=full_env, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _weights(run, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def _assert_same(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=1e-4, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_process_data_parallel_equals_one_process(tmp_path, engine) -> None:
    single_cfg = _write(tmp_path, accum=2)
    parallel_cfg = _write(tmp_path, accum=1, distributed=engine)
    _run([sys.executable, "-m", "atoken", "train", str(single_cfg), "--out", "single"], tmp_path)
    _run([*TORCHRUN, "-m", "atoken", "train", str(parallel_cfg), "--out", engine], tmp_path)
    a, b = _weights(tmp_path / "single", 3), _weights(tmp_path / engine, 3)
    _assert_same(a, b)  # fails if the ranks do not average their gradients
    # the runs really trained (weights moved away from the seeded initialisation)
    import atoken

    fresh = atoken.build_tokenizer("atoken-tiny", quantizer={"name": "fsq"}).state_dict()
    assert max(float((a[k] - fresh[k]).abs().max()) for k in a) > 1e-3
    # the checkpoint holds whole tensors (gathered under FSDP): the optimizer state and the EMA
    # have the one-process run's names and shapes, and the exported model loads in one process
    for name in ("optimizer.safetensors", "ema.safetensors"):
        one = load_file(str(tmp_path / "single" / "checkpoints" / "step-00000003" / name))
        two = load_file(str(tmp_path / engine / "checkpoints" / "step-00000003" / name))
        assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in two.items()}
        _assert_same(one, two, atol=1e-4)
    atoken.Tokenizer.from_pretrained(tmp_path / engine / "model")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_a_two_process_run_resumes_from_its_checkpoint(tmp_path, engine) -> None:
    # FSDP with activation checkpointing of the blocks (recomputed in backward)
    checkpointing = "true" if engine == "fsdp" else '"auto"'
    cfg = _write(
        tmp_path, accum=1, distributed=engine, steps=4, every=2, checkpointing=checkpointing
    )
    train = [*TORCHRUN, "-m", "atoken", "train", str(cfg), "--out", "run"]
    first = _run(train, tmp_path)
    state = "on" if engine == "fsdp" else "off"
    assert f"distributed: {engine} over 2 ranks, activation checkpointing {state}" in first.stdout
    run = tmp_path / "run"
    straight = {k: v.clone() for k, v in _weights(run, 4).items()}
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    out = _run([*train, "--resume"], tmp_path)
    assert "resuming from" in out.stdout and "(step 2)" in out.stdout
    # steps 3 and 4 again from step 2's shards of weights and AdamW state: the same weights
    _assert_same(straight, _weights(run, 4), atol=1e-6)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_fsdp_with_compiled_checkpointed_blocks_equals_one_eager_process(tmp_path) -> None:
    """``compile = true`` under FSDP with activation checkpointing: the compiled blocks run
    between FSDP's (eager) gather hooks and are recomputed in backward; two processes still give
    one eager process's parameters."""
    single_cfg = _write(tmp_path, accum=2)
    parallel_cfg = _write(tmp_path, accum=1, distributed="fsdp", checkpointing="true")
    parallel_cfg.write_text(parallel_cfg.read_text() + "compile = true\n")
    _run([sys.executable, "-m", "atoken", "train", str(single_cfg), "--out", "single"], tmp_path)
    out = _run([*TORCHRUN, "-m", "atoken", "train", str(parallel_cfg), "--out", "fsdp"], tmp_path)
    assert "activation checkpointing on" in out.stdout
    _assert_same(_weights(tmp_path / "single", 3), _weights(tmp_path / "fsdp", 3))
