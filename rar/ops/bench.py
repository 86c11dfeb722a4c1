"""Throughput benchmarks that print figures with the machine and settings.

Benchmarks measure; they are never timed tests. Timing follows gpt-fast's rules: one untimed
warm-up batch, and a device synchronisation before every clock read.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rar.model.generate import generate
from rar.model.transformer import RAR, RAR_CONFIGS, num_parameters, rar_config
from rar.runtime import autocast_dtype, resolve_device, tf32
from rar.settings.stages import resolve_sampling

# Sizes that run the ImageNet setting (MaskGIT-VQGAN, 16 x 16 tokens, 1000 classes).
IMAGENET_SIZES = ("rar_b", "rar_l", "rar_xl", "rar_xxl")
# bench_sample's precisions, `rar sample --dtype`'s: fp32 (PyTorch's default flags), bf16 (the
# decode engine's bf16 copy of the weights and a bf16 KV cache, no autocast), and
# tf32: fp32 weights with TF32 matrix products and convolutions, the official sampler's
# (bytedance/1d-tokenizer sample_imagenet_rar.py sets both allow_tf32 flags), so the setting
# of the paper's Table 5 figures.
SAMPLE_DTYPES = ("fp32", "tf32", "bf16")


def machine_description(device: torch.device) -> str:
    """One line naming the hardware and software a figure was measured on."""
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"{hw}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timing(NamedTuple):
    """`seconds_per_call`'s figures: the mean seconds of a call, and the first call's (the
    warm-up: allocator, kernel selection and any compilation)."""

    mean_s: float
    first_s: float


def seconds_per_call(fn, steps: int, device: torch.device) -> Timing:
    """Mean seconds of `fn()` over `steps` calls after one warm-up call (allocator, kernels,
    compilation), timed apart; the device synchronised before each clock read (gpt-fast)."""
    _sync(device)
    start = time.perf_counter()
    fn()  # warm-up
    _sync(device)
    first = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return Timing((time.perf_counter() - first) / steps, first - start)


def _append_csv(path: str | Path, row: dict) -> None:
    path = Path(path)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


# ##########################################################################################
# Peak FLOP/s, for model FLOPs utilisation
# ##########################################################################################


@dataclass(frozen=True)
class Peak:
    """One GPU's dense (no 2:4 sparsity) tensor-core peak, from its vendor data sheet."""

    name: str  # the product, as the data sheet names it
    pattern: str  # regular expression, matched in full against torch.cuda.get_device_name
    memory_gib: tuple[float, float]  # total memory range: tells apart what one name may mean
    bf16: float  # TFLOP/s, dense bf16 (= fp16) tensor core
    tf32: float  # TFLOP/s, dense TF32 tensor core: fp32 training's products (rar.runtime.tf32)
    source: str  # the data sheet


_A100 = "NVIDIA A100 Tensor Core GPU data sheet (2021), the figures without sparsity"
_H100 = "NVIDIA H100 Tensor Core GPU data sheet (2023), dense = half the sparse figures"
_H200 = "NVIDIA H200 Tensor Core GPU product brief (2024), dense = half the sparse figures"
_L40S = "NVIDIA L40S data sheet (2023), the figures without sparsity"
# The one table of peaks. A name is looked up in order, first full match whose memory range
# holds the device's total memory; memory is what separates the A100's 40 and 80 GB boards
# when a driver names only the form factor ("NVIDIA A100-SXM4"). An H100 or H200 name without
# its form factor ("NVIDIA H100") matches nothing: SXM, PCIe and NVL boards differ in peak.
GPU_PEAKS = (
    Peak("A100 SXM 40GB", r"NVIDIA A100-SXM4(-40GB)?", (30, 45), 312, 156, _A100),
    Peak("A100 SXM 80GB", r"NVIDIA A100-SXM4(-80GB)?", (70, 90), 312, 156, _A100),
    Peak("A100 PCIe 40GB", r"NVIDIA A100-PCIE(-40GB)?", (30, 45), 312, 156, _A100),
    Peak("A100 PCIe 80GB", r"NVIDIA A100 (80GB )?PCIe", (70, 90), 312, 156, _A100),
    Peak("H100 SXM", r"NVIDIA H100 (80GB HBM3|SXM5?( 80GB)?)", (70, 90), 989.5, 494.5, _H100),
    Peak("H100 PCIe", r"NVIDIA H100 PCIe", (70, 90), 756.5, 378, _H100),
    Peak("H100 NVL", r"NVIDIA H100 NVL", (85, 100), 835.5, 417.5, _H100),
    Peak("H200 SXM", r"NVIDIA H200( SXM)?", (130, 145), 989.5, 494.5, _H200),
    Peak("H200 NVL", r"NVIDIA H200 NVL", (130, 145), 835.5, 417.5, _H200),
    Peak("L40S", r"NVIDIA L40S", (40, 50), 362.05, 183, _L40S),
)


