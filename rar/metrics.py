"""The numbers of a sample set's features: torch-fidelity's FID, Inception Score and precision
and recall, the FID's bootstrap interval, and whether they can stand next to the paper's.

We write no metric math for the four metrics: they come from torch-fidelity's
`fid_statistics_to_metric`, `isc_features_to_metric` and `prc_features_to_metric` (the
functions its `calculate_metrics` calls), on features extracted once (rar.extractors). The
interval is ours (issue #13): the sample features are resampled with replacement
(multinomial weights, each resample's FID exact against the fixed reference statistics:
`FidBootstrap`), so it reuses the extracted features and costs no image work.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from rar.extractors import INCEPTION_SHA256_PREFIX
from rar.presets import INCEPTION
from rar.settings import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED  # the defaults `rar evaluate` shows

PAPER_NUM_SAMPLES = 50_000  # ADM protocol: 50 samples for each of 1000 classes
PAPER_NUM_CLASSES = 1000
PAPER_IMAGE_SIZE = 256
ISC_SHUFFLE_SEED = 2020  # torch-fidelity's default seed of the IS's shuffle


# ##########################################################################################
# FID, IS, precision and recall (torch-fidelity)
# ##########################################################################################


def fid_of_statistics(sample_stats: dict, ref_stats: dict, *, verbose: bool) -> dict[str, float]:
    """torch-fidelity's FID of two {mu, sigma} -> {"frechet_inception_distance": ...}."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    # torch-fidelity asserts equal dtypes; ADM's float64 statistics meet float32 means.
    pair = [
        {k: np.asarray(v, dtype=np.float64) for k, v in s.items()}
        for s in (sample_stats, ref_stats)
    ]
    return fid_statistics_to_metric(pair[0], pair[1], verbose)


def inception_score(
    logits: torch.Tensor, labels: np.ndarray | None, *, splits: int
) -> dict[str, float]:
    """torch-fidelity's IS of (N, C) logits over `splits` splits -> {inception_score_mean,
    inception_score_std}. Its seeded shuffle makes IS depend on the file's order, so the
    logits go in class order first (a stable sort by `labels`: the identity for class-sorted
    files), and the class-interleaved layout of rar.sample (rar-samples/2) scores as the same
    images sorted. Labels that do not match the logits one to one are ignored."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if labels is not None and len(labels) == len(logits):
        logits = logits[torch.from_numpy(np.argsort(labels, kind="stable"))]
    return isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=ISC_SHUFFLE_SEED)


def precision_recall(
    features: torch.Tensor,
    ref_features: np.ndarray,
    *,
    neighborhood: int,
    batch_size: int,
    device: torch.device,
    verbose: bool,
) -> dict[str, float]:
    """torch-fidelity's precision and recall of (N, D) sample features against (M, D)
    reference features, k = `neighborhood`, in distance blocks of `batch_size` rows."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    return prc_features_to_metric(
        features.to(device),
        torch.from_numpy(ref_features).to(device),
        prc_neighborhood=neighborhood,
        prc_batch_size=batch_size,
        save_cpu_ram=True,
        verbose=verbose,
    )


def named_metrics(results: dict[str, float], names: dict[str, str]) -> dict[str, float | None]:
    """torch-fidelity's results under our names (ExtractorSpec.metric_names), every name
    present: a metric not computed (precision/recall without reference images) and a
    non-finite value (FID of degenerate features) are null, since JSON has no NaN."""
    metrics = {
        names[k]: float(v) if np.isfinite(v) else None for k, v in results.items() if k in names
    }
    for key in names.values():
        metrics.setdefault(key, None)
    return metrics


# ##########################################################################################
# Comparability to the paper
# ##########################################################################################


def comparability(
    *,
    extractor: str,
    weights_sha256: str,
    num_samples: int,
    labels: np.ndarray | None,
    image_size: tuple[int, int],
    fid_reference: str,
) -> list[str]:
    """Why these numbers cannot stand next to the paper's (empty when they can)."""
    reasons = []
    if extractor != INCEPTION:
        reasons.append(f"features from {extractor}, not Inception-V3 (inception-v3-compat)")
    elif not weights_sha256.startswith(INCEPTION_SHA256_PREFIX):
        reasons.append(
            f"Inception weights (sha256 {weights_sha256[:12]}...) are not torch-fidelity's "
            f"weights-inception-2015-12-05-{INCEPTION_SHA256_PREFIX}.pth"
        )
    if num_samples != PAPER_NUM_SAMPLES:
        reasons.append(f"{num_samples} samples; the paper uses {PAPER_NUM_SAMPLES}")
    if labels is None:
        reasons.append("the samples carry no labels, so class balance cannot be checked")
    else:
        counts = np.bincount(labels, minlength=PAPER_NUM_CLASSES)
        per_class = PAPER_NUM_SAMPLES // PAPER_NUM_CLASSES
        if len(counts) != PAPER_NUM_CLASSES or not (counts == per_class).all():
            reasons.append(
                f"not exactly {per_class} samples for each of {PAPER_NUM_CLASSES} classes"
            )
    if tuple(image_size) != (PAPER_IMAGE_SIZE, PAPER_IMAGE_SIZE):
        reasons.append(f"images are {image_size[0]}x{image_size[1]}, the paper's are 256x256")
    if fid_reference != "reference_npz_mu_sigma":
        reasons.append("FID reference statistics are not the ADM reference batch's mu/sigma")
    return reasons


