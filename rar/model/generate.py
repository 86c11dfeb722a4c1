"""Class-conditional generation with a static KV cache and classifier-free guidance.

The structure follows gpt-fast's `generate.py` and `model.py`: a `DecodeEngine` holds the KV
cache and every per-step input as module buffers, built once per (model, batch, dtype) and
reused across calls and chunks; `prefill` runs the 2-token prefix [cls, class],
`decode_one_token` feeds one token and returns the next token's probabilities, and
`decode_n_tokens` loops. A step reads its position from a buffer advanced in place, draws
without a host sync, and attends to the live prefix of the cache only (`attended_slots`: on
average half the cache, whose reads are most of a decode step's memory traffic), a length
the loop knows without asking the device; compiled, it rounds that length up to one of
SLOT_SHAPES lengths (a CUDA graph each, from three compilations). The loop never waits on the
device.

Sampling follows the official `RAR.generate` (bytedance/1d-tokenizer `modeling/rar.py`):
guidance by batch doubling with the null class, `uncond + (cond - uncond) * s` with the
pow-cosine schedule of MDT, temperature dividing the logits, then a multinomial draw (`draw`:
the same draw as `torch.multinomial`, bit for bit). The ablations' linear schedule (MUSE) and
a constant one are the other `GUIDANCE_SCHEDULES`.

Both architectures of `rar.model.transformer` run through the same steps: the plain ViT's
`model.condition` is None, and its blocks and head ignore it.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from rar.model.orders import scan_order, unshuffle
from rar.model.transformer import PREFIX, RAR, RARConfig, rar_from_state_dict
from rar.runtime import autocast
from rar.settings.stages import SamplingConfig, check_schedule

# ##########################################################################################
# Guidance schedules
# ##########################################################################################


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
    check_schedule(schedule)
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return 1 + scale * step / num_steps
    ramp = (1 - math.cos(math.pi * (step / num_steps) ** power)) / 2
    return (scale - 1) * ramp + 1


# ##########################################################################################
# Token draws
# ##########################################################################################


def sampling_probs(logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """logits (B, V) -> the probabilities a token is drawn from, (B, V) float32: temperature
    divides the logits, then a softmax (the official `RAR.generate` filters nothing)."""
    return (logits.float() / temperature).softmax(dim=-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` (B, V) -> (B,) int64: the draw of
    `torch.multinomial(probs, 1, generator=generator)[:, 0]`, without its host syncs.

    For one sample, multinomial draws q ~ Exp(1) into `empty_like(probs)` from `generator`
    and returns argmax(probs / q) (the Gumbel-max trick; aten/src/ATen/native/
    Distributions.cpp, `multinomial_out`, on every device), after checking the probabilities
    with `.item()` calls, a host sync per token on a GPU. The same three ops here give the
    same token from the same generator state, bit for bit (tests/test_generate.py holds it
    over seeds, sizes and temperatures, on the pinned torch); the check is
    `check_probs`, once per generation."""
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return probs.div(q).argmax(dim=-1)


def check_probs(probs: torch.Tensor) -> None:
    """multinomial's check, for one (B, V) tensor: finite, non-negative, no row summing to 0.
    A NaN or inf in the model carries through the KV cache to every later step, so the last
    step's probabilities show it."""
    if not bool(((probs >= 0) & (probs < float("inf"))).all() & (probs.sum(-1) > 0).all()):
        raise ValueError("probability tensor contains inf, nan, an element < 0 or a zero row")


