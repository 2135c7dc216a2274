"""Video training: clip sources (folders, WebDataset shards), resumable clip sampling, bad clips,
the stage-2 task mix (video_rec L1, video_und sigmoid loss on captions), 3D without its plugin."""

from __future__ import annotations

import io
import math
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from atoken import ConfigError
from atoken.core.errors import InputError
from atoken.plugins.video.adapter import VideoAdapter, VideoOptions
from atoken.plugins.video.data import (
    ClipCrop,
    ClipSampling,
    VideoFolderSource,
    VideoWebDatasetSource,
)
from atoken.plugins.video.writer import write_mp4
from atoken.testing import BagOfWordsPlugin
from atoken.train.config import StageConfig, load_train_config, validate_train_config
from atoken.train.data.batching import TokenBudgetBatcher
from atoken.train.data.build import task_adapter
from atoken.train.data.dataset import EpochDataset
from atoken.train.data.stream import TrainStream

FRAMES = 24  # frames per generated clip
LEVEL0, STEP = 16, 8  # frame i is flat gray at 8-bit level LEVEL0 + STEP * i


def _clip(frames: int, h: int = 32, w: int = 48, tint: int = 0) -> torch.Tensor:
    """``[T, h, w, 3]`` whose frame i is flat gray at level 16 + 8 i (channel 0 shifted by tint)."""
    levels = LEVEL0 + STEP * torch.arange(frames, dtype=torch.float32)
    x = levels.view(frames, 1, 1, 1).expand(frames, h, w, 3).clone()
    x[..., 0] += tint
    return x / 127.5 - 1


def frame_ids(clip: torch.Tensor) -> list[int]:
    """Source frame numbers of a decoded clip (from each frame's gray level, channels 1 and 2)."""
    level = (clip[..., 1:].mean(dim=(1, 2, 3)) + 1) * 127.5  # [T]
    return [round(float((v - LEVEL0) / STEP)) for v in level]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """Three generated clips (one in a subfolder) with sidecar captions."""
    root = tmp_path_factory.mktemp("clips")
    (root / "sub").mkdir()
    for i, rel in enumerate(["a.mp4", "b.mp4", "sub/c.mp4"]):
        write_mp4(_clip(FRAMES, tint=8 * i), root / rel, fps=10)
        (root / rel).with_suffix(".txt").write_text(f"clip number {i}\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def shard(clip_dir, tmp_path_factory) -> Path:
    """The same clips as one WebDataset shard (``key.mp4`` + ``key.txt`` members)."""
    path = tmp_path_factory.mktemp("shards") / "train-000000.tar"
    with tarfile.open(path, "w") as tar:
        for key in ["a", "b", "sub/c"]:
            for ext in ("mp4", "txt"):
                data = (clip_dir / f"{key}.{ext}").read_bytes()
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _stream(source, seed: int = 3) -> TrainStream:
    adapter = VideoAdapter(VideoOptions(min_res=16, max_res=32))
    return TrainStream(
        source,
        adapter,
        TokenBudgetBatcher(48, lookahead=4),
        seed=seed,
        augment=ClipCrop(scale=(0.5, 1.0)),
        captions=True,
    )


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.feats, y.feats) and torch.equal(x.coords, y.coords) and x.meta == y.meta
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_clips_have_length_stride_and_resume(kind, clip_dir, shard) -> None:
    sampling = ClipSampling(clip_frames=5, frame_stride=3)
    make = {
        "folder": lambda: VideoFolderSource(clip_dir, sampling),
        "webdataset": lambda: VideoWebDatasetSource(str(shard), sampling),
    }[kind]
    source = make()
    assert source.all_keys() == ["a", "b", "sub/c"]
    assert [source.caption(i) for i in range(3)] == [f"clip number {i}" for i in range(3)]
    starts = set()
    for seed in range(6):
        clip = source.load(0, torch.Generator().manual_seed(seed))
        assert clip.shape == (5, 32, 48, 3)
        ids = frame_ids(clip)
        assert ids == list(range(ids[0], ids[0] + 13, 3))  # stride 3, consecutive samples
        assert 0 <= ids[0] <= FRAMES - 13
        starts.add(ids[0])
    assert len(starts) > 1  # the start is drawn per sample
    assert frame_ids(source.read(0))[0] == (FRAMES - 13) // 2  # held-out: centred, fixed
    epoch = list(EpochDataset(source, seed=1))  # DataLoader path: every clip once, random starts
    assert sorted(k for k, _ in epoch) == ["a", "b", "sub/c"]
    assert all(c.shape[0] == 5 and frame_ids(c)[1] - frame_ids(c)[0] == 3 for _, c in epoch)

    stream = _stream(source)
    for _ in range(3):
        next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(2)]
    resumed = _stream(make(), seed=99)
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(2)]
    assert all(_same(a, b) for a, b in zip(expected, got, strict=True))
    tokens = expected[0][0]
    assert tokens.modality == "video" and tokens.meta["frames"] == 5
    assert tokens.meta["caption"].startswith("clip number")
    assert sum(len(t) for t in expected[0]) <= 48


