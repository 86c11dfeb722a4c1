"""`rar preflight`: the toy rehearsal end to end (local launcher; SLURM with 2-task DDP), and a
FAIL with a named fix for a missing weights file, a wrong partition and a missing ImageNet.

The paper-like cases use the paper's config with its paths moved into a temporary folder;
the weights files whose layout is checked are built here, in the exact official layout (our
modules' state dicts, which tests/test_model.py and test_tokenizer.py hold equal to the
release's), with zero weights.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import helpers
import numpy as np
import pytest
import yaml

from rar.cli import main
from rar.experiments import format_plan, load_study, measured_throughput

REPO = Path(__file__).resolve().parents[1]


def toy_study(study: str = "pf") -> dict:
    """config/demo.yaml cut to one small table of rar_tiny (the preflight makes its own toy
    images, tokenizer and data at its own scale)."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["study"] = study
    config["train"].update(epochs=2, global_batch=16, warmup_epochs=0.5, anneal_start=1)
    config["train"].update(anneal_end=2)
    config["sampling"].update(num_per_class=4, sweep_per_class=2, chunk_size=8)
    config["data"]["demo"]["test_per_class"] = 4  # the floor row: as many as a row's samples
    config["tables"] = {
        "table2": {
            "base": {
                "architecture": "plain",
                "sampling": {"guidance_schedule": "linear", "guidance_scales": [1.0, 3.0]},
            },
            "rows": [{"anneal_start": 0, "anneal_end": 0}, {"anneal_start": 1, "anneal_end": 2}],
        }
    }
    del config["throughput_table"]
    return config


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def checks_of(out: Path) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads((out / "checks.json").read_text())}


SCALE = ["--classes", "4", "--images-per-class", "4", "--train-steps", "6", "--sample-batch", "8"]


def preflight_args(config: Path, launcher: str, launchers: Path, out: Path) -> list[str]:
    """`rar preflight` of `config` through `launcher`, its settings in `launchers`."""
    flags = {"--config": config, "--launcher": launcher, "--launcher-dir": launchers, "--out": out}
    return ["preflight", *(x for flag, value in flags.items() for x in (flag, str(value)))]


def launcher_dir(tmp_path: Path, backend: str, **train) -> Path:
    """Per-stage launcher settings, as a profile's <stage>.yaml."""
    folder = tmp_path / f"launch_{backend}"
    for stage in ("tokenize", "train", "sample", "evaluate"):
        settings = {"backend": backend, "folder": str(tmp_path / "submitit"), "poll_s": 0.5}
        if backend == "slurm":
            settings.update(
                partition="debug", cpus_per_task=1, mem_gb=2, time_min=10, signal_delay_s=30
            )
        if stage == "train":
            settings.update(train)
        write(folder / f"{stage}.yaml", settings)
    return folder


# -- the rehearsal ----------------------------------------------------------------------------


@pytest.mark.slow
def test_preflight_passes_end_to_end_with_the_local_launcher(tmp_path, capsys):
    """Every stage through local subprocesses, training as 2 DDP processes (gloo), stopped by
    the time-limit signal and requeued; then `rar plan` uses the measured throughput."""
    config = write(tmp_path / "pf.yaml", toy_study())
    out = tmp_path / "preflight"
    launchers = launcher_dir(tmp_path, "local", tasks_per_node=2)
    argv = [*preflight_args(config, "local", launchers, out), "--device", "cpu", *SCALE]
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    checks = checks_of(out)
    assert checks.pop("sampling memory")["status"] == "SKIP"  # --device cpu: no GPU memory
    assert all(c["status"] == "PASS" for c in checks.values()), printed
    for stage in ("images", "tokenizer", "tokenize", "train", "sample", "evaluate", "table"):
        assert f"stage {stage}" in checks
    train = checks["stage train"]["measured"]
    assert "2 process(es) on cpu" in train and "DDP gloo" in train
    resume = checks["requeue and resume"]["measured"]
    # signalled at step 2; two processes agree on a stop one step later (rar.runtime.AnyRank)
    assert resume.startswith(
        "time-limit signal (USR2) and requeue: stopped at step 3, resumed at 3"
    )
    assert "ended at 6; uninterrupted 6 of 6" in resume and "weights identical" in resume
    report = (out / "report.md").read_text()
    assert "| PASS | requeue and resume |" in report and "FAIL" not in report

    measured = json.loads((out / "throughput.json").read_text())
    assert measured["train"]["rar_tiny"]["images_per_s_per_gpu"] > 0
    assert measured["sample"]["rar_tiny"]["batch_size"] == 8
    study = load_study(yaml.safe_load(config.read_text()))
    plan = format_plan(study, measured_throughput(study, out / "throughput.json"))
    assert "rar_tiny" in plan and "/epoch measured" in plan and "sampling:" in plan


@pytest.mark.slow
def test_the_workflow_target_runs_the_preflight(tmp_path):
    """`snakemake results/<study>/preflight/report.md`: the rule passes the validated study
    quoted, with the profile's launcher (here the in-process one)."""
    config = write(tmp_path / "pf.yaml", toy_study("wf"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(config),
        "--replace-workflow-config",
        "--cores",
        "1",
        "results/wf/preflight/report.md",
        "--config",
        "launcher=debug",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    log = tmp_path / "logs/wf/preflight.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (log.read_text() if log.exists() else "")
    report = (tmp_path / "results/wf/preflight/report.md").read_text()
    assert "**all checks passed**" in report
    assert "stop and resume in-process (debug launcher" in report
    assert (tmp_path / "results/wf/preflight/throughput.json").exists()
    # `rar plan` in that folder finds the measurement by itself
    plan = subprocess.run(
        [sys.executable, "-m", "rar.cli", "plan", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "measured by rar preflight" in plan


def _release_requeued(folder: Path, stop: threading.Event) -> None:
    """Start the training job as soon as it is safe after each requeue (helpers.py)."""
    releaser = helpers.RequeueReleaser()
    while not stop.wait(1.0):
        record = folder / "job.json"
        if record.exists():
            releaser.poll(json.loads(record.read_text())["job_id"])


@pytest.mark.slurm
@pytest.mark.slow
def test_preflight_through_slurm_with_a_2_task_ddp_training_job(tmp_path, capsys):
    config = write(tmp_path / "pf.yaml", toy_study("slurm"))
    out = tmp_path / "preflight"
    launchers = launcher_dir(tmp_path, "slurm", tasks_per_node=2, mem_gb=4)
    stop = threading.Event()
    helper = threading.Thread(target=_release_requeued, args=(out / "train", stop), daemon=True)
    helper.start()
    try:
        code = main([*preflight_args(config, "slurm", launchers, out), "--device", "cpu", *SCALE])
    finally:
        stop.set()
    printed = capsys.readouterr().out
    assert code == 0, printed
    checks = checks_of(out)
    assert checks.pop("sampling memory")["status"] == "SKIP"  # --device cpu: no GPU memory
    assert all(c["status"] == "PASS" for c in checks.values()), printed
    assert checks["launcher train"]["measured"].startswith("partition debug")
    assert "2 process(es) on cpu" in checks["stage train"]["measured"]
    assert "DDP gloo" in checks["stage train"]["measured"]
    record = json.loads((out / "train/job.json").read_text())
    assert record["backend"] == "slurm" and record["requeues"] >= 1
    assert "weights identical" in checks["requeue and resume"]["measured"]


# -- failures, each with its fix --------------------------------------------------------------


def paper_config(tmp_path: Path, **data) -> Path:
    """The paper's study with its resources under tmp_path (nothing there yet)."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    res = tmp_path / "resources"
    config["data"]["images"] = str(res / "imagenet/train")
    config["data"].update(data)
    config["tokenizer"]["weights"] = str(res / "maskgit-vqgan-imagenet-f16-256.bin")
    config["evaluation"]["weights"] = str(res / "pt_inception-2015-12-05-6726825d.pth")
    config["evaluation"]["reference"] = str(res / "VIRTUAL_imagenet256_labeled.npz")
    config["official"] = {
        "rar_b": {**config["official"]["rar_b"], "checkpoint": str(res / "rar_b.bin")}
    }
    tables = config["tables"]  # the supplementary's own tokenizer and reference batch
    tables["llamagen_vq"]["base"]["tokenizer"]["weights"] = str(res / "vq_ds16_c2i.pt")
    tables["imagenet512"]["base"]["evaluation"]["reference"] = str(res / "VIRTUAL_imagenet512.npz")
    return write(tmp_path / "paper.yaml", config)


def official_layout(kind: str, path: Path, **overrides) -> None:
    """A state dict in the exact official layout (zero weights), saved like the release."""
    import torch

    with torch.device("meta"):
        if kind == "maskgit":
            from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

            module = MaskGITVQGAN(MaskGITVQGANConfig(**overrides))
        else:
            from rar.model.transformer import RAR, rar_config

            module = RAR(rar_config(kind, **overrides))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.zeros(v.shape) for k, v in module.state_dict().items()}, path)


def test_missing_files_and_imagenet_fail_with_their_fix_and_nothing_runs(tmp_path, capsys):
    config = paper_config(tmp_path)
    out = tmp_path / "preflight"
    argv = ["preflight", "--config", str(config), "--out", str(out), "--launcher", "debug"]
    assert main(argv) == 1
    checks = checks_of(out)
    tok = checks["file tokenizer.weights"]
    assert tok["status"] == "FAIL" and "does not exist" in tok["measured"]
    assert f"rar fetch --config {config} --only maskgit_vqgan" in tok["fix"]
    assert "huggingface.co/fun-research/TiTok/resolve/main/maskgit-vqgan" in tok["fix"]
    assert checks["file official.rar_b.checkpoint"]["status"] == "FAIL"
    assert "--only rar_b" in checks["file official.rar_b.checkpoint"]["fix"]
    images = checks["images data.images"]
    assert images["status"] == "FAIL" and "config key data.images" in images["fix"]
    # nothing downstream ran: each stage names what it waited for
    assert checks["stage images"]["status"] == "SKIP"
    assert "images data.images did not pass" in checks["stage images"]["measured"]
    assert checks["stage tokenize"]["status"] == "SKIP"
    assert checks["stage table"]["status"] == "SKIP"
    assert checks["extractor inception-v3-compat"]["status"] == "SKIP"
    report = (out / "report.md").read_text()
    assert "| FAIL | file tokenizer.weights |" in report and "rar fetch --config" in report
    assert "FAIL  images data.images" in capsys.readouterr().out


def test_weights_in_the_official_layout_pass_and_others_fail_naming_the_keys(tmp_path):
    """The check loads each file and compares every key and shape with the release's."""
    config = paper_config(tmp_path)
    res = tmp_path / "resources"
    official_layout("maskgit", res / "maskgit-vqgan-imagenet-f16-256.bin")
    official_layout("rar_tiny", res / "rar_b.bin")  # the right layout, the wrong size
    buf = io.BytesIO()
    np.savez(
        buf,
        arr_0=np.zeros((2, 256, 256, 3), np.uint8),
        mu=np.zeros(2048),
        sigma=np.zeros((2048, 64)),
    )
    (res / "VIRTUAL_imagenet256_labeled.npz").write_bytes(buf.getvalue())
    out = tmp_path / "preflight"
    argv = ["preflight", "--config", str(config), "--out", str(out), "--checks-only"]
    assert main(argv) == 1
    checks = checks_of(out)
    tok = checks["file tokenizer.weights"]
    assert tok["status"] == "PASS" and "168 keys, the official layout" in tok["measured"]
    rar_b = checks["file official.rar_b.checkpoint"]
    assert rar_b["status"] == "FAIL" and "keys of another shape" in rar_b["measured"]
    assert "blocks.0.adaLN_modulation.1.weight (384, 64) != (4608, 768)" in rar_b["measured"]
    assert "396 missing keys (e.g. blocks.10." in rar_b["measured"]  # 2 blocks, not 24
    assert "--only rar_b" in rar_b["fix"]
    adm = checks["file evaluation.reference"]
    assert (
        adm["status"] == "FAIL"
        and "sigma has shape (2048, 64), expected (2048, 2048)" in (adm["measured"])
    )
    assert "stage images" not in checks  # --checks-only: nothing submitted


def test_a_study_on_llamagen_vq16_checks_the_release_layout(tmp_path, monkeypatch):
    """tokenizer.name llamagen_vq16 names LlamaGen's release: its file (`{"model": ...,
    "args": ...}`) is checked key for key against VQ-16, and a wrong one names its fetch."""
    import argparse

    import torch

    import rar.ops.preflight.checks as checks_module

    config = yaml.safe_load(paper_config(tmp_path).read_text())
    weights = tmp_path / "resources" / "vq_ds16_c2i.pt"
    config["tokenizer"] = {"name": "llamagen_vq16", "weights": str(weights)}
    config["tokenizer"] |= {"codebook_size": 16384, "grid": 16}
    path = write(tmp_path / "llamagen.yaml", config)
    tiny = torch.load(REPO / "tests/data/llamagen_vq_tiny.pt", weights_only=True)
    weights.parent.mkdir(parents=True)
    torch.save({"model": tiny["state_dict"], "args": argparse.Namespace(lr=1e-4)}, weights)
    out = tmp_path / "preflight"
    argv = ["preflight", "--config", str(path), "--out", str(out), "--checks-only"]
    main(argv)
    tok = checks_of(out)["file tokenizer.weights"]
    assert tok["status"] == "FAIL" and "keys of another shape" in tok["measured"]
    assert "--only llamagen_vq16" in tok["fix"]
    # the same file passes where VQ-16's layout is the tiny one's
    shapes = {k: tuple(v.shape) for k, v in tiny["state_dict"].items()}
    real = checks_module.expected_shapes
    monkeypatch.setattr(
        checks_module,
        "expected_shapes",
        lambda kind, model=None: shapes if kind == "llamagen_vq" else real(kind, model),
    )
    main(argv)
    tok = checks_of(out)["file tokenizer.weights"]
    assert tok["status"] == "PASS" and f"{len(shapes)} keys, the official layout" in tok["measured"]


def test_an_incomplete_imagenet_folder_is_counted(tmp_path):
    from rar.ops.preflight import check_images

    root = tmp_path / "train"
    for wnid, n in (("n01", 3), ("n02", 0)):
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            (root / wnid / f"{i}.JPEG").write_bytes(b"")
    config = load_study(yaml.safe_load(paper_config(tmp_path).read_text())).config
    config["data"]["images"] = str(root)
    check = check_images(config)
    assert check.ok is False and "2 class folders, 3 images" in check.measured
    assert "2 class folders, data.num_classes is 1,000" in check.fix
    assert "1 empty class folders (e.g. n02)" in check.fix
    config["data"].update(num_classes=1, source_images=3)
    shutil.rmtree(root / "n02")
    assert check_images(config).ok is True


@pytest.mark.slurm
def test_a_partition_that_does_not_exist_fails_naming_the_profile_file(tmp_path):
    config = write(tmp_path / "pf.yaml", toy_study("nope"))
    launchers = launcher_dir(tmp_path, "slurm")
    for stage in ("tokenize", "train", "sample", "evaluate"):
        settings = yaml.safe_load((launchers / f"{stage}.yaml").read_text())
        wrong = {"gpus_per_node": 8} if stage == "sample" else {"partition": "nope"}
        write(launchers / f"{stage}.yaml", {**settings, **wrong})
    out = tmp_path / "preflight"
    argv = [*preflight_args(config, "slurm", launchers, out), "--checks-only"]
    assert main(argv) == 1
    checks = checks_of(out)
    train = checks["launcher train"]
    assert train["status"] == "FAIL"
    assert "partition 'nope' does not exist (this cluster has: debug*)" in train["measured"]
    assert train["fix"] == f"edit {launchers}/train.yaml: key partition (one of debug)"
    gpus = checks["launcher sample"]
    assert (
        gpus["status"] == "FAIL"
        and "gpus_per_node 8 but nodes of debug have 0" in (gpus["measured"])
    )
    assert f"edit {launchers}/sample.yaml: key gpus_per_node (at most 0)" in gpus["fix"]
    assert not (out / "train").exists()  # nothing submitted (the stages' skips: see above)


# -- rar plan with measured throughput ----------------------------------------------------------


def test_plan_prefers_measured_figures_and_says_which_are_estimates(tmp_path, capsys, monkeypatch):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    study = load_study(config)
    before = study.gpu_hours()
    measured = {
        "format": "rar-throughput/1",
        "measured": "2026-12-03T18:00:00+00:00",
        "train": {"rar_l": {"images_per_s_per_gpu": 100.0, "device": "cuda", "machine": "H100"}},
        "sample": {
            "rar_l": {
                "images_per_s_per_gpu": 40.0,
                "dtype": "fp32",
                "batch_size": 250,
                "device": "cuda",
            }
        },
    }
    path = tmp_path / "results/preflight/throughput.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(measured))
    rates = study.gpu_hours_per_epoch(measured)
    assert rates["rar_l"] == (pytest.approx(1_281_167 / 3600 / 100), "measured")
    assert rates["rar_b"] == (2.2, "estimate")
    assert study.gpu_hours(measured=measured) < before
    cfg = write(tmp_path / "paper.yaml", config)
    monkeypatch.chdir(tmp_path)  # `rar plan` finds results/preflight/throughput.json by itself
    assert main(["plan", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "GPU-hours:" in text and "rar_l 3.56/epoch measured (100 images/s per GPU)" in text
    assert "rar_b 2.2/epoch the config's estimate" in text
    assert "sampling: 40 images/s per GPU measured (rar_l" in text
    path.write_text("{not json")
    assert main(["plan", "--config", str(cfg), "--throughput", str(path)]) == 2
    assert "throughput.json: not a readable throughput record" in capsys.readouterr().err


# -- the GPU script, dry-run on the CPU at toy sizes ----------------------------------------------


@pytest.mark.slow
def test_the_gpu_script_writes_one_csv(tmp_path):
    """benchmarks/gpu.sh with tiny settings: the baseline (the code before the decode engine,
    exported from git), the engine's sampling in fp32 and bf16 and training in bf16 land in
    one CSV with the speed-up column (compilation is left to the GPU run)."""
    env = {
        **os.environ,
        "RAR": str(Path(sys.executable).parent / "rar"),
        "RAR_BENCH_MODELS": "rar_tiny",
        "RAR_BENCH_TRAIN_MODEL": "rar_tiny",
        "RAR_BENCH_BATCH": "2",
        "RAR_BENCH_TRAIN_BATCH": "2",
        "RAR_BENCH_STEPS": "1",
        "RAR_BENCH_DEVICE": "cpu",
        "RAR_BENCH_COMPILE": "0",
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "gpu.csv"
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["bench"], r["code"], r["dtype"]) for r in rows] == [
        ("sample", "baseline", "fp32"),
        ("sample", "engine", "fp32"),
        ("sample", "engine", "bf16"),
        ("train", "", "bf16"),
    ]
    assert rows[0]["speedup_vs_baseline"] == "1.0" and float(rows[1]["speedup_vs_baseline"]) > 0
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    assert "mfu" in rows[3] and "tokens_per_s" in rows[0]
    assert "baseline: " in proc.stderr


@pytest.mark.slow
def test_the_gpu_script_cut_short_keeps_what_it_measured(tmp_path):
    """The CSV is rewritten after each command: killed (as by a job's time limit) during its
    training benchmark, the script leaves both sampling rows behind."""
    real = Path(sys.executable).parent / "rar"
    rar = tmp_path / "rar"
    rar.write_text(
        "#!/bin/bash\n"
        "# the training benchmark kills the script: its parent is timeout, whose parent is it\n"
        'if [ "$1" = bench-train ]; then\n'
        '    kill -KILL "$(cut -d" " -f4 /proc/$PPID/stat)"; exit 1\n'
        "fi\n"
        f'exec "{real}" "$@"\n'
    )
    rar.chmod(0o755)
    env = {
        **os.environ,
        "RAR": str(rar),
        "RAR_BENCH_MODELS": "rar_tiny",
        "RAR_BENCH_BATCH": "2",
        "RAR_BENCH_STEPS": "1",
        "RAR_BENCH_DEVICE": "cpu",
        "RAR_BENCH_COMPILE": "0",
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmp_path),
        "RAR_BENCH_BASELINE_DIR": str(REPO),
    }
    out = tmp_path / "gpu.csv"
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["code"], r["dtype"]) for r in rows] == [
        ("baseline", "fp32"),
        ("engine", "fp32"),
        ("engine", "bf16"),
    ]


def test_a_profile_gives_the_launcher_settings_and_config_file():
    from rar.cli import _profile_settings

    assert _profile_settings("slurm") == {"launcher": "slurm", "launcher_dir": "profiles/slurm"}
    demo = _profile_settings(str(REPO / "profiles/demo"))
    assert demo == {"launcher": "debug", "configfile": "config/demo.yaml"}
    with pytest.raises(ValueError, match="no Snakemake profile 'nowhere'"):
        _profile_settings("nowhere")


# -- the pieces of the rehearsal, on their own -------------------------------------------------


def test_the_inline_stopper_stops_once_at_its_step(tmp_path):
    from rar.ops.preflight.jobs import _time_limit_stopper

    marker = tmp_path / "signal.json"
    spec = {"interrupt": "inline", "signal_at": 3}
    stop = _time_limit_stopper(spec, marker, 0, should_stop=lambda: False)
    assert [stop() for _ in range(3)] == [False, False, True]
    assert json.loads(marker.read_text()) == {"signal_at": 3}
    # the resumed run (same marker) is never stopped again
    again = _time_limit_stopper(spec, marker, 0, should_stop=lambda: False)
    assert not any(again() for _ in range(5))
    # the launcher's own stop request always wins
    assert _time_limit_stopper(spec, tmp_path / "other.json", 0, lambda: True)()


def test_a_signalled_rank_other_than_0_waits_for_rank_0(tmp_path):
    from rar.ops.preflight.jobs import _time_limit_stopper

    spec = {"interrupt": "signal", "signal_at": 1}
    stop = _time_limit_stopper(spec, tmp_path / "signal.json", 1, should_stop=lambda: False)
    assert not stop() and not (tmp_path / "signal.json").exists()


def test_resume_check_passes_only_an_exact_resume():
    from rar.ops.preflight import check_resume

    good = {
        "saved_step": 2,
        "resumed_step": 2,
        "final_step": 6,
        "reference_step": 6,
        "total_steps": 6,
        "device": "cpu",
        "identical": True,
        "max_abs_diff": 0.0,
    }
    assert check_resume(good, "inline").ok is True
    moved = check_resume({**good, "resumed_step": 1}, "signal")
    assert moved.ok is False and "the resumed step is not the saved one" in moved.measured
    short = check_resume({**good, "final_step": 5}, "inline")
    assert "the runs end at different steps" in short.measured
    differ = check_resume({**good, "identical": False, "max_abs_diff": 1e-3}, "inline")
    assert differ.ok is False and "bit for bit" in differ.measured
    gpu = check_resume({**good, "device": "cuda", "identical": False}, "signal")
    assert gpu.ok is True and "fp tolerance" in gpu.measured


def test_the_throughput_check_names_the_file_or_why_nothing_was_measured(tmp_path):
    from rar.ops.preflight.run import _check_throughput
    from rar.ops.preflight.stages import _Stages

    s = _Stages()
    _check_throughput(s, tmp_path, {"train": {}, "sample": {}}, {}, checks_only=True)
    assert s.checks == []
    _check_throughput(s, tmp_path, {"train": {}, "sample": {}}, {}, checks_only=False)
    assert s.checks[-1].ok is None and "did not run" in s.checks[-1].measured
    record = {"images_per_s_per_gpu": 12.5, "device": "cpu"}
    _check_throughput(s, tmp_path, {"train": {"rar_tiny": record}, "sample": {}}, {}, False)
    assert s.checks[-1].ok is True and "train rar_tiny 12.50" in s.checks[-1].measured
    written = json.loads((tmp_path / "throughput.json").read_text())
    assert written["train"] == {"rar_tiny": record} and written["layout"] == {}


def test_a_stage_is_skipped_naming_what_failed_and_an_error_is_its_fail():
    from rar.ops.preflight import Check
    from rar.ops.preflight.stages import _Stages

    s = _Stages()
    s.add(Check("a", False, "broken"))
    assert s.run("b", ["a"], lambda: Check("b", True, "")) is None
    assert s.checks[-1].ok is None and "a did not pass" in s.checks[-1].measured

    def boom():
        raise RuntimeError("no GPU here")

    assert s.run("c", [], boom) is None
    assert s.checks[-1].ok is False and "no GPU here" in s.checks[-1].measured
    assert s.run("d", [], lambda: (Check("d", True, "ok"), 7)) == 7


def test_a_tables_own_tokenizer_and_reference_batch_are_checked(tmp_path):
    """The supplementary's tables name their own files (VQ-16; ADM's 512 batch): each is
    checked under its table's key, a 256 px batch refused where 512 px is named."""
    import numpy as np

    path = paper_config(tmp_path)
    res = tmp_path / "resources"
    res.mkdir(parents=True)
    np.savez_compressed(
        res / "VIRTUAL_imagenet512.npz",
        arr_0=np.zeros((2, 256, 256, 3), np.uint8),
        mu=np.zeros(2048),
        sigma=np.zeros((2048, 2048)),
    )
    out = tmp_path / "preflight"
    main(["preflight", "--config", str(path), "--out", str(out), "--checks-only"])
    checks = checks_of(out)
    vq = checks["file tables.llamagen_vq.base.tokenizer.weights"]
    assert vq["status"] == "FAIL" and "--only llamagen_vq16" in vq["fix"]
    ref = checks["file tables.imagenet512.base.evaluation.reference"]
    assert ref["status"] == "FAIL" and "expected (N, 512, 512, 3)" in ref["measured"]
    assert "--only adm_reference_512" in ref["fix"]


# 80 GB of GPU memory as torch reports an H100 80GB's (docs/gpu.md's "largest fp32 chunk").
H100_80GB = int(79.11 * 2**30)


def _imagenet512_plans(rows: list[dict] | None = None, base: dict | None = None):
    """chunk_plans of the paper's `imagenet512` table alone (its rows, or `rows`)."""
    from rar.ops.preflight import chunk_plans

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    table = config["tables"]["imagenet512"]
    table["rows"] = rows or table["rows"]
    table["base"].update(base or {})
    config["tables"] = {"imagenet512": table}
    return chunk_plans(load_study(config))


def test_the_papers_imagenet512_chunks_fit_an_80gb_gpu_and_docs_give_the_largest():
    """At `rar sample`'s fp32 the table's chunk fits an 80 GB GPU for every size, and
    docs/gpu.md's largest chunk of each size is `largest_chunk` with its generator's weights."""
    from rar.ops.preflight import memory_checks
    from rar.settings.presets import largest_chunk
    from rar.settings.stages import SampleSettings

    assert SampleSettings().dtype == "fp32"
    plans = _imagenet512_plans()
    assert [(p.model, p.num_tokens, p.chunk_size) for p in plans] == [
        ("rar_l", 1024, 50),
        ("rar_xl", 1024, 50),
        ("rar_xxl", 1024, 50),
    ]
    [check] = memory_checks(plans, H100_80GB, "H100", dtype="fp32", config_file="c.yaml")
    assert check.ok is True and "imagenet512 / model=rar_xxl: chunk_size 50" in check.measured
    rows = [
        {"model": m, "sampling": {"preset": "rar_l"}}
        for m in ("rar_b", "rar_l", "rar_xl", "rar_xxl")
    ]
    docs = {
        line.split("|")[1].strip().lower().replace("-", "_"): int(line.split("|")[6])
        for line in (REPO / "docs/gpu.md").read_text().splitlines()
        if line.startswith("| RAR-")
    }
    for p in _imagenet512_plans(rows):
        fits = largest_chunk(p.model, p.num_tokens, H100_80GB, weight_bytes=p.weight_bytes("fp32"))
        assert docs[p.model] == fits, p.model


def test_a_chunk_too_large_for_the_gpu_names_its_table_row_need_and_the_largest_that_fits():
    from rar.ops.preflight import memory_checks

    plans = _imagenet512_plans(base={"sampling": {"chunk_size": 250}})
    checks = memory_checks(plans, H100_80GB, "NVIDIA H100", dtype="fp32", config_file="c.yaml")
    assert [c.ok for c in checks] == [False, False, False]
    xxl = checks[2]
    assert xxl.name == "sampling memory: imagenet512 / model=rar_xxl"
    assert "chunk_size 250 of rar_xxl at 1,024 tokens, fp32: needs 228.6 GiB" in xxl.measured
    assert (
        "(KV cache 215.1 GiB + weights 5.6 GiB + decoding 8.0 GiB) of 71.2 GiB usable"
        in xxl.measured
    )
    assert "NVIDIA H100" in xxl.measured and xxl.measured.endswith(
        "the largest chunk that fits is 66"
    )
    assert "c.yaml: set `sampling: {chunk_size: 66}`" in xxl.fix and "tables.imagenet512" in xxl.fix
    bf16 = memory_checks(plans, H100_80GB, "H100", dtype="bf16", config_file="c.yaml")
    assert [c.ok for c in bf16] == [False, False]  # RAR-L's 250 fit with a bf16 cache
    # bf16 sampling holds the fp32 weights and the decode engine's bf16 copy
    xxl = plans[-1]
    assert xxl.weight_bytes("bf16") == xxl.params * 6 == xxl.weight_bytes("fp32") * 3 // 2
    assert f"weights {xxl.params * 6 / 2**30:.1f} GiB" in bf16[-1].measured


def test_the_memory_check_runs_on_the_gpu_of_the_sample_job(tmp_path, capsys, monkeypatch):
    """`rar preflight` runs on a submit host without a GPU: the sampling memory check uses
    the GPU the rehearsal's sample job ran on (here the debug launcher's job, in this process,
    told it ran on an 80 GB H100)."""
    import rar.ops.preflight.jobs as jobs

    real = jobs.time_sampling

    def on_an_h100(*args, **kwargs):
        return {**real(*args, **kwargs), "device_name": "H100", "device_memory": H100_80GB}

    monkeypatch.setattr(jobs, "time_sampling", on_an_h100)
    config = write(tmp_path / "pf.yaml", toy_study())
    out = tmp_path / "preflight"
    argv = preflight_args(config, "debug", launcher_dir(tmp_path, "debug"), out)
    assert main([*argv, "--device", "cpu", *SCALE]) == 0, capsys.readouterr().out
    memory = checks_of(out)["sampling memory"]
    assert memory["status"] == "PASS" and "H100)" in memory["measured"]


def test_the_memory_check_is_skipped_without_a_gpu():
    from rar.ops.preflight import check_sampling_memory

    study = load_study(yaml.safe_load((REPO / "config/config.yaml").read_text()))
    [check] = check_sampling_memory(study, device="cpu", config_file="config/config.yaml")
    assert check.ok is None and check.status == "SKIP"
    assert check.measured.startswith("skipped: no GPU here (device cpu)")