def peak_of(name: str, total_memory: int | None = None) -> Peak | None:
    """The table's entry for a device named `name` (torch.cuda.get_device_name) with
    `total_memory` bytes (torch.cuda.get_device_properties(...).total_memory; None: the name
    alone decides, the first match), or None: an unknown device has an unknown peak."""
    gib = None if total_memory is None else total_memory / 2**30
    for peak in GPU_PEAKS:
        low, high = peak.memory_gib
        if re.fullmatch(peak.pattern, name.strip()) and (gib is None or low <= gib <= high):
            return peak
    return None


def device_peak(device: torch.device) -> Peak | None:
    """`peak_of` the GPU `device`; None on a CPU."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return peak_of(torch.cuda.get_device_name(device), props.total_memory)


def mfu_line(result: dict, peak: Peak | None, device: torch.device) -> str:
    """The MFU line of `rar bench-train`: the utilisation, the peak it is against and where
    that peak comes from; or why there is none."""
    if device.type != "cuda":
        return "MFU: none on a CPU"
    if peak is None:
        name = torch.cuda.get_device_name(device)
        return f"MFU: unknown peak for {name!r} (not in rar.ops.bench.GPU_PEAKS)"
    kind = "bf16" if result["dtype"] == "bf16" else "tf32"
    return (
        f"MFU {result['mfu']:.1%} of {result['peak_tflops']:g} TFLOP/s dense {kind} "
        f"({peak.name}; {peak.source})"
    )


def bench_train(
    *,
    model: str = "rar_tiny",
    batch_size: int = 64,
    steps: int = 5,
    dtype: str = "auto",
    device: str = "auto",
    compile: bool = False,
    csv_path: str | Path | None = None,
) -> dict:
    """Time optimizer steps of the training recipe (random orders, label dropout, AdamW,
    gradient clipping) on random tokens; print tokens/s, images/s and, on a GPU, MFU."""
    from rar.settings.training import TrainConfig
    from rar.training.loop import build_optimizer, loss_and_accuracy, model_from_config

    dev = resolve_device(device)
    cfg = TrainConfig(model=model, global_batch=batch_size, compile=compile)
    torch.manual_seed(0)
    net = model_from_config(cfg).to(dev).train()
    optimizer = build_optimizer(net, cfg)
    step_model = torch.compile(net) if compile else net
    amp = autocast_dtype(dtype, dev)
    N = cfg.num_tokens
    tokens = torch.randint(cfg.codebook_size, (batch_size, N), device=dev)
    labels = torch.randint(cfg.num_classes + 1, (batch_size,), device=dev)
    orders = torch.rand(batch_size, N, device=dev).argsort(dim=1)

    def one_step() -> None:
        loss, _ = loss_and_accuracy(step_model, tokens, labels, orders, amp=amp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with tf32(dev):  # training's setting (rar.training.loop), or fp32 steps are not training's
        seconds, first_s = seconds_per_call(one_step, steps, dev)
    tokens_per_s = batch_size * N / seconds
    flops = cfg.shape.train_flops_per_token * tokens_per_s
    peak = device_peak(dev)
    peak_tflops = None if peak is None else peak.bf16 if amp else peak.tf32
    result = {
        "model": model,
        "params": num_parameters(net),
        "batch_size": batch_size,
        "dtype": "bf16" if amp else "fp32",
        "compile": compile,
        "device": str(dev),
        "machine": machine_description(dev),
        "seconds_per_step": round(seconds, 4),
        "first_step_s": round(first_s, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "images_per_s": round(batch_size / seconds, 2),
        "tflops": round(flops / 1e12, 3),
        "mfu": round(flops / (peak_tflops * 1e12), 4) if peak else "",
        "peak_tflops": peak_tflops or "",
        "peak_source": f"{peak.name}: {peak.source}" if peak else "",
    }
    mfu = mfu_line(result, peak, dev)
    print(
        f"train {model} ({result['params'] / 1e6:.1f}M params), batch {batch_size}, "
        f"{result['dtype']}, compile {compile} on {result['machine']}:\n"
        f"  {result['images_per_s']} images/s, {result['tokens_per_s']} tokens/s, "
        f"{result['tflops']} TFLOP/s (mean of {steps} steps after a warm-up step of "
        f"{first_s:.1f} s{', compilation included' if compile else ''})\n  {mfu}",
        flush=True,
    )
    if csv_path is not None:
        _append_csv(csv_path, result)
    return result


def bench_micro_batches(batch_sizes: list[int], **kwargs) -> list[dict]:
    """`bench_train` at each of `batch_sizes` (the per-GPU micro-batch), smallest first, until
    one runs out of device memory (the larger are not tried); prints which fits fastest, the
    `micro_batch` to give a study's `train:` before it trains (gradient accumulation keeps the
    global batch; the micro-batches key the random draws, so it is part of a run's id).
    Returns each size's result; a size that ran out of memory has {"batch_size",
    "out_of_memory": True}. kwargs: `bench_train`'s other arguments."""
    results = []
    for size in sorted(set(batch_sizes)):
        try:
            results.append(bench_train(batch_size=size, **kwargs))
        except torch.OutOfMemoryError:
            results.append({"batch_size": size, "out_of_memory": True})
            print(f"  micro-batch {size}: out of device memory; larger ones not tried", flush=True)
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next size starts from an empty cache
    fitting = [r for r in results if not r.get("out_of_memory")]
    if len(results) > 1 and fitting:
        best = max(fitting, key=lambda r: r["images_per_s"])
        print(
            f"fastest micro-batch that fits: {best['batch_size']} "
            f"({best['images_per_s']} images/s per device; of "
            f"{', '.join(str(r['batch_size']) for r in results)}); for a study, set before it "
            f"trains (part of a run's id): train: {{micro_batch: {best['batch_size']}}}",
            flush=True,
        )
    return results


