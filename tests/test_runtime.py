"""rar.runtime: devices, precision, deterministic algorithms, TF32, the distributed environment,
seeds."""

from __future__ import annotations

import pytest
import torch

from rar.runtime import (
    DistEnv,
    autocast_dtype,
    derive_seed,
    deterministic_algorithms,
    make_current,
    resolve_device,
    tf32,
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
