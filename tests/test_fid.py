"""rFID: the FID Inception-v3 (random weights, saved as safetensors and TorchScript), the
refusal of pickles and misfitting files, FID on real photos, and the protocol `atoken eval`
records beside the numbers."""

from __future__ import annotations

import hashlib
import json
import math
import warnings

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from atoken import CheckpointError
from atoken.cli import cli
from atoken.core.serialization import save_tensors
from atoken.eval.fid import (
    CONVERT_COMMAND,
    FID_DIMS,
    FIDAccumulator,
    FIDInceptionV3,
    InceptionUnavailable,
    fid_inputs,
    find_inception,
    load_inception,
)
from atoken.eval.fvd import FeatureStats, frechet_distance
from atoken.eval.reconstruction import reconstruction_metrics
from tests.conftest import SKIMAGE_DATA

PYTORCH_FID_PICKLE = "pt_inception-2015-12-05-6726825d.pth"


def _script(module: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        return torch.jit.script(module)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """The real FID Inception-v3 at a random (variance-preserving) init, with BatchNorm
    statistics that are not the identity, saved to safetensors (pytorch-fid names, no
    BatchNorm counters, as the published file) and to TorchScript."""
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.8, 1.2)
                m.bias.normal_(0, 0.05)
                m.running_mean.normal_(0, 0.05)
                m.running_var.uniform_(0.8, 1.2)
    root = tmp_path_factory.mktemp("inception")
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_tensors(root / "pt_inception-2015-12-05.safetensors", state)
    _script(net).save(str(root / "inception-scripted.pt"))
    return net, root / "pt_inception-2015-12-05.safetensors", root / "inception-scripted.pt", state


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """Four real photo crops ``[4, 128, 160, 3]`` in [-1, 1] on uint8 levels (one batch: each
    image costs a 299 x 299 Inception pass, so the tests use few)."""
    from atoken.plugins.image.io import read_image

    imgs = [read_image(SKIMAGE_DATA / n) for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    return torch.stack(
        [imgs[0][:128, :160], imgs[1][-128:, -160:], imgs[2][:128, -160:]]
        + [imgs[0][-128:, 200:360]]
    )


@pytest.fixture
def no_inception(tmp_path, monkeypatch):
    """Empty atoken and torch.hub caches, no $ATOKEN_INCEPTION."""
    monkeypatch.setenv("ATOKEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ATOKEN_INCEPTION", raising=False)
    return tmp_path


def _fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    a, b = FeatureStats(), FeatureStats()
    a.update(real)
    b.update(fake)
    return frechet_distance(*a.moments(), *b.moments())


# ----------------------------------------------------------------------------- the network
def test_network_has_the_published_layout(inception) -> None:
    net, _, _, state = inception
    # torchvision's Inception-v3 without the aux head, with the FID graph's 1008 classes
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    assert list(state["Mixed_7c.branch_pool.conv.weight"].shape) == [192, 2048, 1, 1]
    assert list(state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == [192, 192, 1, 7]
    assert list(state["fc.weight"].shape) == [1008, FID_DIMS]
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 75, 75))  # the smallest input the network takes
    assert out.shape == (1, FID_DIMS) and torch.isfinite(out).all() and out.abs().sum() > 0


def test_inputs_follow_pytorch_fid(crops) -> None:
    x = fid_inputs(torch.full((1, 20, 30, 3), 0.3001))
    assert x.shape == (1, 3, 299, 299)
    assert torch.allclose(x, torch.full_like(x, round(1.3001 * 127.5) / 255))  # uint8 level
    over = fid_inputs(crops[:1] * 3)
    assert over.min() >= 0 and over.max() <= 1 + 1e-6  # reconstructions are clamped like a PNG
    with pytest.raises(Exception, match=r"expected images \[B, H, W, 3\]"):
        fid_inputs(crops[0])


# ---------------------------------------------------------------------------- loading files
def test_safetensors_and_torchscript_give_the_same_features(inception, crops) -> None:
    net, st, ts, state = inception
    a, b = load_inception(st), load_inception(ts)
    assert a.info["format"] == "safetensors" and b.info["format"] == "torchscript"
    assert a.info["sha256"] == hashlib.sha256(st.read_bytes()).hexdigest()
    pair = torch.stack([crops[1], crops[1].flip(1)])  # [2, H, W, 3]
    fa, fb = a(pair), b(pair)
    with torch.no_grad():
        direct = net(2 * fid_inputs(pair) - 1)
    assert fa.shape == (2, FID_DIMS) and fa.std() > 0.01
    assert torch.allclose(fa, fb, rtol=1e-4, atol=1e-5 * fa.abs().max())
    assert torch.allclose(fa, direct, rtol=1e-4, atol=1e-5 * fa.abs().max())
    # pytorch_fid.inception.InceptionV3().state_dict() names (blocks.B.I.), without fc
    order = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    blocks = dict(zip(order, ["0.0", "0.1", "0.2", "1.0", "1.1"], strict=True))
    blocks |= {f"Mixed_{n}": f"2.{i}" for i, n in enumerate("5b 5c 5d 6a 6b 6c 6d 6e".split())}
    blocks |= {f"Mixed_{n}": f"3.{i}" for i, n in enumerate(["7a", "7b", "7c"])}
    wrapped = {
        f"blocks.{blocks[k.split('.')[0]]}.{k.split('.', 1)[1]}": v
        for k, v in state.items()
        if not k.startswith("fc.")
    }
    save_tensors(st.parent / "wrapped.safetensors", wrapped)
    fw = load_inception(st.parent / "wrapped.safetensors")(pair)
    assert torch.allclose(fa, fw, rtol=1e-4, atol=1e-5 * fa.abs().max())


