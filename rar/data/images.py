"""Source images: the class-folder listing, robust decoding, and the three crop modes.

Everything here is torch-free and works on PIL images / uint8 arrays, so the crop geometry can
be tested against hand-computed boxes and reused by the tokenize workers.

Crop modes (`CROP_MODES`, entries per source image in brackets, `CROPS_PER_IMAGE`):
- `center` [1]: ADM's `center_crop_arr` to the tokenizer's image size (DiT, MAR, RAR eval).
- `center+flip` [2]: that crop and its horizontal mirror: the default of the official
  pretokenization script (bytedance/1d-tokenizer `scripts/pretokenization.py`).
- `tencrop` [10]: ADM center crop to `int(1.1 * size)` (281 for 256), then torchvision's
  `TenCrop(size)`: the four corners and the centre, then the same five of the mirrored image
  (`--ten_crop` of that script, "augmentation following LlamaGen"; the released RAR data).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rar.settings.presets import CROP_MODES

log = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS, compared case-insensitively as ImageFolder does.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Crops per source image of each mode (CROP_MODES, rar.settings.presets: the one list of the modes).
CROPS_PER_IMAGE: dict[str, int] = dict(zip(CROP_MODES, (1, 2, 10), strict=True))

# Official pretokenization script: `crop_size = int(args.img_size * 1.1)` -> 281 for 256.
TENCROP_MARGIN = 1.1


@dataclass(frozen=True)
class SourceImage:
    """One source file: `relpath` is `<wnid>/<file>` relative to the image folder."""

    relpath: str
    label: int
    key: str  # unique, dot-free sample key prefix: `<wnid>_<stem>`


# ------------------------------------------------------------------------------------------
# listing
# ------------------------------------------------------------------------------------------


def _sanitize(name: str) -> str:
    # WebDataset splits a member name at its first dot into key and extension, so keys may
    # contain no dots; keep them shell- and URL-safe as well.
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def list_images(image_dir: str | os.PathLike) -> tuple[list[str], list[SourceImage]]:
    """List an ImageNet-train-layout folder `image_dir/<wnid>/<file>`.

    Class ids are the sorted wnids, as torchvision's `ImageFolder` assigns them; files are
    sorted by name within a class. Returns `(classes, images)` in that (class, name) order.
    Keys are `<wnid>_<stem>` with dots replaced; a rare collision (`a.jpg` and `a.png`) keeps
    the extension in the key so keys stay unique.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/<wnid>/<file>)")
    images: list[SourceImage] = []
    seen: set[str] = set()
    for label, wnid in enumerate(classes):
        names = sorted(
            e.name
            for e in os.scandir(root / wnid)
            if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)
        )
        for name in names:
            stem, ext = os.path.splitext(name)
            key = _sanitize(f"{wnid}_{stem}")
            if key in seen:
                key = _sanitize(f"{wnid}_{stem}_{ext.lstrip('.')}")
            if key in seen:
                raise ValueError(f"cannot make a unique key for {wnid}/{name}")
            seen.add(key)
            images.append(SourceImage(relpath=f"{wnid}/{name}", label=label, key=key))
    if not images:
        raise ValueError(f"{root} has class folders but no image files ({IMG_EXTENSIONS})")
    return classes, images


# ------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode any PIL-readable file (CMYK / grayscale / palette JPEG or PNG) to RGB.

    Same conversion as torchvision's `pil_loader` (alpha is dropped, not composited), so the
    crops match the official script's. Raises OSError / ValueError for unreadable files; the
    caller counts them.
    """
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()  # decode now, inside the `with`, so a truncated file fails here
    return img if img.mode == "RGB" else img.convert("RGB")


# ------------------------------------------------------------------------------------------
# crop geometry (pure functions of the image size)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CenterCropPlan:
    """ADM center crop as sizes: `(w, h)` after the BOX halvings, after the BICUBIC resize, and
    the final `(left, top, right, bottom)` box in the resized image."""

    downsampled: tuple[int, int]
    resized: tuple[int, int]
    box: tuple[int, int, int, int]


def center_crop_plan(width: int, height: int, size: int) -> CenterCropPlan:
    """Geometry of guided-diffusion's `center_crop_arr(pil_image, size)` for a `width x height`
    image: while the short side is >= 2*size halve both sides (BOX, floor), then scale so the
    short side is `size` (BICUBIC, Python `round` of each side), then crop the centre (floor).
    """
    w, h = width, height
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
    downsampled = (w, h)
    scale = size / min(w, h)
    rw, rh = round(w * scale), round(h * scale)
    left, top = (rw - size) // 2, (rh - size) // 2
    return CenterCropPlan(downsampled, (rw, rh), (left, top, left + size, top + size))


def center_crop_arr(img: Image.Image, size: int) -> np.ndarray:
    """ADM center crop of a PIL RGB image -> (size, size, 3) uint8 array.

    Adapted from: openai/guided-diffusion `guided_diffusion/image_datasets.py` (center_crop_arr).
    """
    plan = center_crop_plan(img.width, img.height, size)
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    img = img.resize(plan.resized, resample=Image.BICUBIC)
    left, top, right, bottom = plan.box
    return np.asarray(img)[top:bottom, left:right]


def tencrop_boxes(big: int, size: int) -> list[tuple[int, int, int, int]]:
    """The five `(left, top, right, bottom)` boxes of torchvision's `five_crop(img, size)` on a
    `big x big` image, in its order: top-left, top-right, bottom-left, bottom-right, centre.
    The centre offset is `int(round((big - size) / 2))` (torchvision's `center_crop`, Python's
    round-half-even), which can differ from ADM's floor by one pixel."""
    if size > big:
        raise ValueError(f"crop {size} larger than image {big}")
    c = round((big - size) / 2.0)
    e = big - size
    return [
        (0, 0, size, size),
        (e, 0, big, size),
        (0, e, size, big),
        (e, e, big, big),
        (c, c, c + size, c + size),
    ]


def make_crops(img: Image.Image, mode: str, size: int) -> np.ndarray:
    """All crops of one RGB image for a crop mode -> (K, size, size, 3) uint8,
    K = CROPS_PER_IMAGE[mode].

    Crop index k is the `crop` recorded per sample: `center` 0; `center+flip` 0 crop, 1 its
    mirror; `tencrop` 0-4 five_crop of the 1.1x center crop, 5-9 five_crop of its mirror
    (torchvision `ten_crop` order).
    """
    if mode == "center":
        return center_crop_arr(img, size)[None]
    if mode == "center+flip":
        arr = center_crop_arr(img, size)
        return np.stack([arr, arr[:, ::-1]])
    if mode == "tencrop":
        big = int(size * TENCROP_MARGIN)
        arr = center_crop_arr(img, big)
        out = []
        for src in (arr, arr[:, ::-1]):
            for left, top, right, bottom in tencrop_boxes(big, size):
                out.append(src[top:bottom, left:right])
        return np.stack(out)
    raise ValueError(f"unknown crop mode {mode!r}; choose from {sorted(CROP_MODES)}")
