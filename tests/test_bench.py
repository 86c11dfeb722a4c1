"""rar.bench: the timing rule (one untimed warm-up, synchronised clock reads) and a CPU run."""

from __future__ import annotations

import contextlib
import csv

import torch

import rar.bench
from rar.bench import _decoder, bench_sample, seconds_per_call


def test_seconds_per_call_skips_one_warm_up_call():
    calls = []
    seconds = seconds_per_call(lambda: calls.append(1), 3, torch.device("cpu"))
    assert len(calls) == 4 and seconds >= 0


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
    calls, real = [], rar.bench.generate

    def spy(*args, **kwargs):
        calls.append((kwargs.get("dtype"), kwargs.get("amp_dtype")))
        return real(*args, **kwargs)

    monkeypatch.setattr(rar.bench, "generate", spy)
    result = bench_sample(model="rar_tiny", batch_size=2, steps=1, device="cpu", dtype="bf16")
    assert result["dtype"] == "bf16" and set(calls) == {(torch.bfloat16, None)}


def test_bench_train_times_its_steps_under_trainings_tf32_setting(tmp_path, monkeypatch):
    """TF32 is process-wide, and training turns it on for its loop only (rar.runtime.tf32): the
    bench times its steps inside the same scope, or its fp32 figures are not training's."""
    scopes, timed_in, real_tf32, real_timer = [], [], rar.bench.tf32, rar.bench.seconds_per_call

    @contextlib.contextmanager
    def spy(device):
        with real_tf32(device):
            scopes.append(device.type)
            yield
            scopes.append("closed")

    def timer(*args):
        timed_in.append(list(scopes))  # the scopes entered (and not closed) when timing
        return real_timer(*args)

    monkeypatch.setattr(rar.bench, "tf32", spy)
    monkeypatch.setattr(rar.bench, "seconds_per_call", timer)
    result = rar.bench.bench_train(
        model="rar_tiny", batch_size=2, steps=1, device="cpu", csv_path=tmp_path / "b.csv"
    )
    assert timed_in == [["cpu"]] and scopes == ["cpu", "closed"] and result["images_per_s"] > 0
