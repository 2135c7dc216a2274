"""Real sample photos shipped inside PyPI packages, found by path (no downloads).

scikit-image bundles a few public-domain / CC0 photos in ``skimage/data``; they serve as the
embedded default data of the demo and, later, of training runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from atoken.core.errors import AtokenError

#: colour photos bundled with scikit-image (file name -> short description)
SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut.png": "astronaut Eileen Collins, 512x512 (NASA, public domain)",
    "coffee.png": "cup of coffee, 400x600 (CC0)",
    "chelsea.png": "Chelsea the cat, 300x451 (CC0)",
    "rocket.jpg": "rocket on the launch pad, 427x640 (NASA, public domain)",
    "motorcycle_left.png": "motorcycle (stereo pair, left), 500x741",
    "hubble_deep_field.jpg": "Hubble deep field, 872x1000 (NASA, public domain)",
    "ihc.png": "immunohistochemistry stain, 512x512",
}


class SampleDataMissing(AtokenError, FileNotFoundError):
    """The package that ships the sample photos is not installed."""


def skimage_data_dir() -> Path:
    """``skimage/data`` of the installed scikit-image (located without importing skimage)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise SampleDataMissing(
            "the sample photos come from scikit-image, which is not installed;"
            " run: pip install -c constraints.txt 'atoken[samples]'"
        )
    return Path(spec.origin).parent / "data"


def sample_photos(names: list[str] | None = None) -> list[Path]:
    """Paths of the bundled photos (all of `SKIMAGE_PHOTOS` that exist, or the ``names`` given)."""
    root = skimage_data_dir()
    wanted = list(SKIMAGE_PHOTOS) if names is None else names
    paths = [root / n for n in wanted]
    missing = [p.name for p in paths if not p.is_file()]
    if names is not None and missing:
        raise SampleDataMissing(f"scikit-image at {root} lacks sample photo(s) {missing}")
    return [p for p in paths if p.is_file()]
