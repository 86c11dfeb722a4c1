"""The `rar` command line: one subcommand per pipeline stage, listed in `COMMANDS`.

A package of one module per group of stages (data, training, sampling, study) plus what they
share (common): 19 subcommands did not read well as one 1,500-line file. This package stays
torch-free at import time (`rar --help` and `rar plan` must answer at once, and Snakemake parses
the workflow without torch): each handler imports the heavy module it needs inside its body,
and the flags generated from settings dataclasses read them from rar.settings.stages (the demo
tokenizer's from rar.demo), which are torch-free.

Adding a subcommand: in the module of its group, write `add_<name>(subparsers)`, which builds
the parser, with defaults and an example in its description, and sets `handler=` to a function
taking the parsed namespace; then list it in `COMMANDS`. Settings with a default and a help of
their own are fields of a dataclass in rar.settings.stages (a demo stage's in rar.demo), added with
rar.settings.options.add_options.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from rar.cli import data, sampling, study, training
from rar.cli.common import Formatter
from rar.cli.study import _profile_settings  # noqa: F401  (tests/test_preflight.py)

# The table of commands, in the order `rar --help` lists them.
__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    study.add_report,
    study.add_profile,
    study.add_plan,
    study.add_preflight,
    study.add_fetch,
    study.add_status,
    data.add_train_tokenizer,
    sampling.add_bench_sample,
    training.add_bench_train,
    training.add_train,
    data.add_tokenize,
    data.add_verify_shards,
    data.add_make_demo_data,
    data.add_bench_loader,
    sampling.add_sample,
    sampling.add_sweep_guidance,
    sampling.add_evaluate,
    training.add_init_checkpoint,
    sampling.add_reconstruct,
)


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
    (
        "rar.evaluation.extractors",
        "ExtractorUnavailable",
    ),  # weights to bring (the message names the file)
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
    error). A launched job's failure (rar.ops.launch.LaunchError, whose text holds the job's
    traceback) becomes its first line, the exception that stopped the job, and the job's log."""
    text = str(err).strip()
    launch_error = _loaded("rar.ops.launch", "LaunchError")
    if launch_error is not None and isinstance(err, launch_error):
        from rar.experiments.records import failure_reason  # torch-free

        head, _, rest = text.partition("\n")
        if rest:
            text = f"{head.rstrip(':')}: {failure_reason(text)}"
        log = getattr(err, "log", None)
        return f"{text} (job log: {log})" if log else text
    if not text or isinstance(err, KeyError) or exit_code(err) == 1:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


class _Version(argparse.Action):
    """--version, looked up only when asked: importlib.metadata would cost every `rar --help`
    a sixth of its time."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        kwargs.setdefault("help", "show program's version number and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser._print_message(f"{parser.prog} {_version()}\n", sys.stdout)
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rar-pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


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
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in COMMANDS:
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
