"""Run configuration: every training knob in one frozen dataclass, with YAML in and out.

Torch-free: the workflow imports this at parse time to resolve runs and hash them.
A run's identity is the hash of its resolved `TrainConfig` (`run_id`), so two tables that need
the same run share it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import types
from dataclasses import dataclass, fields
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from rar.files import atomic_write_text
from rar.settings.presets import ARCHITECTURES, GeneratorShape

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train split
WANDB_MODES = ("off", "online", "offline")

# What a setting means for a run, declared once for every consumer (the study's run ids in
# rar.experiments, resume and branch checks in rar.training.loop):
# - OUTSIDE_IDENTITY: never changes the weights a run ends with (which checkpoints it keeps,
#   how often, logging, performance switches). Left out of the run id; a resume may see them
#   changed, so a config edit that adds an FID-vs-epoch point lets running jobs resume.
OUTSIDE_IDENTITY = frozenset(
    {"checkpoint_epochs", "checkpoint_minutes", "log_every", "compile", "deterministic"}
    # watching a run (rar.training.tracking, rar.evaluation.heldout): loggers, validation and sample
    # grids
    | {"tensorboard", "wandb", "wandb_project", "log_dir", "log_group"}
    | {"val_every", "val_data", "sample_every"}
)
# - RESUME_FREE: may also differ on a resume. `data` is part of the id (the data set's folder
#   names dataset, tokenizer and crop) but a resume may find the same shards moved.
RESUME_FREE = OUTSIDE_IDENTITY | {"data"}
# - BRANCH_KEYS: where a branch may differ from the trunk it starts from (RAR §3.2: runs that
#   differ only in these are identical while r = 1), on top of RESUME_FREE.
BRANCH_KEYS = frozenset({"anneal_start", "anneal_end", "target_order"})


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults: the paper's RAR-L recipe (RAR §4.1 and the official
    `configs/training/generator/rar.yaml`); epochs count passes over the source images."""

    # -- model ------------------------------------------------------------------------
    model: str = "rar_l"  # a named size of rar.model.transformer.RAR_CONFIGS
    architecture: str = "adaln"  # RAR §4.1: "adaln" (final models) or "plain" ViT (ablations)
    codebook_size: int = 1024  # MaskGIT-VQGAN
    num_classes: int = 1000
    num_tokens: int = 256  # 16 x 16
    dropout: float = 0.1
    attn_dropout: float = 0.1
    class_dropout: float = 0.1  # label -> null class, for classifier-free guidance
    # -- data -------------------------------------------------------------------------
    data: str = ""  # directory of token shards with manifest.json
    source_images: int = IMAGENET_TRAIN_IMAGES  # one epoch = one pass over these
    data_workers: int = 2  # loader processes per micro-batch stream (part of the data order)
    # -- optimisation -----------------------------------------------------------------
    epochs: float = 400
    global_batch: int = 2048  # fixed, whatever the number of GPUs
    micro_batch: int = 0  # samples per device per forward; 0 = global_batch / world size
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.96)
    weight_decay: float = 0.03
    warmup_epochs: float = 100  # linear from 0
    min_lr: float = 1e-5  # cosine decay to this at the end
    grad_clip: float = 1.0
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "fp32" or "bf16"
    # -- RAR: randomness annealing and the order the model converges to ---------------
    anneal_start: float = 200  # epochs; r = 1 before
    anneal_end: float = 300  # epochs; r = 0 after
    target_order: str = "row-major"  # one of rar.model.orders.SCAN_ORDERS
    seed: int = 42
    # -- checkpoints and logs ---------------------------------------------------------
    checkpoint_epochs: tuple[float, ...] = ()  # named checkpoints (FID vs epochs, branching)
    checkpoint_minutes: float = 10.0  # `last.pt` this often; 0 = after every step
    log_every: int = 50  # optimizer steps between metrics.csv rows
    compile: bool | str = "auto"  # torch.compile the model: "auto" = on a GPU, not on the CPU
    deterministic: bool = False  # GPU: deterministic kernels (cost unmeasured); CPU: always
    # -- watching a run (docs/operating.md "Watching a grid"); rank 0 only, never stops training
    tensorboard: bool = False  # log to TensorBoard (pip install tensorboard)
    wandb: str = "off"  # Weights & Biases: "off", "online" or "offline" (pip install wandb)
    wandb_project: str = "rar"
    log_dir: str = ""  # the study's TensorBoard folder, a sub-folder per run; "" = <workdir>/tb
    log_group: str = ""  # the study: the W&B group of its runs
    val_every: float = 0  # epochs between held-out NLLs (validation.csv); 0 = off
    val_data: str = ""  # held-out token shards; "" = <data>/val (docs/operating.md)
    sample_every: float = 0  # epochs between fixed-seed sample grids (samples/); 0 = off

    def __post_init__(self) -> None:
        # Canonical types (3 -> 3.0 for float fields, lists -> tuples), so equal settings
        # always hash to the same run id however they were written.
        hints = get_type_hints(type(self))
        for f in fields(self):
            value = _coerce(getattr(self, f.name), hints[f.name], f"key {f.name!r}")
            object.__setattr__(self, f.name, value)
        problems = []
        if self.anneal_start > self.anneal_end:
            problems.append(f"anneal_start {self.anneal_start} > anneal_end {self.anneal_end}")
        if self.anneal_end > self.epochs:
            problems.append(f"anneal_end {self.anneal_end} > epochs {self.epochs}")
        if self.global_batch <= 0 or self.micro_batch < 0:
            problems.append("global_batch must be positive and micro_batch non-negative")
        if self.micro_batch and self.global_batch % self.micro_batch:
            problems.append(f"micro_batch {self.micro_batch} does not divide {self.global_batch}")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append(f"precision {self.precision!r} is not auto, fp32 or bf16")
        if self.wandb not in WANDB_MODES:
            problems.append(f"wandb {self.wandb!r} is not one of {', '.join(WANDB_MODES)}")
        if self.val_every < 0 or self.sample_every < 0:
            problems.append("val_every and sample_every must not be negative (0 = off)")
        if self.compile not in (True, False, "auto"):
            problems.append(f"compile {self.compile!r} is not auto, true or false")
        if self.architecture not in ARCHITECTURES:
            problems.append(
                f"architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    # -- step arithmetic: schedules are in epochs, the loop counts optimizer steps --------

    @property
    def total_steps(self) -> int:
        return self.step_at(self.epochs)

    def step_at(self, epoch: float) -> int:
        """First optimizer step at or after `epoch`: a checkpoint taken after `step_at(E)`
        steps holds exactly the updates made while the epoch was below E."""
        return math.ceil(round(epoch * self.source_images / self.global_batch, 6))

    def epoch_at(self, step: int) -> float:
        return step * self.global_batch / self.source_images

    @property
    def shape(self) -> GeneratorShape:
        """The generator's shape, for its size arithmetic (parameters, training FLOPs)."""
        return GeneratorShape(
            self.model, self.architecture, self.codebook_size, self.num_classes, self.num_tokens
        )

    # -- I/O -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping, with errors that name the source and the key at fault."""
        return dataclass_from_dict(cls, data, source=source)

    def with_settings(self, settings: dict[str, Any], *, source: str) -> TrainConfig:
        """This run with `settings` applied, which may only be keys outside its identity
        (OUTSIDE_IDENTITY): what a study may change while the run is in flight (the
        checkpoints it keeps, logging) without making it another run."""
        identity = sorted(set(settings) - OUTSIDE_IDENTITY)
        if identity:
            raise ValueError(
                f"{source}: {', '.join(identity)} would make it another run; only "
                f"{', '.join(sorted(OUTSIDE_IDENTITY))} may be set here"
            )
        return TrainConfig.from_dict({**self.to_dict(), **settings}, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        return dataclass_from_yaml(cls, path)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def run_id(self) -> str:
        """The run's identity: a short hash of every setting that changes its weights
        (everything but OUTSIDE_IDENTITY), as canonical JSON."""
        d = {k: v for k, v in self.to_dict().items() if k not in OUTSIDE_IDENTITY}
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def trunk_key(self) -> str:
        """Equal for runs that may share a trunk: everything but BRANCH_KEYS and
        OUTSIDE_IDENTITY."""
        d = {k: v for k, v in self.to_dict().items() if k not in OUTSIDE_IDENTITY | BRANCH_KEYS}
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# ##########################################################################################
# Settings dataclasses from YAML (TrainConfig here, rar.settings.stages.LauncherConfig)
# ##########################################################################################


def dataclass_from_dict(cls, data: Any, *, source: str):
    """`cls(**data)` with every value checked against its annotation; errors name `source`
    and the key at fault (unknown keys, wrong types, the class's own checks)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of {cls.__name__} settings")
    hints = get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}")
    values = {k: _coerce(v, hints[k], f"{source}: key {k!r}") for k, v in data.items()}
    try:
        return cls(**values)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def dataclass_from_yaml(cls, path: str | os.PathLike):
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return dataclass_from_dict(cls, data, source=str(path))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check and convert a YAML value to an annotation: ints are accepted as floats, lists as
    tuples; `X | None` accepts None, `X | Y` what X or Y accepts."""
    origin, args = get_origin(hint), get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = get_origin(hint), get_args(hint)
    if origin is types.UnionType:  # X | Y: the first that takes the value
        for option in args:
            with contextlib.suppress(ValueError):
                return _coerce(value, option, where)
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise ValueError(f"{where} must be {names}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is not Ellipsis and len(value) != 2:
            raise ValueError(f"{where} must have 2 entries, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, dict) and isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{where} must be {name}, got {value!r}")
