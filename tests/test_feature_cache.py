"""rar.evaluation.feature_cache: one computation per entry, unreadable entries replaced, the probe's
training subset."""

from __future__ import annotations

import numpy as np

from rar.evaluation.feature_cache import cached_npz, first_per_class


def test_an_entry_is_computed_once_then_read(tmp_path, capsys):
    cache, calls = tmp_path / "c" / "entry.npz", []

    def compute():
        calls.append(1)
        return "value", {"x": np.arange(3)}, "computed x"

    def read(z):
        return f"read {z['x'].tolist()}"

    assert cached_npz(cache, read, compute, what="x", verbose=True) == "value"
    assert cached_npz(cache, read, compute, what="x", verbose=True) == "read [0, 1, 2]"
    assert calls == [1]
    out = capsys.readouterr().out
    assert f"computed x, cached in {cache}" in out and f"x from cache {cache}" in out


def test_an_unreadable_entry_is_computed_again_and_replaced(tmp_path):
    cache = tmp_path / "entry.npz"
    cache.write_bytes(b"not an npz")
    value = cached_npz(
        cache, lambda z: z["x"], lambda: (1, {"x": np.ones(2)}, "x"), what="x", verbose=False
    )
    assert value == 1 and np.load(cache)["x"].tolist() == [1.0, 1.0]
    # An entry without the arrays `read` wants (KeyError) is replaced too.
    value = cached_npz(
        cache, lambda z: z["y"], lambda: (2, {"y": np.zeros(1)}, "y"), what="y", verbose=False
    )
    assert value == 2 and set(np.load(cache).files) == {"y"}
    # An entry cut short (a partial copy of a cache folder) is replaced too.
    cache.write_bytes(cache.read_bytes()[:60])
    value = cached_npz(
        cache, lambda z: z["y"], lambda: (3, {"y": np.ones(1)}, "y"), what="y", verbose=False
    )
    assert value == 3 and np.load(cache)["y"].tolist() == [1.0]


def test_first_per_class_keeps_the_first_images_of_each_class_in_order():
    labels = np.array([1, 0, 1, 1, 2, 0, 0, 2])
    assert first_per_class(labels, 3, 2) == [0, 1, 2, 4, 5, 7]
    assert first_per_class(labels, 3, 1) == [0, 1, 4]
