"""A second fixture set in the layout of the official one, with other sizes, made by atoken.

`write_variant_set` writes every file the ``official`` tests read (``tiny-soc.json`` +
``.safetensors``, ``fixture-images-video``, ``fixture-crop-tiling``, ``fixture-3d``,
``fixture-rope-pe``; the key schemas and release configs are copied, since they describe the
released checkpoints, not a fixture size) with other image sizes, other frame counts (none
``1 mod 4``, none a multiple of 4, so the release frame cut matters), another crop, another
sample order, other model widths and head dims, another temporal tile and another KV-cache
mode. Its expected tensors can only come from atoken itself (no official code is available
offline), so running the official tests against it checks that the tests hold on any set in the
layout, *not* equivalence with the release; equivalence is what the shipped set checks.

Run it by hand: ``python -m tests.official_variant OUT_DIR`` (then
``ATOKEN_OFFICIAL_FIXTURES=OUT_DIR pytest -m official tests``).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from atoken import ModelConfig, PatchTokens, TransformerConfig, build_tokenizer, collate
from atoken.convert.official import temporal_from_official
from atoken.core.posembed import LearnedPositionEmbedding2D
from atoken.core.rope import Rope4D, rope_frequencies
from atoken.plugins.image.adapter import ImageAdapter
from atoken.plugins.video.adapter import VideoAdapter, VideoOptions

#: what differs from the shipped set (sizes HxW, videos TxHxW); the 4-frame patch, the 3072-d
#: patch and the 48-d latent are the release's and stay
VARIANT: dict[str, Any] = {
    "arch": {
        "encoder_model_channels": 96,  # head dim 48: 6 RoPE pairs per axis (shipped: 72, 9)
        "encoder_num_blocks": 1,
        "encoder_num_heads": 2,
        "encoder_mlp_channels": 112,
        "decoder_model_channels": 64,  # head dim 32, unlike the encoder
        "decoder_num_blocks": 1,
        "decoder_num_heads": 2,
        "decoder_mlp_channels": 80,
    },
    # tile of 12 frames = 3 latent frames; KV mode: 4 new + 8 cached = tile 3, cache 2
    "runtime": {"num_sample_frames_batch_size": 12, "num_sample_frames_stride": 12},
    "kv": {"stride_frames": 4, "cache_frames": 8},
    "seeds": {"model": 10, "perturb": 11, "input": 3000, "vox": 12},
    # main batch: image, video, image (the video is not last); 18 frames -> 16 (4 latent, tiled)
    "main": [("image", (48, 80)), ("video", (18, 40, 32)), ("image", (33, 47))],
    # 27 frames -> 24 (6 latent frames: two tiles, 4 KV steps); the image is cropped both ways
    "extra": [("video", (27, 24, 40)), ("image", (45, 70))],
    "n_vox": 40,
    "mixed_image": (48, 32),
    "n_vox_mixed": 12,
    "fsq_rand": 50,
    "rope_positions": 7,
    "pe_grids": [(3, 5), (20, 18)],  # a non-square grid and one needing the table upsampled
}
COPIED = ("keys-*.tsv", "config-atoken-*.json")
SOD = "config-atoken-sod.json"


def _uniform(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=gen) * 2 - 1


def _model(arch: dict[str, Any], run: dict[str, int], seeds: dict[str, int]):
    def stack(side: str) -> TransformerConfig:
        return TransformerConfig(
            width=arch[f"{side}_model_channels"],
            depth=arch[f"{side}_num_blocks"],
            num_heads=arch[f"{side}_num_heads"],
            mlp_width=arch[f"{side}_mlp_channels"],
        )

    torch.manual_seed(seeds["model"])
    config = ModelConfig(
        patch_size=tuple(arch["patch_size"]),
        latent_channels=arch["latent_channels"],
        encoder=stack("encoder"),
        decoder=stack("decoder"),
        temporal=temporal_from_official(
            run["num_sample_frames_batch_size"],
            run["num_sample_frames_stride"],
            run["kv_cache_size"],
        ),
    )
    model = build_tokenizer(config).eval()
    gen = torch.Generator().manual_seed(seeds["perturb"])
    with torch.no_grad():  # as the shipped set: no norm weight exactly 1, no bias exactly 0
        for _, p in model.named_parameters():
            p += 0.02 * torch.randn(p.shape, generator=gen)
    return model


def _voxels(gen: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
    """``n`` distinct voxels of a 64^3 grid in lexicographic order, and [0, 1] features."""
    flat = torch.randperm(64**3, generator=gen)[:n].sort().values
    xyz = torch.stack([flat // 4096, flat // 64 % 64, flat % 64], 1).to(torch.int32)
    return xyz, torch.rand(n, 768, generator=gen)


def _voxel_tokens(xyz: Tensor, feats01: Tensor, width: int) -> PatchTokens:
    feats = torch.zeros(xyz.shape[0], width)
    feats[:, : feats01.shape[1]] = 2 * feats01 - 1
    return PatchTokens(feats, torch.cat([torch.ones_like(xyz[:, :1]), xyz], 1), "voxel")


def write_variant_set(source: str | Path, out: str | Path, variant: dict | None = None) -> Path:
    """Write the variant fixture set into ``out``; ``source`` is the shipped set (for its arch
    JSON, key schemas and release configs).

    Returns:
        ``out``.
    """
    v = copy.deepcopy(VARIANT if variant is None else variant)
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for pattern in COPIED:
        for path in source.glob(pattern):
            shutil.copyfile(path, out / path.name)
    doc = json.loads((source / "tiny-soc.json").read_text())
    arch = {**doc["arch_cfg"], **v["arch"]}
    run = {**doc["runtime_settings"], **v["runtime"], "kv_cache_size": 0}
    run["encoder_head_dim"] = arch["encoder_model_channels"] // arch["encoder_num_heads"]
    run["rope_pairs_per_axis"] = run["encoder_head_dim"] // 8
    seeds = v["seeds"]
    spec = {
        "model_seed": seeds["model"],
        "perturb_seed": seeds["perturb"],
        "input_seed": seeds["input"],
        "vox_seed": seeds["vox"],
        "main": v["main"],
        "extra": v["extra"],
        "n_vox": v["n_vox"],
        "mixed_image": v["mixed_image"],
        "n_vox_mixed": v["n_vox_mixed"],
        "fsq_rand": v["fsq_rand"],
        "kv": v["kv"],
    }
    (out / "tiny-soc.json").write_text(
        json.dumps(
            {
                "description": "VARIANT fixture set written by atoken (tests/official_variant.py):"
                " same layout as the official set, other sizes; expected tensors are atoken's own",
                "overrides": v["arch"],
                "arch_cfg": arch,
                "runtime_settings": run,
                "spec": spec,
            },
            indent=1,
        )
    )
    (out / "README.md").write_text(
        "Variant of the official fixture set, generated by atoken's tests/official_variant.py.\n"
        "Its expected tensors come from atoken, not from the official code: it checks that the\n"
        "official tests read every size and setting from the set, not equivalence.\n"
    )
    model = _model(arch, run, seeds)
    save_file(
        {k: t.contiguous() for k, t in model.state_dict().items()}, out / "tiny-soc.safetensors"
    )
    tiling = model.config.temporal
    kv = temporal_from_official(
        run["num_sample_frames_batch_size"], v["kv"]["stride_frames"], v["kv"]["cache_frames"]
    )
    fsq_doc = json.loads((source / SOD).read_text())["derived"]["fsq"]
    fsq = build_tokenizer(
        "atoken-tiny",
        quantizer={
            "name": "fsq",
            "options": {"levels": fsq_doc["levels"], "groups": fsq_doc["num_codebooks"]},
        },
        init=False,
    ).quantizer
    image, video = ImageAdapter(), VideoAdapter(VideoOptions(frame_mode="release"))
    gen = torch.Generator().manual_seed(seeds["input"])

    def batch(prefix: str, samples: list[PatchTokens], kinds: list[str]) -> dict[str, Tensor]:
        with torch.no_grad():
            dense = model.encode_dense(samples, temporal=tiling)
            z = model.project(dense)
            mean, logvar = z.chunk(2, dim=-1)
            layout = dense.replace(mean)
            decoded = model.decode(layout, temporal=tiling)
            packed = collate(samples)
            b = torch.repeat_interleave(
                torch.arange(len(samples), dtype=torch.int32), torch.tensor(packed.seqlens)
            )
            res = {
                "coords_in": torch.cat([b[:, None], packed.coords], 1),
                "dense": dense.feats,
                "z_proj": z,
                "pooled": model.pool(dense, normalize=False),
                "pooled_normalized": model.pool(dense, normalize=True),
                "dec_mean": decoded.feats,
                "_logvar": logvar,
                "_kv": model.decode(layout, temporal=kv).feats,
            }
            for i, (part, kind) in enumerate(zip(decoded.split(), kinds, strict=True)):
                if kind == "image":
                    res[f"dec_img_{i}"] = image.from_tokens(part).permute(2, 0, 1)[None]
                elif kind == "video":
                    res[f"dec_img_{i}"] = video.from_tokens(part).permute(0, 3, 1, 2)
        return {f"{prefix}.{k}": t.contiguous() for k, t in res.items()}

    def pixel_batch(prefix: str, layout: list) -> tuple[dict[str, Tensor], list[PatchTokens]]:
        pixels = {}
        for i, (kind, size) in enumerate(layout):
            shape = (*size, 3)
            assert (kind == "video") == (len(size) == 3), (kind, size)
            pixels[f"{prefix}.pixels_{i}"] = _uniform(gen, *shape)
        samples = [(image if px.ndim == 3 else video).to_tokens(px) for px in pixels.values()]
        out_ = {**pixels, **batch(prefix, samples, [k for k, _ in layout])}
        out_[f"{prefix}.feats_in"] = torch.cat([s.feats for s in samples])
        return out_, samples

    # fixture-images-video: main.* and the standalone FSQ input
    main, _ = pixel_batch("main", v["main"])
    fsq_in = 1.5 * torch.randn(v["fsq_rand"], arch["latent_channels"], generator=gen)
    gen_post = torch.Generator().manual_seed(seeds["input"] + 2)  # README rule: input seed + 2
    with torch.no_grad():
        q_in, q_main = fsq(fsq_in), fsq(main["main.z_proj"])
        main["main.posterior_std"] = torch.exp(0.5 * main["main._logvar"].clamp(-30.0, 20.0))
        main["main.posterior_sample"] = model.quantizer(
            main["main.z_proj"], sample=True, generator=gen_post
        ).codes
    main |= {"main.fsq_codes": q_main.codes, "main.fsq_indices": q_main.indices}
    main |= {"fsq.input": fsq_in, "fsq.codes": q_in.codes, "fsq.indices": q_in.indices}
    main = {k: t.contiguous() for k, t in main.items() if "._" not in k}
    save_file(main, out / "fixture-images-video.safetensors")

    # fixture-crop-tiling: extra.*, with the KV-cache decode
    extra, _ = pixel_batch("extra", v["extra"])
    extra["extra.dec_mean_kvcache"] = extra.pop("extra._kv")
    extra = {k: t for k, t in extra.items() if "._" not in k}
    save_file(extra, out / "fixture-crop-tiling.safetensors")

    # fixture-3d: a voxel set alone, and an image with a voxel set
    vgen = torch.Generator().manual_seed(seeds["vox"])
    xyz, f01 = _voxels(vgen, v["n_vox"])
    width = arch["in_channels"]
    vox = batch("vox", [_voxel_tokens(xyz, f01, width)], ["voxel"])
    vox = {k: t for k, t in vox.items() if "._" not in k and not k.endswith("coords_in")}
    zero = torch.zeros_like(xyz[:, :1])
    vox |= {"vox.coords_xyz": xyz, "vox.feats_01": f01}
    vox |= {"vox.x_coords": torch.cat([zero, torch.ones_like(zero), xyz], 1)}
    vox |= {"vox.gs_in_coords": torch.cat([zero, xyz], 1)}
    mxyz, mf01 = _voxels(vgen, v["n_vox_mixed"])
    mpix = _uniform(gen, *v["mixed_image"], 3)
    mixed = batch(
        "mixed", [image.to_tokens(mpix), _voxel_tokens(mxyz, mf01, width)], ["image", "voxel"]
    )
    mixed = {k: t for k, t in mixed.items() if "._" not in k and "dec_" not in k}
    mixed |= {"mixed.pixels_0": mpix, "mixed.vox_coords_xyz": mxyz, "mixed.vox_feats_01": mf01}
    save_file(
        {k: t.contiguous() for k, t in {**vox, **mixed}.items()}, out / "fixture-3d.safetensors"
    )

    # fixture-rope-pe: RoPE of the encoder's head dim, and the encoder's position table
    dim = run["encoder_head_dim"]
    rope = Rope4D(dim)
    pos = torch.randint(0, 1024, (v["rope_positions"], 4), generator=gen, dtype=torch.int32)
    q = torch.randn(v["rope_positions"], arch["encoder_num_heads"], dim, generator=gen)
    k = torch.randn(q.shape, generator=gen)
    cos, sin = rope.rotation(pos)
    angles = torch.remainder(rope.angles(pos).double() + math.pi, 2 * math.pi) - math.pi
    q_out, k_out = rope(q, k, pos)
    weight = model.state_dict()["encoder.pos_embedder.position_embedding.weight"]
    pe = LearnedPositionEmbedding2D(weight.shape[1], grid=math.isqrt(weight.shape[0]))
    pe.load_state_dict({"position_embedding.weight": weight})
    grids = [
        torch.tensor([(0, x, y, 0) for x in range(r) for y in range(c)], dtype=torch.int32)
        for r, c in v["pe_grids"]
    ]
    grids.append(torch.tensor([(0, 0, 3, 0), (0, 6, 1, 0), (0, 2, 9, 0), (0, 4, 4, 0)]).int())
    pe_samples = [PatchTokens(torch.zeros(len(c), weight.shape[1]), c, "image") for c in grids]
    b = torch.cat([torch.full((len(c), 1), i, dtype=torch.int32) for i, c in enumerate(grids)])
    with torch.no_grad():
        encoder_pe = pe(collate(pe_samples))
    rope_pe = {
        "rope.freqs": rope_frequencies(dim),
        "rope.positions_txyz": pos,
        "rope.cos": cos,
        "rope.sin": sin,
        "rope.angles": angles.float(),
        "rope.q_in": q,
        "rope.k_in": k,
        "rope.q_out": q_out,
        "rope.k_out": k_out,
        "pe.coords": torch.cat([b, torch.cat(grids)], 1),
        "pe.encoder_pe": encoder_pe,
    }
    save_file({k: t.contiguous() for k, t in rope_pe.items()}, out / "fixture-rope-pe.safetensors")
    return out


if __name__ == "__main__":
    from tests.official_set import FIXTURES

    print(write_variant_set(FIXTURES, sys.argv[1]))
