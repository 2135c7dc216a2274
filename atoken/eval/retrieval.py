"""Image<->text retrieval: read an image-caption list, COCO-style recall at K both ways.

Retrieval follows the COCO protocol: image->text counts an image as found at K when any of its
captions ranks in the top K; text->image asks the same of each caption's one image. Ties are
resolved in favour of the correct item (only strictly higher scores push it down). Similarities
are computed in chunks on the model's device.

References: A. Karpathy, L. Fei-Fei (2015) and F. Faghri et al., "VSE++" (2018) for the COCO
image-caption retrieval protocol (R@1/5/10 both ways).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from atoken.core.errors import InputError
from atoken.core.plugins import Components
from atoken.core.tokenizer import Tokenizer
from atoken.eval.embedding import FileReader, check_files, iter_file_embeddings, require_head
from atoken.eval.text_towers import TextEncoder, check_dims, encode_texts


def read_captions(
    path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None
) -> tuple[list[Path], list[str], list[int]]:
    """Parse an image-caption list: ``(unique images, captions, image index per caption)``.

    ``.jsonl``: one object per line with ``"image"`` and ``"caption"`` (a string) or
    ``"captions"`` (a list). Anything else is read as TSV: ``image<TAB>caption`` per line. An
    image may appear on several lines (several captions). Relative image paths are resolved
    against ``image_root`` (default: the list's directory).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"captions file {str(path)!r} does not exist")
    root = Path(image_root) if image_root is not None else path.parent
    images: dict[Path, int] = {}
    captions: list[str] = []
    owner: list[int] = []

    def add(image: str, caps: list[str], where: str) -> None:
        if not image or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise InputError(f"{where}: needs an image path and non-empty caption text")
        p = root / image
        idx = images.setdefault(p, len(images))
        captions.extend(c.strip() for c in caps)
        owner.extend([idx] * len(caps))

    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            if is_jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or "image" not in obj:
                    raise InputError(f"{where}: expected an object with 'image' and 'caption(s)'")
                caps = obj.get("captions", [obj["caption"]] if "caption" in obj else [])
                add(str(obj["image"]), caps if isinstance(caps, list) else [caps], where)
            else:
                image, tab, caption = line.rstrip("\r\n").partition("\t")
                if not tab:
                    raise InputError(f"{where}: expected 'image<TAB>caption'")
                add(image.strip(), [caption], where)
    if not captions:
        raise InputError(f"{path} lists no image-caption pairs")
    return list(images), captions, owner


def recall_at_k(
    image_emb: Tensor,
    text_emb: Tensor,
    caption_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, Any]:
    """COCO-style recall both ways from embeddings.

    Args:
        image_emb: ``[I, D]`` image embeddings; text_emb: ``[C, D]`` caption embeddings.
        caption_image: ``[C]`` int, the image each caption belongs to.
        ks: the K of R@K.
        chunk: rows of the similarity matrix computed at once (bounds memory).

    Returns:
        ``{"image_to_text": {"R@1": ..., ..., "median_rank": ...}, "text_to_image": {...}}``;
        recalls are fractions, ranks 1-based.
    """
    check_dims(image_emb.shape[1], text_emb.shape[1])
    x = F.normalize(image_emb.float(), dim=-1)  # [I, D]
    y = F.normalize(text_emb.float().to(x.device), dim=-1)  # [C, D]
    owner = caption_image.to(x.device).long()  # [C]
    n_img = x.shape[0]
    if owner.numel() != y.shape[0] or int(owner.min()) < 0 or int(owner.max()) >= n_img:
        raise InputError("caption_image must give, for every caption, an image row index")
    i2t = []
    for s in range(0, n_img, chunk):
        sims = x[s : s + chunk] @ y.T  # [c, C]
        own = owner[None, :] == torch.arange(s, s + sims.shape[0], device=x.device)[:, None]
        best = sims.masked_fill(~own, -math.inf).max(1).values  # [c]; -inf: image has no caption
        i2t.append((sims > best[:, None]).sum(1))  # captions strictly better than its best one
    t2i = []
    for s in range(0, y.shape[0], chunk):
        sims = y[s : s + chunk] @ x.T  # [c, I]
        gt = sims.gather(1, owner[s : s + chunk, None])  # [c, 1]
        t2i.append((sims > gt).sum(1))

    def summary(ranks: Tensor) -> dict[str, float]:
        out = {f"R@{k}": float((ranks < k).float().mean()) for k in ks}
        out["median_rank"] = float((ranks.float() + 1).median())
        return out

    return {"image_to_text": summary(torch.cat(i2t)), "text_to_image": summary(torch.cat(t2i))}


def retrieval_recall(
    model: Tokenizer,
    text_encoder: TextEncoder,
    captions_file: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 32,
    text_batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
    components: Components | None = None,
) -> dict[str, Any]:
    """Image<->text retrieval recall over an image-caption list (see `read_captions`).

    Returns:
        A JSON-ready dict with ``image_to_text`` and ``text_to_image`` R@K (fractions) and
        median ranks, and the numbers of images and captions.
    """
    dim = require_head(model)
    check_dims(dim, text_encoder.dim)
    images, captions, owner = read_captions(captions_file, image_root)
    check_files(images)  # before the (possibly long) text encoding
    text = encode_texts(text_encoder, captions, text_batch_size)  # [C, D]
    stream = iter_file_embeddings(
        model,
        images,
        reader=FileReader(components=components),
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        description="retrieval",
    )
    image_emb = torch.stack(list(stream))  # [I, D]
    result = recall_at_k(image_emb.to(model.device), text, torch.tensor(owner), ks)
    return {
        "task": "retrieval",
        "data": str(captions_file),
        "num_images": len(images),
        "num_captions": len(captions),
        **result,
    }
