"""The pretrained-directory mixin: one format for the tokenizer, plugin models and export.

Files land together or not at all; a model card and declared companion folders travel with the
model; the config document is checked (size, format, version, keys) and its weights' header
against the model built on the meta device before anything is allocated; nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import atoken
from atoken.core.pretrained import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainedFormat,
    PretrainedMixin,
    companion_dirs,
    read_card,
    read_document,
)
from atoken.core.serialization import CheckpointError


class Toy(PretrainedMixin, nn.Module):
    """A two-layer model with a config of one width (what a plugin's network looks like)."""

    pretrained_format = PretrainedFormat("tests/toy", 2, "config", keys=("trained_by",), what="toy")

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.a = nn.Linear(3, width)
        self.b = nn.Linear(width, 2, bias=False)

    def pretrained_config(self) -> dict[str, Any]:
        return {"width": self.width}

    @classmethod
    def config_from_pretrained(cls, data: Mapping[str, Any], where: str) -> int:
        unknown = sorted(set(data) - {"width"})
        if unknown or not isinstance(data.get("width"), int):
            raise CheckpointError(
                f"{where}: {', '.join(unknown) or 'width'}: unknown key or bad value"
            )
        return data["width"]

    @classmethod
    def build_pretrained(cls, config: int) -> Toy:
        return cls(config)


def _toy(width: int = 5, seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy(width)


def test_save_then_load_gives_the_same_model_card_and_companions(tmp_path) -> None:
    parent, child = _toy(5, 0), _toy(7, 1)
    out = parent.save_pretrained(
        tmp_path / "m", card="# toy\n", companions={"helper": child}, provenance={"trained_by": 3}
    )
    assert sorted(p.name for p in out.iterdir()) == [CARD_NAME, CONFIG_NAME, "helper", WEIGHTS_NAME]
    doc = json.loads((out / CONFIG_NAME).read_text())
    assert doc == {
        "format": "tests/toy",
        "format_version": 2,
        "config": {"width": 5},
        "trained_by": 3,
        "companions": {"helper": "tests/toy"},
        **{
            "_class_name": "Toy",
            "_library": Toy.__module__.split(".")[0],
            "_library_version": None,
        },
    }
    assert read_card(out) == "# toy\n" and read_card(out / "helper") is None
    loaded = Toy.from_pretrained(out)
    assert loaded.width == 5 and dict(loaded.companions) == {"helper": out / "helper"}
    for k, v in parent.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    again = Toy.from_pretrained(loaded.companions["helper"])
    assert again.width == 7 and torch.equal(again.b.weight, child.b.weight)


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch) -> None:
    class Broken(Toy):
        def save_pretrained(self, directory, **kwargs):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        _toy().save_pretrained(tmp_path / "m", card="card", companions={"helper": Broken(2)})
    assert list(tmp_path.iterdir()) == []  # no weights, config, card or folder half-written


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: {**d, "format": "other"}, "is not a tests/toy toy config"),
        (lambda d: {**d, "format_version": 3}, "has format_version 3; this atoken reads up to 2"),
        (lambda d: {**d, "format_version": True}, "format_version: expected an integer"),
        (lambda d: {**d, "bananas": 1}, "bananas: unknown key"),
        (lambda d: {**d, "config": {"width": 5, "widht": 4}}, "widht: unknown key"),
        (lambda d: {**d, "companions": {"../up": "tests/toy"}}, "companions: expected an object"),
        (lambda d: {**d, "companions": {"gone": "tests/toy"}}, "declares the companion 'gone'"),
    ],
)
def test_a_document_that_does_not_hold_is_refused_in_one_line(tmp_path, change, words) -> None:
    out = _toy().save_pretrained(tmp_path / "m")
    doc = json.loads((out / CONFIG_NAME).read_text())
    (out / CONFIG_NAME).write_text(json.dumps(change(doc)))
    with pytest.raises(CheckpointError) as info:
        Toy.from_pretrained(out)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_weights_are_checked_against_the_config_before_building(tmp_path, monkeypatch) -> None:
    out = _toy(5).save_pretrained(tmp_path / "m")
    doc = json.loads((out / CONFIG_NAME).read_text())
    doc["config"]["width"] = 6
    (out / CONFIG_NAME).write_text(json.dumps(doc))
    built: list[torch.device] = []
    real = Toy.build_pretrained.__func__

    def spy(cls, config):
        model = real(cls, config)
        built.append(model.a.weight.device)
        return model

    monkeypatch.setattr(Toy, "build_pretrained", classmethod(spy))
    with pytest.raises(CheckpointError, match=r"a\.weight: file \[5, 3\] vs config \[6, 3\]"):
        Toy.from_pretrained(out)
    assert built == [torch.device("meta")]  # only the meta build ran: nothing was allocated


def test_an_oversized_config_is_not_read(tmp_path) -> None:
    out = _toy().save_pretrained(tmp_path / "m")
    (out / CONFIG_NAME).write_text(json.dumps({"format": "tests/toy"}) + " " * (2 << 20))
    with pytest.raises(CheckpointError, match="a toy config.json is a few KiB"):
        read_document(out, Toy.pretrained_format)


def test_companions_found_beside_an_undeclared_model(tmp_path) -> None:
    out = _toy().save_pretrained(tmp_path / "m")
    _toy(3).save_pretrained(out / "extra")
    (out / "notes").mkdir()  # a folder without config.json is not a companion
    assert companion_dirs(out) == {"extra": out / "extra"}
    assert dict(Toy.from_pretrained(out).companions) == {"extra": out / "extra"}


def test_tokenizer_directory_format_is_unchanged_and_declares_companions(tmp_path) -> None:
    tok = atoken.build_tokenizer("atoken-tiny")
    out = tok.save_pretrained(tmp_path / "tiny", companions={"helper": _toy()})
    doc = json.loads((out / CONFIG_NAME).read_text())
    assert set(doc) == {"format", "format_version", "atoken_version", "model", "companions"} | {
        "_class_name",
        "_library",
        "_library_version",
    }
    assert doc["format"] == "atoken" and doc["format_version"] == 1
    assert load_file(str(out / WEIGHTS_NAME)).keys() == tok.state_dict().keys()
    loaded = atoken.Tokenizer.from_pretrained(out)
    assert dict(loaded.companions) == {"helper": out / "helper"}
    assert not hasattr(loaded, "source_dir")
    plain = atoken.build_tokenizer("atoken-tiny").save_pretrained(tmp_path / "plain")
    assert "companions" not in json.loads((plain / CONFIG_NAME).read_text())
    shipped = atoken.Tokenizer.from_pretrained("atoken-tiny-photo")  # written before the mixin
    assert dict(shipped.companions) == {}
    assert shipped.config.geometry.token_dim == 3072


def test_loading_never_unpickles(tmp_path, monkeypatch) -> None:
    import pickle

    out = _toy().save_pretrained(tmp_path / "m", companions={"helper": _toy(2)})

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert Toy.from_pretrained(out).width == 5
    assert isinstance(out, Path)
