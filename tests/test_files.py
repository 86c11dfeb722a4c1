"""rar.files: the byte-deterministic npz, and hashes of image folders (the same file list as
torch-fidelity's, keyed by content)."""

from __future__ import annotations

import re
import time
import zipfile

import numpy as np
import pytest
from helpers import picture

from rar.files import (
    StreamedArray,
    content_sha256,
    image_files,
    npz_members,
    open_npz_array,
    read_json,
    sha256_file,
    write_npz,
)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    picture(root / "b" / "1.png", 1)
    picture(root / "a" / "2.PNG", 2)
    picture(root / "a" / "deep" / "3.jpg", 3)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "c.png.txt").write_text("not an image")
    return root


def test_image_files_are_torch_fidelitys_list(folder):
    """The order of a folder's features, labels and hash is torch-fidelity's own listing."""
    from torch_fidelity.utils import glob_samples_paths

    files = image_files(folder)
    assert files == glob_samples_paths(str(folder), True, "png,jpg,jpeg", "jpg,jpeg", False)
    assert [f.rsplit("/", 1)[1] for f in files] == ["2.PNG", "3.jpg", "1.png"]


def test_image_files_of_a_folder_without_images_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        image_files(tmp_path)


def test_content_sha256_follows_names_and_contents_not_the_folder(folder, tmp_path):
    digest = content_sha256(folder)
    assert content_sha256(folder.rename(tmp_path / "moved")) == digest  # not the location
    moved = tmp_path / "moved"
    (moved / "b" / "1.png").rename(moved / "b" / "4.png")
    renamed = content_sha256(moved)
    assert renamed != digest
    picture(moved / "b" / "4.png", 9)
    assert content_sha256(moved) not in (digest, renamed)
    assert content_sha256(moved / "a" / "2.PNG") == sha256_file(moved / "a" / "2.PNG")


# ------------------------------------------------------------------------------------------
# The npz writer
# ------------------------------------------------------------------------------------------


def test_write_npz_is_byte_deterministic_and_readable(tmp_path, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(5, dtype=np.int64)
    parts = StreamedArray(images.shape, np.dtype(np.uint8), [images[:2], images[2:]])
    write_npz(tmp_path / "a.npz", {"arr_0": parts, "labels": labels})
    # np.savez would stamp the clock into the zip; ours must not care what time it is.
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    write_npz(tmp_path / "b.npz", {"arr_0": images, "labels": labels})
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # Two writes within one second match even when stamped; any clock (time.time above, or
    # the C library's that datetime and time.localtime() read) shows in the members' dates.
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert {m.date_time for m in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(tmp_path / "a.npz") as z:
        assert np.array_equal(z["arr_0"], images) and np.array_equal(z["labels"], labels)
    mapped = open_npz_array(tmp_path / "a.npz", "arr_0")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, images)
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)  # compressed: read, not mapped
    assert np.array_equal(open_npz_array(tmp_path / "c.npz", "arr_0"), images)
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_npz_rejects_a_short_stream(tmp_path):
    short = StreamedArray((4, 2), np.dtype(np.uint8), [np.zeros((3, 2), np.uint8)])
    with pytest.raises(ValueError, match="expected"):
        write_npz(tmp_path / "x.npz", {"arr_0": short})
    assert not (tmp_path / "x.npz").exists()


def test_an_npz_reader_names_the_file_that_is_no_archive(tmp_path):
    np.savez(tmp_path / "good.npz", arr_0=np.zeros(2), labels=np.ones(2))
    assert npz_members(tmp_path / "good.npz") == {"arr_0", "labels"}
    with pytest.raises(KeyError, match=r"good\.npz: no array 'images'"):
        open_npz_array(tmp_path / "good.npz", "images")
    bad = tmp_path / "samples.npz"
    bad.write_bytes((tmp_path / "good.npz").read_bytes()[:100])  # a copy cut short
    for read in (npz_members, lambda p: open_npz_array(p, "arr_0")):
        with pytest.raises(ValueError, match=f"^{re.escape(str(bad))}: not an \\.npz archive"):
            read(bad)


def test_read_json_names_the_file_that_is_not_json(tmp_path):
    (tmp_path / "metrics.json").write_text('{"fid": 2.5}')
    assert read_json(tmp_path / "metrics.json") == {"fid": 2.5}
    for damage in (b'{"fid": 2.', b"\xff\xfe"):  # cut short; not even text
        (tmp_path / "metrics.json").write_bytes(damage)
        with pytest.raises(ValueError, match=r"metrics\.json: not JSON \("):
            read_json(tmp_path / "metrics.json")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")
