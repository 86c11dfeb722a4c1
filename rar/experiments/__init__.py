"""Studies: the config's tables -> runs, evaluations and the training plan. Torch-free.

The Snakefile imports this module at parse time (ARCHITECTURE.md), so it imports neither torch nor
anything that does. `load_study` is the one way any tool reads a study (the Snakefile,
`rar plan`, `rar status`, `rar report`): it applies `rar/experiments/study.schema.yaml` (checks,
then the defaults written there), then the checks that need the package, and it is the only
place identities come from. A study config (`config/config.yaml`, `config/demo.yaml`) holds
experiment facts; this package turns it into:

- data sets: one per (dataset, tokenizer, crop) the rows use, tokenized once for every study
  that names it. The paper's two
  recipes train on different crops (RAR §4.1: center + flip for the ablations, ten-crop for
  the final models), so a row's crop is part of its run's identity through its data folder;
- runs: the resolved training configs (`rar.settings.training.TrainConfig`). A run's id is a hash of
  the settings that change its weights (`TrainConfig.run_id`), so the same run reached from two
  tables is trained once;
- evaluations: (run, checkpoint epoch, sampling settings, metric settings), hashed the same
  way, so re-scoring never retrains;
- guidance sweeps: a row whose sampling lists `guidance_scales` is sampled at each scale on a
  smaller set, scored, and evaluated for its table at the scale with the lowest FID (the paper
  does not give the ablations' scale). A sweep is keyed like an evaluation, so rows with the
  same run and settings share it;
- the trunk plan (RAR §3.2, annealing): runs that differ only in `anneal_start`, `anneal_end`
  and `target_order` are identical while r = 1. One trunk trained with r = 1 throughout (the
  purely random run) leaves a checkpoint at every anneal start the tables use, and each run
  starting later than epoch 0 branches from it; runs starting at 0 train from scratch;
- table rows: the readable label of each row and the ids it maps to.

The package, one module per question:

- `study`: the pieces (DataSet, Run, Sweep, Evaluation, Row) and `Study`, which answers every
  path and total the tools ask for;
- `data_sets`: where every study's data sets live (`results/data/`) and the record of the
  source each was made from (`source.json`), so studies share a data set only when its source
  is theirs;
- `schema`: the config against `rar/experiments/study.schema.yaml`, errors and defaults;
- `build`: `load_study`, the tables expanded into the pieces, with the package's checks;
- `trunks`: the trunk plan;
- `plan`: `rar plan`'s totals, JSON and text;
- `rules`: what each rule of `workflow/rules/` passes on (its input files and arguments), so
  that the rule files only name files and call the package.

A package rather than one module because these are five mechanisms with one loader between
them; this file exports what the tools import, `from rar.experiments import load_study`.
"""

from rar.experiments.build import CROPS, SAMPLING_KEYS, load_study, load_study_file
from rar.experiments.data_sets import DATA_ROOT, DataSource, SourceRecord, data_dir, image_dir
from rar.experiments.plan import estimate, format_plan, measured_throughput, plan_dict
from rar.experiments.schema import SCHEMA, validate_config
from rar.experiments.study import (
    CEILING,
    EVALUATION_KINDS,
    FLOOR,
    PAPER_SAMPLES,
    RECONSTRUCTED,
    DataSet,
    Evaluation,
    Row,
    Run,
    Study,
    StudyError,
    Sweep,
    run_id,
    short_hash,
)
from rar.experiments.trunks import plan_trunks

__all__ = [
    "CEILING",
    "CROPS",
    "DATA_ROOT",
    "EVALUATION_KINDS",
    "FLOOR",
    "PAPER_SAMPLES",
    "RECONSTRUCTED",
    "SAMPLING_KEYS",
    "SCHEMA",
    "DataSet",
    "DataSource",
    "Evaluation",
    "Row",
    "Run",
    "SourceRecord",
    "Study",
    "StudyError",
    "Sweep",
    "data_dir",
    "estimate",
    "format_plan",
    "image_dir",
    "load_study",
    "load_study_file",
    "measured_throughput",
    "plan_dict",
    "plan_trunks",
    "run_id",
    "short_hash",
    "validate_config",
]
