"""Subcommands from images to token shards: make-demo-data, train-tokenizer, tokenize,
verify-shards, bench-loader."""

from __future__ import annotations

import argparse
import dataclasses

from rar.cli.common import (
    Formatter,
    absolute,
    add_launcher_flags,
    launcher_from_args,
    setup_logging,
)
from rar.demo import CROP_SCALE
from rar.settings.options import add_options, option_values
from rar.settings.presets import CROP_MODES
from rar.settings.stages import TokenizerTraining

# The flags of `rar train-tokenizer` that are TokenizerTraining's fields (a study's
# tokenizer.train keys, beside `downsample`).
TOKENIZER_TRAINING = tuple(f.name for f in dataclasses.fields(TokenizerTraining))


def add_make_demo_data(sub: argparse._SubParsersAction) -> None:
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
        formatter_class=Formatter,
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
        default=CROP_SCALE,
        help="side of a crop as a fraction of the photo's short side, drawn uniformly",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_run_make_demo_data)


def _run_make_demo_data(args: argparse.Namespace) -> int:
    from rar.demo.data import make_demo_dataset  # needs scikit-image

    make_demo_dataset(
        args.out,
        num_classes=args.num_classes,
        images_per_class=args.images_per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        image_size=args.image_size,
        crop_scale=tuple(args.crop_scale),
        seed=args.seed,
    )
    return 0


def add_train_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-tokenizer",
        help="train the small VQ tokenizer of the offline demo on a class-folder image set",
        description=(
            "Train rar.demo.vq's convolutional VQ autoencoder (the demo's tokenizer, or one for "
            "your own small data set) on <images>/<class>/<file>, save it for rar tokenize / "
            "rar sample, and write its reconstruction quality (PSNR, codebook usage) as JSON.\n\n"
            "example: rar train-tokenizer --images results/demo/images/train "
            "--out results/demo/tokenizer/vq_demo.pt --quality results/demo/tokenizer/quality.json"
        ),
        formatter_class=Formatter,
    )
    p.add_argument("--images", required=True, help="class-folder training images")
    p.add_argument("--val-images", default=None, help="held-out images for the quality report")
    p.add_argument("--out", required=True, help="tokenizer checkpoint to write")
    p.add_argument("--quality", default=None, help="JSON report to write")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument("--codebook-size", type=int, default=256, help="number of codes")
    p.add_argument("--downsample", type=int, choices=[4, 8], default=4, help="pixels per token")
    add_options(p, TokenizerTraining, TOKENIZER_TRAINING)
    p.set_defaults(handler=_run_train_tokenizer)


def _run_train_tokenizer(args: argparse.Namespace) -> int:
    from rar.demo.vq import VQDemoConfig, train_tokenizer_from_folder

    sizes = {"image_size": args.image_size, "codebook_size": args.codebook_size}
    cfg = VQDemoConfig.with_downsample(args.downsample, **sizes)
    training = TokenizerTraining(**option_values(args, TokenizerTraining, TOKENIZER_TRAINING))
    folders = {"quality": args.quality, "val_images": args.val_images}
    train_tokenizer_from_folder(args.images, args.out, **folders, config=cfg, training=training)
    return 0


def add_tokenize(sub: argparse._SubParsersAction) -> None:
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
        formatter_class=Formatter,
    )
    p.add_argument("--images", required=True, help="folder holding <wnid>/<file> class folders")
    p.add_argument("--out", required=True, help="shard directory to write")
    p.add_argument("--tokenizer", required=True, help="tokenizer file (rar.model.tokenizer)")
    p.add_argument("--grid", type=int, help="tokens a side (default: the tokenizer's own)")
    p.add_argument(
        "--crop",
        choices=CROP_MODES,
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
    add_launcher_flags(p)
    p.set_defaults(handler=_run_tokenize)


def _run_tokenize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.data.tokenize import parse_parts, tokenize_images  # heavy import: torch
    from rar.experiments.records import job_record_for
    from rar.ops.launch import launch

    launcher = launcher_from_args(args)
    setup_logging()
    out = Path(args.out).resolve()
    job = "all" if args.job_index is None else f"{args.job_index}_of_{args.num_jobs}"
    summary = launch(
        tokenize_images,
        absolute(args.images),
        str(out),
        launcher=launcher,
        record=job_record_for(out / "jobs" / str(job)),
        name=f"tokenize_{out.name}_{job}",
        tokenizer=absolute(args.tokenizer),
        grid=args.grid,
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


def add_verify_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify-shards",
        help="check a token shard directory against its manifest",
        description=(
            "Check every shard listed in <dir>/manifest.json: exists, size, sha256, sample "
            "count. Exits 1 and lists each bad shard with the `rar tokenize` command that "
            "re-creates it.\n\n"
            "example: rar verify-shards results/data/imagenet-maskgit"
        ),
        formatter_class=Formatter,
    )
    p.add_argument("dir", help="shard directory (holds manifest.json)")
    p.add_argument("--no-sha256", action="store_true", help="skip hashing (sizes, counts only)")
    p.set_defaults(handler=_run_verify_shards)


def _run_verify_shards(args: argparse.Namespace) -> int:
    from rar.data.shards import verify_shards  # torch-free

    report = verify_shards(args.dir, check_sha256=not args.no_sha256)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


def add_bench_loader(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-loader",
        help="measure the token loader's throughput (samples/s)",
        description=(
            "Stream batches from a token shard directory for --seconds (after one warm-up "
            "batch) and print samples/s. After `make demo`, the demo's data set is "
            "results/data/demo-vq_demo-center_flip.\n\n"
            "example: rar bench-loader results/data/demo-* --workers 2 --seconds 10"
        ),
        formatter_class=Formatter,
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