def sample_token(
    logits: torch.Tensor, *, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits (B, V) -> sampled ids (B,): `sampling_probs`, then a multinomial draw from
    `generator` (`draw`)."""
    probs = sampling_probs(logits, temperature=temperature)
    check_probs(probs)
    return draw(probs, generator)


# ##########################################################################################
# The decode engine: the KV cache and every per-step input as buffers
# ##########################################################################################


class KVCache(nn.Module):
    """Keys and values of one attention layer: (R, H, L, head_dim) buffers (gpt-fast's
    `KVCache`). L = N + 1 positions: [cls, class, x_0 .. x_{N-2}]; the last token is never fed."""

    def __init__(self, rows: int, heads: int, length: int, head_dim: int, *, dtype, device):
        super().__init__()
        shape = (rows, heads, length, head_dim)
        for name in ("k", "v"):
            self.register_buffer(
                name, torch.zeros(shape, dtype=dtype, device=device), persistent=False
            )


# A compiled step attends to one of this many cache lengths (`DecodeEngine.compile_step`):
# on average (1 + 1 / SLOT_SHAPES) / 2 of the cache, a CUDA graph each.
SLOT_SHAPES = 8


def attended_slots(pos: int, length: int, bucket: int = 1) -> int:
    """The cache slots a step feeding sequence position `pos` attends to: the live prefix,
    pos + 1 slots, rounded up to a multiple of `bucket` and at most the cache `length`. The
    slots past the live prefix are masked (-inf), so every bucket gives the whole cache's
    attention up to float rounding (the kernels' sums depend on the length). An engine
    attends to the live prefix exactly (bucket 1) until `DecodeEngine.compile_step` sets
    the bucket of a few fixed shapes, for its compiled and eager steps alike."""
    return min(length, -(-(pos + 1) // bucket) * bucket)


@dataclass(frozen=True)
class StepSettings:
    """What a decode step does with its logits: guidance (batch doubling) and the draw's
    probabilities. Python values, constant through a generation (a compiled step guards on
    them, so they never cause a recompilation within one)."""

    guided: bool
    temperature: float


class DecodeEngine(nn.Module):
    """The state every decode step reads, built once per (model config, rows, dtype, device)
    and reused across generations and chunks: a KV cache per layer, the additive causal mask
    in the cache dtype, the sequence positions, the position fed next (`pos`, advanced in
    place), and the generation's labels, orders and guidance scales, written in place by
    `start`. All are buffers, so every step has the same shapes and reads the same tensors,
    and the decode loop creates no tensor from host values (gpt-fast: the cache as module
    buffers, `decode_one_token` compiled once). `rows` is the decode batch: 2B when guided.

    `weights`: a copy of the model in another dtype (real bf16 sampling) or None (the
    caller's model itself); `weights_for` refreshes it from the caller's model."""

    def __init__(self, config: RARConfig, rows: int, *, dtype: torch.dtype, device) -> None:
        super().__init__()
        N, L = config.num_tokens, config.num_tokens + 1
        heads, head_dim = config.num_heads, config.hidden_size // config.num_heads
        self.key: tuple = ()  # what it was built for (`decode_engine`)
        self.caches = nn.ModuleList(
            KVCache(rows, heads, L, head_dim, dtype=dtype, device=device)
            for _ in range(config.num_layers)
        )
        allowed = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        buffers = {
            # row i: what sequence position i attends to, 0 or -inf: what SDPA makes of a
            # boolean mask at every call, made once
            "mask": torch.zeros(L, L, dtype=dtype, device=device).masked_fill(
                ~allowed, float("-inf")
            ),
            "positions": torch.arange(L, device=device),
            "pos": torch.full((1,), PREFIX, dtype=torch.long, device=device),
            "labels": torch.zeros(rows, dtype=torch.long, device=device),
            "orders": torch.zeros(rows, N, dtype=torch.long, device=device),
            "scales": torch.ones(N, dtype=torch.float32, device=device),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)
        self.weights: RAR | None = None
        self.settings = StepSettings(guided=False, temperature=1.0)
        self.compiled_step = None
        self.slot_bucket = 1  # steps attend to a multiple of this many slots (`compile_step`)

    def start(
        self, labels: torch.Tensor, orders: torch.Tensor, scales: list[float], settings
    ) -> None:
        """Begin a generation: labels (R,) and orders (R, N) of the decode rows, the guidance
        scale of each step (N floats; one host-to-device copy), the `StepSettings`."""
        self.labels.copy_(labels)
        self.orders.copy_(orders)
        self.scales.copy_(torch.tensor(scales, dtype=torch.float32))
        for cache in self.caches:  # stale entries are masked out; zeroed all the same
            cache.k.zero_()
            cache.v.zero_()
        if settings != self.settings:  # the same object when equal: a compiled step's guard
            self.settings = settings

    def weights_for(self, model: RAR) -> RAR:
        """The module to run: `model`, or this engine's copy of it in the engine's dtype with
        `model`'s current values (copied at every call: the model may have trained since)."""
        if self.weights is None:
            return model
        with torch.no_grad():
            for mine, theirs in zip(self.weights.parameters(), model.parameters(), strict=True):
                mine.copy_(theirs)
        return self.weights

    def compile_step(self, *, shapes: int = SLOT_SHAPES, **options) -> None:
        """Compile `decode_one_token` for this engine (`torch.compile(**options)`). Its steps
        attend to a multiple of ceil(L / `shapes`) of the L cache slots (`attended_slots`):
        dynamo compiles the step for the first such length, then once with the length
        symbolic when the second arrives (automatic dynamic shapes), and once for all L slots
        (a contiguous view), so three compilations serve a generation whatever `shapes` is;
        mode="reduce-overhead" records one CUDA graph per length."""
        self.slot_bucket = -(-self.mask.shape[1] // shapes)
        self.compiled_step = torch.compile(decode_one_token, **options)


# One engine per model (a weak key: it goes with the model); a new key replaces it, so at
# most one KV cache per model is held.
_ENGINES: weakref.WeakKeyDictionary[RAR, DecodeEngine] = weakref.WeakKeyDictionary()


def decode_engine(
    model: RAR, rows: int, *, dtype: torch.dtype | None = None, cache_dtype=None
) -> DecodeEngine:
    """`model`'s engine for `rows` decode rows on weights of `dtype` (None: the model's own),
    its cache in `cache_dtype` (default: `dtype`; autocast sampling passes its dtype). Built
    on first use and reused while the model, rows, dtypes and device stay the same."""
    param = next(model.parameters())
    dtype = dtype or param.dtype
    cache_dtype = cache_dtype or dtype
    key = (model.config, rows, dtype, cache_dtype, param.device)
    engine = _ENGINES.get(model)
    if engine is None or engine.key != key:
        engine = DecodeEngine(model.config, rows, dtype=cache_dtype, device=param.device)
        engine.key = key
        if dtype != param.dtype:  # real low-precision sampling: a copy in that dtype
            state = {k: v.detach().to(dtype, copy=True) for k, v in model.state_dict().items()}
            engine.weights = rar_from_state_dict(state, model.config)
        _ENGINES[model] = engine
    return engine


def release_engine(model: RAR) -> None:
    """Drop `model`'s engine and its KV cache (e.g. after a training run's sample grid, so
    the cache does not hold memory through training); the next generation builds another."""
    _ENGINES.pop(model, None)


def _run_blocks(
    engine: DecodeEngine, model: RAR, x: torch.Tensor, c, input_pos: torch.Tensor, slots: int
) -> torch.Tensor:
    """Run the blocks over sequence positions `input_pos` (T,), writing their keys and values
    into the cache and attending to everything cached up to them within its first `slots`
    slots (`attended_slots`). x, c: (R, T, D) -> logits (R, T, codebook)."""
    mask = engine.mask.index_select(0, input_pos)[:, :slots]  # (T, slots)
    for block, cache in zip(model.blocks, engine.caches, strict=True):
        kv = (cache.k, cache.v)  # written in place whole, read to `slots`
        x = block(x, c, mask=mask, kv_cache=kv, input_pos=input_pos, slots=slots)
    return model.head(x, c)


def next_probs(engine: DecodeEngine, logits: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Logits (R, V) of token `step` ((1,) index into the visiting order) -> the probabilities
    (B, V) it is drawn from: guidance `uncond + (cond - uncond) * s` when guided, then
    `sampling_probs`."""
    s = engine.settings
    if s.guided:
        cond, uncond = logits.float().chunk(2)
        logits = uncond + (cond - uncond) * engine.scales.index_select(0, step)
    return sampling_probs(logits, temperature=s.temperature)


def prefill_logits(engine: DecodeEngine, model: RAR) -> torch.Tensor:
    """Feed [cls, class] -> logits (R, codebook) for the first token, at raster
    `orders[:, 0]`; the next position fed is PREFIX."""
    input_pos = engine.positions[:PREFIX]
    x = model.prefix(engine.labels, engine.orders[:, 0])  # (R, 2, D)
    c = model.condition(engine.labels, input_pos)
    engine.pos.fill_(PREFIX)
    return _run_blocks(engine, model, x, c, input_pos, PREFIX)[:, -1]


def token_logits(
    engine: DecodeEngine, model: RAR, fed: torch.Tensor, slots: int | None = None
) -> torch.Tensor:
    """Feed the visited token t, `fed` (R,), at sequence position `pos` = PREFIX + t, at raster
    `orders[:, t]` and told that `orders[:, t + 1]` comes next -> logits (R, codebook) of
    token t + 1; advances `pos`. Every index is a tensor: no host value enters a step but
    `slots`, the cache slots attended (`attended_slots` of PREFIX + t; None: all of them),
    a shape the caller's loop knows without asking the device."""
    slots = engine.mask.shape[1] if slots is None else slots
    pos = engine.pos
    t = pos - PREFIX  # (1,)
    at, target = engine.orders.index_select(1, t), engine.orders.index_select(1, t + 1)
    x = model.token_inputs(fed[:, None], at, target)  # (R, 1, D)
    c = model.condition(engine.labels, pos)
    logits = _run_blocks(engine, model, x, c, pos, slots)[:, -1]
    engine.pos.add_(1)
    return logits


def prefill(engine: DecodeEngine, model: RAR) -> torch.Tensor:
    """The probabilities (B, V) of the first token."""
    return next_probs(engine, prefill_logits(engine, model), engine.positions[:1])


def decode_one_token(
    engine: DecodeEngine, model: RAR, token: torch.Tensor, slots: int
) -> torch.Tensor:
    """Feed the drawn token (B,) -> the probabilities (B, V) of the next one, attending to
    the cache's first `slots` slots. The step that `torch.compile` compiles for an engine
    (`DecodeEngine.compile_step`)."""
    fed = torch.cat([token, token]) if engine.settings.guided else token
    logits = token_logits(engine, model, fed, slots)
    return next_probs(engine, logits, engine.pos - PREFIX)  # pos: PREFIX + t + 1 now


def decode_n_tokens(
    engine: DecodeEngine,
    model: RAR,
    probs: torch.Tensor,
    out: torch.Tensor,
    *,
    generator: torch.Generator | None,
    compiled: bool,
) -> torch.Tensor:
    """Draw every token into `out` (B, N), visiting order, from the first token's `probs`:
    draw, feed, repeat. No host sync: each index is a buffer or a Python int, and the draw
    is `draw`'s. Returns the last step's probabilities (for `check_probs`)."""
    step = engine.compiled_step if compiled else decode_one_token
    N, length, bucket = out.shape[1], engine.mask.shape[1], engine.slot_bucket
    for t in range(N):
        token = draw(probs, generator)
        out[:, t] = token
        if t < N - 1:
            if compiled:  # each call's outputs are read before the next (CUDA graph trees)
                torch.compiler.cudagraph_mark_step_begin()
            probs = step(engine, model, token, attended_slots(PREFIX + t, length, bucket))
    return probs


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
    sampling: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
    dtype: torch.dtype | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Generate token grids for class `labels` (B,) -> (B, N) int64 codes in raster layout.

    sampling: the decode settings (rar.settings.stages.SamplingConfig; `resolve_sampling` for a
        preset's): classifier-free guidance g, the pow-cosine exponent p and the schedule
        (`guidance_scale_at`), the temperature dividing the logits, and the order, a scan
        order name or "random" (`resolve_orders`). When the scale is 1 at every step the
        unconditional half of the batch is skipped.
    generator: source of every random draw (orders and tokens), on the labels' device.
    amp_dtype: e.g. torch.bfloat16 for autocast over the model's weights; None: no autocast.
    dtype: the weights' dtype, e.g. torch.bfloat16 for real bf16 sampling on a bf16 copy of
        the model (the engine's, kept between calls); None: the model's own.
    compile: run the decode step compiled for the engine (three graphs), `torch.compile(mode=
        "reduce-overhead", fullgraph=True)` unless the engine was compiled already
        (`decode_engine(...).compile_step(...)`).
    """
    B, N = labels.shape[0], model.config.num_tokens
    s = sampling
    scales = [
        guidance_scale_at(
            t, N, scale=s.guidance_scale, power=s.guidance_power, schedule=s.guidance_schedule
        )
        for t in range(N)
    ]
    was_training = model.training
    model.eval()
    device = labels.device
    orders = resolve_orders(s.order, B, model.config.grid, device=device, generator=generator)
    guided = any(scale != 1.0 for scale in scales)
    engine = decode_engine(model, 2 * B if guided else B, dtype=dtype, cache_dtype=amp_dtype)
    if compile and engine.compiled_step is None:
        engine.compile_step(mode="reduce-overhead", fullgraph=True)
    net = engine.weights_for(model)
    if guided:  # batch doubling: [conditional; unconditional with the null class]
        labels = torch.cat([labels, torch.full_like(labels, model.config.null_class)])
    engine.start(
        labels,
        torch.cat([orders, orders]) if guided else orders,
        scales,
        StepSettings(guided=guided, temperature=s.temperature),
    )
    out = torch.empty(B, N, dtype=torch.long, device=device)  # in visiting order
    with autocast(device, amp_dtype):
        probs = prefill(engine, net)
        last = decode_n_tokens(engine, net, probs, out, generator=generator, compiled=compile)
    check_probs(last)
    model.train(was_training)
    return unshuffle(out, orders)  # visiting order -> raster layout
