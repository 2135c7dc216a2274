"""Pre-tokenised datasets: ``atoken encode DIR|SHARDS -o OUT/`` writes WebDataset latent shards,
`atoken.data.LatentShards` (and plain ``webdataset``) reads them, ``atoken decode`` turns them
back into files; a SIGKILLed run resumes without duplicates; two torchrun ranks write disjoint
shards that equal one process's; latents files and shards find their model from any directory.

Every value is compared with what the single-file path (`encode_sample`, `encode_to_file`,
`decode_to_file`) gives for the same photo; sizes are read from the photos and the files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import DataLoader

import atoken
from atoken.cli import cli
from atoken.data import LatentShards, dense, iter_shard
from atoken.data.encode import ShardEncoder
from atoken.pipeline import adapter_for, decode_to_file, encode_sample, encode_to_file, open_sample
from tests.conftest import SKIMAGE_DATA

PHOTOS = {  # relative path -> (photo, crop box): sizes differ, one in a subfolder
    "astronaut.png": ("astronaut.png", (0, 0, 64, 48)),
    "coffee.png": ("coffee.png", (100, 50, 180, 114)),
    "sub/chelsea.png": ("chelsea.png", (50, 20, 98, 84)),
    "rocket.jpg": ("rocket.jpg", (0, 0, 96, 32)),
    "zz/motorcycle.png": ("motorcycle_left.png", (200, 100, 232, 148)),
}
GOOD = ["astronaut", "coffee", "rocket", "sub/chelsea", "zz/motorcycle"]  # sorted by path


def _run(*args, cwd=None):
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    # (a preset's "untrained" warning may come first)
    lines = [ln for ln in result.output.splitlines() if ln.strip() and "untrained preset" not in ln]
    assert len(lines) == 1 and lines[0].startswith("atoken: error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for rel, (name, box) in PHOTOS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(SKIMAGE_DATA / name) as im:
            im.convert("RGB").crop(box).save(root / rel)
    (root / "coffee.txt").write_text("a cup of coffee\n", encoding="utf-8")
    (root / "broken.png").write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def encoded(photo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "out"
    _ok(_run("encode", photo_dir, "-o", out, "--shard-size", "2", "--model", "atoken-tiny"))
    return out


def test_a_folder_becomes_latent_shards_equal_to_single_file_encodes(
    photo_dir, encoded, tiny
) -> None:
    manifest = json.loads((encoded / "manifest.json").read_text())
    inputs = len(PHOTOS) + 1  # and the broken file, which is counted, not written
    assert manifest["inputs"] == inputs and manifest["samples"] == len(GOOD)
    assert [s["name"] for s in manifest["shards"]] == [
        f"shard-{i:06d}.tar" for i in range(math.ceil(inputs / 2))
    ]
    assert sum(s["samples"] for s in manifest["shards"]) == len(GOOD)
    assert manifest["skipped"] == 1 and manifest["shards"][0]["skipped"][0].startswith("broken: ")
    assert manifest["model"] == {"ref": "atoken-tiny", "kind": "preset", "model_id": tiny.model_id}
    assert manifest["payload"] == "codes" and manifest["channels"] == tiny.config.latent_channels
    for shard in manifest["shards"]:
        assert (encoded / shard["name"]).stat().st_size == shard["bytes"]

    samples = list(LatentShards(encoded))
    assert [s["key"] for s in samples] == GOOD
    adapter = adapter_for(photo_dir / "coffee.png", None, model=tiny)
    for s in samples:
        rel = s["meta"]["source"]
        latents, meta = encode_sample(tiny, adapter, open_sample(adapter, photo_dir / rel))
        torch.testing.assert_close(s["codes"], latents.codes.float(), rtol=0, atol=0)
        assert torch.equal(s["coords"], latents.tokens.coords.to(torch.int32))
        assert s["meta"]["sample_meta"] == meta and s["meta"]["modality"] == "image"
        with Image.open(photo_dir / rel) as im:
            w, h = im.size
        grid = dense(s)  # [C, H/16, W/16] (crops to multiples of 16)
        assert grid.shape == (tiny.config.latent_channels, h // 16, w // 16)
        x, y = s["coords"][3, 1:3].tolist()
        assert torch.equal(grid[:, x, y], s["codes"][3])
    captions = {s["key"]: s["caption"] for s in samples}
    assert captions == {k: ("a cup of coffee" if k == "coffee" else None) for k in GOOD}
    assert len(LatentShards(encoded)) == len(GOOD)


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # webdataset leaves its last shard open
def test_plain_webdataset_reads_the_shards(encoded) -> None:
    import gc

    import webdataset as wds

    ours = {s["key"]: s for s in LatentShards(encoded)}
    urls = str(encoded / "shard-{000000..000002}.tar")
    seen = []
    for s in wds.WebDataset(urls, shardshuffle=False).decode():
        seen.append(s["__key__"])
        assert isinstance(s["coords.npy"], np.ndarray) and s["coords.npy"].dtype == np.int32
        assert np.array_equal(s["codes.npy"], ours[s["__key__"]]["codes"].numpy())
        assert s["json"]["key"] == s["__key__"] and s["json"]["model_id"]
    assert seen == GOOD
    gc.collect()  # the package's unclosed shard is collected here, under this test's filter


def test_decode_writes_every_sample_back_as_the_single_file_path_does(
    photo_dir, encoded, tiny, tmp_path
) -> None:
    out = tmp_path / "decoded"
    _ok(_run("decode", encoded, "-o", out))  # the model is taken from the shards
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(f"{k}.png" for k in GOOD)
    # the same photo through one latents file gives the same pixels
    lat = tmp_path / "coffee.safetensors"
    adapter = adapter_for(photo_dir / "coffee.png", None, model=tiny)
    encode_to_file(tiny, "atoken-tiny", adapter, photo_dir / "coffee.png", lat)
    decode_to_file(tiny, lat, tmp_path / "one.png")
    a = np.asarray(Image.open(out / "coffee.png"))
    b = np.asarray(Image.open(tmp_path / "one.png"))
    assert a.shape == b.shape and np.array_equal(a, b)
    # a single shard decodes too; a shard of another model is refused in one line
    part = tmp_path / "part"
    _ok(_run("decode", encoded / "shard-000001.tar", "-o", part))
    assert sorted(p.name for p in part.glob("*.png")) == ["coffee.png", "rocket.png"]
    other = tmp_path / "other"
    atoken.build_tokenizer("atoken-tiny", init_seed=3).save_pretrained(other)
    line = _error_line(_run("decode", encoded, "-o", tmp_path / "x", "--model", other))
    assert "encoded by another model" in line and not (tmp_path / "x").exists()


def test_a_rerun_skips_finished_shards_and_another_plan_is_refused(photo_dir, encoded) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in encoded.glob("shard-*.tar")}
    again = _ok(_run("encode", photo_dir, "-o", encoded, "--shard-size", "2", "-m", "atoken-tiny"))
    assert "3 of 3 shard(s) already done" in again.stderr and "wrote 0 shard(s)" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in encoded.glob("shard-*.tar")} == before
    line = _error_line(
        _run("encode", photo_dir, "-o", encoded, "--shard-size", "3", "-m", "atoken-tiny")
    )
    assert "another run" in line and "--overwrite" in line
    usage = _run("encode", photo_dir / "coffee.png", "-o", encoded / "x", "--shard-size", "2")
    assert "for a folder or .tar shards" in _error_line(usage)


def test_fsq_indices_split_across_ranks_and_workers(photo_dir, tmp_path, monkeypatch) -> None:
    model_dir = tmp_path / "fsq"
    model = atoken.build_tokenizer("atoken-tiny", quantizer={"name": "fsq"}).eval()
    model.save_pretrained(model_dir)
    out = tmp_path / "out"
    enc = ShardEncoder(model, str(model_dir), photo_dir, out, 1)
    result = enc.run()
    assert result["manifest"] is not None and enc.shards == len(PHOTOS) + 1
    samples = list(LatentShards(out))
    q = model.quantizer
    for s in samples:
        assert s["indices"].dtype == torch.int64 and s["indices"].shape[1] == q.num_codebooks
        assert 0 <= int(s["indices"].min()) and int(s["indices"].max()) < q.codebook_size
        assert s["meta"]["model"] == str(model_dir.resolve())
        assert s["meta"]["model_kind"] == "directory"
        assert dense(s).dtype == torch.int64
    keys = [s["key"] for s in samples]
    assert keys == GOOD
    # two DataLoader workers: every sample once (whole shards dealt to workers)
    loader = DataLoader(LatentShards(out), batch_size=None, num_workers=2)
    assert sorted(s["key"] for s in loader) == GOOD
    # four ranks over six shards (by shard) and eight ranks (by sample): disjoint and complete
    for world in (4, 8):
        parts = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            parts.append([s["key"] for s in LatentShards(out)])
        assert sorted(k for p in parts for k in p) == GOOD, (world, parts)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    # decoding from another working directory finds the model by its absolute path; a moved
    # model gives one line that says to pass --model, and --model then works
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _ok(_run("decode", out / "shard-000002.tar", "-o", "dec", cwd=elsewhere))
    assert (elsewhere / "dec" / "coffee.png").is_file()
    model_dir.rename(tmp_path / "moved")
    line = _error_line(_run("decode", out, "-o", elsewhere / "dec2"))
    assert str(model_dir.resolve()) in line and "pass --model" in line
    _ok(_run("decode", out, "-o", elsewhere / "dec2", "--model", tmp_path / "moved"))
    assert len(list((elsewhere / "dec2").rglob("*.png"))) == len(GOOD)


def test_a_latents_file_finds_its_model_from_any_directory(photo_dir, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    work = tmp_path / "work"
    work.mkdir()
    atoken.build_tokenizer("atoken-tiny", init_seed=5).save_pretrained(work / "model")
    _ok(_run("encode", photo_dir / "coffee.png", "-o", "lat.safetensors", "-m", "model", cwd=work))
    with safe_open(str(work / "lat.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["model"] == str((work / "model").resolve()) and meta["model_kind"] == "directory"
    _ok(_run("decode", work / "lat.safetensors", "-o", tmp_path / "a.png", cwd=tmp_path))
    with Image.open(photo_dir / "coffee.png") as im, Image.open(tmp_path / "a.png") as back:
        assert back.size == im.size
    # a file of an older version (the model as typed, no model_kind) still decodes where typed
    old = {k: v for k, v in meta.items() if k != "model_kind"}
    save_file(load_file(str(work / "lat.safetensors")), str(work / "old.safetensors"), {
        **old, "model": "model"
    })  # fmt: skip
    _ok(_run("decode", "old.safetensors", "-o", "b.png", cwd=work))
    line = _error_line(_run("decode", work / "old.safetensors", "-o", tmp_path / "c.png"))
    assert "'model'" in line and "pass --model" in line and not (tmp_path / "c.png").exists()
    (work / "model").rename(work / "moved")
    line = _error_line(_run("decode", work / "lat.safetensors", "-o", tmp_path / "d.png"))
    assert "is not there" in line and "pass --model" in line
    _ok(_run("decode", work / "lat.safetensors", "-o", tmp_path / "d.png", "-m", work / "moved"))


@pytest.fixture
def threads():
    """Run in-process encodes with ``n`` intra-op threads (a subprocess's OMP_NUM_THREADS), so
    their float reductions match the subprocess's bit for bit."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _photo(path: Path, size: int) -> None:
    with Image.open(SKIMAGE_DATA / "astronaut.png") as im:
        im.convert("RGB").resize((size, size)).save(path)


def test_sigkill_mid_run_resumes_without_duplicates(tmp_path, threads) -> None:
    """A subprocess is SIGKILLed once its first shard lands; the rerun skips the finished
    shards, removes the killed run's temporary and gives exactly a straight run's samples."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        _photo(src / f"a{i}.png", 32 + 16 * i)
    for i in range(2):  # the last shard is slow (about 2 s each on 2 cores)
        _photo(src / f"z{i}.png", 1280)
    out = tmp_path / "out"
    args = ["encode", src, "-o", out, "--shard-size", "2", "--model", "atoken-tiny"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atoken", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "shard-000000.done.json").exists():
            assert proc.poll() is None, "the run ended before its first shard"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in out.glob("shard-*.done.json"))
    assert 1 <= len(done) < 3 and not (out / "manifest.json").exists()
    kept = {n: (out / n.replace(".done.json", ".tar")).stat().st_mtime_ns for n in done}
    threads(2)
    resumed = _ok(_run(*args))
    assert f"{len(done)} of 3 shard(s) already done" in resumed.stderr
    for name, mtime in kept.items():  # finished shards were not written again
        assert (out / name.replace(".done.json", ".tar")).stat().st_mtime_ns == mtime
    assert not [p for p in out.iterdir() if "~atoken" in p.name]  # no temporary left
    straight = tmp_path / "straight"
    _ok(_run("encode", src, "-o", straight, "--shard-size", "2", "--model", "atoken-tiny"))
    got = [(s["key"], s["codes"]) for s in LatentShards(out)]
    want = [(s["key"], s["codes"]) for s in LatentShards(straight)]
    assert [k for k, _ in got] == [f"a{i}" for i in range(4)] + ["z0", "z1"]
    assert [k for k, _ in got] == [k for k, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert torch.equal(a, b)
    for i in range(3):  # deterministic: byte-identical shards
        name = f"shard-{i:06d}.tar"
        assert (out / name).read_bytes() == (straight / name).read_bytes()


@pytest.mark.slow
def test_two_torchrun_ranks_write_disjoint_shards_equal_to_one_process(
    photo_dir, tmp_path, threads
) -> None:
    threads(1)  # as each rank (OMP_NUM_THREADS=1)
    one = tmp_path / "one"
    _ok(_run("encode", photo_dir, "-o", one, "--shard-size", "2", "--model", "atoken-tiny"))
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "atoken",
            "encode",
            str(photo_dir),
            "-o",
            str(out),
            "--shard-size",
            "2",
            "--model",
            "atoken-tiny",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # results on stdout from rank 0 only; rank 1 reports its own shards on stderr
    summary = [f"rank {r}/2: {photo_dir}: " for r in (0, 1)]
    assert summary[0] in run.stdout and summary[1] not in run.stdout
    assert summary[1] in run.stderr
    assert "every shard is done" in run.stdout  # whichever rank wrote the manifest
    # rank 0 wrote shards 0 and 2, rank 1 shard 1: together the one-process shards, byte for byte
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "manifest.json"):
        assert (out / name).read_bytes() == (one / name).read_bytes(), name
    assert [s["key"] for p in sorted(out.glob("*.tar")) for s in iter_shard(p)] == GOOD
    shutil.rmtree(out)


def test_packed_video_shards_encode_to_latent_shards_and_decode_to_clips(tmp_path) -> None:
    """`atoken data pack` of clips with captions, then `atoken encode` of its shards (a brace
    pattern): video latents with the captions; `atoken decode` writes the clips back."""
    from atoken.plugins.video.reader import read_video
    from atoken.plugins.video.writer import write_mp4

    src = tmp_path / "clips"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    frames = {"a": 8, "b": 5}
    for key, t in frames.items():
        clip = (torch.rand(t, 32, 48, 3, generator=g) * 2 - 1).clamp(-1, 1)
        write_mp4(clip, src / f"{key}.mp4", fps=8)
        (src / f"{key}.txt").write_text(f"clip {key}", encoding="utf-8")
    packed = _ok(_run("data", "pack", src, "-o", tmp_path / "shards", "--shard-size", "1"))
    pattern = packed.stdout.strip().rsplit(": ", 1)[1]
    assert pattern.endswith("shard-{000000..000001}.tar")
    out = tmp_path / "latents"
    _ok(_run("encode", pattern, "-o", out, "--model", "atoken-tiny"))
    samples = list(LatentShards(out))
    assert [(s["key"], s["caption"]) for s in samples] == [("a", "clip a"), ("b", "clip b")]
    for s in samples:
        assert (
            s["meta"]["modality"] == "video"
            and s["meta"]["sample_meta"]["frames"] == frames[s["key"]]
        )
        assert s["meta"]["source"].startswith("shard-00000")
    dec = tmp_path / "decoded"
    _ok(_run("decode", out, "-o", dec))
    for key, t in frames.items():
        clip, _ = read_video(dec / f"{key}.mp4")
        assert tuple(clip.shape) == (t, 32, 48, 3)
