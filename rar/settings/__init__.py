"""Every setting of the pipeline, declared once: torch-free dataclasses whose fields carry
their default and help, and the tables they draw on.

- `presets`    model sizes, architectures, sampling presets' values, scan order names,
               extractors, crop modes, metric keys: the paper's facts as tables
- `training`   `TrainConfig`, a run's settings and its identity (`run_id`)
- `stages`     the settings of sampling (`SamplingConfig`: how one image is drawn;
               `SampleSettings`: a sample set), scoring (`ScoringSettings`) and launching
               (`LauncherConfig`), the demo tokenizer's training (`TokenizerTraining`), and the
               one preset resolution (`resolve_sampling`)
- `options`    argparse flags generated from those dataclasses' fields
"""

from rar import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "add_options": "options",
        "BACKENDS": "stages",
        "BRANCH_KEYS": "training",
        "LauncherConfig": "stages",
        "option": "options",
        "option_flags": "options",
        "option_values": "options",
        "OUTSIDE_IDENTITY": "training",
        "resolve_sampling": "stages",
        "RESUME_FREE": "training",
        "SampleSettings": "stages",
        "SAMPLING_FIELDS": "stages",
        "SAMPLING_PRESETS": "stages",
        "sampling_values": "stages",
        "SamplingConfig": "stages",
        "ScoringSettings": "stages",
        "TokenizerTraining": "stages",
        "TrainConfig": "training",
    },
)
