"""Class-conditional generation with a static KV cache and classifier-free guidance.

The structure follows gpt-fast's `generate.py`: `prefill` runs the 2-token prefix
[cls, class], `decode_one_token` feeds one token and returns the logits for the next, and
`generate` loops. The cache is preallocated for the whole sequence and attention runs over it
with a mask, so every decode step has the same shapes and `torch.compile` compiles it once.

Sampling follows the official `RAR.generate` (bytedance/1d-tokenizer `modeling/rar.py`):
guidance by batch doubling with the null class, `uncond + (cond - uncond) * s` with the
pow-cosine schedule of MDT, temperature dividing the logits, then a multinomial draw. The
ablations' linear schedule (MUSE) and a constant one are the other `GUIDANCE_SCHEDULES`.

Both architectures of `rar.model` run through the same steps: the plain ViT's
`model.condition` is None, and its blocks and head ignore it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from rar import presets
from rar.model import PREFIX, RAR
from rar.orders import scan_order, unshuffle
from rar.presets import GUIDANCE_SCHEDULES

# ##########################################################################################
# Sampling settings
# ##########################################################################################


def _check_schedule(schedule: str) -> None:
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(
            f"unknown guidance schedule {schedule!r}; known: {', '.join(GUIDANCE_SCHEDULES)}"
        )


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Defaults: RAR-L's setting (README_RAR.md of the official release)."""

    guidance_scale: float = 15.5
    guidance_power: float = 2.5  # pow-cosine schedule exponent; 0 = constant guidance
    temperature: float = 1.02
    order: str = "row-major"  # a scan order name or "random"
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    # RAR §4.1: "pow-cosine" (MDT) for the final models, "linear" (MUSE) for the ablations
    guidance_schedule: str = "pow-cosine"

    def __post_init__(self) -> None:
        _check_schedule(self.guidance_schedule)


# The paper's sampling settings per model size (rar.presets).
SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    name: SamplingConfig(**values) for name, values in presets.SAMPLING_PRESETS.items()
}


def guidance_scale_at(
    step: int, num_steps: int, *, scale: float, power: float, schedule: str = "pow-cosine"
) -> float:
    """Guidance scale s at `step` (0-based) of `num_steps`, in the convention of the guided
    logits `uncond + (cond - uncond) * s` (s = 1: unguided). With g = `scale`, t = `step`,
    N = `num_steps`:

    - "pow-cosine" (MDT, Gao et al. 2023; RAR's final models, official `RAR.generate`):
      s = (g - 1) * (1 - cos(pi * (t / N) ** p)) / 2 + 1 with p = `power`. It rises from 1 to
      about g; p = 0 makes it the constant g (0 ** 0 = 1).
    - "linear" (MUSE, Chang et al. 2023; RAR's ablations, §4.1): as the official MaskGIT
      sampler of the same authors (1d-tokenizer `modeling/maskgit.py`, `guidance_decay`)
      defines it, the logits are `cond + (cond - uncond) * w` with w = g * t / N, so
      s = 1 + g * t / N: step 0 is unguided and s approaches 1 + g. Note that g is MUSE's w
      here, one less than the scale the other schedules reach.
    - "constant": s = g at every step.

    `power` only matters for "pow-cosine". Raises ValueError on an unknown schedule.
    """
    _check_schedule(schedule)
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return 1 + scale * step / num_steps
    ramp = (1 - math.cos(math.pi * (step / num_steps) ** power)) / 2
    return (scale - 1) * ramp + 1


def guidance_schedule(step: int, num_steps: int, scale: float, power: float) -> float:
    """The pow-cosine guidance scale (`guidance_scale_at(..., schedule="pow-cosine")`)."""
    return guidance_scale_at(step, num_steps, scale=scale, power=power, schedule="pow-cosine")


# ##########################################################################################
# KV cache and the decode steps
# ##########################################################################################


class KVCache:
    """Preallocated keys and values of every layer: (layers, B, H, L, head_dim) each."""

    def __init__(self, model: RAR, batch_size: int, *, dtype: torch.dtype, device) -> None:
        cfg = model.config
        shape = (
            cfg.num_layers,
            batch_size,
            cfg.num_heads,
            cfg.num_tokens + 1,  # [cls, class, x_0 .. x_{N-2}]: the last token is never fed
            cfg.hidden_size // cfg.num_heads,
        )
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = shape[3]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]


def _run_blocks(
    model: RAR, x: torch.Tensor, c: torch.Tensor, cache: KVCache, input_pos: torch.Tensor
) -> torch.Tensor:
    """Run the blocks over new positions `input_pos` (T,), attending to everything cached up
    to and including them. x, c: (B, T, D) -> logits (B, T, codebook)."""
    slots = torch.arange(cache.length, device=x.device)
    mask = slots[None, :] <= input_pos[:, None]  # (T, L): causal over the cache
    for i, block in enumerate(model.blocks):
        x = block(x, c, mask=mask, kv_cache=cache.layer(i), input_pos=input_pos)
    return model.head(x, c)


