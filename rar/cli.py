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
import sys
from collections.abc import Callable, Sequence

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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    p.set_defaults(handler=_run_bench_sample)


def _run_bench_sample(args: argparse.Namespace) -> int:
    from rar.bench import bench_sample  # heavy import: torch

    bench_sample(
        model=args.model,
        batch_size=args.batch_size,
        steps=args.steps,
        dtype=args.dtype,
        device=args.device,
        guidance_scale=args.guidance_scale,
        decoder=args.decoder,
        compile=args.compile,
        csv_path=args.csv,
    )
    return 0


# ------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_bench_sample,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rar",
        description=(
            "Reproducible experiment pipeline for Randomized Autoregressive visual generation "
            "(RAR, arXiv 2411.00776). Each subcommand is one pipeline stage; `rar CMD --help` "
            "gives its defaults and an example."
        ),
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
