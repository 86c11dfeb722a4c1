"""Offline demo image set: layout, counts, determinism, idempotence, licences."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar.demo.data import PHOTOS, make_demo_dataset

SMALL = dict(num_classes=3, images_per_class=6, val_per_class=2, image_size=16, seed=3)


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "images", **SMALL)


def test_layout_and_counts(demo):
    names = [p.name for p in PHOTOS[:3]]
    for split, n in (("train", 6), ("val", 2)):
        assert sorted(p.name for p in (demo / split).iterdir()) == sorted(names)
        for name in names:
            files = sorted((demo / split / name).iterdir())
            assert [f.name for f in files] == sorted(f"{i}.png" for i in range(n))
            img = Image.open(files[0])
            assert img.size == (16, 16) and img.mode == "RGB"
    assert not list(demo.parent.glob(".images.tmp-*"))  # the temporary folder is gone


def test_sources_recorded(demo):
    sources = json.loads((demo / "sources.json").read_text())
    assert [s["name"] for s in sources] == [p.name for p in PHOTOS[:3]]
    assert all(s["licence"] for s in sources)
    md = (demo / "SOURCES.md").read_text()
    assert all(p.name in md for p in PHOTOS[:3])


def test_deterministic_and_seed_dependent(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", **SMALL)
    assert _tree(again) == _tree(demo)
    other = make_demo_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    a, b = _tree(other), _tree(demo)
    assert a.keys() == b.keys()
    assert a["train/astronaut/0.png"] != b["train/astronaut/0.png"]


def test_idempotent_and_refuses_other_params(demo):
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*.png")}
    assert make_demo_dataset(demo, **SMALL) == demo
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*.png")} == before
    with pytest.raises(FileExistsError, match="other parameters"):
        make_demo_dataset(demo, **{**SMALL, "images_per_class": 7})


def test_test_split_is_disjoint_and_leaves_train_and_val_alone(demo, tmp_path):
    """test/ (the tables' real held-out row) is a third set of crops: adding it changes no
    byte of train/ or val/, and its images are none of theirs."""
    with_test = make_demo_dataset(tmp_path / "t", **SMALL, test_per_class=4)
    tree, old = _tree(with_test), _tree(demo)
    assert {k: v for k, v in tree.items() if k.startswith(("train/", "val/"))} == {
        k: v for k, v in old.items() if k.startswith(("train/", "val/"))
    }
    test = {k: v for k, v in tree.items() if k.startswith("test/")}
    assert len(test) == 3 * 4
    assert not set(test.values()) & {v for k, v in tree.items() if not k.startswith("test/")}
    params = json.loads((with_test / "dataset.json").read_text())["params"]
    assert params["test_per_class"] == 4
    # A set made without test/ keeps its parameters (no test_per_class key): still complete.
    assert "test_per_class" not in json.loads((demo / "dataset.json").read_text())["params"]
    assert make_demo_dataset(demo, **SMALL, test_per_class=0) == demo


def test_photos_are_bundled_offline():
    # Every listed photo must load from the wheel (pooch would need the network otherwise).
    import skimage.data

    for p in PHOTOS:
        arr = getattr(skimage.data, p.name)()
        assert arr.ndim in (2, 3) and min(arr.shape[:2]) >= 100
    with pytest.raises(ValueError, match="num_classes"):
        make_demo_dataset("unused", num_classes=len(PHOTOS) + 1)


def test_demo_set_tokenizes_and_streams(demo, tmp_path):
    import torch

    from rar.data import TokenShards, tokenize_images, verify_shards
    from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

    cfg = MaskGITVQGANConfig(hidden_channels=32, image_size=64, z_channels=32, codebook_size=64)
    tok = MaskGITVQGAN(cfg).eval()
    out = tmp_path / "tokens"
    summary = tokenize_images(
        demo / "train",
        out,
        tokenizer=tok,
        crop="center",
        images_per_part=9,
        num_workers=0,
        progress=False,
    )
    assert summary["num_unreadable"] == 0 and verify_shards(out).ok
    ds = TokenShards(out, batch_size=5, with_keys=True)
    keys = [k for _, _, ks in ds.iter_unit(worker=0, num_workers=1) for k in ks]
    assert len(keys) == len(set(keys)) == 18
    tokens, labels, _ = next(iter(ds))
    assert tokens.shape == (5, 16) and labels.dtype == torch.int64


def test_crop_scale_bounds_the_crops_and_is_part_of_the_set(demo, tmp_path):
    """crop_scale (min, max) of the short side: a whole-photo crop is the photo itself, and a
    set made with another range is another set (never mistaken for the default one)."""
    whole = make_demo_dataset(tmp_path / "whole", **SMALL, crop_scale=(1.0, 1.0))
    params = json.loads((whole / "dataset.json").read_text())["params"]
    assert params["crop_scale"] == [1.0, 1.0]
    assert "crop_scale" not in json.loads((demo / "dataset.json").read_text())["params"]

    # every crop of the full short side of a square-ish photo: the same picture, maybe mirrored
    def unlike(root: Path) -> float:  # two crops' mean pixel difference, mirroring allowed
        a, b = (np.asarray(Image.open(root / "train/chelsea" / f"{i}.png"), float) for i in (0, 1))
        return min(np.abs(a - b).mean(), np.abs(a[:, ::-1] - b).mean())

    details = make_demo_dataset(tmp_path / "details", **SMALL, crop_scale=(0.3, 0.3))
    # whole views differ only by their position along the long side; details differ in content
    # (measured: 20 against 37)
    assert unlike(whole) < 0.75 * unlike(details)
    with pytest.raises(FileExistsError, match="other parameters"):
        make_demo_dataset(demo, **SMALL, crop_scale=(0.5, 1.0))
    with pytest.raises(ValueError, match="crop_scale"):
        make_demo_dataset(tmp_path / "bad", **SMALL, crop_scale=(0.9, 0.5))
