"""Training a run: set up once, the loop, its checkpoints and what it writes as it goes.

- `loop`      `train` and `run` (`rar train`): the loop and one optimizer step
- `job`       a call set up once: finished?, batch split, restore, where it stops, the finish
- `recipe`    the model of a config, the optimizer, the learning-rate schedule, the loss
- `resume`    a run's own checkpoints: atomic saves, the resume point, resume and branch checks
- `watch`     validation, sample grids, trackers and ETA while a run trains
- `tracking`  TensorBoard and W&B views of a run's metrics
"""

from rar import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "build_optimizer": "recipe",
        "loss_and_accuracy": "recipe",
        "model_from_config": "recipe",
        "run": "loop",
        "train": "loop",
    },
)
