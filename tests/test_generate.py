"""KV-cache generation, classifier-free guidance and its schedules, for both architectures."""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import host_reads_banned
from torch.utils._python_dispatch import TorchDispatchMode

import rar.model.generate
from rar.model.generate import (
    StepSettings,
    attended_slots,
    decode_engine,
    decode_n_tokens,
    draw,
    generate,
    guidance_scale_at,
    prefill,
    prefill_logits,
    release_engine,
    resolve_orders,
    sample_token,
    sampling_probs,
    token_logits,
)
from rar.model.orders import SCAN_ORDERS, scan_order, unshuffle
from rar.model.transformer import PREFIX, RAR, config_from_state_dict, rar_config
from rar.settings.presets import ARCHITECTURES, GUIDANCE_SCHEDULES
from rar.settings.stages import SAMPLING_PRESETS, SamplingConfig


def _tiny_model(architecture: str) -> RAR:
    torch.manual_seed(0)
    cfg = rar_config(
        "rar_tiny", codebook_size=32, num_classes=10, num_tokens=16, architecture=architecture
    )
    m = RAR(cfg).eval()
    with torch.no_grad():  # leave adaLN-zero: make every block and the head do something
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _gen(model, labels, *, generator=None, amp_dtype=None, dtype=None, compile=False, **sampling):
    """`generate` with the SamplingConfig of the keyword arguments `sampling`."""
    kw = dict(generator=generator, amp_dtype=amp_dtype, dtype=dtype, compile=compile)
    return generate(model, labels, SamplingConfig(**sampling), **kw)


@pytest.fixture(scope="module")
def model() -> RAR:
    return _tiny_model("adaln")


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_model(request) -> RAR:
    """The tiny model in each architecture (the released adaLN one and the plain ViT)."""
    return _tiny_model(request.param)


def _decode_all(model, tokens, labels, orders, dtype=None, bucket=1):
    """Teacher-forced logits through the decode engine: prefill, then one token a step,
    attending to `attended_slots(..., bucket)` (1: the live prefix, as generation does) or
    to the whole cache (None)."""
    B, N = tokens.shape
    engine = decode_engine(model, B, dtype=dtype)
    net = engine.weights_for(model)
    engine.start(labels, orders, [1.0] * N, StepSettings(False, 1.0))
    visited = tokens.gather(1, orders)
    out = [prefill_logits(engine, net)]
    for t in range(N - 1):
        slots = None if bucket is None else attended_slots(PREFIX + t, N + 1, bucket)
        out.append(token_logits(engine, net, visited[:, t], slots))
    return torch.stack(out, dim=1).float()


@pytest.mark.parametrize("order", ["row-major", "spiral-in", "z-curve", "random"])
def test_kv_cache_logits_equal_full_forward(arch_model, order):
    """The engine's logits at every step are the full forward pass's, for both architectures
    and in raster, two other scan orders and random order; twice, as the engine is reused."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(32, (3, 16), generator=g)
    labels = torch.tensor([0, 5, 10])  # 10 = the null class
    orders = resolve_orders(order, 3, 4, device="cpu", generator=g)
    with torch.no_grad():
        full = arch_model(tokens, labels, orders)
        cached = _decode_all(arch_model, tokens, labels, orders)
        again = _decode_all(arch_model, tokens, labels, orders)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    assert torch.equal(again, cached)


def test_attended_slots_are_the_live_prefix_rounded_up_to_the_bucket():
    assert [attended_slots(p, 17) for p in (2, 3, 16)] == [3, 4, 17]
    assert [attended_slots(p, 17, 5) for p in (2, 4, 5, 9, 14, 15, 16)] == [
        5,
        5,
        10,
        10,
        15,
        17,
        17,
    ]
    assert attended_slots(256, 257, 65) == 257


@pytest.mark.parametrize("bucket", [1, 5, 8])
def test_attending_to_the_live_prefix_gives_the_whole_caches_logits(arch_model, bucket):
    """A step attending to its live prefix (rounded up to a bucket) gives the logits of one
    attending to the whole cache, whose extra slots are masked out, to float rounding: not
    bit for bit, as the CPU attention kernel's sums depend on the length (the draws stay
    today's: test_generation_is_todays_bit_for_bit)."""
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(32, (4, 16), generator=g)
    labels = torch.tensor([0, 3, 5, 10])
    orders = resolve_orders("random", 4, 4, device="cpu", generator=g)
    with torch.no_grad():
        whole = _decode_all(arch_model, tokens, labels, orders, bucket=None)
        prefix = _decode_all(arch_model, tokens, labels, orders, bucket=bucket)
    torch.testing.assert_close(prefix, whole, rtol=0, atol=1e-6)


