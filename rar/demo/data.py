"""Offline demo image set in the ImageNet train layout, made from scikit-image's bundled photos.

No ImageNet and no network here, so the demo study builds its own class-folder data set: each
class is one public-domain / CC0 photograph shipped inside the scikit-image wheel (only files
that load without pooch downloading anything), and its images are random crops of that photo
at different scales and positions, sometimes mirrored, resized to `image_size` pixels:

    <out>/train/<class>/<i>.png   images_per_class per class
    <out>/val/<class>/<i>.png     val_per_class per class (different random crops)
    <out>/test/<class>/<i>.png    test_per_class per class, when > 0 (other crops again)
    <out>/SOURCES.md, sources.json  photo names, licences, sources (credited in docs/demo.md)
    <out>/dataset.json            the parameters; marks the set complete

Deterministic: the same seed gives the same bytes (numpy's PCG64 draws, PIL's resampling and
PNG encoder on a given installation). Atomic and idempotent: built in a temporary folder
beside `out`, then renamed; a complete set with the same parameters is left alone.

The splits: the tokenizer and the models train on `train/`; `val/` is the FID reference
every evaluation scores against; `test/` is a second held-out set, disjoint from both, that
is scored against `val/` exactly as samples are (the tables' "real held-out images" row: the
FID floor, what a perfect generator would reach at that sample count). Make `test/` as large
as one evaluation's samples (the study's `num_per_class`), because FID falls with the sample
count. Each split draws from its own random stream, so adding `test/` leaves the bytes of
`train/` and `val/` unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rar.demo import CROP_SCALE


@dataclass(frozen=True)
class Photo:
    name: str  # class folder name and `skimage.data.<name>()` loader
    description: str
    licence: str
    source: str


# Colour photographs first, then greyscale ones (replicated to RGB), so the default 8 classes
# are the 7 colour photos plus `camera`. Licences as stated in each loader's docstring
# (skimage/data/__init__.py). Left out: images with no licence statement (moon, page), the
# Middlebury motorcycle pair (benchmark terms), drawings and synthetic images.
PHOTOS: tuple[Photo, ...] = (
    Photo(
        "astronaut",
        "Eileen Collins, NASA astronaut",
        "public domain (NASA; no known copyright restrictions)",
        "NASA Great Images, https://flic.kr/p/r9qvLn",
    ),
    Photo(
        "chelsea",
        "Chelsea the cat",
        "CC0 (photographer Stefan van der Walt)",
        "scikit-image",
    ),
    Photo(
        "coffee",
        "Coffee cup, Pikolo Espresso Bar",
        "CC0 (photographer Rachel Michetti)",
        "scikit-image",
    ),
    Photo(
        "hubble_deep_field",
        "Hubble eXtreme Deep Field",
        "public domain (NASA)",
        "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/",
    ),
    Photo(
        "immunohistochemistry",
        "Colonic glands, IHC staining with hematoxylin counterstaining",
        "no known copyright restrictions (CMMI)",
        "Center for Microscopy And Molecular Imaging (CMMI)",
    ),
    Photo(
        "retina",
        "Fundus photograph of a normal left eye",
        "CC0 1.0 (Mikael Häggström)",
        "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg",
    ),
    Photo(
        "rocket",
        "Launch of DSCOVR on a Falcon 9",
        "public domain (SpaceX)",
        "https://www.flickr.com/photos/spacexphotos/16511594820/",
    ),
    Photo(
        "camera",
        "Photographer with a camera (greyscale)",
        "CC0 (photographer Lav Varshney)",
        "scikit-image",
    ),
    Photo(
        "coins",
        "Greek coins from Pompeii (greyscale)",
        "no known copyright restrictions",
        "Brooklyn Museum, https://www.brooklynmuseum.org/opencollection/archives/image/51611",
    ),
    Photo(
        "brick",
        "Brick wall (greyscale)",
        "CC0",
        "CC0Textures, https://cc0textures.com/view.php?tex=Bricks25",
    ),
    Photo(
        "grass",
        "Grass (greyscale)",
        "CC0",
        "DeviantArt, https://www.deviantart.com/linolafett/art/Grass-01-434853879",
    ),
    Photo(
        "gravel",
        "Gravel (greyscale)",
        "CC0",
        "CC0Textures, https://cc0textures.com/view.php?tex=Gravel04",
    ),
    Photo(
        "clock",
        "Motion-blurred wall clock (greyscale)",
        "public domain (photographer Stefan van der Walt)",
        "scikit-image",
    ),
    Photo(
        "cell",
        "Cell floating in saline, quantitative phase image (greyscale)",
        "CC0 (Müller et al. 2018, doi:10.1364/OE.26.010729)",
        "scikit-image",
    ),
    Photo(
        "text",
        "Text image used for corner detection (greyscale)",
        "public domain",
        "https://en.wikipedia.org/wiki/File:Corner.png",
    ),
)

FLIP_P = 0.5


def _load_photo(name: str, work_side: int) -> Image.Image:
    """A bundled skimage photo as RGB, pre-shrunk so its short side is `work_side` (makes the
    per-crop resize cheap; crops of >= 0.125 x the short side still downsample)."""
    import skimage.data  # optional dependency: only the demo needs it

    arr = getattr(skimage.data, name)()
    img = Image.fromarray(arr).convert("RGB")
    scale = work_side / min(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    return img


def _crops(
    photo: Image.Image,
    n: int,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
) -> list[Image.Image]:
    w, h = photo.size
    out = []
    for _ in range(n):
        side = int(min(w, h) * rng.uniform(*scale))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
        crop = photo.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
        if rng.random() < FLIP_P:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(crop)
    return out


def _sources_md(photos: list[Photo]) -> str:
    lines = [
        "# Demo image set: sources",
        "",
        "Each class is one photograph bundled with scikit-image (`skimage.data`); its images",
        "are random crops of it. Licences as stated by scikit-image.",
        "",
        "| class | photograph | licence | source |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {p.name} | {p.description} | {p.licence} | {p.source} |" for p in photos]
    return "\n".join(lines) + "\n"


def make_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 8,
    images_per_class: int = 500,
    val_per_class: int = 50,
    test_per_class: int = 0,
    image_size: int = 32,
    crop_scale: tuple[float, float] = CROP_SCALE,
    seed: int = 0,
) -> Path:
    """Build (or find) the demo image set; returns `out_dir`.

    num_classes: 1..len(PHOTOS) (15) distinct photographs, in PHOTOS order.
    images_per_class / val_per_class / test_per_class: PNGs per class in train/, val/ and
        test/ (none: no test/ folder).
    image_size: side in pixels (32 or 64 for the demo tokenizers).
    crop_scale: (min, max) side of a crop as a fraction of the photo's short side, in
        (0.125, 1]: small values make a class a varied set of details of its photo, values
        near 1 a set of near-whole views (easier to learn, easier to recognise).
    """
    lo, hi = (float(v) for v in crop_scale)
    if not 0.125 <= lo <= hi <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0.125 <= min <= max <= 1, got {crop_scale}")
    if not 1 <= num_classes <= len(PHOTOS):
        raise ValueError(f"num_classes must be in 1..{len(PHOTOS)}, got {num_classes}")
    out = Path(out_dir)
    params = {
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "val_per_class": val_per_class,
        "image_size": image_size,
        "seed": seed,
    }
    if test_per_class:  # absent when 0, so sets made before test/ existed stay complete
        params["test_per_class"] = test_per_class
    if (lo, hi) != CROP_SCALE:  # likewise absent at the default
        params["crop_scale"] = [lo, hi]
    if _is_complete(out, params):
        print(f"demo data set {out} is complete, nothing to do", flush=True)
        return out

    t0 = time.perf_counter()
    photos = list(PHOTOS[:num_classes])
    splits = {"train": images_per_class, "val": val_per_class, "test": test_per_class}
    _write_atomically(out, params, photos, splits, image_size, (lo, hi))
    n = num_classes * (images_per_class + val_per_class + test_per_class)
    print(f"wrote demo data set {out}: {n} images in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def _is_complete(out: Path, params: dict) -> bool:
    """True when `out` already holds the set `params` describes; an error when it holds
    anything else (another set, or a partial one), which is never overwritten."""
    marker = out / "dataset.json"
    if marker.exists():
        found = json.loads(marker.read_text()).get("params")
        if found == params:
            return True
        raise FileExistsError(f"{out} holds a demo set with other parameters {found}; remove it")
    # An empty folder is fine (Snakemake makes an output's folder before the job runs): the
    # final rename replaces it.
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists but is not a complete demo set; remove it")
    return False


def _write_atomically(
    out: Path,
    params: dict,
    photos: list[Photo],
    splits: dict[str, int],
    image_size: int,
    crop_scale: tuple[float, float],
) -> None:
    """Write every split's crops, the sources and the marker into a temporary sibling folder,
    then rename it to `out` in one step: a set is either complete or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        work_side = 8 * image_size  # a crop of >= 0.125 x the short side still downsamples
        for c, photo in enumerate(photos):
            img = _load_photo(photo.name, work_side)
            for split_id, (split, n) in enumerate(splits.items()):
                if split == "test" and not n:
                    continue
                # One stream per (seed, class, split): a class's images do not depend on how
                # many classes or images of the other split are made.
                rng = np.random.default_rng([params["seed"], c, split_id])
                folder = tmp / split / photo.name
                folder.mkdir(parents=True)
                for i, crop in enumerate(_crops(img, n, image_size, rng, crop_scale)):
                    crop.save(folder / f"{i}.png", format="PNG", optimize=False)
        (tmp / "SOURCES.md").write_text(_sources_md(photos))
        (tmp / "sources.json").write_text(
            json.dumps([asdict(p) for p in photos], indent=1, ensure_ascii=False) + "\n"
        )
        (tmp / "dataset.json").write_text(
            json.dumps({"params": params, "classes": [p.name for p in photos]}, indent=1) + "\n"
        )
        try:
            os.replace(tmp, out)  # atomic on the same filesystem
        except OSError:
            # Another process finished the same set first: theirs is as good as ours.
            if json.loads((out / "dataset.json").read_text()).get("params") != params:
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
