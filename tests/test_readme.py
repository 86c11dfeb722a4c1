"""README.md cannot drift from the `rar` command line: every `rar ...` command it shows parses.

Commands in fenced code blocks are run with `--help` appended (argparse then checks the
subcommand, the choices and the types of the values given before it, and exits 0); since
argparse reports unknown flags only after `--help` has exited, each `--flag` a command shows,
in a code block or inline, is also looked up in its subcommand's help.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from rar.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def fenced_commands(text: str) -> list[str]:
    """The `rar ...` lines of the fenced code blocks, backslash continuations joined."""
    commands, in_block, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        line = pending + line.strip().removeprefix("$ ")
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
        elif line.startswith("rar ") or line == "rar":
            commands.append(line)
    return commands


def inline_commands(text: str) -> list[str]:
    """The `rar ...` inline code spans of the prose that name a subcommand or a global flag
    (not e.g. `rar <command>: error: ...`, which shows an output)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    spans = re.findall(r"`(rar(?: [^`]*)?)`", prose)
    return [s for s in spans if re.fullmatch(r"rar(?: (?:[a-z][a-z-]*|-[^ ]*)(?: .*)?)?", s)]


def _subcommand(words: list[str]) -> str | None:
    """The subcommand of `rar WORDS...`: its first word that is not a flag."""
    return next((w for w in words[1:] if not w.startswith("-")), None)


def _help(command: str) -> str:
    """The --help text of the subcommand a command runs (the top level's when it has none)."""
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    name = _subcommand(shlex.split(command))
    return sub.choices[name].format_help() if name in sub.choices else parser.format_help()


TEXT = README.read_text()
FENCED = list(dict.fromkeys(fenced_commands(TEXT)))
INLINE = list(dict.fromkeys(inline_commands(TEXT)))


def test_the_readme_shows_commands():
    assert len(FENCED) >= 6 and len(INLINE) >= 10
    assert any(c.startswith("rar make-demo-data") for c in INLINE)


@pytest.mark.parametrize("command", FENCED)
def test_fenced_command_parses(command):
    with pytest.raises(SystemExit) as exit:
        main([*shlex.split(command)[1:], "--help"])
    assert exit.value.code == 0, command


@pytest.mark.parametrize("command", list(dict.fromkeys(FENCED + INLINE)))
def test_flags_shown_exist(command):
    text = _help(command)
    name = _subcommand(shlex.split(command))
    if name is not None and re.fullmatch(r"[a-z][a-z-]*", name):  # not a <placeholder>
        assert f"usage: rar {name} " in text, f"README shows `{command}`: no subcommand {name!r}"
    for flag in FLAG.findall(command):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
            f"README shows `{command}`, but `{flag}` is not in its --help"
        )


def test_the_extractor_finds_what_it_should():
    text = "`rar plan [--config c.yaml]` `rar <command>: error: x`\n```\nrar a \\\n  --b c\n```"
    assert fenced_commands(text) == ["rar a --b c"]
    assert inline_commands(text) == ["rar plan [--config c.yaml]"]


# -- the report's front page ------------------------------------------------------------------

WORKFLOW_RST = README.parent / "workflow/report/workflow.rst"


@pytest.mark.parametrize("config", ["config/config.yaml", "config/demo.yaml"])
def test_the_report_front_page_renders_its_sections(config):
    """workflow/report/workflow.rst, rendered as `snakemake --report` renders it (Jinja with
    trim_blocks and lstrip_blocks, then reStructuredText): its sections are titles and the
    tables a bullet list, not one paragraph."""
    import docutils.core
    import jinja2
    import yaml

    study = yaml.safe_load((README.parent / config).read_text())
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    snakemake = argparse.Namespace(config=study)
    text = env.from_string(WORKFLOW_RST.read_text()).render(snakemake=snakemake, files=[])
    tree = docutils.core.publish_doctree(text, settings_overrides={"report_level": 5})
    titles = [node.astext() for node in tree.findall() if node.tagname == "title"]
    assert titles[1:] == ["The tables", "How to read them"], titles
    tables = next(node for node in tree.findall() if node.tagname == "bullet_list")
    assert len(tables.children) == len(study["tables"]), tables.astext()