def test_short_and_corrupt_clips_are_named_and_skipped(clip_dir, tmp_path) -> None:
    (tmp_path / "good.mp4").write_bytes((clip_dir / "a.mp4").read_bytes())
    write_mp4(_clip(4), tmp_path / "short.mp4", fps=10)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 40)
    (tmp_path / "cut.mp4").write_bytes((clip_dir / "b.mp4").read_bytes()[:900])
    source = VideoFolderSource(tmp_path, ClipSampling(clip_frames=8))
    with pytest.raises(InputError, match=r"short\.mp4' has 4 frame\(s\); a clip of 8 frames"):
        source.read(source.all_keys().index("short"))
    with pytest.raises(InputError, match=r"cannot read video '.*broken\.mp4'"):
        source.read(source.all_keys().index("broken"))
    g = torch.Generator().manual_seed(0)
    loaded = {key: source.load(i, g) for i, key in enumerate(source.all_keys())}
    assert loaded["good"] is not None and loaded["good"].shape[0] == 8
    assert {k for k, v in loaded.items() if v is None} == {"broken", "cut", "short"}
    assert source.skipped == 3
    assert any("short.mp4" in r and "needs 8" in r for r in source.skip_reasons)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.mp4").write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="no readable sample in a whole epoch.*x.mp4"):
        next(_stream(VideoFolderSource(only_bad, ClipSampling(clip_frames=4))))


def _stage2(clip_dir, **semantic) -> dict:
    clips = {"clip_frames": 4, "frame_stride": 2, "crop_scale": [0.75, 1.0]}
    return {
        "model": {"preset": "atoken-tiny"},
        "data": [
            {"name": "samples", "task": "image_rec", "options": {"video_frames": False}},
            {"name": "folder", "task": "video_rec", "path": str(clip_dir), "options": clips},
            {"name": "folder", "task": "video_und", "path": str(clip_dir), "options": clips},
        ],
        "stages": [
            {
                "name": "video",
                "steps": 4,
                "min_res": 16,
                "max_res": 32,
                "video_max_res": 32,
                "tokens_per_batch": 48,
                "tasks": {"image_rec": 2, "video_und": 1, "video_rec": 6},
            }
        ],
        "semantic": {"video": {"text_model": "bag", **semantic}},
        "optimizer": {"lr": 1e-3, "warmup_steps": 1, "grad_accum": 3},
        "run": {"checkpoint_every": 100, "sample_every": 100, "log_every": 1},
    }


def test_stage2_mix_trains_video_rec_and_video_und(clip_dir, tmp_path, register_plugin) -> None:
    from atoken.train.trainer import Trainer

    components = register_plugin(BagOfWordsPlugin(), name="test-text")
    config = validate_train_config(_stage2(clip_dir))
    trainer = Trainer(config, tmp_path / "run", components=components, progress=False)
    contrast = trainer.contrastive["video"]
    assert contrast.proj is not None and contrast.proj.shape == (32, 144)  # 32-d text -> width
    scale0 = contrast.loss_fn.log_scale.item()
    records = [trainer.train_step() for _ in range(3)]
    tasks = Counter(t for r in records for t in r["task"].split("+"))
    assert tasks == {"video_rec": 6, "image_rec": 2, "video_und": 1}  # 2 : 1 : 6 in 9 batches
    for r in records:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    assert any("sem" in r for r in records) and all(r["l1"] > 0 for r in records)
    assert contrast.loss_fn.log_scale.item() != scale0  # the sigmoid scale learns
    path = trainer.save_checkpoint()
    assert path.is_dir()
    again = Trainer(config, tmp_path / "run", components=components, progress=False, resume=True)
    assert again.step == 3
    assert again.contrastive["video"].loss_fn.log_scale.item() == contrast.loss_fn.log_scale.item()


def test_fsdp_refuses_a_run_whose_objective_trains_its_own_parameters(
    clip_dir, tmp_path, register_plugin, monkeypatch
) -> None:
    """video_und's caption loss learns a projection and a scale outside the tokenizer, which
    FSDP does not shard: the run stops with the way out before any rank shards anything."""
    from atoken.core.config import ConfigError
    from atoken.train import trainer as trainer_module
    from atoken.train.distributed import DistInfo

    components = register_plugin(BagOfWordsPlugin(), name="test-text")
    raw = _stage2(clip_dir)
    raw["run"]["distributed"] = "fsdp"
    config = validate_train_config(raw)
    # as rank 0 of two (no process group is needed: the check comes before any collective)
    monkeypatch.setattr(trainer_module, "init_distributed", lambda device: DistInfo(0, 2))
    with pytest.raises(ConfigError, match=r"fsdp.*trains \d+ parameter tensors.*\(video\).*'ddp'"):
        trainer_module.Trainer(config, tmp_path / "run", components=components, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_video_und_needs_its_semantic_section_and_the_width_rule(clip_dir, tmp_path) -> None:
    raw = _stage2(clip_dir)
    del raw["semantic"]
    with pytest.raises(ConfigError, match=r"video_und.*\[semantic\.video\]"):
        validate_train_config(raw)
    raw["semantic"] = {"vidoe": {"text_model": "bag"}}  # a section no registered task owns
    with pytest.raises(ConfigError, match=r"\[semantic\.vidoe\] is the section of no .*video"):
        validate_train_config(raw)


def test_3d_task_without_the_plugin_lists_the_registered_tasks(
    clip_dir, tmp_path, plugin_manager
) -> None:
    from atoken.core.plugins import collect_components
    from atoken.train.trainer import Trainer

    components = collect_components(plugin_manager)  # built-ins only: no mesh3d adapter
    assert "mesh3d" not in components.adapters
    assert "3d_rec" not in components.tasks  # the 3D plugin registers its tasks, too
    with pytest.raises(ConfigError, match=r"no task named '3d_rec'.*\n.*video_rec \(atoken"):
        task_adapter("3d_rec", components)
    assert task_adapter("video_und", components) == "video"
    raw = _stage2(clip_dir)
    raw["stages"][0]["tasks"] = {"image_rec": 1, "3d_rec": 1}
    raw["data"].append({"name": "files", "task": "3d_rec", "path": str(clip_dir)})
    config = validate_train_config(raw)  # the installed plugins (atoken-plugin-3d) register it
    with pytest.raises(ConfigError, match=r"stages\.0\.tasks\.3d_rec: no task named '3d_rec'"):
        Trainer(config, tmp_path / "run3d", components=components, progress=False)


def test_shipped_stage2_config_validates_with_the_paper_mix() -> None:
    config = load_train_config(Path(__file__).parents[1] / "configs" / "stage2-video.toml")
    stage = config.stages[0]
    total = sum(stage.tasks.values())
    mix = {k: round(100 * v / total, 1) for k, v in stage.tasks.items()}
    assert mix == {"image_rec": 22.2, "video_und": 11.1, "video_rec": 66.7}
    assert stage.resolution("video") == (64, 96)
    assert stage.resolution(None) == (stage.min_res, stage.max_res)  # image tasks
    assert config.semantic.section("video").text_model == "minilm"


def test_a_stage_resolution_family_is_one_a_registered_task_declares() -> None:
    """``<prefix>_min_res`` keys are not a fixed list in train: the video plugin's tasks declare
    ``resolution = "video"``; a prefix no registered task declares is refused in phase two."""
    from atoken.core.plugins import default_components
    from atoken.train.config import check_tasks

    components = default_components()
    families = {
        e.obj.resolution for e in components.tasks.entries() if e.obj.resolution is not None
    }
    assert "video" in families
    ok = validate_train_config(
        {
            "stages": [
                {"steps": 1, "tasks": {"video_rec": 1}, "video_min_res": 32, "video_max_res": 48}
            ],
            "data": [{"name": "samples", "task": "video_rec"}],
        }
    )
    assert ok.stages[0].resolution("video") == (32, 48)
    check_tasks(ok, components)  # phase two again, explicitly
    typo = {"stages": [{"steps": 1, "vidoe_max_res": 480}], "data": [{"name": "samples"}]}
    assert StageConfig.model_validate(typo["stages"][0]).task_res == {"vidoe": {"max": 480}}
    with pytest.raises(
        ConfigError,
        match=r"stages\.0\.vidoe_max_res: no registered task takes a 'vidoe' resolution range;"
        r" the registered ones: video_min_res / video_max_res \(video_rec, video_und\)",
    ):
        validate_train_config(typo)  # phase two against the installed plugins
    with pytest.raises(ConfigError, match=r"video resolution range 64\.\.32 is empty"):
        validate_train_config({"stages": [{"steps": 1, "video_min_res": 64, "video_max_res": 32}]})


def _video_only(clip_dir, **eval_section) -> dict:
    return {
        "model": {"preset": "atoken-tiny"},
        "data": [{"name": "folder", "task": "video_rec", "path": str(clip_dir)}],
        "stages": [{"steps": 1, "min_res": 16, "max_res": 32, "tasks": {"video_rec": 1}}],
        "eval": {"source": "folder", "path": str(clip_dir), "lpips": False, **eval_section},
        "run": {"eval_images": 2},
    }


def test_held_out_data_is_the_eval_source_of_the_evaluated_tasks_modality(
    clip_dir, tmp_path, tiny
) -> None:
    """A video-only run is judged on clips through the video adapter (not on images): the
    ``folder`` source of the video plugin gives the centred clips; naming ``[eval] task`` picks
    another modality's registration of the same source name."""
    from types import SimpleNamespace

    from atoken import default_components
    from atoken.train.data.build import held_out_samples
    from atoken.train.monitor import NAME, ROWS, Monitor

    config = validate_train_config(_video_only(clip_dir))
    held = held_out_samples(config, limit=2)
    assert (held.task, held.modality, held.adapter.name) == ("video_rec", "video", "video")
    assert [name for name, _ in held.samples] == ["a", "b"]
    for _, clip in held.samples:
        assert clip.shape == (16, 32, 48, 3)  # clip_frames' default of the video plugin
        assert frame_ids(clip) == list(range(4, 20))  # centred: (24 - 16) // 2, no randomness
    again = held_out_samples(config, limit=2)
    assert all(
        torch.equal(x, y) for (_, x), (_, y) in zip(held.samples, again.samples, strict=True)
    )
    as_images = validate_train_config(_video_only(clip_dir, task="image_rec"))
    with pytest.raises(InputError, match="no image files .* under"):
        held_out_samples(as_images)

    trainer = SimpleNamespace(
        config=config, components=default_components(), run_dir=tmp_path / "run"
    )
    monitor = Monitor(trainer, enabled=True, progress=False)
    result = monitor.evaluate(tiny)
    rows = result["summary"][ROWS]
    assert [r[NAME] for r in rows] == ["a", "b"]
    assert all(r["tokens"] == 4 * 2 * 3 and r["psnr"] > 0 for r in rows)  # 16 frames of 32x48
    assert result["summary"]["psnr"] == pytest.approx(sum(r["psnr"] for r in rows) / 2)
    monitor._draw_samples(result, 7)
    written = sorted(p.name for p in (tmp_path / "run" / "samples" / "step-00000007").iterdir())
    assert written == ["a.mp4", "b.mp4"]  # the video adapter's side-by-side clips, not a grid


def test_pack_takes_the_adapter_whose_files_the_folder_holds(clip_dir, tmp_path) -> None:
    from PIL import Image

    from atoken.train.data import pack_folder
    from atoken.train.data.pack import folder_adapter

    src = tmp_path / "src"
    src.mkdir()
    for key in ("a", "b"):
        (src / f"{key}.mp4").write_bytes((clip_dir / f"{key}.mp4").read_bytes())
    (src / "bad.mp4").write_bytes(b"not a video at all")
    assert folder_adapter(src).name == "video"
    shards = pack_folder(src, tmp_path / "shards", 2)
    assert (shards.samples, shards.skipped) == (2, 1) and "bad" in shards.skip_reasons[0]
    source = VideoWebDatasetSource(shards.pattern, ClipSampling(clip_frames=5))
    assert source.all_keys() == ["a", "b"]
    assert torch.equal(source.read(1), VideoFolderSource(src, ClipSampling(clip_frames=5)).read(1))
    Image.new("RGB", (32, 32), "red").save(src / "still.png")
    with pytest.raises(InputError, match=r"several adapters \(image: 1, video: 3\).*--modality"):
        folder_adapter(src)
    assert folder_adapter(src, modality="image").name == "image"
