"""`rar preflight`: the whole grid rehearsed at toy scale on the user's own cluster.

Before a study's thousands of GPU-hours are submitted, this runs every stage of its DAG once,
small, through the same launcher settings as the grid (the profile's `<stage>.yaml`), and
writes `<out>/report.md`: one line per check, PASS / FAIL / SKIP, what was measured, and for a
FAIL the fix (the config key, the profile file, the missing file).

1. Before anything is submitted: every file the config names exists, loads and is the
   expected thing (`rar.experiments.resources`: the released RAR and MaskGIT-VQGAN state dicts have
   the official keys and shapes, the Inception weights their published sha256 prefix, ADM's
   reference batch its arrays and shapes); ImageNet's folder has the configured number of
   class folders and images; each stage's launcher settings fit the cluster (the partition
   exists, its nodes have the GPUs asked for, the time limit fits).
2. The stages, each one job of `rar.ops.launch` with the stage's settings (time limit capped):
   a handful of images (linked from ImageNet, or the demo's own), tokenized with the study's
   tokenizer; a few optimizer steps of the study's model size on the study's layout (nodes x
   GPUs, DDP, the study's precision and compile setting) in which the job is stopped by the
   time-limit signal SLURM sends (USR2, here sent by the job to itself) and requeued, and the
   resumed run must reach the step, and on the CPU the very weights, of an uninterrupted one;
   a few images sampled with the KV cache; scored with the study's extractor; a table made.
3. Throughput on the real nodes: training images/s per GPU at the study's micro-batch for
   each model size of the study, and sampling images/s per GPU, written to
   `<out>/throughput.json`, where `rar plan` reads them (`rar.experiments.measured_throughput`):
   its GPU-hours then come from the user's hardware, the config's figures staying as the
   estimates for whatever was not measured. Then each table row's sampling chunk against the
   memory of the GPU the sample job ran on (`memory`: KV cache, weights and a decoding slice;
   skipped without a GPU there or here).

A stage whose inputs failed is skipped (SKIP, naming what failed). Every stage writes under
`<out>/<stage>/`; a new preflight starts from an empty `<out>` (its own folders only).

The package: `checks` (the check records, the report, section 1), `memory` (section 3's
sampling memory: each planned chunk's KV cache and weights against the GPU), `jobs` (what runs on
the nodes), `stages` (the rehearsal: one method per stage), `run` (`run_preflight`). A package
because the jobs must import nothing of the report, and the stages share one state that a
class holds better than a 200-line function of closures.
"""

from rar.ops.preflight.checks import (
    STAGES,
    Check,
    check_extractor,
    check_file,
    check_images,
    check_launcher,
    check_resume,
    expected_shapes,
    format_lines,
    format_report,
    slurm_partitions,
    stage_launchers,
)
from rar.ops.preflight.jobs import read_tokens, rehearse_sampling, rehearse_training
from rar.ops.preflight.memory import (
    ChunkPlan,
    check_sampling_memory,
    chunk_plans,
    memory_checks,
)
from rar.ops.preflight.run import OWN_ENTRIES, THROUGHPUT_FORMAT, run_preflight, write_throughput
from rar.ops.preflight.stages import Rehearsal, Scale

__all__ = [
    "OWN_ENTRIES",
    "STAGES",
    "THROUGHPUT_FORMAT",
    "Check",
    "ChunkPlan",
    "Rehearsal",
    "Scale",
    "check_extractor",
    "check_file",
    "check_images",
    "check_launcher",
    "check_resume",
    "check_sampling_memory",
    "chunk_plans",
    "expected_shapes",
    "format_lines",
    "format_report",
    "memory_checks",
    "read_tokens",
    "rehearse_sampling",
    "rehearse_training",
    "run_preflight",
    "slurm_partitions",
    "stage_launchers",
    "write_throughput",
]
