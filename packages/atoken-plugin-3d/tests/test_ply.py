"""3D Gaussian Splatting .ply export: header layout, stored values, round trip, bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from atoken.plugin import InputError

from atoken_plugin_3d.gaussians import Gaussians, RepresentationConfig
from atoken_plugin_3d.ply import PROPERTIES, PlyGaussians, read_ply, write_ply


def decoded(p: int = 50, seed: int = 0, config: RepresentationConfig | None = None) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        xyz=torch.rand(p, 3, generator=g),
        features_dc=torch.randn(p, 1, 3, generator=g),
        scaling=torch.randn(p, 3, generator=g),
        rotation=torch.randn(p, 4, generator=g) * 0.5,
        opacity=torch.randn(p, 1, generator=g),
        config=config or RepresentationConfig(),
    )


def test_header_is_the_standard_splat_layout(tmp_path: Path) -> None:
    gs = decoded(7)
    path = write_ply(tmp_path / "out" / "g.ply", gs)
    raw = path.read_bytes()
    head, _, body = raw.partition(b"end_header\n")
    lines = head.decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    assert "element vertex 7" in lines
    props = [ln.split()[2] for ln in lines if ln.startswith("property")]
    assert props == list(PROPERTIES)
    assert all(ln.split()[1] == "float" for ln in lines if ln.startswith("property"))
    assert len(body) == 7 * 17 * 4
    # stored values: position, SH dc, logit opacity, log scale, unit quaternion (w, x, y, z)
    row = struct.unpack("<17f", body[: 17 * 4])
    op = float(gs.get_opacity[0, 0])
    assert np.allclose(row[0:3], gs.get_xyz[0].numpy(), atol=1e-6)
    assert row[3:6] == (0.0, 0.0, 0.0)
    assert np.allclose(row[6:9], gs.features_dc[0, 0].numpy(), atol=1e-6)
    assert row[9] == pytest.approx(np.log(op / (1 - op)), abs=1e-4)
    assert np.allclose(row[10:13], np.log(gs.get_scaling[0].numpy()), atol=1e-5)
    assert np.allclose(row[13:17], gs.get_rotation[0].numpy(), atol=1e-6)
    assert not list(tmp_path.joinpath("out").glob("*.tmp"))  # atomic write left no temp file


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_round_trip(tmp_path: Path, activation: str) -> None:
    config = RepresentationConfig(scaling_activation=activation)
    gs = decoded(64, seed=1, config=config)
    back = read_ply(write_ply(tmp_path / "g.ply", gs))
    assert len(back) == 64
    assert torch.allclose(back.means, gs.get_xyz, atol=1e-6)
    assert torch.allclose(back.opacities, gs.get_opacity[:, 0], atol=1e-6)
    assert torch.allclose(back.scales, gs.get_scaling, rtol=1e-5)
    assert torch.allclose(back.quats, gs.get_rotation, atol=1e-6)
    assert torch.equal(back.features_dc, gs.features_dc)
    again = back.to_gaussians(config)  # raw attributes recovered: same activated values
    assert torch.allclose(again.get_xyz, gs.get_xyz, atol=1e-6)
    assert torch.allclose(again.get_scaling, gs.get_scaling, rtol=1e-4)
    assert torch.allclose(again.get_opacity, gs.get_opacity, atol=1e-5)
    assert torch.allclose(again.get_rotation, gs.get_rotation, atol=1e-5)


def test_reader_accepts_other_property_orders_and_extras(tmp_path: Path) -> None:
    names = ["scale_0", "scale_1", "scale_2", "x", "y", "z", "f_rest_0", "opacity", "f_dc_0",
             "f_dc_1", "f_dc_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
    values = {n: i + 1.0 for i, n in enumerate(names)}
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 1\n"
    header += "".join(f"property double {n}\n" for n in names) + "end_header\n"
    path = tmp_path / "other.ply"
    path.write_bytes(header.encode() + struct.pack(f"<{len(names)}d", *values.values()))
    g = read_ply(path)
    assert g.means.tolist() == [[4.0, 5.0, 6.0]]
    assert g.scales[0].tolist() == pytest.approx(np.exp([1.0, 2.0, 3.0]).tolist(), rel=1e-6)
    assert float(g.opacities[0]) == pytest.approx(1 / (1 + np.exp(-8.0)), rel=1e-6)
    q = np.array([12.0, 13.0, 14.0, 15.0])
    assert g.quats[0].tolist() == pytest.approx((q / np.linalg.norm(q)).tolist(), rel=1e-6)


def test_bad_files(tmp_path: Path) -> None:
    good = write_ply(tmp_path / "g.ply", decoded(5)).read_bytes()
    cases = {
        "nope.ply": (b"solid cube\nendsolid\n", "not a PLY"),
        "ascii.ply": (good.replace(b"binary_little_endian", b"ascii"), "binary_little_endian"),
        "cut.ply": (good[:-10], "truncated"),
        "mesh.ply": (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\n"
            b"property float y\nproperty float z\nend_header\n",
            "lacks the Gaussian properties",
        ),
        "noend.ply": (good.split(b"end_header")[0], "end_header"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=match):
            read_ply(tmp_path / name)
    with pytest.raises(InputError, match="does not exist"):
        read_ply(tmp_path / "missing.ply")
    bad = PlyGaussians.from_gaussians(decoded(3))
    bad.means[1, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        write_ply(tmp_path / "nan.ply", bad)
    assert not (tmp_path / "nan.ply").exists()
