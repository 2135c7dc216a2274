"""Latent statistics: computed over real photos, stored with the model, applied by
``encode(..., normalize=True)``, and the ``atoken stats`` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import atoken
from atoken.cli import cli
from atoken.core.errors import InputError
from atoken.core.latent_stats import (
    LatentAccumulator,
    LatentStats,
    compute_latent_stats,
    read_latent_stats,
    stats_of_files,
)
from atoken.core.serialization import CheckpointError
from atoken.plugins.image.adapter import ImageAdapter
from atoken.plugins.image.io import write_png


@pytest.fixture(scope="module")
def photo_model() -> atoken.Tokenizer:
    """The shipped trained model (a private copy: tests set its statistics)."""
    return atoken.Tokenizer.from_pretrained("atoken-tiny-photo").eval()


@pytest.fixture(scope="module")
def photo_tokens(photos) -> list[atoken.PatchTokens]:
    adapter = ImageAdapter()
    return [adapter.to_tokens(img[:96, :128]) for img in photos.values()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, photos) -> Path:
    """Three real photo crops as PNG files, one in a subfolder."""
    root = tmp_path_factory.mktemp("stats-data")
    (root / "sub").mkdir()
    for i, (name, img) in enumerate(photos.items()):
        write_png(img[:96, :128], root / ("sub" if i == 2 else ".") / f"{name}.png")
    return root


def test_accumulator_matches_all_rows_at_once(photo_model, photo_tokens) -> None:
    with torch.inference_mode():
        rows = torch.cat([photo_model.encode([t]).codes for t in photo_tokens])  # [N, 48]
    acc = LatentAccumulator(rows.shape[1])
    for part in torch.split(rows, [5, 60, 1, rows.shape[0] - 66]):  # uneven batches
        acc.update(part)
    stats = acc.result(model_id="x", of="posterior means", data="")
    mean, std = stats.tensors(dtype=torch.float64)
    ref = rows.double()
    assert stats.tokens == rows.shape[0]
    torch.testing.assert_close(mean, ref.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(std, ref.std(0, unbiased=False), atol=1e-12, rtol=0)


def test_normalize_gives_zero_mean_unit_std_and_decode_undoes_it(photo_model, photo_tokens) -> None:
    stats = compute_latent_stats(photo_model, [[t] for t in photo_tokens], data="photos")
    assert stats.samples == 3 and stats.model_id == photo_model.model_id
    assert stats.tokens == sum(len(t) for t in photo_tokens)
    photo_model.latent_stats = stats
    try:
        with torch.inference_mode():
            raw = photo_model.encode(photo_tokens)
            norm = photo_model.encode(photo_tokens, normalize=True)
            z = norm.codes.double()  # [N, 48]
            assert norm.normalized and not raw.normalized
            assert z.mean(0).abs().max() < 1e-5
            assert (z.std(0, unbiased=False) - 1).abs().max() < 1e-4
            # raw latents are far from that (the statistics did something)
            assert raw.codes.double().std(0).sub(1).abs().max() > 0.2
            torch.testing.assert_close(photo_model.denormalize_latents(norm.codes), raw.codes)
            dec_raw = photo_model.decode(raw).feats
            torch.testing.assert_close(photo_model.decode(norm).feats, dec_raw, atol=1e-5, rtol=0)
            torch.testing.assert_close(
                photo_model.decode(norm.tokens, normalized=True).feats, dec_raw, atol=1e-5, rtol=0
            )
    finally:
        photo_model.latent_stats = None


def test_normalize_without_stats_names_the_command(photo_model, photo_tokens) -> None:
    with pytest.raises(InputError, match="atoken stats --model"):
        photo_model.encode(photo_tokens[:1], normalize=True)


def test_stats_round_trip_through_save_and_drop_when_weights_change(
    photo_model, photo_tokens, tmp_path, caplog
) -> None:
    stats = compute_latent_stats(photo_model, [photo_tokens], data="photos")
    photo_model.latent_stats = stats
    try:
        photo_model.save_pretrained(tmp_path / "m")
    finally:
        photo_model.latent_stats = None
    loaded = atoken.Tokenizer.from_pretrained(tmp_path / "m")
    assert loaded.latent_stats == stats
    assert loaded.model_id == photo_model.model_id  # statistics do not change the fingerprint
    assert json.loads((tmp_path / "m" / "config.json").read_text())["latent_stats"]["tokens"] == (
        stats.tokens
    )
    # new weights (a fine-tuned copy): the stored statistics describe other latents
    with torch.no_grad():
        loaded.proj.weight.mul_(1.5)
    with caplog.at_level(logging.WARNING, logger="atoken.core.latent_stats"):
        loaded.save_pretrained(tmp_path / "tuned")
    assert "dropped" in caplog.text
    assert "latent_stats" not in json.loads((tmp_path / "tuned" / "config.json").read_text())
    # a directory whose statistics do not match its weights loads without them
    from atoken.core.latent_stats import write_latent_stats

    write_latent_stats(tmp_path / "tuned", stats)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="atoken.core.latent_stats"):
        assert atoken.Tokenizer.from_pretrained(tmp_path / "tuned").latent_stats is None
    assert stats.model_id in caplog.text


def test_malformed_stats_name_the_key(photo_model, tmp_path) -> None:
    photo_model.save_pretrained(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    good = LatentStats(
        mean=(0.0,) * 48, std=(1.0,) * 48, tokens=4, samples=1, model_id=photo_model.model_id
    ).to_json()
    for bad, match in (
        ({**good, "mean": [0.0] * 47}, r"latent_stats\.mean: 47 values, the model has 48"),
        ({**good, "std": [1.0] * 47 + [0.0]}, r"latent_stats\.std: every value must be above 0"),
        ({**good, "extra": 1}, r"latent_stats: unknown key\(s\) extra"),
        ({k: v for k, v in good.items() if k != "tokens"}, "missing key"),
    ):
        (tmp_path / "m" / "config.json").write_text(json.dumps({**doc, "latent_stats": bad}))
        with pytest.raises(CheckpointError, match=match):
            read_latent_stats(tmp_path / "m", 48)


def test_stats_command_updates_a_model_directory(photo_model, data_dir, tmp_path) -> None:
    photo_model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    result = CliRunner().invoke(cli, ["stats", "-m", str(tmp_path / "m"), "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["samples"] == 3 and summary["channels"] == 48 and summary["skipped"] == {}
    expected, _ = stats_of_files(photo_model, [data_dir])
    loaded = atoken.Tokenizer.from_pretrained(tmp_path / "m")
    assert loaded.latent_stats is not None
    assert loaded.latent_stats.tokens == expected.tokens == summary["tokens"] == 3 * 6 * 8
    torch.testing.assert_close(
        torch.tensor(loaded.latent_stats.mean), torch.tensor(expected.mean), atol=1e-6, rtol=0
    )
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before  # weights untouched


def test_stats_command_refuses_shipped_and_preset_names_and_writes_a_copy(
    data_dir, tmp_path
) -> None:
    runner = CliRunner()
    shipped = runner.invoke(cli, ["stats", "-m", "atoken-tiny-photo", "--data", str(data_dir)])
    assert shipped.exit_code == 1
    assert "shipped model" in shipped.output and "-o NEW_DIR" in shipped.output
    preset = runner.invoke(cli, ["stats", "-m", "atoken-tiny", "--data", str(data_dir)])
    assert preset.exit_code == 1 and "untrained preset" in preset.output
    out = tmp_path / "copy"
    copy = runner.invoke(
        cli, ["stats", "-m", "atoken-tiny-photo", "-d", str(data_dir), "-o", str(out)]
    )
    assert copy.exit_code == 0, copy.output
    stats = atoken.Tokenizer.from_pretrained(out).latent_stats
    assert stats is not None and stats.samples == 3
    assert (out / "README.md").is_file()  # the model card travels with the copy
    again = runner.invoke(cli, ["stats", "-m", str(out), "-d", str(data_dir), "-o", str(out)])
    assert again.exit_code == 1 and "not an empty folder" in again.output
