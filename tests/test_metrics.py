"""The numbers of a sample set's features (rar.evaluation.metrics): ADM's IS and precision/recall
against an independent NumPy transcription of ADM's evaluator, torch-fidelity's FID under our names,
the FID's bootstrap interval, the comparability to the paper per metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics

from rar.evaluation.extractors import INCEPTION_SHA256_PREFIX
from rar.evaluation.metrics import (
    ADM_IS_SPLIT_SIZE,
    ADM_PRC_BLOCK,
    ADM_PRC_NEIGHBORHOOD,
    PAPER_METRICS,
    FidBootstrap,
    adm_squared_distances,
    all_reasons,
    class_interleaved_order,
    comparability,
    fid_bootstrap,
    fid_of_statistics,
    inception_score,
    named_metrics,
    precision_recall,
)
from rar.sampling.chunks import class_labels
from rar.settings.presets import EXTRACTORS
from rar.settings.stages import ScoringSettings

# ------------------------------------------------------------------------------------------
# Bookkeeping
# ------------------------------------------------------------------------------------------


PAPER = dict(
    extractor="inception-v3-compat",
    weights_sha256=INCEPTION_SHA256_PREFIX + "0" * 56,
    num_samples=50_000,
    labels=class_labels(1000, 50, seed=0),  # rar.sampling.sampler's class-interleaved layout
    image_size=(256, 256),
    fid_reference="reference_npz_mu_sigma",
    isc_split_size=5000,
    prc={"reference": "reference_npz_images", "neighborhood": 3, "block": 10_000},
)


def test_comparability_lists_every_departure_from_the_paper():
    assert comparability(**PAPER) == {m: [] for m in PAPER_METRICS}

    def departures(**change) -> dict[str, int]:
        return {m: len(r) for m, r in comparability(**{**PAPER, **change}).items()}

    every = dict.fromkeys(PAPER_METRICS, 1)
    assert departures(num_samples=10_000) == every
    assert departures(labels=np.repeat(np.arange(500), 100)) == {**every, "is": 2}  # + sorted
    assert departures(labels=None) == every
    assert departures(extractor="efficientnet-lite0") == every
    none = dict.fromkeys(PAPER_METRICS, 0)
    assert departures(fid_reference="reference_images") == {**none, "fid": 1}
    assert departures(isc_split_size=1000) == {**none, "is": 1}
    # a class-sorted file: consecutive splits of 5,000 see 100 classes each
    assert departures(labels=np.repeat(np.arange(1000), 50)) == {**none, "is": 1}
    for change in ({"neighborhood": 5}, {"block": 5000}, {"reference": "reference_images"}):
        prc = {**PAPER["prc"], **change}
        assert departures(prc=prc) == {**none, "precision": 1, "recall": 1}
    assert departures(prc=None) == none  # not computed: null values, no reason
    reasons = comparability(**{**PAPER, "num_samples": 10, "isc_split_size": 7})
    assert all_reasons(reasons) == ["10 samples; the paper uses 50000", reasons["is"][1]]
    assert set(EXTRACTORS) == {"inception-v3-compat", "efficientnet-lite0"}


def test_scoring_defaults_are_adms():
    s = ScoringSettings()
    assert s.isc_split_size == ADM_IS_SPLIT_SIZE == 5000
    assert s.prc_neighborhood == ADM_PRC_NEIGHBORHOOD == 3
    assert s.prc_batch_size == ADM_PRC_BLOCK == 10_000


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
# Metrics under our names
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# ADM's evaluator, transcribed in NumPy (openai/guided-diffusion evaluations/evaluator.py):
# the reference the metrics are held to. Written from ADM's algorithm, not from
# rar.evaluation.metrics.
# ------------------------------------------------------------------------------------------


def adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """Evaluator.compute_inception_score: softmax (float32, as TensorFlow's), consecutive
    splits of `split_size`, exp of the mean KL to the split's marginal, mean over splits."""
    z = logits.astype(np.float32)
    e = np.exp(z - z.max(1, keepdims=True))
    preds = e / e.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def adm_distance_block(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """DistanceBlock.pairwise_distances: max(|u|^2 - 2 u v^T + |v|^2, 0) in float16 (sums and
    products accumulated in float32, as on a GPU), in float32 if any entry is not finite."""
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):  # float16 overflow: the fallback's cue
        norm_u = np.square(u16).astype(np.float32).sum(1).astype(np.float16).reshape(-1, 1)
        norm_v = np.square(v16).astype(np.float32).sum(1).astype(np.float16).reshape(1, -1)
        mm = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
        d16 = np.maximum(norm_u - np.float16(2) * mm + norm_v, np.float16(0))
    if np.all(np.isfinite(d16)):
        return d16.astype(np.float32)
    u32, v32 = u.astype(np.float32), v.astype(np.float32)
    nu, nv = np.square(u32).sum(1).reshape(-1, 1), np.square(v32).sum(1).reshape(1, -1)
    return np.maximum(nu - 2 * (u32 @ v32.T) + nv, np.float32(0))


def adm_manifold_radii(features: np.ndarray, k: int, row_bs: int, col_bs: int) -> np.ndarray:
    """ManifoldEstimator.manifold_radii: per row block, the full distance rows, partitioned."""
    n = len(features)
    radii = np.zeros([n], dtype=np.float32)
    distance_batch = np.zeros([row_bs, n], dtype=np.float32)
    for begin1 in range(0, n, row_bs):
        end1 = min(begin1 + row_bs, n)
        for begin2 in range(0, n, col_bs):
            end2 = min(begin2 + col_bs, n)
            distance_batch[0 : end1 - begin1, begin2:end2] = adm_distance_block(
                features[begin1:end1], features[begin2:end2]
            )
        rows = np.partition(distance_batch[0 : end1 - begin1], np.arange(k + 1), axis=1)
        radii[begin1:end1] = rows[:, k]
    return radii


def adm_precision_recall(ref, sample, k=3, row_bs=10_000, col_bs=10_000) -> tuple[float, float]:
    """Evaluator.compute_prec_recall: radii of each set, then evaluate_pr over blocks of
    reference rows and sample columns."""
    radii_1 = adm_manifold_radii(ref, k, row_bs, col_bs)
    radii_2 = adm_manifold_radii(sample, k, row_bs, col_bs)
    ref_in = np.zeros(len(ref), dtype=bool)
    sample_in = np.zeros(len(sample), dtype=bool)
    for b1 in range(0, len(ref), row_bs):
        for b2 in range(0, len(sample), col_bs):
            d = adm_distance_block(ref[b1 : b1 + row_bs], sample[b2 : b2 + col_bs])
            ref_in[b1 : b1 + row_bs] |= np.any(d <= radii_2[None, b2 : b2 + col_bs], axis=1)
            sample_in[b2 : b2 + col_bs] |= np.any(d <= radii_1[b1 : b1 + row_bs, None], axis=0)
    return float(np.mean(sample_in)), float(np.mean(ref_in))


def _features(seed: int, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative features like Inception's pool (ReLU outputs), float32."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(size=(n, d)) + shift).astype(np.float32)


@pytest.mark.parametrize("n, split_size", [(230, 50), (400, 400), (120, 5000), (10_000, 5000)])
def test_inception_score_equals_adms_on_consecutive_splits(n, split_size):
    """Consecutive splits of the rows as given (the last one shorter), no shuffle."""
    rng = np.random.default_rng(n)
    logits = rng.normal(size=(n, 40)) * 3 + 5 * np.eye(40)[rng.integers(0, 40, n)]
    ours = inception_score(torch.from_numpy(logits).float(), split_size=split_size)
    assert ours["inception_score_mean"] == pytest.approx(
        adm_inception_score(logits, split_size), rel=1e-5
    )
    assert ours["inception_score_splits"] == -(-n // split_size)
    # the order as given counts: the same logits rolled by a few rows split otherwise
    if ours["inception_score_splits"] > 1:
        rolled = inception_score(torch.from_numpy(np.roll(logits, 7, 0)), split_size=split_size)
        assert rolled["inception_score_mean"] != pytest.approx(ours["inception_score_mean"])


def test_class_interleaved_files_give_every_is_split_every_class():
    """rar.sampling.sampler's layout: every 5,000 consecutive images of the paper's 50,000 hold each
    of the 1000 classes five times; a folder's class-sorted list is laid out the same way."""
    labels = class_labels(1000, 50, seed=3)
    for start in range(0, 50_000, 5000):
        assert (np.bincount(labels[start : start + 5000], minlength=1000) == 5).all()
    sorted_labels = np.repeat(np.arange(4), [3, 3, 2, 3])
    order = class_interleaved_order(sorted_labels)
    assert sorted_labels[order].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 3]
    assert sorted(order.tolist()) == list(range(11))


@pytest.mark.parametrize(
    "n, m, d, block, big",
    [
        (300, 200, 64, 10_000, 0),  # ADM's blocks: one block each
        (230, 170, 32, 64, 0),  # several row and column blocks, ragged ends
        # the first 30 rows of each set with norms past float16's 65504: blocks holding
        # them fall back to float32, the others stay float16
        (120, 90, 16, 50, 30),
    ],
)
def test_precision_recall_equal_adms(n, m, d, block, big):
    """ADM's ManifoldEstimator (k = 3), float16 distances with the per-block float32
    fallback, against the NumPy transcription: equal to float precision (exactly, as
    fractions of the same counts)."""
    ref = _features(1, m, d)
    x = _features(2, n, d, shift=0.3)
    ref[:big] *= 80
    x[:big] *= 80
    ours = precision_recall(x, ref, neighborhood=3, block=block)
    theirs = adm_precision_recall(ref, x, k=3, row_bs=block, col_bs=block)
    assert (ours["precision"], ours["recall"]) == pytest.approx(theirs, abs=1e-12)
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1


def test_distance_blocks_are_float16_unless_they_overflow():
    u, v = _features(3, 40, 24), _features(4, 30, 24)
    ours = adm_squared_distances(torch.from_numpy(u), torch.from_numpy(v)).numpy()
    np.testing.assert_array_equal(ours, adm_distance_block(u, v))
    assert np.array_equal(ours, ours.astype(np.float16).astype(np.float32))  # float16 values
    exact = ((u[:, None].astype(np.float64) - v[None]) ** 2).sum(-1)
    np.testing.assert_allclose(ours, exact, rtol=2e-2, atol=0.05)
    big = u * 100  # |u|^2 ~ 2e5 > 65504: float32 for the whole block
    ours = adm_squared_distances(torch.from_numpy(big), torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(ours, adm_distance_block(big, v), rtol=1e-6)
    assert (ours > 65504).any()  # beyond float16


def test_precision_recall_of_a_set_against_itself_is_one():
    x = _features(5, 50, 8)
    assert precision_recall(x, x, block=16) == {"precision": 1.0, "recall": 1.0}
    with pytest.raises(ValueError, match="k = 3 needs 4"):
        precision_recall(x[:3], x)