def prefill(model: RAR, labels: torch.Tensor, orders: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed [cls, class] -> logits (B, codebook) for the token at raster `orders[:, 0]`."""
    input_pos = torch.arange(PREFIX, device=labels.device)
    x = model.prefix(labels, orders[:, 0])  # (B, 2, D)
    c = model.condition(labels, input_pos)
    return _run_blocks(model, x, c, cache, input_pos)[:, -1]


def decode_one_token(
    model: RAR,
    token: torch.Tensor,
    labels: torch.Tensor,
    at: torch.Tensor,
    target: torch.Tensor,
    input_pos: torch.Tensor,
    cache: KVCache,
) -> torch.Tensor:
    """Feed one token (B,) sitting at raster position `at` (B,), whose successor is raster
    position `target` (B,), at sequence position `input_pos` (1,) -> logits (B, codebook)."""
    x = model.token_inputs(token[:, None], at[:, None], target[:, None])  # (B, 1, D)
    c = model.condition(labels, input_pos)
    return _run_blocks(model, x, c, cache, input_pos)[:, -1]


def sample_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> sampled ids (B,). Temperature divides the logits; optional top-k and
    nucleus (top-p) filtering; a multinomial draw from `generator`."""
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, sorted_idx, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ##########################################################################################
# Generation
# ##########################################################################################


def resolve_orders(
    order: str | torch.Tensor,
    batch_size: int,
    grid: int,
    *,
    device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The generation order per sample -> (B, N): a scan-order name, one permutation (N,) or
    one per sample (B, N), or "random" (a fresh uniform permutation per sample, drawn from
    `generator`; how the paper samples its purely-random-trained model)."""
    N = grid * grid
    if isinstance(order, str) and order == "random":
        keys = torch.rand(batch_size, N, generator=generator, device=device)
        return keys.argsort(dim=1)
    if isinstance(order, str):
        order = scan_order(order, grid)
    order = order.to(device=device, dtype=torch.long)
    if order.dim() == 1:
        order = order.expand(batch_size, N)
    if order.shape != (batch_size, N) or not torch.equal(
        order.sort(dim=1).values, torch.arange(N, device=device).expand(batch_size, N)
    ):
        raise ValueError(f"order must be permutations of range({N}) of shape (N,) or (B, N)")
    return order


@torch.no_grad()
def generate(
    model: RAR,
    labels: torch.Tensor,
    *,
    guidance_scale: float,
    guidance_power: float,
    temperature: float,
    guidance_schedule: str = "pow-cosine",
    order: str | torch.Tensor = "row-major",
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Generate token grids for class `labels` (B,) -> (B, N) int64 codes in raster layout.

    guidance_scale, guidance_power, guidance_schedule: classifier-free guidance g, the
        pow-cosine exponent p and the schedule name (`guidance_scale_at`; GUIDANCE_SCHEDULES);
        when the scale is 1 at every step the unconditional half of the batch is skipped.
    temperature: divides the logits. top_k / top_p: optional filtering, off by default.
    order: scan-order name, permutation(s), or "random" (see `resolve_orders`).
    generator: source of every random draw (orders and tokens), on the labels' device.
    amp_dtype: e.g. torch.bfloat16 for autocast on GPU; None = the model's dtype.
    compile: torch.compile the decode step ("reduce-overhead"). Not yet a speed-up: on an H200
        (torch 2.11) inductor skips its CUDA graphs, because the step writes the KV cache in
        place ("mutated inputs"), and rar_b did not finish a compiled warm-up and three
        batches of 128 in 100 s, where eager bf16 takes 3.8 s a batch (README, "GPU
        performance").
    """
    B, N = labels.shape[0], model.config.num_tokens
    scales = [
        guidance_scale_at(
            t, N, scale=guidance_scale, power=guidance_power, schedule=guidance_schedule
        )
        for t in range(N)
    ]
    was_training = model.training
    model.eval()
    device = labels.device
    orders = resolve_orders(order, B, model.config.grid, device=device, generator=generator)
    guided = any(s != 1.0 for s in scales)
    if guided:  # batch doubling: [conditional; unconditional with the null class]
        labels = torch.cat([labels, torch.full_like(labels, model.config.null_class)])
    orders_in = torch.cat([orders, orders]) if guided else orders

    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    cache_dtype = amp_dtype or next(model.parameters()).dtype
    cache = KVCache(model, labels.shape[0], dtype=cache_dtype, device=device)
    step = decode_one_token
    if compile:
        step = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)

    out = torch.empty(B, N, dtype=torch.long, device=device)  # in visiting order
    with autocast:
        logits = prefill(model, labels, orders_in, cache)
        for t in range(N):
            if guided:
                cond, uncond = logits.float().chunk(2)
                logits = uncond + (cond - uncond) * scales[t]
            token = sample_token(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )
            out[:, t] = token
            if t == N - 1:
                break
            fed = torch.cat([token, token]) if guided else token
            input_pos = torch.tensor([PREFIX + t], device=device)
            logits = step(
                model, fed, labels, orders_in[:, t], orders_in[:, t + 1], input_pos, cache
            )
    model.train(was_training)
    return unshuffle(out, orders)  # visiting order -> raster layout
