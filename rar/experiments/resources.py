"""What the paper study needs from outside: each file, where it comes from, how to recognise it.

One registry for `rar fetch` (what to download, from where, how to verify the bytes) and
`rar preflight` (whether what is on disk is the expected thing). Torch-free: the content checks
that load weights (`rar.ops.preflight`) import torch themselves; the ones here read only file
headers.

- `RESOURCES`: the released RAR generators (`rar_{b,l,xl,xxl}.bin`, Hugging Face
  `yucornetto/RAR`), the MaskGIT-VQGAN tokenizer of the same release (`fun-research/TiTok`),
  LlamaGen's VQ-16 tokenizer (`FoundationVision/LlamaGen`, the supplementary's Table 3),
  torch-fidelity's Inception weights (GitHub release; the file name carries the first 8 hex
  digits of its sha256, the torch.hub convention) and ADM's ImageNet 256 and 512 reference
  batches (openai/guided-diffusion's evaluation suite; 512: the supplementary's Table 2).
- `study_resources(config)`: the files a validated study config names (its paths may differ
  from the default names), each with the config key that names it, for messages that say
  which key to fix.
- `npz_arrays(path)`: names, shapes and dtypes of the arrays of an `.npz`, from the headers
  only (ADM's batch is 2 GB; its `arr_0` is never read to be checked).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HF_DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Resource:
    """One file the study may need.

    name: registry key ("rar_b", "maskgit_vqgan", "inception", "adm_reference").
    filename: its name in the release (and the default name in resources/).
    what: what it is, for messages.
    kind: how its content is checked: "rar" (a released generator of size `model`),
        "maskgit_vqgan", "llamagen_vq" (keys and shapes of the release's state dict),
        "inception" (sha256 prefix), "adm_reference" (arrays and shapes).
    hf_repo / hf_filename: where the Hugging Face Hub has it (downloaded through the hub's
        client); url: where anything else is (direct HTTP).
    sha256_prefix: leading hex digits of the file's sha256, when the release publishes them.
    """

    name: str
    filename: str
    what: str
    kind: str
    url: str = ""
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_revision: str = "main"
    sha256_prefix: str | None = None
    model: str | None = None
    image_size: int = 256  # kind "adm_reference": the side of its images

    def source_url(self, *, endpoint: str | None = None, mirror: str | None = None) -> str:
        """The URL the file is fetched from: the Hub's resolve URL (at `endpoint`, default
        $HF_ENDPOINT or huggingface.co) or the direct URL (its path under `mirror`, if given)."""
        if self.hf_repo:
            base = (endpoint or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
            return f"{base}/{self.hf_repo}/resolve/{self.hf_revision}/{self.hf_filename}"
        if mirror:
            path = self.url.split("://", 1)[1].split("/", 1)[1]
            return f"{mirror.rstrip('/')}/{path}"
        return self.url


def _rar(size: str) -> Resource:
    return Resource(
        name=f"rar_{size}",
        filename=f"rar_{size}.bin",
        what=f"the released RAR-{size.upper()} generator (a state dict in the official layout)",
        kind="rar",
        hf_repo="yucornetto/RAR",
        hf_filename=f"rar_{size}.bin",
        model=f"rar_{size}",
    )


RESOURCES: dict[str, Resource] = {
    **{f"rar_{s}": _rar(s) for s in ("b", "l", "xl", "xxl")},
    "maskgit_vqgan": Resource(
        name="maskgit_vqgan",
        filename="maskgit-vqgan-imagenet-f16-256.bin",
        what="the MaskGIT-VQGAN tokenizer of the RAR release (f16, codebook 1024)",
        kind="maskgit_vqgan",
        hf_repo="fun-research/TiTok",
        hf_filename="maskgit-vqgan-imagenet-f16-256.bin",
    ),
    "llamagen_vq16": Resource(
        name="llamagen_vq16",
        filename="vq_ds16_c2i.pt",
        what="LlamaGen's VQ-16 tokenizer (f16, codebook 16384 x 8, l2-normalised codes; "
        "RAR's supplementary Table 3)",
        kind="llamagen_vq",
        hf_repo="FoundationVision/LlamaGen",
        hf_filename="vq_ds16_c2i.pt",
    ),
    "inception": Resource(
        name="inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        what="torch-fidelity's Inception-v3 weights (FID Inception, 2015-12-05)",
        kind="inception",
        # torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (torch-fidelity 0.4)
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
        sha256_prefix="6726825d",  # torch.hub convention: the name ends in the sha256 prefix
    ),
    "adm_reference": Resource(
        name="adm_reference",
        filename="VIRTUAL_imagenet256_labeled.npz",
        what="ADM's ImageNet 256x256 reference batch (openai/guided-diffusion evaluations)",
        kind="adm_reference",
        url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/"
        "imagenet/256/VIRTUAL_imagenet256_labeled.npz",
    ),
    "adm_reference_512": Resource(
        name="adm_reference_512",
        filename="VIRTUAL_imagenet512.npz",
        what="ADM's ImageNet 512x512 reference batch (openai/guided-diffusion evaluations; "
        "RAR's supplementary Table 2)",
        kind="adm_reference",
        url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/"
        "imagenet/512/VIRTUAL_imagenet512.npz",
        image_size=512,
    ),
}

# A study's `tokenizer.name` -> the released tokenizer of the registry it loads.
RELEASED_TOKENIZERS = {"maskgit_vqgan": "maskgit_vqgan", "llamagen_vq16": "llamagen_vq16"}

# ADM's reference batch: images for precision/recall, Inception pool statistics for FID
# (guided-diffusion `evaluations/evaluator.py` reads arr_0, mu and sigma).
# arr_0's side (None here) is the batch's image size (`Resource.image_size`).
ADM_ARRAYS = {
    "arr_0": ((None, None, None, 3), "uint8"),  # N reference images (10,000 in the release)
    "mu": ((2048,), None),
    "sigma": ((2048, 2048), None),
}

# ImageNet-1k train split (ILSVRC-2012): 1,000 class folders, 1,281,167 images.
IMAGENET_CLASSES = 1000
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class Needed:
    """A resource a study names: the file, where the config names it, and the registry entry."""

    resource: Resource
    path: str
    key: str  # the config key that names the file ("official.rar_b.checkpoint")
    table: str | None = None  # the one table that needs it (None: every table)


def study_resources(config: dict) -> list[Needed]:
    """The files of the registry that a validated study config (`Study.config`) names.

    The tokenizers' weights unless the study trains its own (`RELEASED_TOKENIZERS`: a name
    of its own, such as a tokenizer trained elsewhere, is the user's to check); the Inception
    weights when the Inception extractor is used with a local file; the references that are an
    .npz (ADM's batches, by file name); the released checkpoints of `official:`. A file that
    a table's (or row's) `tokenizer:` or `evaluation:` names is that table's.
    """
    out: dict[str, Needed] = {}

    def need(resource: Resource, path: str, key: str, table: str | None = None) -> None:
        known = out.setdefault(path, Needed(resource, path, key, table))
        if known.table != table:  # needed by two tables, or by a table and the study
            out[path] = Needed(known.resource, path, known.key)

    def released(tok: dict, key: str, table: str | None = None) -> None:
        if "train" not in tok and tok["name"] in RELEASED_TOKENIZERS:
            need(RESOURCES[RELEASED_TOKENIZERS[tok["name"]]], tok["weights"], key, table)

    def reference(path: str, key: str, table: str | None = None) -> None:
        if path.endswith(".npz"):
            adm = [r for r in RESOURCES.values() if r.kind == "adm_reference"]
            by_name = [r for r in adm if r.filename == Path(path).name]
            need((by_name or adm)[0], path, key, table)

    released(config["tokenizer"], "tokenizer.weights")
    ev = config["evaluation"]
    if ev["extractor"] == "inception-v3-compat" and ev.get("weights"):
        need(RESOURCES["inception"], ev["weights"], "evaluation.weights")
    reference(ev.get("reference", ""), "evaluation.reference")
    for name, table in config.get("tables", {}).items():
        base = table.get("base") or {}
        parts = [(f"tables.{name}.base", {}, base)]
        parts += [(f"tables.{name}.rows[{i}]", base, r) for i, r in enumerate(table["rows"])]
        for where, under, part in parts:
            if "tokenizer" in part:
                tok = {**config["tokenizer"], **under.get("tokenizer", {}), **part["tokenizer"]}
                released(tok, f"{where}.tokenizer.weights", name)
            if "reference" in part.get("evaluation", {}):
                reference(part["evaluation"]["reference"], f"{where}.evaluation.reference", name)
    for name, spec in config.get("official", {}).items():
        if name in RESOURCES and RESOURCES[name].kind == "rar":
            key = f"official.{name}.checkpoint"
            need(RESOURCES[name], spec["checkpoint"], key, table="official")
    return list(out.values())


@dataclass(frozen=True)
class Missing:
    """Something a study needs from outside that is not where its config says."""

    path: str  # as the config names it (relative to the study's root, or absolute)
    line: str  # the config key, the path, what it is, how to get it
    file: bool  # a file a stage reads (an input of the workflow), not an image folder


def missing_resources(
    config: dict, root: str | os.PathLike = ".", tables: list[str] | None = None
) -> list[Missing]:
    """Everything a validated study needs from outside that is not where its config says: the
    images of a study that does not make its own (ImageNet's train split, and its validation
    split beside it), then the files of `study_resources`; with `tables`, only what those
    tables need (a released checkpoint serves the `official` table alone). Empty: nothing is
    missing. Existence only; `rar preflight` checks the content."""
    out = []
    data = config["data"]
    if "demo" not in data:
        train = data["images"]
        heldout = str(Path(train).parent / "val")  # as rar.experiments.image_dir
        for folder, what in (
            (train, "ImageNet's train split in class folders (<wnid>/<file>); link it there"),
            (
                heldout,
                "ImageNet's validation split in the same class-folder layout, beside the train "
                "split (the held-out NLL and the floor row)",
            ),
        ):
            if not (Path(root) / folder).is_dir():
                out.append(Missing(folder, f"data.images: {folder}: {what}", file=False))
    for needed in study_resources(config):
        if tables is not None and needed.table not in (None, *tables):
            continue
        if not (Path(root) / needed.path).is_file():
            line = (
                f"{needed.key}: {needed.path}: {needed.resource.what}; "
                f"`rar fetch --only {needed.resource.name}` puts it there"
            )
            out.append(Missing(needed.path, line, file=True))
    return out


def npz_arrays(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """{array name: (shape, dtype)} of an .npz, read from each member's .npy header only.

    Raises ValueError naming the file when it is not a zip of .npy files."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = {
                        (1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0,
                    }.get(version)
                    if read is None:
                        raise ValueError(f"{info.filename}: .npy format {version}")
                    shape, _, dtype = read(f)
                out[info.filename.removesuffix(".npy")] = (tuple(shape), str(dtype))
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz ({err})") from err
    return out


