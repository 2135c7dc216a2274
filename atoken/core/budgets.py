"""Resource budgets checked from headers before anything large is allocated.

Each budget has a default sized for a workstation, an environment variable that overrides it for
every command and API call, and (where a caller has one) an explicit argument that wins over
both. Going over a budget is an `InputError` that names the budget and how to raise it.

- ``ATOKEN_MAX_PIXELS`` (default 2**26 = 67,108,864, e.g. 8192 x 8192): pixels of one image or
  frame that is read or decoded. Reading an 8-bit RGB image peaks at about 20 bytes per pixel.
- ``ATOKEN_MAX_TOKENS`` (default 2**18 = 262,144, i.e. ``max_pixels`` / 256): tokens decoded in
  one pass (a latents file decoded whole; one latent frame when decoding streams). Decoding
  holds ``tokens x 3072`` float32 patch values (12 KiB per token) plus the decoder's activations.
- ``ATOKEN_MAX_MODEL_BYTES`` (default 2**34 = 16 GiB): float32 bytes of the parameters a model
  directory's ``config.json`` implies.
"""

from __future__ import annotations

import os

from atoken.core.errors import InputError

DEFAULT_MAX_PIXELS = 2**26
DEFAULT_MAX_TOKENS = 2**18
DEFAULT_MAX_MODEL_BYTES = 2**34

PIXELS_ENV = "ATOKEN_MAX_PIXELS"
TOKENS_ENV = "ATOKEN_MAX_TOKENS"
MODEL_BYTES_ENV = "ATOKEN_MAX_MODEL_BYTES"


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    try:
        number = int(str(value).strip().replace("_", ""), 0) if isinstance(value, str) else value
    except ValueError:
        raise InputError(f"{what} must be a positive integer, got {value!r}") from None
    if not isinstance(number, int) or number < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return number


def _budget(env: str, default: int, override: int | None) -> int:
    if override is not None:
        return _positive_int(override, "a budget override")
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    return _positive_int(raw, f"environment variable {env}")


def max_pixels(override: int | None = None) -> int:
    """Pixel budget of one image or frame: ``override``, else ``$ATOKEN_MAX_PIXELS``, else 2**26."""
    return _budget(PIXELS_ENV, DEFAULT_MAX_PIXELS, override)


def max_tokens(override: int | None = None) -> int:
    """Token budget of one decoding pass: ``override``, else ``$ATOKEN_MAX_TOKENS``, else 2**18."""
    return _budget(TOKENS_ENV, DEFAULT_MAX_TOKENS, override)


def max_model_bytes(override: int | None = None) -> int:
    """Parameter-byte budget of a model: ``override``, else ``$ATOKEN_MAX_MODEL_BYTES``, else 16 GiB."""
    return _budget(MODEL_BYTES_ENV, DEFAULT_MAX_MODEL_BYTES, override)


def human_bytes(n: int | float) -> str:
    """``17179869184`` -> ``'16.0 GiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"
