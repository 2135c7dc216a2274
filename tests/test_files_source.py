"""The modality-agnostic ``files`` source: real photos through the image adapter, and a toy
adapter without ``max_res`` standing in for a plugin modality (scene folders, token budget,
captions, built-in ``sample_assets``)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from atoken.core.config import ConfigError
from atoken.core.errors import InputError
from atoken.core.files_source import FilesSource, list_files
from atoken.core.tokens import PatchTokens
from atoken.plugins.image.adapter import ImageAdapter, ImageOptions
from atoken.plugins.image.data import ImageFolderSource
from atoken.train.config import DataSource, StageConfig
from atoken.train.data.build import build_stream

SKIMAGE_DATA = Path(pytest.importorskip("skimage").__file__).parent / "data"
PHOTOS = {
    "a/chelsea.png": "chelsea.png",
    "a/b/coffee.png": "coffee.png",
    "rocket.jpg": "rocket.jpg",
}


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Three real photos in nested folders plus a truncated JPEG."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for rel, name in PHOTOS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(SKIMAGE_DATA / name) as im:  # a third of the size: fast to decode
            im.convert("RGB").resize((im.width // 3, im.height // 3), Image.BICUBIC).save(
                root / rel
            )
    jpeg = (SKIMAGE_DATA / "rocket.jpg").read_bytes()
    (root / "a" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "a" / "chelsea.txt").write_text("a tabby cat\n")
    return root


def image_components(loads: list[str] | None = None) -> SimpleNamespace:
    """Registries whose image adapter records every ``load`` (to see the cache at work)."""

    class Counting(ImageAdapter):
        def load(self, path):
            if loads is not None:
                loads.append(Path(path).name)
            return super().load(path)

    return SimpleNamespace(
        adapters=SimpleNamespace(build=lambda name, o: Counting(ImageOptions(**o)))
    )


def test_files_source_reads_photos_like_the_folder_source_and_resumes(photo_dir, caplog):
    loads: list[str] = []
    stage = StageConfig(steps=1, min_res=32, max_res=96, tokens_per_batch=128)
    spec = DataSource(name="files", path=str(photo_dir), options={"cache": 8})
    with caplog.at_level(logging.WARNING, logger="atoken.train.data"):
        stream = build_stream([spec], stage=stage, components=image_components(loads), seed=3)
        batches = [next(stream) for _ in range(4)]
    source = stream.source
    assert isinstance(source, FilesSource)
    assert source.all_keys() == ImageFolderSource(photo_dir).all_keys()
    assert all(0 < sum(len(t) for t in b) <= 128 for b in batches)
    assert all(t.modality == "image" and t.feats.shape[1] == 3072 for b in batches for t in b)
    assert source.skipped == 1 and "broken" in source.skip_reasons[0]
    assert "skipping sample 'a/broken'" in caplog.text
    # four batches of ~2 samples go over the three good photos more than once: cache hits
    assert sorted(set(loads)) == ["broken.jpg", "chelsea.png", "coffee.png", "rocket.jpg"]
    assert len(loads) == 4
    assert source.caption(source.all_keys().index("a/chelsea")) == "a tabby cat"
    again = build_stream([spec], stage=stage, components=image_components(), seed=0)
    again.load_state_dict(stream.state_dict())
    for a, b in zip(next(stream), next(again), strict=True):
        assert torch.equal(a.feats, b.feats) and torch.equal(a.coords, b.coords)


def test_files_source_errors(photo_dir, tmp_path):
    adapter = ImageAdapter()
    with pytest.raises(InputError, match="does not exist"):
        FilesSource(tmp_path / "missing", adapter)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no image files \(.*\.png.*\) under"):
        FilesSource(tmp_path / "empty", adapter)
    with pytest.raises(InputError, match="cache must be >= 0"):
        FilesSource(photo_dir, adapter, cache=-1)
    stage = StageConfig(steps=1, min_res=32, max_res=96, tokens_per_batch=128)
    bad = DataSource(name="files", path=str(photo_dir), options={"cach": 1})
    with pytest.raises(ConfigError, match="cach: unknown key"):
        build_stream([bad], stage=stage, components=image_components())
    with pytest.raises(ValueError, match="'files' needs a path"):
        DataSource(name="files", task="3d_rec")


# ------------------------------------------------------------------ a plugin-like modality
class ToyVoxels:
    """A stand-in 3D adapter: ``.vox`` text files (one integer N) -> N tokens at (1, x, y, z);
    scenes are folders with ``transforms.json`` (N = number of ``*.png`` in them)."""

    name = "mesh3d"
    extensions = (".vox", ".json")

    def __init__(self, options=None) -> None:
        self.options = SimpleNamespace(**(options or {}))  # no min_res / max_res
        self.loaded: list[str] = []

    def load(self, path):
        path = Path(path)
        self.loaded.append(path.name)
        if path.is_dir():
            return len(list(path.glob("*.png")))
        n = int(path.read_text())  # ValueError for a corrupt file
        if n <= 0:
            raise InputError(f"{path.name}: empty asset")
        return n

    def to_tokens(self, sample: int, *, train: bool = False, generator=None) -> PatchTokens:
        xyz = torch.arange(sample, dtype=torch.int32)[:, None].expand(sample, 3)
        coords = torch.cat([torch.ones(sample, 1, dtype=torch.int32), xyz], 1)
        feats = torch.full((sample, 3072), float(sample) / 100)
        return PatchTokens(feats, coords, self.name, {"voxels": sample})


@pytest.fixture
def vox_dir(tmp_path) -> Path:
    root = tmp_path / "assets"
    (root / "chairs").mkdir(parents=True)
    for name, n in {"chairs/a.vox": 20, "chairs/b.vox": 30, "big.vox": 500, "bad.vox": "x"}.items():
        (root / name).write_text(str(n))
    (root / "chairs" / "a.txt").write_text("a wooden chair\n")
    (root / "chairs" / "b.txt").write_text("a metal chair")
    scene = root / "lego"
    scene.mkdir()
    (scene / "transforms.json").write_text("{}")
    for i in range(12):
        (scene / f"r_{i}.png").write_bytes(b"")
    (root / "lego.txt").write_text("a lego bulldozer")
    (root / "meta.json").write_text("{}")  # a loose .json is never a sample
    return root


def toy_components(made: list[ToyVoxels]) -> SimpleNamespace:
    def build(name, options):
        made.append(ToyVoxels(options))
        return made[-1]

    entry = SimpleNamespace(options_model=None)
    return SimpleNamespace(
        adapters=SimpleNamespace(
            build=build,
            get=lambda name: entry,
        )
    )


def test_scene_folders_are_one_sample_and_loose_json_is_not(vox_dir):
    found = list_files(vox_dir, ToyVoxels.extensions)
    assert found == ["bad.vox", "big.vox", "chairs/a.vox", "chairs/b.vox", "lego"]
    assert list_files(vox_dir / "lego", (".json",)) == ["."]  # the root itself is a scene
    assert list_files(vox_dir, ToyVoxels.extensions, recursive=False) == [
        "bad.vox",
        "big.vox",
        "lego",
    ]


def test_3d_task_streams_through_the_adapter_with_budget_captions_and_cache(vox_dir, caplog):
    made: list[ToyVoxels] = []
    stage = StageConfig(steps=1, tokens_per_batch=64, tasks={"3d_und": 1.0})
    spec = DataSource(
        name="files", task="3d_und", path=str(vox_dir), options={"adapter": {"views": 4}}
    )
    components = toy_components(made)
    with caplog.at_level(logging.WARNING, logger="atoken.train.data"):
        stream = build_stream([spec], stage=stage, components=components, seed=1)
        batches = [next(stream) for _ in range(6)]
    assert stream.augment is None and made[0].options.views == 4
    assert not hasattr(made[0].options, "max_res")  # no stage resolution for this adapter
    sizes = sorted({len(t) for b in batches for t in b})
    assert sizes == [12, 20, 30]  # lego's 12 pngs, a, b; big (500) and bad are skipped
    captions = {len(t): t.meta["caption"] for b in batches for t in b}
    assert captions == {12: "a lego bulldozer", 20: "a wooden chair", 30: "a metal chair"}
    src = stream.source
    assert src.skipped == 2
    reasons = " ".join(src.skip_reasons)
    assert "500 tokens, more than one batch holds (tokens_per_batch = 64)" in reasons
    assert "ValueError" in reasons and "bad" in reasons
    assert "skipping sample" in caplog.text
    # every asset is loaded once (cache), however often the epochs revisit it
    assert sorted(made[0].loaded) == sorted(set(made[0].loaded))


def test_builtin_samples_come_from_the_adapter(vox_dir):
    made: list[ToyVoxels] = []
    stage = StageConfig(steps=1, tokens_per_batch=64, tasks={"3d_und": 1.0})
    spec = DataSource(name="samples", task="3d_und")
    with pytest.raises(InputError, match="offers no built-in samples"):
        build_stream([spec], stage=stage, components=toy_components(made))

    class WithSamples(ToyVoxels):
        capabilities = frozenset({"sample_assets"})

        def sample_assets(self):
            return [
                ("toy/a", vox_dir / "chairs" / "a.vox", "a chair"),
                ("toy/lego", vox_dir / "lego", "a lego"),
            ]

    components = toy_components(made)
    components.adapters.build = lambda name, options: WithSamples(options)
    stream = build_stream([spec], stage=stage, components=components)
    seen = {t.meta["caption"]: len(t) for _ in range(3) for t in next(stream)}
    assert seen == {"a chair": 20, "a lego": 12}
    with pytest.raises(ConfigError, match="unknown data source 'folder' for task '3d_rec'"):
        build_stream(
            [DataSource(name="folder", task="3d_rec", path=str(vox_dir))],
            stage=stage,
            components=components,
        )
    two = [
        DataSource(
            name="files", task="3d_rec", path=str(vox_dir), options={"adapter": {"views": 4}}
        ),
        DataSource(name="samples", task="3d_rec", options={"adapter": {"views": 8}}),
    ]
    with pytest.raises(ConfigError, match="different adapter options"):
        build_stream(two, stage=stage, components=components)


def test_image_files_skip_a_picture_smaller_than_a_patch_other_files_sources_do_not_check(
    photo_dir, tmp_path
):
    """``files`` for an image task checks what the adapter loaded (`check_image`, registered with
    the image source); a `FilesSource` given no check keeps whatever ``adapter.load`` returns."""
    import shutil

    from PIL import Image

    from atoken.core.sample_source import MIN_SIDE
    from atoken.train.data.build import build_source

    root = tmp_path / "mixed"
    shutil.copytree(photo_dir, root)
    Image.new("RGB", (MIN_SIDE // 2, MIN_SIDE), (200, 10, 10)).save(root / "speck.png")
    adapter = ImageAdapter(ImageOptions())
    source = build_source(DataSource(name="files", path=str(root)), adapter)
    keys = [source.key(i) for i in range(len(source))]
    speck = keys.index("speck")
    assert source.load(speck) is None and "speck" in " ".join(source.skip_reasons)
    photo = keys.index("rocket")
    assert source.load(photo).shape[-1] == 3
    unchecked = FilesSource(root, adapter)
    assert unchecked.load(speck).shape[:2] == (MIN_SIDE, MIN_SIDE // 2)
