"""Subcommands of a study as a whole, all torch-free: plan, preflight, fetch, status, report,
and profile (install a Snakemake profile)."""

from __future__ import annotations

import argparse

from rar.cli.common import Formatter, add_config_flag, read_study
from rar.settings.stages import BACKENDS


def add_plan(sub: argparse._SubParsersAction) -> None:
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
        formatter_class=Formatter,
    )
    add_config_flag(p)
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
    p.add_argument(
        "--root",
        default=".",
        help="folder the study's results/ is under: the plan counts what is on disk there "
        "(a trunk's kept checkpoints, finished runs) as the workflow does",
    )
    p.add_argument(
        "--table",
        action="append",
        default=None,
        metavar="NAME",
        help="only what table NAME needs, as `snakemake results/NAME.csv` trains it (its runs, "
        "and a trunk up to its rows' branch points); repeat for several",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=0,
        help="print the wall-clock time of the training on this many GPUs (the trunk's "
        "segments run one after another, each branch after its segment)",
    )
    p.add_argument(
        "--gpus-per-run",
        type=int,
        default=8,
        help="GPUs a training job uses (profiles/slurm/train.yaml: nodes x gpus_per_node)",
    )
    p.set_defaults(handler=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    import json

    from rar.experiments import format_plan, measured_throughput, plan_dict

    study = read_study(args.config, args.root)
    measured = measured_throughput(study, args.throughput)
    plan = plan_dict(study, measured) if args.json else None
    if plan is None:
        plan = format_plan(
            study, measured, tables=args.table, gpus=args.gpus, gpus_per_run=args.gpus_per_run
        )
    print(json.dumps(plan, indent=1) if args.json else plan)
    return 0


def add_preflight(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preflight",
        help="rehearse the whole grid at toy scale through the profile; check every resource",
        description=(
            "Before the grid: check that every file the config names exists, loads and is "
            "the expected thing (released RAR and MaskGIT-VQGAN state dicts, Inception weights, "
            "ADM's reference batch), that ImageNet's folder is complete, that each stage's "
            "launcher settings fit the cluster (partition, GPUs, nodes, time limit); then run "
            "every stage once at toy scale through the same launcher settings as the grid: a "
            "handful of images tokenized, a few steps of the study's model size on the study's "
            "layout (DDP, precision, compile) with one forced requeue whose resumed run must "
            "match an uninterrupted one, a few images sampled, scored, a table made; then that "
            "every table's sampling chunk fits the memory of the GPU the sample job ran on "
            "(KV cache, weights, decoding; skipped without a GPU). Writes "
            "OUT/report.md (one line per check: PASS / FAIL / SKIP, what was measured, the "
            "fix) and OUT/throughput.json (training and sampling images/s per GPU, which "
            "`rar plan` then uses for its GPU-hours). Exits 1 when a check fails.\n\n"
            "example: rar preflight --config config/config.yaml --profile slurm"
        ),
        formatter_class=Formatter,
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
        choices=BACKENDS,
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
        Path(__file__).resolve().parents[2] / "profiles" / profile,
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

    from rar.ops.preflight import Scale, format_lines, run_preflight

    profile = _profile_settings(args.profile) if args.profile else {}
    if args.config_json is not None:
        from rar.experiments import load_study

        study = load_study(json.loads(args.config_json), source="--config-json")
        config_file = "<your study config>"
    else:
        config_file = args.config or profile.get("configfile") or "config/config.yaml"
        study = read_study(config_file)
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


class _ResourceKeys(argparse._StoreAction):
    """`rar fetch --only`: its help lists every key of the registry
    (rar.experiments.resources.RESOURCES), read when the help is shown: that module's package
    imports numpy, which building the parser must not."""

    @property
    def help(self) -> str:
        from rar.experiments.resources import RESOURCES

        return f"fetch only these (of those the study needs): {' '.join(RESOURCES)}"

    @help.setter
    def help(self, value) -> None:  # argparse.Action.__init__ sets it; the property rules
        pass


def add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch",
        help="download the weights and reference files a study needs (resumable, verified)",
        description=(
            "Download what the study config names into its paths (resources/ by default): "
            "released weights from the Hugging Face Hub ($HF_ENDPOINT), the other files from "
            "their URLs (`--list` names each). Each file downloads to <file>.part with a "
            "progress bar, resumes "
            "from there when cut (run the command again), and is renamed into place only "
            "after its size and sha256 (the Hub's, or the published prefix) and content check "
            "out. Files already there are checked and kept. Offline, it fails at once and "
            "lists each file, its URL and where to put it.\n\n"
            "example: rar fetch --config config/config.yaml --only maskgit_vqgan inception"
        ),
        formatter_class=Formatter,
    )
    add_config_flag(p)
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="KEY",
        action=_ResourceKeys,
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
    from rar.ops.fetch import fetch, plan  # torch-free

    study = read_study(args.config)
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


def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="one table of every run and evaluation of a study: stage, epochs, jobs, ETA",
        description=(
            "For each row of the study's tables (then curve points and trunks): its stage "
            "(waiting / training / sampling / evaluating / done / failed), epochs done of "
            "planned (and the trunk checkpoint a branch waits on; a trunk between two segments, "
            "its next one), the current r and loss, the "
            "job and its SLURM state (one sacct/squeue call for all jobs; without SLURM the job "
            "records' own states, marked '?'), requeues, GPU-hours used (CPU-h for jobs that ran "
            "without a GPU, as the job record says) and an ETA from the run's recent throughput; "
            "then GPU-hours used against `rar plan`'s figure, runs done, and each failure with "
            "its reason (failure.txt) and the end of its log, and any data set made from another "
            "source than this study's (source.json). Reads only what the stages write; "
            "torch-free. Exits 1 when any row has failed or a data set is refused (with "
            "--watch: at the last redraw), else 0.\n\n"
            "example: rar status --config config/demo.yaml --watch 30"
        ),
        formatter_class=Formatter,
    )
    add_config_flag(p)
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

    from rar.ops.status import collect, format_status, watch

    study = read_study(args.config, args.root)

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


def add_report(sub: argparse._SubParsersAction) -> None:
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
        formatter_class=Formatter,
    )
    add_config_flag(p)
    p.add_argument("--table", action="append", help="table(s) to make (default: all)")
    p.add_argument("--root", default=".", help="folder the study's results/ is under")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rar.report import make_table_or_partial

    study = read_study(args.config)
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
        make_table_or_partial(
            table=table,
            rows=rows,
            metrics=[root / m for m in study.metrics_files(table)],
            folder=root / study.prefix,
        )
    return 0


def add_profile(sub: argparse._SubParsersAction) -> None:
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
        formatter_class=Formatter,
    )
    p.add_argument("action", choices=["install"], help="what to do")
    p.add_argument("name", help="a folder of profiles/ (slurm, local, demo)")
    p.add_argument(
        "--dest", default="~/.config/snakemake", help="where Snakemake looks for profiles"
    )
    p.set_defaults(handler=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "profiles" / args.name
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
