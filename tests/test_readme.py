"""The documents cannot drift from the repository: every command they show runs as shown, and
every file they cite exists.

The documents are README.md, docs/*.md, config/README.md and ARCHITECTURE.md. In their fenced
code blocks:

- every `rar ...` command is run with `--help` appended (argparse then checks the subcommand,
  the choices and the types of the values given before it, and exits 0); since argparse
  reports unknown flags only after `--help` has exited, each `--flag` a command shows, in a
  code block or inline, is also looked up in its subcommand's help;
- every `snakemake ...` command parses with Snakemake's own argument parser, names a profile
  that exists (a folder, or a name under profiles/ that `rar profile install` installs) and
  targets that a rule of the workflow produces (under config/config.yaml or the demo's
  config/demo.yaml);
- every `make X` names a target of the Makefile;

In the whole text, code blocks included, every file a document cites (a relative link, a path
into one of the repository's folders, an upper-case `NAME.md`, a path that climbs out with
`../`) must be in the repository (a glob matches something; a link's #anchor names a
heading of its page): a document describes this repository and nothing beside it.

Each check is one test that lists every offender, in every document, at once.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import io
import re
import shlex
from pathlib import Path

import pytest

from rar.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = [
    README,
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "config/README.md",
    REPO / "ARCHITECTURE.md",
]
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
# The repository's own top-level folders: a path into one of them must exist.
FOLDERS = ("benchmarks", "config", "docs", "profiles", "rar", "tests", "tools", "workflow")
# Files that a stage writes, named bare in the documents (not files of the repository).
GENERATED = re.compile(r"SOURCES\.md|benchmarks/demo/.*")


def fenced_lines(text: str) -> list[str]:
    """The lines of the fenced code blocks, backslash continuations joined, `$ ` and the
    `.venv/bin/` prefix removed, comments cut."""
    lines, in_block, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        line = pending + line.strip().removeprefix("$ ").removeprefix(".venv/bin/")
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
        elif line and not line.startswith("#"):
            lines.append(re.sub(r"\s+#\s.*$", "", line))
    return lines


def fenced_commands(text: str, program: str = "rar") -> list[str]:
    """The `PROGRAM ...` lines of the fenced code blocks."""
    commands = [c for c in fenced_lines(text) if c == program or c.startswith(program + " ")]
    # Not an output line a block shows beside its command: `rar plan: error: ...`.
    return [c for c in commands if not re.match(rf"{program} [a-z-]+: ", c)]


def inline_commands(text: str) -> list[str]:
    """The `rar ...` inline code spans of the prose that name a subcommand or a global flag
    (not e.g. `rar <command>: error: ...`, which shows an output), line breaks made spaces."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    spans = [" ".join(s.split()) for s in re.findall(r"`(rar(?:\s[^`]*)?)`", prose)]
    return [s for s in spans if re.fullmatch(r"rar(?: (?:[a-z][a-z-]*|-[^ ]*)(?: .*)?)?", s)]


def inline_snakemake(text: str) -> list[str]:
    """The `snakemake ...` inline code spans of the prose, line breaks made spaces."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return [" ".join(s.split()) for s in re.findall(r"`(snakemake [^`]*)`", prose)]


def _subcommand(words: list[str]) -> str | None:
    """The subcommand of `rar WORDS...`: its first word that is not a flag."""
    return next((w for w in words[1:] if not w.startswith("-")), None)


def _help(command: str) -> str:
    """The --help text of the subcommand a command runs (the top level's when it has none)."""
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    name = _subcommand(shlex.split(command))
    return sub.choices[name].format_help() if name in sub.choices else parser.format_help()


def _name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


TEXTS = {_name(page): page.read_text() for page in DOCUMENTS}


def _each(extract) -> list:
    """(document, item) for each item `extract` finds in a document, once per document."""
    return [(doc, item) for doc, text in TEXTS.items() for item in dict.fromkeys(extract(text))]


FENCED = _each(fenced_commands)
INLINE = _each(inline_commands)
SNAKEMAKE = _each(lambda text: fenced_commands(text, "snakemake") + inline_snakemake(text))
MAKE = _each(lambda text: fenced_commands(text, "make"))


def test_the_documents_show_commands():
    assert len(FENCED) >= 6 and len(INLINE) >= 10 and len(SNAKEMAKE) >= 3
    assert any(c.startswith("rar make-demo-data") for _, c in INLINE)
    assert {doc for doc, _ in FENCED} >= {"docs/stages.md", "config/README.md"}
    assert {doc for doc, _ in SNAKEMAKE} >= {"README.md", "docs/demo.md"}


def _offenders(check, items) -> list[str]:
    """Every message `check(doc, item)` returns for the (document, item) pairs."""
    return [message for doc, item in items for message in check(doc, item)]


def _parse_failure(doc: str, command: str) -> list[str]:
    """Why `command --help` does not exit 0 (argparse's error line), if it does not."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main([*shlex.split(command)[1:], "--help"])
        except SystemExit as exit:
            if exit.code == 0:
                return []
            return [f"{doc} shows `{command}` (exit {exit.code}): {err.getvalue().strip()}"]
    return [f"{doc} shows `{command}`: --help did not exit"]


def test_fenced_commands_parse():
    failures = _offenders(_parse_failure, FENCED)
    assert not failures, "commands that do not parse:\n" + "\n".join(failures)


def _unknown(doc: str, command: str) -> list[str]:
    """What `command` shows that its --help lacks: the subcommand, or flags."""
    text = _help(command)
    name = _subcommand(shlex.split(command))
    named = name is not None and re.fullmatch(r"[a-z][a-z-]*", name)  # not a <placeholder>
    if named and f"usage: rar {name} " not in text:
        return [f"{doc} shows `{command}`: no subcommand {name!r}"]
    return [
        f"{doc} shows `{command}`, but `{flag}` is not in its --help"
        for flag in FLAG.findall(command)
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)
    ]


def test_flags_shown_exist():
    unknown = _offenders(_unknown, dict.fromkeys(FENCED + INLINE))
    assert not unknown, "\n".join(unknown)


# -- snakemake and make ---------------------------------------------------------------------


@functools.cache
def _rules(configfile: str) -> list:
    """The rules of a study's workflow (the Snakefile parsed, no DAG built)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[REPO / configfile]),
            snakefile=REPO / "Snakefile",
            workdir=REPO,
        )
        return list(workflow._workflow.rules)


def _produced(target: str) -> bool:
    """Whether a rule of the paper's or the demo's workflow makes `target`."""
    return any(
        rule.is_producer(target)
        for configfile in ("config/config.yaml", "config/demo.yaml")
        for rule in _rules(configfile)
    )


def _snakemake_failures(doc: str, command: str) -> list[str]:
    """What keeps `command` from running as shown: it does not parse, a profile or a target."""
    from snakemake.cli import get_argument_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = get_argument_parser().parse_args(shlex.split(command)[1:])
    except SystemExit:
        return [f"{doc} shows `{command}`: Snakemake does not parse it"]
    failures = []
    profiles = args.profile if isinstance(args.profile, list) else [args.profile]
    for profile in (Path(p) for p in profiles if p is not None):
        found = (REPO / profile / "config.yaml").exists() or (
            len(profile.parts) == 1 and (REPO / "profiles" / profile / "config.yaml").exists()
        )
        if not found:
            failures.append(f"{doc} shows `{command}`: no profile {profile}")
    failures += [
        f"{doc} shows `{command}`: no rule makes {target}"
        for target in args.targets or []
        if not _produced(target)
    ]
    return failures


def test_snakemake_commands_run_as_shown():
    failures = _offenders(_snakemake_failures, SNAKEMAKE)
    assert not failures, "\n".join(failures)


def test_the_target_check_tells_a_target_from_a_typo():
    assert _produced("results/table2.csv") and _produced("results/demo/table3.csv")
    assert not _produced("results/tabel2.csv")


def _missing_targets(doc: str, command: str) -> list[str]:
    makefile = (REPO / "Makefile").read_text()
    return [
        f"{doc} shows `{command}`: the Makefile has no target {target}"
        for target in shlex.split(command)[1:]
        if not re.search(rf"^{re.escape(target)}:", makefile, re.M)
    ]


def test_make_targets_exist():
    missing = _offenders(_missing_targets, MAKE)
    assert not missing, "\n".join(missing)


# -- files ----------------------------------------------------------------------------------

PATH = re.compile(
    rf"(?<![\w/.~-])(?:(?:{'|'.join(FOLDERS)})/[\w./*<>{{}}-]*|(?:\.\./)+[\w./-]+"
    r"|[A-Z][A-Z_]+\.md)"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _exists(path: str, base: Path = REPO) -> bool:
    """Whether the repository holds `path` (a glob: anything), read from `base`."""
    path = path.rstrip(".,;:")
    if re.search(r"[<>{}]|\.\.\.|/[A-Z]+(/|$)", path):  # a placeholder: RUN, <run>, {run}
        return True
    target = (base / path).resolve()
    if REPO not in (target, *target.parents):
        return False
    return bool(glob.glob(str(target))) if "*" in path else target.exists()


def _anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them."""
    headings = re.findall(
        r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M
    )
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def cited_files(text: str) -> list[str]:
    """The files a document cites: paths into the repository's folders, `NAME.md` and paths
    that start with `../`, anywhere in its text (those, like relative links, are checked from
    the document's folder: one that leaves the repository is missing)."""
    return list(dict.fromkeys(m.group(0).rstrip(".,;:") for m in PATH.finditer(text)))


def _missing_files(doc: str) -> list[str]:
    """The files `doc` cites that the repository does not hold, and its broken links."""
    text = TEXTS[doc]
    here = (REPO / doc).parent
    missing = [
        path
        for path in cited_files(text)
        if not GENERATED.fullmatch(path)
        and not _exists(path, here if path.startswith("../") else REPO)
    ]
    for link in LINK.findall(text):
        path, _, anchor = link.partition("#")
        if re.match(r"[a-z]+:", path):
            continue
        target = (REPO / doc).parent / path if path else REPO / doc
        if (path and not _exists(path, (REPO / doc).parent)) or (
            anchor and target.suffix == ".md" and anchor not in _anchors(target)
        ):
            missing.append(link)
    return [f"{doc} cites {path}" for path in missing]


def test_documents_cite_only_files_the_repository_holds():
    missing = [message for doc in TEXTS for message in _missing_files(doc)]
    assert not missing, "cited, but not in the repository:\n" + "\n".join(missing)


def test_the_checks_report_what_they_should():
    doc = "README.md"
    assert _parse_failure(doc, "rar plan --config c.yaml") == []
    assert "invalid choice: 'no-such'" in _parse_failure(doc, "rar no-such")[0]
    assert _unknown(doc, "rar plan --config c.yaml") == []
    assert _unknown(doc, "rar plan --no-such-flag") == [
        "README.md shows `rar plan --no-such-flag`, but `--no-such-flag` is not in its --help"
    ]
    assert _unknown(doc, "rar no-such") == [
        "README.md shows `rar no-such`: no subcommand 'no-such'"
    ]
    assert _missing_targets(doc, "make test nothing") == [
        "README.md shows `make test nothing`: the Makefile has no target nothing"
    ]
    assert _snakemake_failures(doc, "snakemake --no-such-flag") == [
        "README.md shows `snakemake --no-such-flag`: Snakemake does not parse it"
    ]


def test_the_extractors_find_what_they_should():
    text = "`rar plan [--config c.yaml]` `rar <command>: error: x`\n```\nrar a \\\n  --b c\n```"
    assert fenced_commands(text) == ["rar a --b c"]
    assert inline_commands(text) == ["rar plan [--config c.yaml]"]
    assert inline_commands("`rar\n  plan --table t`") == ["rar plan --table t"]
    text = (
        "See DESIGN.md, `../beside/x.csv` and rar/model/transformer.py; not https://x.org/docs/y."
    )
    assert cited_files(text) == ["DESIGN.md", "../beside/x.csv", "rar/model/transformer.py"]
    assert not _exists("../beside/x.csv") and _exists("../benchmarks/gpu.sh", REPO / "docs")
    assert not _exists("DESIGN.md") and _exists("profiles/slurm/*.yaml")
    assert _exists("config/RUN/config.yaml") and not _exists("config/run/config.yaml")
    assert {"the-demos-result", "run-your-own-config"} <= _anchors(README)


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


# Every `rar.<module>[.<name>]` a document or a docstring names is a module or an attribute of
# one: a moved module or a renamed function leaves no stale name behind. File names that start
# with "rar." (the official `rar.yaml`, `modeling/rar.py`) are not names of this package.
NAMED = re.compile(r"\brar(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
NOT_NAMES = {"yaml", "py", "bin", "pt", "md"}


def _resolves(name: str) -> bool:
    import importlib

    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        with contextlib.suppress(ImportError):
            obj = importlib.import_module(".".join(parts[:i]))
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def test_every_named_module_and_attribute_exists():
    pages = [
        *REPO.glob("*.md"),
        *REPO.glob("docs/*.md"),
        *REPO.glob("config/*"),
        *REPO.glob("profiles/*/*.yaml"),
        *REPO.glob("workflow/**/*.*"),
        REPO / "Snakefile",
        *REPO.glob("rar/**/*.py"),
        *REPO.glob("rar/**/*.yaml"),
    ]
    stale = sorted(
        {
            f"{page.relative_to(REPO)}: {name}"
            for page in pages
            if page.is_file()
            for name in NAMED.findall(page.read_text())
            if name.rsplit(".", 1)[-1] not in NOT_NAMES and not _resolves(name)
        }
    )
    assert not stale, "names that are no module or attribute of the package:\n" + "\n".join(stale)
