"""The mutation check (`make mutation`; docs/testing.md): break one promise at a time in a copy
of the repository and run the tests that guard it; every mutation must make one of them fail.

Each mutation is a small textual patch (`old` -> `new`, `old` found exactly once) to one
function in rar/ (or one row of config/config.yaml), with the tests listed beside it. The
copy holds the checkout's tracked and untracked-but-not-ignored files (tests/data/ with them),
under a temporary folder; its tests run with PYTHONPATH and the working directory set to the
copy, so the tests, their subprocesses and Snakemake's `rar` commands import the copy's `rar`,
never the checkout's.

    .venv/bin/python tools/mutation.py            # every mutation
    .venv/bin/python tools/mutation.py -k resume  # the mutations whose name contains "resume"

First the guarding tests run once on the unmutated copy (they must pass, or a failure would
count as a kill). Exit status 1 when they do not, when a mutation survives, or when a patch
no longer applies (the code moved on: update the mutation beside the change).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in `path`
    new: str
    tests: tuple[str, ...]  # pytest node ids that guard the promise


MUTATIONS = [
    Mutation(
        "skip the resume: every call restarts at step 0",
        "rar/training/job.py",
        "    point = find_resume_point(ckpt_dir)\n",
        "    point = None\n",
        (
            "tests/test_train.py::test_resume_is_bit_identical[cpu]",
            "tests/test_train.py::test_sigkill_then_resume_is_bit_identical",
            "tests/test_launch.py::test_checkpoint_stops_at_a_step_and_the_requeued_job_resumes",
        ),
    ),
    Mutation(
        "drop the anneal: r steps from 1 to 0 at anneal_end",
        "rar/training/loop.py",
        "randomness_ratio(cfg.epoch_at(step), cfg.anneal_start, cfg.anneal_end)",
        "randomness_ratio(cfg.epoch_at(step), cfg.anneal_end, cfg.anneal_end)",
        ("tests/test_train.py::test_training_learns_and_logs[cpu]",),
    ),
    Mutation(
        "branch from scratch: ignore the trunk checkpoint",
        "rar/training/job.py",
        "    if point is None and init_from:\n",
        "    if point is None and init_from and False:\n",
        ("tests/test_train.py::test_branch_from_trunk_equals_training_from_scratch",),
    ),
    Mutation(
        "swap row keys in config.yaml: (100, 200) <-> (100, 300), values in place",
        "config/config.yaml",
        "      - {anneal_start: 100, anneal_end: 200, paper: {fid: 2.28, is: 253.1,"
        " precision: 0.83, recall: 0.55}}\n"
        "      - {anneal_start: 100, anneal_end: 300, paper: {fid: 2.33, is: 258.4,",
        "      - {anneal_start: 100, anneal_end: 300, paper: {fid: 2.28, is: 253.1,"
        " precision: 0.83, recall: 0.55}}\n"
        "      - {anneal_start: 100, anneal_end: 200, paper: {fid: 2.33, is: 258.4,",
        ("tests/test_experiments.py::test_paper_values_in_the_config_equal_the_papers_tables",),
    ),
    Mutation(
        "unquote a shell field: the launcher arguments joined with spaces",
        "rar/experiments/rules.py",
        "        return shlex.join(args)\n",
        '        return " ".join(args)\n',
        ("tests/test_workflow.py::test_no_config_string_reaches_a_shell",),
    ),
    Mutation(
        "stamp the npz with the clock",
        "rar/files.py",
        'zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)',
        'zipfile.ZipInfo(f"{name}.npy", date_time=__import__("time").localtime()[:6])',
        ("tests/test_files.py::test_write_npz_is_byte_deterministic_and_readable",),
    ),
    Mutation(
        "reorder sampling chunks: merge them last to first",
        "rar/sampling/chunks.py",
        "    paths = [chunk_dir / CHUNK_NAME.format(i) for i in range(total)]\n",
        "    paths = [chunk_dir / CHUNK_NAME.format(i) for i in reversed(range(total))]\n",
        (
            "tests/test_sample.py::test_samples_npz_has_the_adm_layout",
            "tests/test_sample.py::test_ranks_and_resume_reproduce_the_uninterrupted_file",
        ),
    ),
    Mutation(
        "drop class interleaving: labels sorted by class",
        "rar/sampling/chunks.py",
        "    return np.concatenate([label_block(seed, b, num_classes)"
        " for b in range(num_per_class)])\n",
        "    return np.repeat(np.arange(num_classes, dtype=np.int64), num_per_class)\n",
        ("tests/test_sample_chunks.py::test_labels_are_class_interleaved_in_a_seeded_order",),
    ),
    Mutation(
        "the trunk plan ignores the disk: a passed branch point becomes a segment",
        "rar/experiments/trunks.py",
        "    disk = on_disk(trunk_id, E) if on_disk else NOTHING\n",
        "    disk = NOTHING\n",
        (
            "tests/test_experiments.py::"
            "test_a_branch_point_the_trunk_passed_branches_from_its_last_kept_checkpoint",
            "tests/test_experiments.py::"
            "test_a_passed_branch_point_with_nothing_kept_before_it_trains_from_scratch",
        ),
    ),
    Mutation(
        "rar plan charges a trunk no row needs its whole schedule",
        "rar/experiments/study.py",
        "        return self.config.epochs if self.until is None else self.until\n",
        "        return self.config.epochs\n",
        (
            "tests/test_experiments.py::test_a_trunk_no_row_needs_is_charged_to_its_last_branch_point",
            "tests/test_finished_work.py::"
            "test_plan_charges_the_epochs_the_workflow_trains[scan orders, RAR-B]",
        ),
    ),
    Mutation(
        "a --configfile merges into config/config.yaml",
        "Snakefile",
        "if not workflow.overwrite_configfiles:\n",
        "if True:\n",
        ("tests/test_finished_work.py::test_your_own_config_replaces_the_papers",),
    ),
    Mutation(
        "a finished run keeps no last.pt: a deleted final.pt means training again",
        "rar/training/job.py",
        "        os.replace(link, job.last)\n",
        "        link.unlink()\n",
        (
            "tests/test_train.py::"
            "test_a_finished_run_whose_final_checkpoint_was_deleted_trains_nothing",
        ),
    ),
    Mutation(
        "a finished sample set keeps nothing: deleted samples are sampled again",
        "rar/sampling/chunks.py",
        "    kept = [chunk_dir / FINISHED / path.name for path in files]\n",
        "    kept = [chunk_dir / FINISHED / path.name for path in files] + [chunk_dir / 'x']\n",
        ("tests/test_sample.py::test_samples_deleted_after_the_merge_come_back_without_sampling",),
    ),
]


def copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them (tracked, and untracked but not ignored)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():  # a deleted but still tracked file is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def failed_tests(junit: Path) -> list[str]:
    """The test cases of a pytest --junitxml report that failed or errored."""
    failed = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name"))
    return failed


def run_tests(copy: Path, tests: tuple[str, ...], junit: Path) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *tests,
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 1) or not junit.exists():  # 1: some test failed
        raise RuntimeError(f"pytest could not run {tests}:\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, failed_tests(junit)


def check_imports_the_copy(copy: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    found = subprocess.run(
        [sys.executable, "-c", "import rar; print(rar.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).is_relative_to(copy):
        raise RuntimeError(f"the copy imports {found}, not its own rar/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only the mutations whose name contains this")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the first run of the guarding tests on the unmutated copy",
    )
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k in m.name]
    rows, survived, start = [], 0, time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rar-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        copy_checkout(copy)
        check_imports_the_copy(copy)
        if not args.no_baseline:  # a test that fails anyway would "kill" every mutation
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, failed = run_tests(copy, tests, Path(tmp) / "junit_baseline.xml")
            if code != 0:
                print(f"the guarding tests fail without a mutation: {', '.join(failed)}")
                return 1
            print(f"baseline: {len(tests)} guarding tests pass ({time.monotonic() - start:.0f} s)")
        for i, m in enumerate(chosen):
            target = copy / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                rows.append((m.name, "PATCH DOES NOT APPLY", 0.0))
                survived += 1
                continue
            target.write_text(original.replace(m.old, m.new))
            t = time.monotonic()
            try:
                code, failed = run_tests(copy, m.tests, Path(tmp) / f"junit_{i}.xml")
            finally:
                target.write_text(original)
            if code == 0 or not failed:
                rows.append((m.name, "SURVIVED", time.monotonic() - t))
                survived += 1
            else:
                rows.append((m.name, ", ".join(failed), time.monotonic() - t))
            print(f"[{i + 1}/{len(chosen)}] {m.name}: {rows[-1][1]}", flush=True)
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'mutation':<{width}}  {'s':>5}  killed by")
    for name, killers, seconds in rows:
        print(f"{name:<{width}}  {seconds:5.0f}  {killers}")
    total = time.monotonic() - start
    print(f"\n{len(rows) - survived} of {len(rows)} mutations killed in {total:.0f} s")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