def _decoder(decoder: str, model: str, device: torch.device):
    """(decoder name, its decode function or None): "auto" decodes with MaskGIT-VQGAN (random
    weights: the time, not the images) for the ImageNet sizes, and not at all otherwise; as
    `rar sample` decodes (`decode_to_uint8`: fp32, in slices, to uint8 on the host)."""
    if decoder == "auto":
        decoder = "maskgit-vqgan" if model in IMAGENET_SIZES else "none"
    if decoder != "maskgit-vqgan":
        return decoder, None
    from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig, decode_to_uint8

    with device:
        tokenizer = MaskGITVQGAN(MaskGITVQGANConfig()).eval()
    return decoder, lambda ids: decode_to_uint8(tokenizer, ids)


def _bench_model(
    model: str, device: torch.device, *, hidden_size: int | None, num_layers: int | None
) -> RAR:
    """The named size `model` with seeded random weights, its width (MLP 4x the width) and
    depth overridden when given, in eval mode on `device`."""
    if model not in RAR_CONFIGS:
        raise ValueError(f"unknown model size {model!r}; known: {', '.join(RAR_CONFIGS)}")
    overrides = {}
    if hidden_size is not None:
        overrides.update(hidden_size=hidden_size, mlp_size=4 * hidden_size)
    if num_layers is not None:
        overrides.update(num_layers=num_layers)
    torch.manual_seed(0)
    with device:
        return RAR(rar_config(model, **overrides)).eval()


def bench_sample(
    *,
    model: str = "rar_tiny",
    batch_size: int = 128,
    steps: int = 3,
    dtype: str = "fp32",
    device: str = "auto",
    sampling: Mapping[str, Any] | None = None,
    decoder: str = "auto",
    compile: bool = False,
    csv_path: str | Path | None = None,
    profile: bool = False,
    hidden_size: int | None = None,
    num_layers: int | None = None,
) -> dict:
    """Time class-conditional generation (and optionally tokenizer decoding) of
    `batch_size`-image batches; print and return images/s and tokens/s. dtype: one of
    SAMPLE_DTYPES (bf16: the decode engine's bf16 copy of the weights, no autocast; tf32: fp32
    with TF32 matrix products, the official sampler's).

    sampling: SamplingConfig fields overriding the model size's preset (`resolve_sampling`;
    the fallback's for a size without one), e.g. {"guidance_scale": 2.0}.
    hidden_size, num_layers: override the named size's width (the MLP kept at 4x the width,
    as in every named size) and depth, for sizes between the named ones.
    profile: profile one more generation, decoding left out (`decode_step_profile`)."""
    dev = resolve_device(device)
    if dtype not in SAMPLE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SAMPLE_DTYPES)}, got {dtype!r}")
    net = _bench_model(model, dev, hidden_size=hidden_size, num_layers=num_layers)
    settings, _ = resolve_sampling(model, overrides=sampling or {})
    amp = autocast_dtype("fp32" if dtype == "tf32" else dtype, dev)
    decoder, decode = _decoder(decoder, model, dev)

    labels = torch.arange(batch_size, device=dev) % net.config.num_classes
    generator = torch.Generator(dev).manual_seed(0)

    def one_generation() -> torch.Tensor:
        return generate(
            net,
            labels,
            settings,
            generator=generator,
            dtype=amp,  # real bf16: the engine's bf16 copy of the weights, not autocast
            compile=compile,
        )

    def one_batch() -> None:
        ids = one_generation()
        if decode is not None:
            decode(ids)

    profiled = {}
    with tf32(dev) if dtype == "tf32" else contextlib.nullcontext():
        seconds, first_s = seconds_per_call(one_batch, steps, dev)
        if profile:
            profiled = decode_step_profile(one_generation, net.config.num_tokens - 1, dev)
    result = {
        "model": model,
        "hidden_size": net.config.hidden_size,
        "num_layers": net.config.num_layers,
        "params": num_parameters(net),
        "batch_size": batch_size,
        "dtype": dtype,
        "decoder": decoder,
        "guidance_scale": settings.guidance_scale,
        "compile": compile,
        "device": str(dev),
        "machine": machine_description(dev),
        "seconds_per_batch": round(seconds, 4),
        "first_batch_s": round(first_s, 2),
        "images_per_s": round(batch_size / seconds, 2),
        "tokens_per_s": round(batch_size * net.config.num_tokens / seconds, 1),
        **profiled,
    }
    print(sample_lines(result, steps, decode_steps=net.config.num_tokens - 1), flush=True)
    if csv_path is not None:
        _append_csv(csv_path, result)
    return result