def adm_reference_problems(
    arrays: dict[str, tuple[tuple[int, ...], str]], image_size: int = 256
) -> list[str]:
    """What is wrong with an .npz's arrays for ADM's reference batch of `image_size` images
    (empty: nothing)."""
    problems = []
    for name, (shape, dtype) in ADM_ARRAYS.items():
        if name == "arr_0":
            shape = (None, image_size, image_size, 3)
        if name not in arrays:
            problems.append(f"no array {name!r}")
            continue
        found, found_dtype = arrays[name]
        fits = len(found) == len(shape) and all(
            want is None or want == got for want, got in zip(shape, found, strict=True)
        )
        if not fits:
            want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
            problems.append(f"{name} has shape {found}, expected {want}")
        if dtype is not None and found_dtype != dtype:
            problems.append(f"{name} is {found_dtype}, expected {dtype}")
    return problems


def count_images(folder: str | os.PathLike) -> tuple[int, int, list[str]]:
    """(class folders, image files, empty class folders) of an ImageNet-layout folder:
    <folder>/<wnid>/<file>. Only os.scandir: about 1,000 directory listings for ImageNet."""
    classes = images = 0
    empty = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.is_dir():
                continue
            classes += 1
            with os.scandir(entry.path) as files:
                n = sum(1 for f in files if f.name.lower().endswith(IMAGE_SUFFIXES))
            images += n
            if n == 0:
                empty.append(entry.name)
    return classes, images, empty


def describe(needed: Needed, *, endpoint: str | None = None, mirror: str | None = None) -> str:
    """One line for messages: the file, its URL, the config key."""
    url = needed.resource.source_url(endpoint=endpoint, mirror=mirror)
    return f"{needed.path} <- {url} (config key {needed.key})"