# ##########################################################################################
# FID error bars: a bootstrap over the samples
# ##########################################################################################

CI_LEVEL = 0.95
FID_CI_METHOD = (
    "bootstrap over the samples: {resamples} resamples with replacement (seed {seed}) of the "
    "sample features, each scored exactly against the fixed reference statistics; the interval "
    "is the {pct:g}% percentile interval of the resampled FIDs re-centred on the estimate "
    "(FID + quantiles of FID_b - median FID_b), since resampling alone shifts FID upward "
    "(duplicates shrink the effective sample)"
)


def matrix_sqrt_psd(sigma: np.ndarray | torch.Tensor, device: str | torch.device = "cpu"):
    """The symmetric square root of a covariance (eigenvalues clipped at 0), float64."""
    s = torch.as_tensor(np.asarray(sigma), dtype=torch.float64, device=device)
    s = (s + s.T) / 2
    evals, evecs = torch.linalg.eigh(s)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


class FidBootstrap:
    """FID of a weighted copy of one sample set against fixed reference statistics.

    A bootstrap resample is a multinomial weight per sample (how often it was drawn), so each
    resample's FID is exact without copying features: weighted mean and covariance S_b, and
    tr sqrt(S_b R) as the sum of square roots of the eigenvalues of a symmetric matrix with
    the same non-zero spectrum, in whichever size is smaller:

    - N <= D (the demo: 160 samples of 1280-d features): the n x n matrix
      W^1/2 (X - mu_b) R (X - mu_b)^T W^1/2 / (N - 1) over the n distinct drawn samples,
      assembled from P = X R X^T, which is computed once; a resample then costs O(n^2) and
      one n x n eigenvalue problem, and no matrix square root is needed;
    - N > D (the paper: 50,000 x 2048): R^1/2 S_b R^1/2 (D x D), with R^1/2 (`ref_sqrt`) and
      Z = X R^1/2 computed once; a resample costs one weighted N x D x D matmul and one
      D x D eigenvalue problem.
    """

    def __init__(
        self,
        features: np.ndarray | torch.Tensor,
        ref_mu: np.ndarray,
        ref_sigma: np.ndarray,
        *,
        ref_sqrt: torch.Tensor | Callable[[], torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        """ref_sqrt: R^1/2 when known (or a function that returns it, called only when the
        D x D path needs it); default computed here."""
        self.device = torch.device(device)
        f64 = dict(dtype=torch.float64, device=self.device)
        x = torch.as_tensor(np.asarray(features), **f64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"features must be (N >= 2, D), got {tuple(x.shape)}")
        self.n, self.d = x.shape
        ref_mu = torch.as_tensor(np.asarray(ref_mu), **f64)
        self.ref_trace = float(np.trace(np.asarray(ref_sigma)))
        self.ref_mu2 = float(ref_mu @ ref_mu)
        self.x, self.x_mu = x, x @ ref_mu  # (N, D), (N,)
        self.sq = (x * x).sum(1)  # (N,)
        self.kernel = self.n <= self.d
        if self.kernel:
            sigma = torch.as_tensor(np.asarray(ref_sigma), **f64)
            self.gram = x @ x.T  # (N, N)
            self.p = x @ sigma @ x.T  # (N, N)
            self.p = (self.p + self.p.T) / 2
        else:
            if ref_sqrt is None:
                a = matrix_sqrt_psd(ref_sigma, self.device)
            else:
                a = ref_sqrt() if callable(ref_sqrt) else ref_sqrt
            self.a = a.to(**f64)
            self.z = x @ self.a  # (N, D): the features in the reference's square-root frame

    def fids(self, weights: np.ndarray | torch.Tensor) -> np.ndarray:
        """FIDs of B weighted copies of the sample set: `weights` (B, N), non-negative, each
        row summing to the number of draws (N for a bootstrap resample)."""
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64, device=self.device)
        tot = w.sum(1)  # (B,)
        if self.kernel:
            mu2 = ((w @ self.gram) * w).sum(1) / tot**2
        else:
            mu = (w @ self.x) / tot[:, None]  # (B, D)
            mu2 = (mu * mu).sum(1)
        mean_term = mu2 - 2 * (w @ self.x_mu) / tot + self.ref_mu2
        trace = (w @ self.sq - tot * mu2) / (tot - 1)
        if self.kernel:
            pw = (w @ self.p) / tot[:, None]  # (B, N): P w / N
            s = (pw * w).sum(1) / tot  # (B,): w^T P w / N^2
            root = torch.empty_like(tot)
            for b in range(len(w)):  # over the drawn samples only (~63% of N): 4x less work
                keep = torch.nonzero(w[b]).squeeze(1)
                c = self.p[keep][:, keep] - pw[b, keep][:, None] - pw[b, keep][None, :] + s[b]
                r = w[b, keep].sqrt()
                k = c * r[:, None] * r[None, :] / (tot[b] - 1)
                root[b] = torch.linalg.eigvalsh(k).clamp_min(0).sqrt().sum()
        else:
            zbar = mu @ self.a  # (B, D)
            g = (w[:, :, None] * self.z[None]).transpose(1, 2) @ self.z  # (B, D, D): Z^T W Z
            g = g - tot[:, None, None] * zbar[:, :, None] * zbar[:, None, :]
            root = torch.linalg.eigvalsh(g / (tot - 1)[:, None, None]).clamp_min(0).sqrt().sum(1)
        return (mean_term + trace + self.ref_trace - 2 * root).cpu().numpy()

    def fid(self, weights: np.ndarray | torch.Tensor | None = None) -> float:
        """FID of the sample set with each sample counted `weights[i]` times (None: once
        each, the plain FID)."""
        w = np.ones(self.n) if weights is None else np.asarray(weights, dtype=np.float64)
        return float(self.fids(w[None])[0])

    def resampled(self, resamples: int, seed: int) -> np.ndarray:
        """FIDs of `resamples` bootstrap resamples (N draws with replacement each; numpy's
        PCG64 seeded with `seed`, so the same on every device), in batches whose largest
        intermediate (B x N, or B x N x D) holds ~2^23 numbers (64 MB)."""
        rng = np.random.default_rng(seed)
        per_resample = self.n if self.kernel else self.n * self.d
        batch = max(1, min(resamples, 2**23 // per_resample))
        # The N x N path is many small operations, which threads only slow down (measured:
        # 1.1 s for 1000 demo resamples on one CPU thread, 11 s on two busy cores).
        threads = torch.get_num_threads()
        if self.kernel and self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            out = []
            for start in range(0, resamples, batch):
                size = min(batch, resamples - start)
                draws = rng.integers(0, self.n, size=(size, self.n))
                counts = np.stack([np.bincount(d, minlength=self.n) for d in draws])
                out.append(self.fids(counts))
        finally:
            torch.set_num_threads(threads)
        return np.concatenate(out)


def fid_interval(
    estimate: float,
    resampled: np.ndarray,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """The re-centred percentile interval (FID_CI_METHOD), clipped at 0 (FID is >= 0)."""
    tail = (1 - level) / 2
    lo, hi = np.quantile(resampled, [tail, 1 - tail])
    med = np.median(resampled)
    return max(0.0, float(estimate + lo - med)), max(0.0, float(estimate + hi - med))


def fid_bootstrap(
    features: np.ndarray | torch.Tensor,
    ref_mu: np.ndarray,
    ref_sigma: np.ndarray,
    *,
    estimate: float | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
    ref_sqrt: torch.Tensor | Callable[[], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """A `level` bootstrap interval of the FID of `features` (N, D) against (`ref_mu`,
    `ref_sigma`), the reference held fixed (FID_CI_METHOD says how). estimate: the FID to
    centre on (torch-fidelity's; default this class's own, equal to ~1e-9 relative).
    Returns the metrics.json fields fid_ci_low, fid_ci_high, fid_ci_level, fid_ci_method,
    fid_ci_resamples, fid_ci_seed, fid_ci_seconds (all None when N < 2 or resamples is 0)."""
    started = time.perf_counter()
    out = {
        "fid_ci_low": None,
        "fid_ci_high": None,
        "fid_ci_level": level,
        "fid_ci_method": None,
        "fid_ci_resamples": resamples,
        "fid_ci_seed": seed,
        "fid_ci_seconds": None,
    }
    if resamples <= 0 or len(features) < 2:
        return out
    boot = FidBootstrap(features, ref_mu, ref_sigma, ref_sqrt=ref_sqrt, device=device)
    if estimate is None or not np.isfinite(estimate):
        estimate = boot.fid()
    values = boot.resampled(resamples, seed)
    lo, hi = fid_interval(estimate, values, level)
    out.update(
        fid_ci_low=lo,
        fid_ci_high=hi,
        fid_ci_method=FID_CI_METHOD.format(resamples=resamples, seed=seed, pct=100 * level),
        fid_ci_seconds=round(time.perf_counter() - started, 3),
    )
    return out
