"""rar.runtime: devices, precision, deterministic algorithms, TF32, the distributed environment,
seeds."""

from __future__ import annotations

import os

import pytest
import torch
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from rar.runtime import (
    CompileTime,
    DistEnv,
    FirstNonFinite,
    autocast_dtype,
    compile_enabled,
    derive_seed,
    deterministic_algorithms,
    inductor_cache,
    make_current,
    resolve_device,
    tf32,
    to_device,
)

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)  # torch.device needs no GPU


def test_precision_auto_is_bf16_on_a_gpu_only():
    assert autocast_dtype("auto", GPU) is torch.bfloat16 and autocast_dtype("auto", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16 and autocast_dtype("fp32", GPU) is None
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        autocast_dtype("fp16", CPU)


def test_device_auto_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", local_rank=3) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cpu") == CPU


def test_only_an_indexed_cuda_device_is_made_current(monkeypatch):
    """`--device cuda` (no index) must pass: torch.cuda.set_device refuses it."""
    made = []
    monkeypatch.setattr(torch.cuda, "set_device", made.append)
    for device in (CPU, torch.device("cuda"), torch.device("cuda", 1)):
        make_current(device)
    assert made == [torch.device("cuda", 1)]


def test_dist_env_from_torchrun_then_slurm_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(k, raising=False)
    assert DistEnv.from_environ() == DistEnv(0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert DistEnv.from_environ() == DistEnv(5, 8, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert DistEnv.from_environ() == DistEnv(2, 4, 0)  # torchrun's first, LOCAL_RANK unset
    DistEnv().barrier()  # one process: nothing to wait for, no process group needed


def test_derive_seed_is_fixed_and_63_bits():
    """Training's data order and dropout masks hang on these values: they never change."""
    assert derive_seed(3, 0, 1, 1) == derive_seed(3, 0, 1, 1) != derive_seed(3, 0, 0, 1)
    assert all(0 <= derive_seed(s, 7) < 2**63 for s in range(20))
    assert derive_seed(0) == 6375474604893067239  # the value before rar.runtime held it


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_tf32_is_on_for_a_gpu_for_the_duration_only():
    before = _tf32_flags()
    try:
        for caller in ((False, False), (True, False)):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = caller
            with tf32(GPU):
                assert _tf32_flags() == (True, True)
            assert _tf32_flags() == caller
            with tf32(CPU):
                assert _tf32_flags() == caller
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_deterministic_algorithms_restore_the_callers_setting(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True, CPU):
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(False, CPU):
        assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # nothing runs in parallel
    with deterministic_algorithms(True, CPU):
        assert not torch.are_deterministic_algorithms_enabled()


def test_compile_auto_is_on_a_gpu_only():
    assert compile_enabled("auto", GPU) and not compile_enabled("auto", CPU)
    assert compile_enabled(True, CPU) and not compile_enabled(False, GPU)


def test_inductors_cache_is_beside_the_run_for_the_duration(tmp_path, monkeypatch):
    """Set to <workdir>/.inductor-cache while compiling, then removed; a folder the user
    exported stays; nothing is set when the model is not compiled (None)."""
    key = "TORCHINDUCTOR_CACHE_DIR"
    monkeypatch.delenv(key, raising=False)
    with inductor_cache(tmp_path / "run") as folder:
        assert os.environ[key] == str(folder) == str((tmp_path / "run/.inductor-cache").resolve())
    assert key not in os.environ
    with inductor_cache(None) as folder:
        assert folder is None and key not in os.environ
    default = default_cache_dir()  # what inductor exports itself once imported: not the user's
    monkeypatch.setenv(key, default)
    with inductor_cache(tmp_path / "run") as folder:
        assert os.environ[key] == str(folder) == str((tmp_path / "run/.inductor-cache").resolve())
    assert os.environ[key] == default
    monkeypatch.setenv(key, "/scratch/mine")
    with inductor_cache(tmp_path / "run") as folder:
        assert os.environ[key] == str(folder) == "/scratch/mine"
    assert os.environ[key] == "/scratch/mine"


def test_compile_time_is_the_first_step_less_the_second(capsys):
    times = iter([0.0, 30.0, 30.0, 30.5])  # the first step 30 s, the second 0.5 s
    timer = CompileTime(True, CPU, clock=lambda: next(times))
    assert [timer.timed(lambda x: x + 1, i) for i in range(4)] == [1, 2, 3, 4]  # 2 timed
    assert "first step 30.0 s, second 0.50 s: about 29.5 s compiling" in capsys.readouterr().out
    CompileTime(False, CPU, clock=None).timed(print, "eager")  # not timed: no clock read
    assert capsys.readouterr().out == "eager\n"


def test_the_first_non_finite_loss_is_kept_on_the_device():
    flag = FirstNonFinite(CPU)
    flag.note(0, torch.tensor(2.0))
    assert flag.first() is None
    flag.note(1, torch.tensor(float("inf")))
    flag.note(2, torch.tensor(float("nan")))
    assert flag.first() == (1, float("inf"))


def test_a_batch_stays_itself_on_the_cpu():
    batch = torch.arange(6)
    assert to_device(batch, CPU) is batch
