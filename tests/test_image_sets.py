"""rar.evaluation.image_sets: what an image set says about itself (labels, samples.json), as
torch-fidelity reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import picture

from rar.evaluation.image_sets import NpzImages, folder_labels, images_dataset, samples_labels
from rar.experiments.results import read_samples_info
from rar.files import write_npz


def test_a_folders_labels_are_its_class_folders_in_file_order(tmp_path):
    for name, value in (("b/1.png", 1), ("a/x/2.png", 2), ("b/0.png", 3)):
        picture(tmp_path / "real" / name, value)
    real = tmp_path / "real"
    assert samples_labels(real).tolist() == [0, 1, 1]  # a/x/2.png, b/0.png, b/1.png
    assert samples_labels(real, ["z", "a", "b"]).tolist() == [1, 2, 2]  # the probe's ids
    dataset = images_dataset(real)
    assert [int(dataset[i][0, 0, 0]) for i in range(3)] == [2, 3, 1]  # the same order
    picture(real / "stray.png", 4)
    with pytest.raises(ValueError, match=r"stray\.png: not in a folder"):
        folder_labels(real, ["a", "b"])
    assert samples_labels(tmp_path / "real" / "a" / "x") is None  # no class folders


def test_an_npz_gives_its_labels_and_its_samples_json(tmp_path):
    images = np.zeros((3, 4, 4, 3), np.uint8)
    write_npz(tmp_path / "s.npz", {"arr_0": images, "labels": np.array([2, 0, 1])})
    write_npz(tmp_path / "bare.npz", {"arr_0": images})
    assert samples_labels(tmp_path / "s.npz").tolist() == [2, 0, 1]
    assert samples_labels(tmp_path / "bare.npz") is None
    assert read_samples_info(tmp_path / "s.npz") == {}
    (tmp_path / "s.json").write_text(json.dumps({"seed": 3}))
    assert read_samples_info(tmp_path / "s.npz") == {"seed": 3}
    item = NpzImages(tmp_path / "s.npz")[0]
    assert item.shape == (3, 4, 4) and item.dtype == torch.uint8
    write_npz(tmp_path / "gray.npz", {"arr_0": np.zeros((3, 4, 4), np.uint8)})
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        NpzImages(tmp_path / "gray.npz")
