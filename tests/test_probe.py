"""The class probe (rar.evaluation.probe) on synthetic features whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from rar.evaluation.probe import Probe, fit_probe


def blobs(seed: int, n_per_class: int, num_classes: int = 4, dim: int = 32, spread: float = 1.0):
    """Gaussian clusters around random unit-variance centres: (features, labels)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 3, (num_classes, dim))  # fixed centres
    labels = np.repeat(np.arange(num_classes), n_per_class)
    return centres[labels] + rng.normal(0, spread, (len(labels), dim)), labels


CLASSES = ("a", "b", "c", "d")


def test_separable_classes_are_classified_perfectly_on_held_out_rows():
    x, y = blobs(1, 50)
    probe = fit_probe(x, y, CLASSES)
    assert probe.train_accuracy == 1.0
    held_x, held_y = blobs(2, 30)  # new draws around the same centres
    assert probe.accuracy(held_x, held_y) == 1.0
    # Labels shifted by one class: nothing agrees.
    assert probe.accuracy(held_x, (held_y + 1) % 4) == 0.0


def test_features_without_class_information_score_near_chance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 16))
    y = rng.integers(0, 4, 400)
    probe = fit_probe(x, y, CLASSES)
    held = rng.normal(size=(2000, 16))
    acc = probe.accuracy(held, rng.integers(0, 4, 2000))
    assert abs(acc - 0.25) < 0.05  # chance is 1/4


def test_overlapping_classes_score_between_chance_and_one():
    """Two 1-d classes at -1 and +1 with unit noise: the Bayes rule x > 0 is right with
    probability Phi(1) = 0.841; a linear probe is that rule."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 4000)
    x = (2.0 * y - 1.0)[:, None] + rng.normal(size=(4000, 1))
    probe = fit_probe(x, y, ("neg", "pos"))
    y2 = rng.integers(0, 2, 20000)
    x2 = (2.0 * y2 - 1.0)[:, None] + rng.normal(size=(20000, 1))
    assert probe.accuracy(x2, y2) == pytest.approx(0.841, abs=0.01)


def test_deterministic_and_round_trips_through_arrays(tmp_path):
    x, y = blobs(5, 20)
    a, b = fit_probe(x, y, CLASSES), fit_probe(x, y, CLASSES)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.savez(tmp_path / "p.npz", **a.to_arrays())
    with np.load(tmp_path / "p.npz") as z:
        back = Probe.from_arrays(z)
    assert back.classes == CLASSES and back.num_train == 80
    np.testing.assert_array_equal(back.predict(x), a.predict(x))


def test_bad_inputs_are_refused():
    x, y = blobs(6, 5)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_probe(x, y, CLASSES[:2])
    probe = fit_probe(x, y, CLASSES)
    with pytest.raises(ValueError, match="labels"):
        probe.accuracy(x, y[:3])
