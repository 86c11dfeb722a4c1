"""The numbers of a sample set's features (rar.metrics): torch-fidelity's metrics under our
names, the FID's bootstrap interval, the comparability to the paper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics

from rar.extractors import INCEPTION_SHA256_PREFIX
from rar.metrics import (
    FidBootstrap,
    comparability,
    fid_bootstrap,
    fid_of_statistics,
    inception_score,
    named_metrics,
)
from rar.presets import EXTRACTORS

# ------------------------------------------------------------------------------------------
# Bookkeeping
# ------------------------------------------------------------------------------------------


def test_comparability_lists_every_departure_from_the_paper():
    paper = dict(
        extractor="inception-v3-compat",
        weights_sha256=INCEPTION_SHA256_PREFIX + "0" * 56,
        num_samples=50_000,
        labels=np.repeat(np.arange(1000), 50),
        image_size=(256, 256),
        fid_reference="reference_npz_mu_sigma",
    )
    assert comparability(**paper) == []
    assert len(comparability(**{**paper, "num_samples": 10_000})) == 1
    assert len(comparability(**{**paper, "labels": np.repeat(np.arange(500), 100)})) == 1
    assert len(comparability(**{**paper, "labels": None})) == 1
    assert len(comparability(**{**paper, "fid_reference": "reference_images"})) == 1
    assert len(comparability(**{**paper, "extractor": "efficientnet-lite0"})) == 1
    assert set(EXTRACTORS) == {"inception-v3-compat", "efficientnet-lite0"}


# ------------------------------------------------------------------------------------------
# FID error bars: the bootstrap
# ------------------------------------------------------------------------------------------


def _tf_fid(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> float:
    """torch-fidelity's FID of `features` against fixed statistics."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    stats = fid_features_to_statistics(torch.from_numpy(features))
    stats = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
    ref = {"mu": ref_mu, "sigma": ref_sigma}
    return fid_statistics_to_metric(stats, ref, False)["frechet_inception_distance"]


@pytest.mark.parametrize("n, d", [(200, 8), (30, 50)])  # the D x D and the n x n paths
def test_bootstrap_resamples_are_exact_fids_of_resampled_sets(n, d):
    """A resample's weighted FID equals torch-fidelity's FID of the resampled rows, in both
    of FidBootstrap's paths (fewer distinct samples than dimensions, and more)."""
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(n, d)) + 0.3).astype(np.float32)
    r = rng.normal(size=(300, d))
    mu, sigma = r.mean(0), np.cov(r, rowvar=False)
    boot = FidBootstrap(x, mu, sigma)
    assert boot.fid() == pytest.approx(_tf_fid(x, mu, sigma), rel=1e-6)
    for _ in range(3):
        idx = rng.integers(0, n, n)
        counts = np.bincount(idx, minlength=n)
        assert boot.fid(counts) == pytest.approx(_tf_fid(x[idx], mu, sigma), rel=1e-6)


def test_bootstrap_interval_covers_the_true_fid_at_the_nominal_rate():
    """Samples from N(m, I) against the exact reference N(0, I): the true FID is |m|^2 = 1.
    Over independent sample sets the 95% interval covers it about 95% of the time, and it
    narrows as 1 / sqrt(N)."""
    d, n, m = 4, 400, np.full(4, 0.5)
    mu, sigma = np.zeros(d), np.eye(d)
    rng = np.random.default_rng(11)
    covered, widths = 0, []
    trials = 40
    for t in range(trials):
        x = rng.normal(size=(n, d)) + m
        ci = fid_bootstrap(x, mu, sigma, resamples=200, seed=t)
        covered += ci["fid_ci_low"] <= 1.0 <= ci["fid_ci_high"]
        widths.append(ci["fid_ci_high"] - ci["fid_ci_low"])
    assert covered >= 0.85 * trials  # 95% nominal; 40 trials leave some slack
    # The spread of the estimate itself: sd(|mean|^2) ~ 2 |m| / sqrt(N) = 0.1, so the 95%
    # interval is ~0.4 wide.
    assert 0.25 < np.median(widths) < 0.6
    big = fid_bootstrap(rng.normal(size=(4 * n, d)) + m, mu, sigma, resamples=200)
    assert 1.4 < np.median(widths) / (big["fid_ci_high"] - big["fid_ci_low"]) < 2.8


def test_bootstrap_is_seeded_and_says_its_method():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    a = fid_bootstrap(x, np.zeros(6), np.eye(6), resamples=50, seed=1)
    b = fid_bootstrap(x, np.zeros(6), np.eye(6), resamples=50, seed=1)
    c = fid_bootstrap(x, np.zeros(6), np.eye(6), resamples=50, seed=2)
    assert (a["fid_ci_low"], a["fid_ci_high"]) == (b["fid_ci_low"], b["fid_ci_high"])
    assert a["fid_ci_low"] != c["fid_ci_low"]
    assert "50 resamples" in a["fid_ci_method"] and a["fid_ci_level"] == 0.95
    assert a["fid_ci_low"] <= FidBootstrap(x, np.zeros(6), np.eye(6)).fid() <= a["fid_ci_high"]
    none = fid_bootstrap(x, np.zeros(6), np.eye(6), resamples=0)
    assert none["fid_ci_low"] is None and none["fid_ci_method"] is None


# ------------------------------------------------------------------------------------------
# torch-fidelity's metrics under our names
# ------------------------------------------------------------------------------------------


def test_inception_score_does_not_depend_on_the_class_layout_of_the_file():
    """Class-interleaved logits (rar-samples/2) score as the same logits class-sorted; labels
    that do not match the logits one to one leave the file's order."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 8)  # class-sorted
    logits = torch.from_numpy(rng.normal(size=(40, 5)) + 4 * np.eye(5)[labels]).float()
    order = np.argsort(np.tile(np.arange(8), 5), kind="stable")  # interleave the classes
    sorted_is = inception_score(logits, labels, splits=4)
    assert inception_score(logits[order], labels[order], splits=4) == pytest.approx(sorted_is)
    unsorted = inception_score(logits[order], None, splits=4)
    assert unsorted != pytest.approx(sorted_is)  # splits of other images
    assert inception_score(logits[order], labels[:3], splits=4) == pytest.approx(unsorted)


def test_named_metrics_are_all_present_and_never_nan():
    names = EXTRACTORS["efficientnet-lite0"].metric_names()
    m = named_metrics({"frechet_inception_distance": float("nan"), "other": 1.0}, names)
    assert set(m) == set(names.values()) and set(m.values()) == {None}
    m = named_metrics({"inception_score_mean": np.float32(2.5)}, names)
    assert (
        m["isc_efficientnet_lite0_mean"] == 2.5 and type(m["isc_efficientnet_lite0_mean"]) is float
    )


def test_fid_of_float32_sample_statistics_against_float64_reference_statistics():
    """ADM's float64 mu/sigma meet float32 sample statistics (torch-fidelity asserts equal
    dtypes); the FID of a set against its own statistics is 0."""
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(30, 4))).float()
    stats = fid_features_to_statistics(x)
    ref = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
    assert stats["mu"].dtype == np.float32
    out = fid_of_statistics(stats, ref, verbose=False)
    assert abs(out["frechet_inception_distance"]) < 1e-4
