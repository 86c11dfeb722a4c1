"""Scoring: a sample set against a reference, as the paper's evaluator scores it.

- `scorer`         `rar evaluate`: the `Scorer` that composes what follows, one load per job
- `metrics`        FID, IS and precision/recall (ADM's), the FID interval, comparability
- `extractors`     feature extractors, where their weights come from, the offline error
- `image_sets`     an `.npz` or a folder of images as torch-fidelity reads it, with labels
- `feature_cache`  content-keyed caches of reference features and class probes
- `probe`          the linear probe behind `class_accuracy`
- `heldout`        held-out tokens and their NLL (training's curves, the tables' `val_nll`),
                   sample grids
"""

from rar import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "check_extractor_available": "extractors",
        "evaluate": "scorer",
        "evaluate_many": "scorer",
        "ExtractorUnavailable": "extractors",
        "HeldOut": "heldout",
        "heldout_nll": "heldout",
        "load_heldout": "heldout",
        "sample_grid": "heldout",
        "Scorer": "scorer",
    },
)
