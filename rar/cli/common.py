"""What every group of subcommands shares: the help formatter, the study config flag, the
launcher flags (generated from rar.settings.stages.LauncherConfig) and path and logging helpers."""

from __future__ import annotations

import argparse

from rar.settings.options import add_options
from rar.settings.stages import LauncherConfig


class Formatter(argparse.HelpFormatter):
    """Defaults in the help, and descriptions wrapped paragraph by paragraph, so that the
    example after a blank line stays on a line of its own.

    "(default: X)" is appended only where it says something: not when the help text already
    speaks of its default ("(default: the model's)"), not for a switch, and not when X is None,
    False or empty (a required option, an unset override, an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "(default" in text
            or action.nargs == 0  # a switch: its flag says what it changes
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


def add_config_flag(p: argparse.ArgumentParser) -> None:
    """The study config of every command that reads a study (plan, report, status, ...)."""
    p.add_argument("--config", default="config/config.yaml", help="study config (YAML)")


def read_study(path: str, root: str | None = None):
    """The study of config file `path` (its trunks planned against what `root`'s results/
    holds, when given); its StudyError (naming the file and key) reaches `main`, which prints
    it as this command's error."""
    from rar.experiments import load_study_file

    return load_study_file(path, root=root)


# The LauncherConfig keys a heavy stage's flags override (the rest: --launcher-config's file).
LAUNCHER_OPTIONS = (
    "partition",
    "account",
    "qos",
    "nodes",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "time_min",
    "max_requeues",
)


def add_launcher_flags(p: argparse.ArgumentParser) -> None:
    """Where a heavy stage runs (rar.ops.launch): a config file plus the common overrides."""
    g = p.add_argument_group(
        "launcher",
        "where the stage runs (rar.settings.stages.LauncherConfig); a flag left unset keeps the "
        "value "
        "of --launcher-config, else LauncherConfig's default",
    )
    add_options(g, LauncherConfig, ["backend"], overrides=True)
    g.add_argument(
        "--launcher-config", default=None, help="YAML of LauncherConfig keys (e.g. a profile's)"
    )
    add_options(g, LauncherConfig, LAUNCHER_OPTIONS, overrides=True)


def launcher_from_args(args: argparse.Namespace) -> LauncherConfig:
    """The LauncherConfig of --launcher-config plus the flags; ValueError naming the file or
    key at fault when they are invalid."""
    try:
        base = LauncherConfig.load(args.launcher_config) if args.launcher_config else None
        changes = {key: getattr(args, key) for key in ("backend", *LAUNCHER_OPTIONS)}
        return (base or LauncherConfig()).override(**changes)
    except (OSError, ValueError) as err:
        raise ValueError(f"launcher settings: {err}") from err


def absolute(path: str | None) -> str | None:
    """An absolute path: a launched job may start in another directory."""
    from pathlib import Path

    return str(Path(path).resolve()) if path else None


def setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