def test_the_engine_is_reused_until_its_key_changes_or_it_is_released():
    """One engine per (model, rows, dtype): a second call reuses it (cache and all), other
    rows replace it, release_engine drops it."""
    model = _tiny_model("adaln")
    kw = dict(guidance_scale=2.0, guidance_power=1.0, temperature=1.0)
    _gen(model, torch.tensor([1, 2]), **kw)
    first = decode_engine(model, 4)
    _gen(model, torch.tensor([3, 4]), **kw)
    assert decode_engine(model, 4) is first
    _gen(model, torch.tensor([3]), **kw)
    assert decode_engine(model, 2) is not first
    release_engine(model)
    assert rar.model.generate._ENGINES.get(model) is None


def test_bf16_engine_runs_on_bf16_weights_close_to_fp32(arch_model):
    """Real bf16 sampling: the engine runs a bf16 copy of the weights (no autocast), with a
    bf16 cache; its logits stay near the fp32 forward pass, generation runs, the caller's model
    stays fp32, and the copy follows the model's current weights."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(32, (3, 16), generator=g)
    labels, orders = torch.tensor([0, 5, 10]), torch.randperm(16, generator=g).expand(3, 16)
    with torch.no_grad():
        full = arch_model(tokens, labels, orders)
        bf16 = _decode_all(arch_model, tokens, labels, orders, dtype=torch.bfloat16)
    engine = decode_engine(arch_model, 3, dtype=torch.bfloat16)
    assert {p.dtype for p in engine.weights.parameters()} == {torch.bfloat16}
    assert engine.caches[0].k.dtype == torch.bfloat16
    assert {p.dtype for p in arch_model.parameters()} == {torch.float32}
    torch.testing.assert_close(bf16, full, rtol=0, atol=0.05)
    assert (bf16.argmax(-1) == full.argmax(-1)).float().mean() > 0.9
    kw = dict(guidance_scale=2.0, guidance_power=1.0, temperature=1.0, dtype=torch.bfloat16)
    ids = _gen(arch_model, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0), **kw)
    assert ids.shape == (2, 16) and ids.min() >= 0 and ids.max() < 32
    model = _tiny_model(arch_model.config.architecture)
    engine = decode_engine(model, 2, dtype=torch.bfloat16)
    with torch.no_grad():
        model.lm_head.bias.add_(1.0)
    assert torch.equal(engine.weights_for(model).lm_head.bias, model.lm_head.bias.bfloat16())


def test_pow_cosine_schedule_values():
    expected = {0: 1.0, 64: 1.018, 128: 1.803, 192: 7.404, 255: 15.996}
    for t, s in expected.items():
        pow_cosine = guidance_scale_at(t, 256, scale=16.0, power=2.75, schedule="pow-cosine")
        assert pow_cosine == pytest.approx(s, abs=1e-3)
        assert guidance_scale_at(t, 256, scale=16.0, power=2.75) == pow_cosine  # the default
    assert all(guidance_scale_at(t, 256, scale=4.0, power=0.0) == 4.0 for t in range(256))


def test_linear_schedule_is_muses():
    """MUSE / the official MaskGIT sampler: logits cond + (cond - uncond) * w, w = g * t / N,
    i.e. s = 1 + w in our convention. Step 0 is unguided; half-way w = g / 2."""
    g, N = 4.0, 256
    assert guidance_scale_at(0, N, scale=g, power=2.0, schedule="linear") == 1.0
    assert guidance_scale_at(N // 2, N, scale=g, power=2.0, schedule="linear") == 1 + g / 2
    assert guidance_scale_at(64, N, scale=g, power=0.0, schedule="linear") == 2.0
    assert guidance_scale_at(N - 1, N, scale=g, power=2.0, schedule="linear") == pytest.approx(
        1 + g * 255 / 256
    )


def test_constant_schedule_is_g_everywhere():
    assert all(
        guidance_scale_at(t, 256, scale=3.5, power=2.0, schedule="constant") == 3.5
        for t in range(256)
    )


def test_unknown_schedule_is_refused_by_name():
    match = "unknown guidance schedule 'cosine'; known: constant, linear, pow-cosine"
    with pytest.raises(ValueError, match=match):
        guidance_scale_at(0, 16, scale=2.0, power=1.0, schedule="cosine")
    with pytest.raises(ValueError, match=match):  # before any generation
        SamplingConfig(guidance_schedule="cosine")


def test_schedules_are_the_shared_names():
    assert GUIDANCE_SCHEDULES == ("constant", "linear", "pow-cosine")
    assert SamplingConfig().guidance_schedule == "pow-cosine"


def test_presets_are_the_papers():
    b, xxl = SAMPLING_PRESETS["rar_b"], SAMPLING_PRESETS["rar_xxl"]
    assert (b.temperature, b.guidance_scale, b.guidance_power) == (1.0, 16.0, 2.75)
    assert (xxl.temperature, xxl.guidance_scale, xxl.guidance_power) == (1.02, 8.0, 1.2)
    assert all(p.guidance_schedule == "pow-cosine" for p in SAMPLING_PRESETS.values())


def test_output_is_raster_layout_of_valid_codes(model):
    labels = torch.tensor([1, 2])
    ids = _gen(
        model,
        labels,
        guidance_scale=2.0,
        guidance_power=1.0,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert ids.min() >= 0 and ids.max() < 32


def test_generation_is_deterministic_given_a_generator(arch_model):
    labels = torch.tensor([3, 4, 5])
    kwargs = dict(guidance_scale=3.0, guidance_power=1.5, temperature=1.0, order="random")
    a = _gen(arch_model, labels, generator=torch.Generator().manual_seed(11), **kwargs)
    b = _gen(arch_model, labels, generator=torch.Generator().manual_seed(11), **kwargs)
    c = _gen(arch_model, labels, generator=torch.Generator().manual_seed(12), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_guidance_scale_one_equals_the_unguided_path(model):
    """g = 1 skips the unconditional half; the result equals sampling from the conditional
    logits alone, which we rebuild step by step here."""
    labels = torch.tensor([1, 7])
    ids = _gen(
        model,
        labels,
        guidance_scale=1.0,
        guidance_power=2.0,
        temperature=0.9,
        generator=torch.Generator().manual_seed(5),
    )
    g = torch.Generator().manual_seed(5)
    orders = torch.arange(16).expand(2, 16)
    tokens = torch.zeros(2, 16, dtype=torch.long)
    with torch.no_grad():
        for t in range(16):
            logits = model(tokens, labels, orders)[:, t]
            tokens[:, t] = sample_token(logits, temperature=0.9, generator=g)
    assert torch.equal(ids, tokens)


def test_guidance_combines_conditional_and_null_class(model):
    """With near-zero temperature, guided sampling picks argmax(u + (c - u) * s)."""
    labels = torch.tensor([2])
    g, p = 3.0, 0.0  # constant scale 3
    ids = _gen(model, labels, guidance_scale=g, guidance_power=p, temperature=1e-5)
    tokens = torch.zeros(1, 16, dtype=torch.long)
    null = torch.tensor([model.config.null_class])
    with torch.no_grad():
        for t in range(16):
            cond, uncond = model(tokens, labels)[:, t], model(tokens, null)[:, t]
            tokens[:, t] = (uncond + (cond - uncond) * g).argmax(-1)
    assert torch.equal(ids, tokens)


@pytest.mark.parametrize("schedule", GUIDANCE_SCHEDULES)
def test_generation_follows_each_schedule(arch_model, schedule):
    """Near-greedy generation under each schedule picks argmax(u + (c - u) * s_t) with s_t
    from `guidance_scale_at`, for both architectures (the plain ViT is guided through its
    class token alone)."""
    labels = torch.tensor([2, 6])
    g, p = 3.0, 1.5
    ids = _gen(
        arch_model,
        labels,
        guidance_scale=g,
        guidance_power=p,
        temperature=1e-5,
        guidance_schedule=schedule,
    )
    assert ids.shape == (2, 16) and ids.min() >= 0 and ids.max() < 32
    tokens = torch.zeros(2, 16, dtype=torch.long)
    null = torch.full_like(labels, arch_model.config.null_class)
    with torch.no_grad():
        for t in range(16):
            s = guidance_scale_at(t, 16, scale=g, power=p, schedule=schedule)
            cond, uncond = arch_model(tokens, labels)[:, t], arch_model(tokens, null)[:, t]
            tokens[:, t] = (uncond + (cond - uncond) * s).argmax(-1)
    assert torch.equal(ids, tokens)


@pytest.mark.parametrize("name", SCAN_ORDERS)
def test_scan_order_generation_fills_in_that_order(model, name):
    """Near-greedy generation in a scan order equals greedy teacher-forced decoding in it."""
    labels = torch.tensor([4])
    order = scan_order(name, 4)
    ids = _gen(model, labels, guidance_scale=1.0, guidance_power=0.0, temperature=1e-5, order=name)
    tokens = torch.zeros(1, 16, dtype=torch.long)
    with torch.no_grad():
        for t in range(16):
            tokens[0, order[t]] = model(tokens, labels, order[None])[0, t].argmax()
    assert torch.equal(ids, tokens)


# ------------------------------------------------------------------------------------------
# The engine draws what the loop before it drew (rar/model/generate.py at 97aedca), without syncs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("vocab", [32, 1024])
def test_draw_is_multinomials_draw(vocab, device):
    """`draw` (Exp(1) draws, argmax of probs / q) is torch.multinomial's single-sample draw bit
    for bit, and leaves the generator in the same state, over seeds, batch sizes,
    and temperatures."""
    for seed in range(40):
        g = torch.Generator().manual_seed(1000 + seed)
        B = (1, 3, 16)[seed % 3]
        logits = (torch.randn(B, vocab, generator=g) * (1 + seed % 4)).to(device)
        for temperature in (1.0, 0.5, 1.7, 1.02, 0.9):
            probs = sampling_probs(logits, temperature=temperature)
            g1, g2 = (torch.Generator(device).manual_seed(seed) for _ in range(2))
            want = torch.multinomial(probs, 1, generator=g1)[:, 0]
            assert torch.equal(draw(probs, g2), want)
            assert torch.equal(g1.get_state(), g2.get_state())


@torch.no_grad()
def _todays_generate(model, labels, orders, *, scales, temperature, generator):
    """The decode loop before the engine (97aedca), kept as the reference: a KV cache of
    plain tensors, a position tensor and a boolean mask made at every step, and
    torch.multinomial. labels (B,), orders (B, N) -> (B, N) codes in visiting order."""
    B, N = orders.shape
    guided = any(s != 1.0 for s in scales)
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, model.config.null_class)])
        orders = torch.cat([orders, orders])
    cfg = model.config
    shape = (len(labels), cfg.num_heads, N + 1, cfg.hidden_size // cfg.num_heads)
    cache = [(torch.zeros(shape), torch.zeros(shape)) for _ in model.blocks]

    def run(x, c, input_pos):
        mask = torch.arange(N + 1)[None, :] <= input_pos[:, None]
        for block, kv in zip(model.blocks, cache, strict=True):
            x = block(x, c, mask=mask, kv_cache=kv, input_pos=input_pos)
        return model.head(x, c)[:, -1]

    pos = torch.arange(PREFIX)
    logits = run(model.prefix(labels, orders[:, 0]), model.condition(labels, pos), pos)
    out = torch.empty(B, N, dtype=torch.long)
    for t in range(N):
        if guided:
            cond, uncond = logits.float().chunk(2)
            logits = uncond + (cond - uncond) * scales[t]
        probs = (logits.float() / temperature).softmax(dim=-1)
        out[:, t] = token = torch.multinomial(probs, 1, generator=generator)[:, 0]
        if t < N - 1:
            fed = torch.cat([token, token]) if guided else token
            pos = torch.tensor([PREFIX + t])
            x = model.token_inputs(fed[:, None], orders[:, t, None], orders[:, t + 1, None])
            logits = run(x, model.condition(labels, pos), pos)
    return out


@pytest.mark.parametrize(
    "scale, temperature",
    [(1.0, 1.0), (3.0, 1.02), (3.0, 0.7), (2.0, 1.3), (4.0, 1e-5)],  # the last nearly greedy
)
def test_generation_is_todays_bit_for_bit(arch_model, scale, temperature):
    """Seeded and greedy generation through the engine equal the loop before it token for
    token: both architectures, raster, a scan and random orders, batch sizes 1 and 3, several
    seeds, guided and unguided (the demo's samples, and so its tables, do not move)."""
    for seed, order, B in [(0, "row-major", 3), (1, "spiral-out", 1), (2, "random", 3)]:
        labels = torch.arange(B) * 3 % 10
        kw = dict(guidance_scale=scale, guidance_power=1.5, temperature=temperature)
        ids = _gen(
            arch_model, labels, order=order, generator=torch.Generator().manual_seed(seed), **kw
        )
        g = torch.Generator().manual_seed(seed)
        orders = resolve_orders(order, B, 4, device="cpu", generator=g)
        scales = [guidance_scale_at(t, 16, scale=scale, power=1.5) for t in range(16)]
        want = _todays_generate(
            arch_model, labels, orders, scales=scales, temperature=temperature, generator=g
        )
        assert torch.equal(ids, unshuffle(want, orders))


# Ops that read a tensor's value into Python or make a tensor from host values: .item(),
# bool(tensor), torch.equal, data-dependent shapes, torch.tensor (lift_fresh), and
# torch.multinomial (whose kernel checks its input with .item()).
_SYNC_NAMES = "_local_scalar_dense is_nonzero equal nonzero masked_select _assert_async lift_fresh"
_SYNC_OPS = frozenset(
    getattr(torch.ops.aten, name).default for name in (*_SYNC_NAMES.split(), "multinomial")
)


class _NoHostSync(TorchDispatchMode):
    """Fails on every op of `_SYNC_OPS`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SYNC_OPS:
            raise AssertionError(f"host sync in the decode loop: {func}")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_host_sync():
    """A context in which host reads raise: the ops of `_NoHostSync`, and the Python entry
    points that never reach an op (helpers.host_reads_banned, torch.tensor included)."""

    @contextlib.contextmanager
    def guard():
        with _NoHostSync(), host_reads_banned("the decode loop", constructors=True):
            yield

    return guard


def test_decode_loop_makes_no_host_sync(arch_model, no_host_sync):
    """decode_n_tokens (draws, guidance, temperature, every step of a generation) runs
    under the ban; the ban does catch the loop before the engine (torch.multinomial, the
    position tensor made each step)."""
    labels, N = torch.tensor([1, 2, 3]), 16
    engine = decode_engine(arch_model, 6)
    settings = StepSettings(guided=True, temperature=0.9)
    orders = torch.randperm(N, generator=torch.Generator().manual_seed(0)).expand(6, N)
    scales = [guidance_scale_at(t, N, scale=3.0, power=1.0) for t in range(N)]
    engine.start(torch.cat([labels, labels * 0 + 10]), orders, scales, settings)
    out, g = torch.empty(3, N, dtype=torch.long), torch.Generator().manual_seed(0)
    with torch.no_grad():
        probs = prefill(engine, arch_model)
        with no_host_sync():
            decode_n_tokens(engine, arch_model, probs, out, generator=g, compiled=False)
        assert engine.pos.tolist() == [PREFIX + N - 1]
        with no_host_sync(), pytest.raises(AssertionError, match="host sync"):
            _todays_generate(
                arch_model, labels, orders[:3], scales=scales, temperature=1.0, generator=g
            )


def test_compiled_step_compiles_three_graphs_and_generates_what_eager_does(model):
    """The decode step compiled (backend aot_eager, fullgraph) for an engine whose steps
    attend to SLOT_SHAPES lengths: three times whatever their number, two whole guided
    generations recompile nothing after that, and draw what eager decoding on
    the same engine (the same lengths) draws from the same generators."""
    import torch._dynamo
    from torch._dynamo.backends.common import aot_autograd  # noqa: F401 (registers aot_eager)

    compilations = []

    def counting(gm, example_inputs):
        compilations.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    labels = torch.tensor([1, 4, 7])
    kw = dict(guidance_scale=3.0, guidance_power=1.0, temperature=0.9)
    seeded = [torch.Generator().manual_seed(s) for s in (0, 1, 0, 1)]
    decode_engine(model, 6).compile_step(backend=counting, fullgraph=True)
    eager = [_gen(model, labels, generator=g, **kw) for g in seeded[:2]]
    compiled = [_gen(model, labels, generator=seeded[2], compile=True, **kw)]
    # the first length; the others at once, the length symbolic; the whole cache (a view of
    # it all is contiguous, which the symbolic graph's guards rule out)
    assert len(compilations) == 3
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled.append(_gen(model, labels, generator=seeded[3], compile=True, **kw))
    torch._dynamo.reset()
    assert all(torch.equal(c, e) for c, e in zip(compiled, eager, strict=True))


def test_resolve_orders_rejects_non_permutations():
    with pytest.raises(ValueError, match="permutations"):
        resolve_orders(torch.zeros(16, dtype=torch.long), 2, 4, device="cpu")


def test_generation_matches_official(official_tiny):
    ref = official_tiny["rar"]
    model = RAR(config_from_state_dict(ref["state_dict"]))
    model.load_state_dict(ref["state_dict"], strict=True)
    gen = ref["generate"]
    ids = _gen(
        model.eval(),
        gen["labels"],
        guidance_scale=gen["guidance_scale"],
        guidance_power=gen["guidance_power"],
        temperature=gen["temperature"],
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(ids, gen["ids"])


@pytest.mark.gpu
@pytest.mark.parametrize("how", ["amp_dtype", "dtype"])
def test_bf16_generation_on_gpu(how):
    """bf16 on the GPU: autocast over fp32 weights, and real bf16 weights (the engine's copy)."""
    cuda_model = _tiny_model("adaln").to("cuda")
    labels = torch.arange(4, device="cuda")
    ids = _gen(
        cuda_model,
        labels,
        guidance_scale=2.0,
        guidance_power=1.0,
        temperature=1.0,
        generator=torch.Generator("cuda").manual_seed(0),
        **{how: torch.bfloat16},
    )
    assert ids.shape == (4, 16) and ids.device.type == "cuda"


@pytest.mark.gpu
def test_gpu_logits_and_greedy_generation_equal_the_cpus(arch_model):
    """fp32 on the GPU (TF32 off, as outside a rar.training.loop.train call) computes what the CPU
    does: teacher-forced logits in random orders to float tolerance, and the same greedy
    (top-1) tokens through the KV cache, with guidance."""
    cpu, gpu = arch_model, _tiny_model(arch_model.config.architecture).to("cuda")
    labels = torch.arange(4)
    tokens = torch.randint(32, (4, 16), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    orders = torch.stack([torch.randperm(16, generator=g) for _ in range(4)])  # random orders
    with torch.no_grad():
        ref = cpu(tokens, labels, orders=orders)
        got = gpu(tokens.cuda(), labels.cuda(), orders=orders.cuda())
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-4)
    greedy = dict(guidance_scale=2.0, guidance_power=1.0, temperature=1e-5)
    ids_cpu = _gen(cpu, labels, **greedy)
    ids_gpu = _gen(gpu, labels.cuda(), **greedy)
    assert torch.equal(ids_gpu.cpu(), ids_cpu)


@pytest.mark.gpu
def test_compiled_decode_step_generates_what_eager_does_on_gpu():
    """`compile=True` (torch.compile "reduce-overhead" of the decode step) draws the same
    tokens as eager decoding from the same generator, over two generations that recompile
    nothing, with CUDA graphs (inductor skips none: the KV cache is a module buffer)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    gpu = _tiny_model("adaln").to("cuda")
    labels = torch.arange(8, device="cuda")
    kw = dict(guidance_scale=2.0, guidance_power=1.0, temperature=1.0)
    seeded = [torch.Generator("cuda").manual_seed(s) for s in (0, 1, 0, 1)]
    decode_engine(gpu, 16).compile_step(mode="reduce-overhead", fullgraph=True)
    eager = [_gen(gpu, labels, generator=g, **kw) for g in seeded[:2]]  # the same shapes
    compiled = [_gen(gpu, labels, generator=seeded[2], compile=True, **kw)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled.append(_gen(gpu, labels, generator=seeded[3], compile=True, **kw))
    assert all(torch.equal(c, e) for c, e in zip(compiled, eager, strict=True))
    assert counters["inductor"]["cudagraph_skips"] == 0


@pytest.mark.slow
def test_a_32_by_32_grid_samples_through_a_1024_token_cache():
    """ImageNet-512's 1,024 tokens (grid 32): every scan order is a permutation of them, the
    engine's cache holds `kv_cache_bytes` an image (two rows with guidance), its logits at
    every step are the full forward pass's in a scan order, and a guided generation draws
    1,024 ids an image."""
    from rar.settings.presets import kv_cache_bytes

    for name in SCAN_ORDERS:
        assert sorted(scan_order(name, 32).tolist()) == list(range(1024)), name
    torch.manual_seed(0)
    model = RAR(rar_config("rar_tiny", codebook_size=32, num_classes=10, num_tokens=1024)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    tokens, labels = torch.randint(32, (2, 1024), generator=g), torch.tensor([3, 10])
    orders = resolve_orders("spiral-in", 2, 32, device="cpu")
    with torch.no_grad():
        full = model(tokens, labels, orders)
        cached = _decode_all(model, tokens, labels, orders)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    kw = dict(guidance_scale=2.0, guidance_power=1.0, temperature=1.0)
    ids = _gen(model, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0), **kw)
    assert ids.shape == (2, 1024) and ids.min() >= 0 and ids.max() < 32
    engine = decode_engine(model, 4)  # the generation's: two images, guided
    cache = sum(c.k.nbytes + c.v.nbytes for c in engine.caches)
    assert cache == 2 * kv_cache_bytes("rar_tiny", 1024, value_bytes=4)
