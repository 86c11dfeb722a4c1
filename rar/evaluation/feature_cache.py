"""Content-keyed caches of what a scoring job computes once per input: the reference's FID
statistics and precision/recall features, and the class probe.

Keys are hashes of content (the images', the extractor weights', the settings'), never names:
torch-fidelity's own cache is keyed by a name and would silently reuse the statistics of a
changed reference, so it is never used (`cache=False` everywhere). Evaluations run in parallel
(Snakemake jobs, SLURM jobs): the first computes an entry under a file lock, the others wait
on the lock and then read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from rar.evaluation.extractors import extract_features
from rar.evaluation.image_sets import files_dataset, folder_classes, folder_labels, images_dataset
from rar.files import content_sha256, image_files, write_npz
from rar.settings.presets import EXTRACTORS

# The probe's training images: the first PROBE_PER_CLASS of each class folder (sorted file
# order). 50 a class already classify the demo's held-out images without error, and the
# features of all 3,200 demo images cost 96 s on one CPU thread, more than the rest of an
# evaluation job.
PROBE_PER_CLASS = 50


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Hold `<cache>.lock` exclusively (the cache's folder is made first)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_npz(
    cache: Path,
    read: Callable[[np.lib.npyio.NpzFile], object],
    compute: Callable[[], tuple[object, dict[str, np.ndarray], str]],
    *,
    what: str,
    verbose: bool,
):
    """`read(npz)` of `cache` when it exists and reads; else `compute()` -> (value, arrays,
    what was done), whose arrays are written to `cache`, and the value returned. Under the
    cache's lock, so parallel jobs compute an entry once. An unreadable entry (not an archive,
    cut short, or without the arrays `read` wants) is recomputed and replaced."""
    with _locked(cache):
        if cache.exists():
            try:
                with np.load(cache) as z:
                    value = read(z)
                if verbose:
                    print(f"{what} from cache {cache}", flush=True)
                return value
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # unreadable: recompute and replace
        value, arrays, done = compute()
        write_npz(cache, arrays)
        if verbose:
            print(f"{done}, cached in {cache}", flush=True)
        return value


# ##########################################################################################
# The reference's features
# ##########################################################################################

REFERENCE_KEYS = ("mu", "sigma", "prc_features")


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
    from torch_fidelity.metric_fid import fid_features_to_statistics

    layer = EXTRACTORS[extractor].fid_layer
    cache = Path(cache_dir) / f"{reference_sha256}-{features_id}.npz"

    def compute() -> tuple[dict, dict, str]:
        feats = extract_features(
            images_dataset(reference),
            feature_extractor,
            batch_size=batch_size,
            cuda=cuda,
            verbose=verbose,
        )[layer]
        stats = fid_features_to_statistics(feats)
        out = {"mu": stats["mu"], "sigma": stats["sigma"], "prc_features": feats.numpy()}
        return out, out, f"reference features of {len(feats)} images"

    return cached_npz(
        cache,
        lambda z: {k: z[k] for k in REFERENCE_KEYS},
        compute,
        what="reference features",
        verbose=verbose,
    )


# ##########################################################################################
# The class probe (rar.evaluation.probe)
# ##########################################################################################


def first_per_class(labels: np.ndarray, num_classes: int, per_class: int) -> list[int]:
    """Indices of the first `per_class` items of each class, in order."""
    seen = np.zeros(num_classes, dtype=np.int64)
    keep = []
    for i, label in enumerate(labels):
        if seen[label] < per_class:
            keep.append(i)
            seen[label] += 1
    return keep


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
    """The linear probe (rar.evaluation.probe) of the class-folder set `images` (its first
    PROBE_PER_CLASS images of each class) on the extractor's `feature_layer` features, cached
    as `<cache_dir>/probe-<hash of the images' sha256, the weights' sha256 and input size, the
    settings>.npz` (keyed by content, as the reference features)."""
    from rar.evaluation.probe import DEFAULT_L2, Probe, fit_probe

    images = Path(images)
    classes = folder_classes(images)
    if not classes:
        raise ValueError(f"{images}: no class folders to fit a class probe on")
    settings = f"l2={DEFAULT_L2}-per_class={PROBE_PER_CLASS}"
    key = hashlib.sha256(f"{content_sha256(images)}-{features_id}-{settings}".encode())
    cache = Path(cache_dir) / f"probe-{key.hexdigest()[:32]}.npz"

    def compute():
        files, labels = image_files(images), folder_labels(images, classes)
        keep = first_per_class(labels, len(classes), PROBE_PER_CLASS)
        feats = extract_features(
            files_dataset([files[i] for i in keep]),
            feature_extractor,
            batch_size=batch_size,
            cuda=cuda,
            verbose=verbose,
        )[feature_layer]
        probe = fit_probe(feats.numpy(), labels[keep], classes)
        done = (
            f"class probe on {len(feats)} images of {len(classes)} classes (training "
            f"accuracy {probe.train_accuracy:.3f})"
        )
        return probe, probe.to_arrays(), done

    return cached_npz(cache, Probe.from_arrays, compute, what="class probe", verbose=verbose)
