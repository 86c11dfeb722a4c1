"""Image sets as torch-fidelity reads them, and what they say about themselves: an `.npz` of
images (`arr_0`, ours with `labels` and a `samples.json` beside it) or a folder of images (in
class folders, their folder is their label). The file order of a folder is rar.files's
`image_files`, the order of its features, its labels and its hash alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from rar.files import image_files, npz_members, open_npz_array


class NpzImages(torch.utils.data.Dataset):
    """Images of an `.npz` (`arr_0`: (N, H, W, 3) uint8, memory-mapped) as torch-fidelity
    wants them: item i -> (3, H, W) uint8 tensor."""

    def __init__(self, path: str | os.PathLike, key: str = "arr_0") -> None:
        self.images = open_npz_array(path, key)
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"{path}: {key} must be (N, H, W, 3) uint8 (ADM layout), got "
                f"{self.images.shape} {self.images.dtype}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1)))


def files_dataset(files: list[str]) -> torch.utils.data.Dataset:
    """Image files as a torch-fidelity input dataset of (3, H, W) uint8 tensors."""
    from torch_fidelity.datasets import ImagesPathDataset

    return ImagesPathDataset(files)


def images_dataset(path: str | os.PathLike) -> torch.utils.data.Dataset:
    """An `.npz` of images (`arr_0`) or a folder of images (searched recursively, all the same
    size) as a torch-fidelity input dataset of (3, H, W) uint8 tensors."""
    path = Path(path)
    if path.is_dir():
        return files_dataset(image_files(path))
    return NpzImages(path)


def npz_keys(path: Path) -> set[str]:
    """The arrays of an `.npz`; none for a folder."""
    return set() if path.is_dir() else npz_members(path)


def folder_classes(path: str | os.PathLike) -> list[str]:
    """The class names of a folder in the ImageNet train layout: its sub-folders, sorted (the
    class ids torchvision's ImageFolder and rar.data.images assign)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def folder_labels(path: str | os.PathLike, classes: list[str] | tuple[str, ...]) -> np.ndarray:
    """The class id of each image of a class-folder set, in `images_dataset`'s file order:
    the index in `classes` of the folder right under `path` that holds it. ValueError for an
    image outside a class folder or in a folder that is not a class."""
    root = os.path.realpath(path)  # image_files lists real paths
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for f in image_files(path):
        top = Path(os.path.relpath(f, root)).parts[0]
        if top not in index:
            raise ValueError(f"{f}: not in a folder named after one of the classes {classes}")
        labels.append(index[top])
    return np.asarray(labels, dtype=np.int64)


def samples_labels(samples: Path, classes: list[str] | None = None) -> np.ndarray | None:
    """The class each sample was generated for: `labels` of our npz; for a folder of real
    images in class folders (scored like samples, the table's floor row), the folder of each
    (ids as `classes`, default its own sorted sub-folders); None when neither says."""
    if samples.is_dir():
        classes = classes or folder_classes(samples)
        if not classes:
            return None
        return folder_labels(samples, classes)
    if "labels" not in npz_keys(samples):
        return None
    return np.asarray(open_npz_array(samples, "labels"))
