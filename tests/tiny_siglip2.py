"""Build a tiny, random, fully offline SigLIP2 checkpoint directory for tests.

The tokenizer is a real BPE tokenizer trained here on a few sentences (Gemma-style: lowercase,
spaces as "▁"), saved as the SigLIP2 tokenizer class where transformers has it, so
``AutoTokenizer.from_pretrained(DIR)`` treats it like a released SigLIP2 tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SENTENCES = (
    "a photo of a cat.",
    "a photo of a dog.",
    "a photo of a red square.",
    "a green circle and a blue stripe",
    "a cup of coffee on a table",
    "an astronaut in a white suit",
)
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_previous")
    tk.train_from_iterator(SENTENCES, trainers.BpeTrainer(special_tokens=SPECIALS, vocab_size=300))
    try:
        from transformers import Siglip2Tokenizer
    except ImportError:  # transformers 4.x: SigLIP2 used a Gemma tokenizer; any fast one will do
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(
            tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
        )
    model = json.loads(tk.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return Siglip2Tokenizer(vocab=model["vocab"], merges=merges)


def make_tiny_siglip2(
    directory: str | Path,
    *,
    hidden: int = 144,
    logit_scale: float | None = 2.5,
    logit_bias: float | None = -3.0,
    text_only: bool = False,
    seed: int = 0,
) -> Path:
    """Write config.json, model.safetensors and the tokenizer files into ``directory``.

    Args:
        directory: where to save (created).
        hidden: width of both towers (144 matches ``atoken-tiny``).
        logit_scale: stored log logit scale of the full model.
        logit_bias: stored logit bias of the full model.
        text_only: save a ``Siglip2TextModel`` (no vision tower, no logit parameters).
        seed: initialisation seed.
    """
    from transformers import Siglip2Config, Siglip2Model, Siglip2TextModel

    directory = Path(directory)
    tokenizer = _tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    vision = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_patches=16,
    )
    config = Siglip2Config(text_config=text, vision_config=vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if text_only:
            model = Siglip2TextModel(config.text_config)
        else:
            model = Siglip2Model(config)
            with torch.no_grad():
                model.logit_scale.fill_(logit_scale if logit_scale is not None else 0.0)
                model.logit_bias.fill_(logit_bias if logit_bias is not None else 0.0)
    from atoken.core.hf import quiet_transformers

    with quiet_transformers():  # transformers logs a check of its own default text config here
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory
