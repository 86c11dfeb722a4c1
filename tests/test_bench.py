"""rar.ops.bench: the timing rule (one untimed warm-up, synchronised clock reads) and a CPU run."""

from __future__ import annotations

import contextlib
import csv
import time

import pytest
import torch

import rar.ops.bench
from rar.ops.bench import _decoder, bench_sample, seconds_per_call


def test_seconds_per_call_times_the_warm_up_call_apart():
    """The mean leaves the first call out and reports it apart (compilation shows there)."""
    calls = []

    def call():
        calls.append(1)
        time.sleep(0.2 if len(calls) == 1 else 0)

    timing = seconds_per_call(call, 3, torch.device("cpu"))
    assert len(calls) == 4 and timing.first_s >= 0.2 and 0 <= timing.mean_s < 0.1


def test_the_tokenizer_decodes_only_for_the_imagenet_sizes():
    assert _decoder("auto", "rar_tiny", torch.device("cpu")) == ("none", None)
    assert _decoder("none", "rar_b", torch.device("cpu")) == ("none", None)


def test_bench_sample_on_the_cpu_appends_a_row(tmp_path):
    path = tmp_path / "bench.csv"
    result = bench_sample(model="rar_tiny", batch_size=2, steps=1, device="cpu", csv_path=path)
    assert result["decoder"] == "none" and result["images_per_s"] > 0
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 1 and rows[0]["model"] == "rar_tiny"


def test_bench_sample_overrides_width_and_depth(tmp_path):
    result = bench_sample(
        model="rar_tiny", batch_size=2, steps=1, device="cpu", hidden_size=32, num_layers=1
    )
    assert (result["hidden_size"], result["num_layers"]) == (32, 1)
    assert result["params"] < bench_sample(model="rar_tiny", batch_size=2, steps=1)["params"]


def test_bench_sample_bf16_runs_bf16_weights(monkeypatch):
    """--dtype bf16 times real bf16 sampling (the engine's bf16 weights), not autocast."""
    calls, real = [], rar.ops.bench.generate

    def spy(*args, **kwargs):
        calls.append((kwargs.get("dtype"), kwargs.get("amp_dtype")))
        return real(*args, **kwargs)

    monkeypatch.setattr(rar.ops.bench, "generate", spy)
    result = bench_sample(model="rar_tiny", batch_size=2, steps=1, device="cpu", dtype="bf16")
    assert result["dtype"] == "bf16" and set(calls) == {(torch.bfloat16, None)}


def test_bench_train_times_its_steps_under_trainings_tf32_setting(tmp_path, monkeypatch):
    """TF32 is process-wide, and training turns it on for its loop only (rar.runtime.tf32): the
    bench times its steps inside the same scope, or its fp32 figures are not training's."""
    scopes, timed_in = [], []
    real_tf32, real_timer = rar.ops.bench.tf32, rar.ops.bench.seconds_per_call

    @contextlib.contextmanager
    def spy(device):
        with real_tf32(device):
            scopes.append(device.type)
            yield
            scopes.append("closed")

    def timer(*args):
        timed_in.append(list(scopes))  # the scopes entered (and not closed) when timing
        return real_timer(*args)

    monkeypatch.setattr(rar.ops.bench, "tf32", spy)
    monkeypatch.setattr(rar.ops.bench, "seconds_per_call", timer)
    result = rar.ops.bench.bench_train(
        model="rar_tiny", batch_size=2, steps=1, device="cpu", csv_path=tmp_path / "b.csv"
    )
    assert timed_in == [["cpu"]] and scopes == ["cpu", "closed"] and result["images_per_s"] > 0


def test_bench_sample_times_tf32_under_the_official_samplers_flags(monkeypatch):
    """`tf32` (the official sampler's precision, the paper's Table 5 setting): no autocast,
    timed inside rar.runtime.tf32; `fp32` and `bf16` outside it."""
    scopes, timed_in = [], []
    real_tf32, real_timer = rar.ops.bench.tf32, rar.ops.bench.seconds_per_call

    @contextlib.contextmanager
    def spy(device):
        with real_tf32(device):
            scopes.append("tf32")
            yield
            scopes.pop()

    def timer(*args):
        timed_in.append(list(scopes))
        return real_timer(*args)

    monkeypatch.setattr(rar.ops.bench, "tf32", spy)
    monkeypatch.setattr(rar.ops.bench, "seconds_per_call", timer)
    kw = dict(model="rar_tiny", batch_size=2, steps=1, device="cpu")
    assert [bench_sample(**kw, dtype=d)["dtype"] for d in rar.ops.bench.SAMPLE_DTYPES] == [
        "fp32",
        "tf32",
        "bf16",
    ]
    assert timed_in == [[], ["tf32"], []]
    with pytest.raises(ValueError, match="dtype must be one of fp32, tf32, bf16"):
        bench_sample(**kw, dtype="fp16")


def test_every_place_that_names_sample_dtypes_names_the_same():
    """rar.ops.bench.SAMPLE_DTYPES, `rar bench-sample --dtype`, the study schema's
    throughput_table.dtypes and the Snakefile's `dtype` wildcard constraint."""
    import argparse
    from pathlib import Path

    import yaml

    from rar.cli import build_parser

    repo = Path(__file__).resolve().parents[1]
    args = build_parser().parse_args(["bench-sample", "--dtype", "tf32"])
    assert args.dtype == "tf32"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dtype = next(a for a in sub.choices["bench-sample"]._actions if a.dest == "dtype")
    assert tuple(dtype.choices) == rar.ops.bench.SAMPLE_DTYPES
    schema = yaml.safe_load((repo / "rar/experiments/study.schema.yaml").read_text())
    enum = schema["properties"]["throughput_table"]["properties"]["dtypes"]["items"]["enum"]
    assert tuple(enum) == rar.ops.bench.SAMPLE_DTYPES
    snakefile = (repo / "Snakefile").read_text()
    assert f'dtype="{"|".join(rar.ops.bench.SAMPLE_DTYPES)}"' in snakefile


# The names drivers report (nvidia-smi / torch.cuda.get_device_name) and total memory in MiB.
REPORTED = [
    ("NVIDIA A100-SXM4-40GB", 40_536, "A100 SXM 40GB", 312),
    ("NVIDIA A100-SXM4-80GB", 81_920, "A100 SXM 80GB", 312),
    ("NVIDIA A100-SXM4", 81_920, "A100 SXM 80GB", 312),  # the form factor only: memory decides
    ("NVIDIA A100-PCIE-40GB", 40_536, "A100 PCIe 40GB", 312),
    ("NVIDIA A100 80GB PCIe", 81_920, "A100 PCIe 80GB", 312),
    ("NVIDIA H100 80GB HBM3", 81_559, "H100 SXM", 989.5),
    ("NVIDIA H100 PCIe", 81_559, "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", 95_830, "H100 NVL", 835.5),
    ("NVIDIA H200", 143_771, "H200 SXM", 989.5),  # benchmarks/h200-2026-12-04.txt
    ("NVIDIA H200 NVL", 143_771, "H200 NVL", 835.5),
    ("NVIDIA L40S", 46_068, "L40S", 362.05),
]


@pytest.mark.parametrize(("name", "mib", "entry", "bf16"), REPORTED)
def test_the_peak_of_each_gpu_in_the_table_is_found_by_its_name(name, mib, entry, bf16):
    peak = rar.ops.bench.peak_of(name, mib * 2**20)
    assert peak.name == entry and peak.bf16 == bf16 and 0 < peak.tf32 < peak.bf16
    assert peak.source.startswith(f"NVIDIA {entry[:4]}")  # the product's own data sheet
    assert rar.ops.bench.peak_of(name) is not None  # the name alone finds an entry too
    assert {p.name for p in rar.ops.bench.GPU_PEAKS} == {r[2] for r in REPORTED}


@pytest.mark.parametrize(
    ("name", "mib"),
    [
        ("NVIDIA H100", 81_559),  # no form factor: SXM, PCIe or NVL, whose peaks differ
        ("NVIDIA GeForce RTX 4090", 24_564),
        ("NVIDIA B200", 183_359),
        ("NVIDIA A100-SXM4-80GB", 40_536),  # a name and a memory that disagree
    ],
)
def test_an_unknown_device_has_an_unknown_peak(name, mib):
    assert rar.ops.bench.peak_of(name, mib * 2**20) is None


def test_bench_train_prints_mfu_with_its_peak_and_source(monkeypatch, capsys):
    """On a GPU (faked: the CPU computes, torch.cuda answers as an H200) the MFU line names the
    peak and its data sheet; an unknown GPU says so instead of guessing."""
    peak = rar.ops.bench.peak_of("NVIDIA H200")
    monkeypatch.setattr(rar.ops.bench, "device_peak", lambda dev: peak)
    monkeypatch.setattr(rar.ops.bench, "mfu_line", _on_a_gpu(rar.ops.bench.mfu_line))
    result = rar.ops.bench.bench_train(model="rar_tiny", batch_size=2, steps=1, device="cpu")
    out = capsys.readouterr().out
    assert result["peak_tflops"] == peak.tf32  # fp32 on a GPU trains with TF32 products
    assert isinstance(result["mfu"], float)
    assert f"of {peak.tf32:g} TFLOP/s dense tf32 (H200 SXM; {peak.source})" in out
    monkeypatch.setattr(rar.ops.bench, "device_peak", lambda dev: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "NVIDIA B200")
    result = rar.ops.bench.bench_train(model="rar_tiny", batch_size=2, steps=1, device="cpu")
    assert result["mfu"] == "" and "MFU: unknown peak for 'NVIDIA B200'" in capsys.readouterr().out


def _on_a_gpu(mfu_line):
    return lambda result, peak, device: mfu_line(result, peak, torch.device("cuda"))


def test_bench_micro_batches_names_the_fastest_that_fits(monkeypatch, capsys):
    """Each micro-batch is timed, smallest first, until one runs out of memory (the larger
    are not tried); the fastest that fits is named as a study's `micro_batch`."""
    timed = []

    def fake(*, batch_size, **kwargs):
        timed.append(batch_size)
        if batch_size >= 64:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"batch_size": batch_size, "images_per_s": {8: 10.0, 16: 30.0, 32: 20.0}[batch_size]}

    monkeypatch.setattr(rar.ops.bench, "bench_train", fake)
    results = rar.ops.bench.bench_micro_batches([128, 16, 8, 64, 32], model="rar_l")
    assert timed == [8, 16, 32, 64]
    assert results[-1] == {"batch_size": 64, "out_of_memory": True}
    out = capsys.readouterr().out
    assert "micro-batch 64: out of device memory; larger ones not tried" in out
    assert "fastest micro-batch that fits: 16 (30.0 images/s per device; of 8, 16, 32, 64)" in out
    assert "train: {micro_batch: 16}" in out


def test_bench_sample_profiles_a_decode_step(tmp_path, capsys):
    """--profile: one more generation under torch.profiler, per decode step: the ops the host
    dispatches and their time, the ops that take the most (kernels and device time on a GPU)."""
    path = tmp_path / "bench.csv"
    result = bench_sample(
        model="rar_tiny", batch_size=2, steps=1, device="cpu", profile=True, csv_path=path
    )
    assert result["ops_per_step"] > 10 and result["host_ms_per_step"] > 0
    assert result["wall_ms_per_step"] >= result["host_ms_per_step"]
    assert result["kernels_per_step"] == result["device_ms_per_step"] == ""  # no device
    assert result["top_ops"].count("aten::") == 3
    assert "profile of one generation (255 decode steps), per step: " in capsys.readouterr().out
    [row] = csv.DictReader(path.open())
    assert row["top_ops"] == result["top_ops"]


@pytest.mark.gpu
def test_bench_sample_profiles_kernels_and_device_time_on_a_gpu():
    result = bench_sample(model="rar_tiny", batch_size=2, steps=1, device="cuda", profile=True)
    assert result["kernels_per_step"] > 10 and result["device_ms_per_step"] > 0