def test_pickles_are_refused_unread_with_the_conversion_command(inception, tmp_path) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "x": Payload()}, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="a torch.save checkpoint") as err:
        load_inception(tmp_path / "a.pth")
    assert "\n" not in str(err.value) and CONVERT_COMMAND in str(err.value)
    assert not marker.exists()  # nothing in the pickle ran
    torch.save({"w": torch.zeros(1)}, tmp_path / "b.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="neither safetensors nor a zip"):
        load_inception(tmp_path / "b.pt")


def test_misfitting_weights_are_refused_with_a_clear_line(inception, tmp_path) -> None:
    _, _, _, state = inception
    bad = dict(state)
    bad["Mixed_7c.branch_pool.convv.weight"] = bad.pop("Mixed_7c.branch_pool.conv.weight")
    bad["Conv2d_1a_3x3.conv.weight"] = torch.zeros(16, 3, 3, 3)
    save_tensors(tmp_path / "bad.safetensors", bad)
    with pytest.raises(CheckpointError) as err:
        load_inception(tmp_path / "bad.safetensors")
    first, *rest = str(err.value).splitlines()
    assert "do not fit the FID Inception-v3" in first and "pt_inception-2015-12-05" in first
    detail = "\n".join(rest)
    assert "missing: Mixed_7c.branch_pool.conv.weight" in detail
    assert "unexpected: Mixed_7c.branch_pool.convv.weight" in detail
    assert "Conv2d_1a_3x3.conv.weight: file [16, 3, 3, 3] vs Inception-v3 [32, 3, 3, 3]" in detail

    class Logits(nn.Module):  # a TorchScript classifier, not the pool3 feature extractor
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 336)  # [B, 1008]

    _script(Logits()).save(str(tmp_path / "logits.pt"))
    with pytest.raises(CheckpointError, match=r"returned features \[1, 1008\].*\[B, 2048\]"):
        load_inception(tmp_path / "logits.pt")(torch.zeros(1, 8, 8, 3))


def test_stylegan_style_detector_gets_pixel_values(tmp_path) -> None:
    class Detector(nn.Module):  # the calling convention of StyleGAN2-ADA's inception-2015-12-05.pt
        def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            if not return_features:
                return torch.full((img.shape[0], 1008), float("nan"))
            x = (img - 128) / 128
            return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    _script(Detector()).save(str(tmp_path / "inception-2015-12-05.pt"))
    det = load_inception(tmp_path / "inception-2015-12-05.pt")
    images = torch.rand(2, 24, 40, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = det(images)
    expected = (2 * fid_inputs(images) - 1).mean(dim=(2, 3))  # [2, 3] in pytorch-fid's range
    assert (
        torch.allclose(out[:, :3], expected, atol=0.01) and "(x - 128) / 128" in det.info["input"]
    )


def test_where_weights_are_looked_up(inception, no_inception, monkeypatch) -> None:
    _, st, _, _ = inception
    with pytest.raises(InceptionUnavailable, match="no local FID Inception weights") as err:
        find_inception()
    msg = str(err.value)
    assert "--inception" in msg and "$ATOKEN_INCEPTION" in msg and CONVERT_COMMAND in msg
    hub = no_inception / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, hub / PYTORCH_FID_PICKLE)  # what pytorch-fid downloads
    with pytest.raises(InceptionUnavailable, match=f"{PYTORCH_FID_PICKLE} is a pickle"):
        find_inception()
    with pytest.raises(CheckpointError, match=r"\(from --inception\) do not exist.*--inception"):
        find_inception(no_inception / "typo.safetensors")
    monkeypatch.setenv("ATOKEN_INCEPTION", str(no_inception / "typo.pt"))
    with pytest.raises(CheckpointError, match=r"from \$ATOKEN_INCEPTION"):
        find_inception()
    monkeypatch.setenv("ATOKEN_INCEPTION", str(st))
    assert find_inception() == st
    monkeypatch.delenv("ATOKEN_INCEPTION")
    (hub / st.name).symlink_to(st)
    assert find_inception() == hub / st.name
    cache = no_inception / "cache" / "inception"
    cache.mkdir(parents=True)
    (cache / "inception-2015-12-05.pt").write_bytes(b"")
    assert find_inception() == cache / "inception-2015-12-05.pt"  # atoken's cache comes first


# ---------------------------------------------------------------------------------- FID
@pytest.mark.slow  # 22 Inception passes at 299 x 299
def test_fid_is_zero_on_identical_sets_and_grows_with_noise(inception, crops) -> None:
    _, st, _, _ = inception
    extractor = load_inception(st)
    real = extractor(crops)  # [4, 2048]
    g = torch.Generator().manual_seed(0)
    values = []
    for sigma in (0.05, 0.15, 0.4):
        noisy = (crops + sigma * torch.randn(crops.shape, generator=g)).clamp(-1, 1)
        values.append(_fid(real, extractor(noisy)))
    same = _fid(real, real)
    assert 0 <= same < 1e-9 * values[0]
    assert values[0] > 0 and values[0] < values[1] < values[2], values
    # the accumulator streams pairs of any size to the same value
    acc = FIDAccumulator(extractor)
    for x in crops[:2]:
        acc.add(x, x)
    out = acc.result()
    assert out["rfid"] < 1e-9 * values[0] and out["rfid_samples"] == 2 and out["rfid_n_limited"]
    assert out["rfid_features"] == f"fid-inception:{st.name}"
    one = FIDAccumulator(extractor)
    one.add(crops[0], crops[0])
    assert one.result()["rfid"] is None and "at least 2" in one.result()["rfid_unavailable"]
    with pytest.raises(Exception, match="one shape"):
        one.add(crops[0], crops[1, :64])


# ----------------------------------------------------------------- atoken eval and protocol
@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    with Image.open(SKIMAGE_DATA / "chelsea.png") as im:
        im.crop((0, 0, 96, 64)).save(root / "cat.png")
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((0, 0, 64, 80)).save(root / "cup.png")
    return root


def test_eval_reports_rfid_with_its_protocol(tiny, inception, folder, no_inception) -> None:
    _, st, _, _ = inception
    out = reconstruction_metrics(tiny, folder, lpips=False, inception=st)
    assert out["rfid_samples"] == 2 and math.isfinite(out["rfid"]) and out["rfid"] > 0
    assert out["rfid_unavailable"] is None and out["rfid_n_limited"] is True
    p = out["protocol"]
    assert p["n"] == {"images": 2, "videos": 0, "assets": 0}
    assert p["image_sizes"] == {"64x96": 1, "80x64": 1} and "16x16 patch" in p["crop"]
    assert "originals of the same 2 image(s)" in p["reference"]
    fe = p["rfid"]["feature_extractor"]
    assert fe["sha256"] == hashlib.sha256(st.read_bytes()).hexdigest() and fe["dims"] == 2048
    assert p["rfid"]["n_limited"] and "N=2 < 2048" in p["rfid"]["note"]
    missing = reconstruction_metrics(tiny, folder, lpips=False)  # nothing cached anywhere
    assert missing["rfid"] is None and "--inception" in missing["rfid_unavailable"]
    assert missing["protocol"]["rfid"]["feature_extractor"] is None


def test_eval_cli_prints_and_saves_the_protocol(inception, folder, no_inception) -> None:
    _, st, _, _ = inception
    res = no_inception / "res.json"
    args = ["eval", "--data", str(folder), "--no-lpips", "-o", str(res)]
    result = CliRunner().invoke(cli, [*args, "--inception", str(st)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(res.read_text())
    assert math.isfinite(data["rfid"]) and data["protocol"]["rfid"]["n"] == 2
    printed = json.loads(result.output[: result.output.rindex("}") + 1])
    assert printed["protocol"] == data["protocol"]
    assert (
        "N-limited" in result.output
        and data["protocol"]["rfid"]["feature_extractor"]["sha256"][:16] in result.output
    )
    off = CliRunner().invoke(cli, [*args, "--no-rfid", "--overwrite"], catch_exceptions=False)
    assert json.loads(res.read_text())["rfid_unavailable"] == "disabled", off.output
    bad = CliRunner().invoke(
        cli, [*args, "--overwrite", "--inception", str(no_inception / "nope.pt")]
    )
    assert bad.exit_code == 1 and "do not exist" in bad.output


def test_a_stand_in_extractor_replaces_the_inception(tiny, folder) -> None:
    class Colour:
        name = "colour-stats"
        info = {"input": "raw"}

        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            return torch.cat([images.mean(dim=(1, 2)), images.std(dim=(1, 2))], 1)  # [B, 6]

    out = reconstruction_metrics(tiny, folder, lpips=False, image_feature_extractor=Colour())
    assert out["rfid_features"] == "colour-stats" and out["rfid"] > 0
