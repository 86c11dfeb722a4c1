"""Subcommands of training: train (or resume, or branch) a run, init-checkpoint (the untrained
row), bench-train."""

from __future__ import annotations

import argparse

from rar.cli.common import Formatter, add_launcher_flags, launcher_from_args


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train (or resume) one run from its YAML config",
        description=(
            "Train the run described by --config (every key of "
            "rar.settings.training.TrainConfig; see "
            "config/README.md) on its token shards, writing checkpoints/, metrics.csv and "
            "config.yaml into --workdir. Resumes from WORKDIR/checkpoints/last.pt when it "
            "exists, bit-identically on CPU. --init-from branches from another run's named "
            "checkpoint: allowed when the two configs differ only in anneal_start/anneal_end/"
            "target_order/checkpoint_epochs and the checkpoint is at or before this run's "
            "anneal start. Under torchrun or srun, every process runs this command (DDP).\n\n"
            "example: rar train --config results/runs/ab12cd34ef56/config.yaml "
            "--workdir results/runs/ab12cd34ef56"
        ),
        formatter_class=Formatter,
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
        help="settings outside the run's identity (rar.settings.training.OUTSIDE_IDENTITY: "
        "checkpoints "
        "kept, logging) over --config's, as a JSON object; the workflow passes the study's "
        "current ones, so editing them never rewrites the run's config or retrains it",
    )
    add_launcher_flags(p)
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rar.experiments.records import JOB_RECORD, checkpoint_name
    from rar.ops.launch import TrainJob, launch

    launcher = launcher_from_args(args)
    workdir = Path(args.workdir).resolve()
    try:
        settings = json.loads(args.settings) if args.settings else None
    except json.JSONDecodeError as err:
        raise ValueError(f"--settings: not JSON ({err}): {args.settings!r}") from None
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"--settings: expected a JSON object, got {args.settings!r}")
    if launcher.backend == "debug":
        from rar.training.loop import run as job  # in this process, exactly as without a launcher
    else:
        job = (
            TrainJob()
        )  # rar.training.loop.run in a job that saves last.pt and requeues on timeout
    final = launch(
        job,
        str(Path(args.config).resolve()),  # the job may start in another directory
        str(workdir),
        init_from=str(Path(args.init_from).resolve()) if args.init_from else None,
        device=args.device,
        until_epoch=args.until_epoch,
        settings=settings,
        launcher=launcher,
        record=workdir / JOB_RECORD,
        name=f"train_{workdir.name}",
        # the checkpoint it ends with (a segment's may be final.pt: then the new job returns it)
        outputs=[workdir / "checkpoints" / checkpoint_name(args.until_epoch)],
    )
    print(f"done: {final}", flush=True)
    return 0


def add_init_checkpoint(sub: argparse._SubParsersAction) -> None:
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
        formatter_class=Formatter,
    )
    p.add_argument("--config", required=True, help="the run's config.yaml (rar.settings.training)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.set_defaults(handler=_run_init_checkpoint)


def _run_init_checkpoint(args: argparse.Namespace) -> int:
    from rar.sampling.reference_rows import write_untrained_checkpoint

    write_untrained_checkpoint(args.config, args.out)
    return 0


def add_bench_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-train",
        help="measure training throughput (tokens/s, images/s, MFU on a GPU)",
        description=(
            "Time optimizer steps of the training recipe (random permutations, AdamW, "
            "gradient clipping, bf16 autocast on GPU) on random tokens, and print tokens/s, "
            "images/s and, on a GPU, model FLOPs utilisation, with the machine and settings. "
            "Several --batch-size values time each micro-batch, smallest first until one runs "
            "out of memory, and name the fastest that fits (a study's `train: {micro_batch}`)."
            "\n\n"
            "example: rar bench-train --model rar_tiny --batch-size 64 --steps 5\n"
            "example: rar bench-train --model rar_l --batch-size 16 32 64 128 --compile"
        ),
        formatter_class=Formatter,
    )
    p.add_argument(
        "--model", default="rar_tiny", help="named model size (see rar.model.transformer)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[64],
        help="samples per optimizer step on the device (the micro-batch); several: each",
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="autocast dtype; auto = bf16 on GPU, fp32 on CPU",
    )
    p.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', or 'auto'")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--csv", default=None, help="append the result as a row to this CSV file")
    p.set_defaults(handler=_run_bench_train)


def _run_bench_train(args: argparse.Namespace) -> int:
    from rar.ops.bench import bench_micro_batches

    bench_micro_batches(
        args.batch_size,
        model=args.model,
        steps=args.steps,
        dtype=args.dtype,
        device=args.device,
        compile=args.compile,
        csv_path=args.csv,
    )
    return 0