def sample_lines(r: dict, steps: int, *, decode_steps: int) -> str:
    """What `bench_sample` prints of its result `r`: the model and settings, the throughput
    and, when profiled, the decode step (`profile_line`)."""
    lines = [
        f"{r['model']} (width {r['hidden_size']}, depth {r['num_layers']}, "
        f"{r['params'] / 1e6:.1f}M params), batch {r['batch_size']}, {r['dtype']}, guidance "
        f"{r['guidance_scale']}, decoder {r['decoder']}, compile {r['compile']} on "
        f"{r['machine']}:",
        f"  {r['images_per_s']} images/s, {r['tokens_per_s']} tokens/s "
        f"({r['seconds_per_batch']:.3f} s per batch, the mean of {steps} batches after a "
        f"warm-up batch of {r['first_batch_s']:.1f} s"
        f"{', compilation included' if r['compile'] else ''})",
    ]
    if "ops_per_step" in r:
        lines.append(f"  {profile_line(r, decode_steps)}")
    return "\n".join(lines)


def decode_step_profile(generation, steps: int, device: torch.device) -> dict:
    """Profile one call of `generation` (a prefill and `steps` decode steps) with
    torch.profiler; per decode step (the prefill counted in): `kernels_per_step` (device
    kernels; "" on a CPU), `ops_per_step` (aten ops dispatched, nested ones included: the
    host's work), `wall_ms_per_step` (the call, device synchronised), `host_ms_per_step` (the
    ops' own host time), `device_ms_per_step` (the kernels' time; "" on a CPU) and `top_ops`,
    the three ops with the most time on the device (the host on a CPU) and their shares."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        generation()
        _sync(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    host = [e for e in events if e.device_type == DeviceType.CPU]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    on_device = sum(e.self_device_time_total for e in kernels)  # microseconds
    on_host = sum(e.self_cpu_time_total for e in host)
    if cuda:
        ranked, total = [(e.key, e.self_device_time_total) for e in kernels], on_device
    else:
        ranked, total = [(e.key, e.self_cpu_time_total) for e in host], on_host
    top = sorted(ranked, key=lambda kv: -kv[1])[:3]
    return {
        "kernels_per_step": round(sum(e.count for e in kernels) / steps, 1) if cuda else "",
        "ops_per_step": round(sum(e.count for e in host) / steps, 1),
        "wall_ms_per_step": round(wall * 1e3 / steps, 3),
        "host_ms_per_step": round(on_host / 1e3 / steps, 3),
        "device_ms_per_step": round(on_device / 1e3 / steps, 3) if cuda else "",
        "top_ops": "; ".join(f"{name} {t / max(total, 1e-9):.0%}" for name, t in top),
    }


def profile_line(p: dict, steps: int) -> str:
    """`decode_step_profile`'s figures in one line."""
    kernels = f"{p['kernels_per_step']} kernels, " if p["kernels_per_step"] != "" else ""
    device = f", device {p['device_ms_per_step']} ms" if p["device_ms_per_step"] != "" else ""
    return (
        f"profile of one generation ({steps} decode steps), per step: {kernels}"
        f"{p['ops_per_step']} ops; wall {p['wall_ms_per_step']} ms, host ops "
        f"{p['host_ms_per_step']} ms{device}; the most {'device' if device else 'host'} "
        f"time: {p['top_ops']}"
    )
