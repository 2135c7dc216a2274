"""Hub conventions, offline: repo ids through huggingface_hub's cache, model cards, class
identification in config.json, and what push_to_hub would upload.

The cache is built in ``tmp_path`` in the layout huggingface_hub writes (``models--org--name/
blobs/<sha256>``, ``snapshots/<commit>/<file>`` symlinks, ``refs/main``), checked with
huggingface_hub's own ``scan_cache_dir``; ``HF_HUB_CACHE`` points at it and ``HF_HUB_OFFLINE=1``,
so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

import atoken
from atoken.cli import cli
from atoken.core.hub import parse_repo_id
from atoken.core.model_card import CardInfo, Metric, split_card, to_yaml
from atoken.core.model_dir import load_tokenizer
from atoken.core.pretrained import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, read_card
from atoken.core.serialization import CheckpointError
from atoken.models import shipped_model_dir
from tests.conftest import SKIMAGE_DATA

hf = pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_cache(cache: Path, repo_id: str, source: Path, commit: str = COMMIT) -> Path:
    """Put the files of ``source`` into ``cache`` as huggingface_hub stores a downloaded repo;
    returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An offline huggingface_hub cache holding the shipped model as ``org/tiny-photo``."""
    cache = tmp_path / "hf-cache"
    populate_cache(cache, "org/tiny-photo", shipped_model_dir("atoken-tiny-photo"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder named org/ is in the way
    return cache


def test_the_cache_fixture_is_what_huggingface_hub_reads(offline_cache) -> None:
    info = hf.scan_cache_dir(offline_cache)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "org/tiny-photo" and {r.commit_hash for r in repo.revisions} == {COMMIT}
    names = {f.file_name for r in repo.revisions for f in r.files}
    assert {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME} <= names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("org/name", ("org/name", None)),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("org/name@" + COMMIT, ("org/name", COMMIT)),
        ("atoken-tiny-photo", None),
        ("/abs/path", None),
        ("./org/name", None),
        ("a/b/c", None),
        ("org/../x", None),
        ("org--x/name", None),
        ("org/", None),
    ],
)
def test_repo_ids_are_told_from_paths(name, expected) -> None:
    ref = parse_repo_id(name)
    assert (None if ref is None else (ref.repo_id, ref.revision)) == expected


def test_a_cached_repo_id_loads_offline_with_the_same_weights(offline_cache) -> None:
    shipped = atoken.Tokenizer.from_pretrained("atoken-tiny-photo")
    for name in ("org/tiny-photo", "org/tiny-photo@main", f"org/tiny-photo@{COMMIT}"):
        loaded = atoken.Tokenizer.from_pretrained(name)
        assert loaded.model_id == shipped.model_id
        state = loaded.state_dict()
        assert all(torch.equal(state[k], v) for k, v in shipped.state_dict().items())
    assert load_tokenizer("org/tiny-photo").model_id == shipped.model_id


def test_atoken_reconstruct_takes_a_repo_id(offline_cache, tmp_path) -> None:
    src = tmp_path / "coffee.png"
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((0, 0, 96, 64)).save(src)
    result = CliRunner().invoke(
        cli,
        ["reconstruct", str(src), "--model", "org/tiny-photo", "--out", str(tmp_path / "out")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "coffee" / "metrics.json").read_text())
    assert metrics["tokens"] == (64 // 16) * (96 // 16)
    assert metrics["psnr"] > 20  # the trained model, not a random one


def test_a_repo_id_that_is_not_cached_names_the_command_that_fetches_it(offline_cache) -> None:
    for name, command in (
        ("org/missing", "`hf download org/missing`"),
        ("org/tiny-photo@v9", "`hf download org/tiny-photo --revision v9`"),
    ):
        with pytest.raises(CheckpointError) as info:
            atoken.Tokenizer.from_pretrained(name)
        message = str(info.value)
        assert command in message and "HF_HUB_OFFLINE" in message and "\n" not in message
    shutil.copy(SKIMAGE_DATA / "coffee.png", "coffee.png")
    result = CliRunner().invoke(cli, ["reconstruct", "coffee.png", "--model", "org/missing"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert lines[0].startswith("atoken: error: ") and "`hf download org/missing`" in lines[0]


def test_an_incomplete_snapshot_is_refused_in_one_line(offline_cache, tmp_path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(shipped_model_dir("atoken-tiny-photo") / CONFIG_NAME, partial)
    populate_cache(offline_cache, "org/partial", partial)
    with pytest.raises(CheckpointError, match="has no model.safetensors.*hf download org/partial"):
        atoken.Tokenizer.from_pretrained("org/partial")


def test_a_local_directory_of_the_same_name_wins(offline_cache, tmp_path, tiny) -> None:
    tiny.save_pretrained(tmp_path / "org" / "tiny-photo")  # relative to the cwd (tmp_path)
    loaded = atoken.Tokenizer.from_pretrained("org/tiny-photo")
    assert loaded.model_id == tiny.model_id
    assert loaded.model_id != atoken.Tokenizer.from_pretrained("atoken-tiny-photo").model_id


def test_save_pretrained_writes_a_card_and_identifies_the_class(tmp_path, tiny) -> None:
    out = tiny.save_pretrained(tmp_path / "tiny")
    doc = json.loads((out / CONFIG_NAME).read_text())
    assert doc["_class_name"] == "Tokenizer" and doc["_library"] == "atoken"
    assert doc["_library_version"] == doc["atoken_version"]
    meta_text, body = split_card(read_card(out))
    meta = yaml.safe_load(meta_text)
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "atoken"
    assert {"atoken", "image-tokenizer", "vae"} <= set(meta["tags"])
    assert "base_model" not in meta and "model-index" not in meta  # nothing was measured
    params = sum(v.numel() for v in tiny.state_dict().values())
    assert f"{params:,}" in body and "`Tokenizer` (atoken" in body
    card = hf.ModelCard(read_card(out))  # huggingface_hub reads the same metadata
    assert card.data.library_name == "atoken" and card.data.license == "apache-2.0"
    assert read_card(tiny.save_pretrained(tmp_path / "given", card="# mine\n")) == "# mine\n"
    assert not (tiny.save_pretrained(tmp_path / "none", card=False) / CARD_NAME).exists()


def test_a_card_carries_base_model_and_metrics_with_their_protocol(tmp_path, tiny) -> None:
    info = CardInfo(
        base_model="org/base",
        base_model_relation="finetune",
        metrics=[Metric("PSNR", 28.68, "psnr", "dB"), Metric("LPIPS", 0.2105, "lpips")],
        dataset="final photos",
        protocol={"resolution": "longer side <= 512, centre crop to 16", "N": 4},
    )
    out = tiny.save_pretrained(tmp_path / "m", card=info)
    meta = yaml.safe_load(split_card(read_card(out))[0])
    assert meta["base_model"] == "org/base" and meta["base_model_relation"] == "finetune"
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == "final photos"
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [
        ("psnr", 28.68),
        ("lpips", 0.2105),
    ]
    assert all(
        m["args"] == {"resolution": info.protocol["resolution"], "N": 4} for m in result["metrics"]
    )
    card = hf.ModelCard(read_card(out))
    assert [r.metric_value for r in card.data.eval_results] == [28.68, 0.2105]
    with pytest.raises(ValueError, match="metric 'PSNR': expected a finite number"):
        tiny.save_pretrained(
            tmp_path / "bad", card=CardInfo(metrics=[Metric("PSNR", float("nan"))])
        )
    assert not (tmp_path / "bad").exists()


def test_yaml_strings_cannot_change_type_or_break_the_document() -> None:
    tricky = {"a": "yes", "b": "1.0", "c": "x: y\n---\n", "d": [], "e": {"f": None}, "g": [True]}
    assert yaml.safe_load(to_yaml(tricky)) == tricky
    assert yaml.safe_load(to_yaml({"a b": 1, "c: d": [{"e": 2}]})) == {"a b": 1, "c: d": [{"e": 2}]}
    with pytest.raises(ValueError, match="YAML value nan: expected a finite number"):
        to_yaml({"x": float("nan")})


def test_a_companion_folder_given_as_a_tokenizer_says_what_it_holds(tmp_path, tiny) -> None:
    gd = pytest.importorskip("atoken_plugin_3d.gaussian_decoder")
    torch.manual_seed(0)
    decoder = gd.GaussianDecoder(
        gd.GaussianDecoderConfig(num_blocks=1, model_channels=32, num_heads=2)
    )
    out = tiny.save_pretrained(tmp_path / "m", companions={"gaussian_decoder": decoder})
    assert not (out / "gaussian_decoder" / CARD_NAME).exists()  # one card per model directory
    doc = json.loads((out / "gaussian_decoder" / CONFIG_NAME).read_text())
    assert doc["_class_name"] == "GaussianDecoder" and doc["_library"] == "atoken-plugin-3d"
    with pytest.raises(CheckpointError) as info:
        atoken.Tokenizer.from_pretrained(out / "gaussian_decoder")
    message = str(info.value)
    assert (
        "holds a GaussianDecoder (atoken-plugin-3d" in message
        and "not a model (Tokenizer" in message
    )
    assert "\n" not in message
    again = gd.GaussianDecoder.from_pretrained(out / "gaussian_decoder")
    assert torch.equal(again.input_layer.weight, decoder.input_layer.weight)


def test_an_old_config_without_class_identification_still_loads(tmp_path, tiny) -> None:
    out = tiny.save_pretrained(tmp_path / "m")
    doc = json.loads((out / CONFIG_NAME).read_text())
    for key in ("_class_name", "_library", "_library_version"):
        del doc[key]
    (out / CONFIG_NAME).write_text(json.dumps(doc))
    assert atoken.Tokenizer.from_pretrained(out).model_id == tiny.model_id
    doc["_class_name"] = 3
    (out / CONFIG_NAME).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="_class_name: expected a string, got 3"):
        atoken.Tokenizer.from_pretrained(out)


def test_push_to_hub_uploads_one_saved_folder(monkeypatch, tiny) -> None:
    calls: dict[str, object] = {}

    def create_repo(repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs.get("exist_ok"))

    def upload_folder(*, repo_id, folder_path, commit_message, **kwargs):
        folder = Path(folder_path)
        calls["upload"] = (repo_id, commit_message)
        calls["files"] = sorted(p.name for p in folder.iterdir())
        calls["model_id"] = atoken.Tokenizer.from_pretrained(folder).model_id
        return "commit-info"

    monkeypatch.setattr(hf, "create_repo", create_repo)
    monkeypatch.setattr(hf, "upload_folder", upload_folder)
    assert tiny.push_to_hub("org/new-model") == "commit-info"
    assert calls["create"] == ("org/new-model", True)
    assert calls["upload"] == ("org/new-model", "Upload Tokenizer with atoken")
    assert calls["files"] == [CARD_NAME, CONFIG_NAME, WEIGHTS_NAME]
    assert calls["model_id"] == tiny.model_id
    with pytest.raises(ValueError, match="expected a Hugging Face repo id 'org/name'"):
        tiny.push_to_hub("not a repo")


def test_the_trainer_export_card_states_held_out_metrics_and_protocol(tmp_path, tiny) -> None:
    from atoken.train.checkpoint import export_model_dir

    rows = [{"image": "astronaut", "tokens": 1024, "psnr": 30.0, "ssim": 0.9, "lpips": 0.2}]
    convention = {"psnr": "10 log10(1 / MSE)"}
    records = [
        {"step": 10, "psnr": 29.0, "ssim": 0.8, "lpips": 0.3, "data": "tune", "images": rows},
        {
            "step": 20,
            "psnr": 30.0,
            "ssim": 0.9,
            "lpips": 0.2,
            "data": "tune",
            "images": rows,
            "convention": convention,
        },
        {"step": 30, "psnr": 99.0, "data": "tune", "images": rows},  # after the exported step
    ]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = export_model_dir(tmp_path, tiny, step=25, base_model="org/base")
    meta = yaml.safe_load(split_card(read_card(out))[0])
    assert meta["base_model"] == "org/base" and meta["base_model_relation"] == "finetune"
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"psnr": 30.0, "ssim": 0.9, "lpips": 0.2}
    args = metrics[0]["args"]
    assert args["step"] == 20 and args["N"] == 1 and args["tokens_per_sample"] == "1024"
    assert args["psnr_convention"] == convention["psnr"]
    local = export_model_dir(tmp_path, tiny, step=25, base_model="/runs/a/model")
    assert "base_model" not in yaml.safe_load(split_card(read_card(local))[0])
    assert "Started from `/runs/a/model`" in read_card(local)
