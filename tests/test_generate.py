"""KV-cache generation, classifier-free guidance and its schedules, for both architectures."""

from __future__ import annotations

import pytest
import torch

from rar.generate import (
    SAMPLING_PRESETS,
    KVCache,
    SamplingConfig,
    decode_one_token,
    generate,
    guidance_scale_at,
    guidance_schedule,
    prefill,
    resolve_orders,
    sample_token,
)
from rar.model import PREFIX, RAR, config_from_state_dict, rar_config
from rar.orders import SCAN_ORDERS, scan_order
from rar.presets import ARCHITECTURES, GUIDANCE_SCHEDULES


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


@pytest.fixture(scope="module")
def model() -> RAR:
    return _tiny_model("adaln")


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_model(request) -> RAR:
    """The tiny model in each architecture (the released adaLN one and the plain ViT)."""
    return _tiny_model(request.param)


def _decode_all(model, tokens, labels, orders):
    """Teacher-forced logits through prefill + decode_one_token."""
    B, N = tokens.shape
    cache = KVCache(model, B, dtype=torch.float32, device="cpu")
    visited = tokens.gather(1, orders)
    out = [prefill(model, labels, orders, cache)]
    for t in range(N - 1):
        pos = torch.tensor([PREFIX + t])
        out.append(
            decode_one_token(
                model, visited[:, t], labels, orders[:, t], orders[:, t + 1], pos, cache
            )
        )
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("order", ["row-major", "random", "spiral-in"])
def test_kv_cache_logits_equal_full_forward(arch_model, order):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(32, (3, 16), generator=g)
    labels = torch.tensor([0, 5, 10])  # 10 = the null class
    orders = resolve_orders(order, 3, 4, device="cpu", generator=g)
    with torch.no_grad():
        full = arch_model(tokens, labels, orders)
        cached = _decode_all(arch_model, tokens, labels, orders)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def test_guidance_schedule_values():
    expected = {0: 1.0, 64: 1.018, 128: 1.803, 192: 7.404, 255: 15.996}
    for t, s in expected.items():
        assert guidance_schedule(t, 256, 16.0, 2.75) == pytest.approx(s, abs=1e-3)
        pow_cosine = guidance_scale_at(t, 256, scale=16.0, power=2.75, schedule="pow-cosine")
        assert pow_cosine == guidance_schedule(t, 256, 16.0, 2.75)
    assert all(guidance_schedule(t, 256, 4.0, 0.0) == 4.0 for t in range(256))
    assert guidance_scale_at(7, 256, scale=16.0, power=2.75) == guidance_schedule(7, 256, 16, 2.75)


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
    with pytest.raises(ValueError, match=match):
        SamplingConfig(guidance_schedule="cosine")
    with pytest.raises(ValueError, match=match):
        generate(
            _tiny_model("adaln"),
            torch.tensor([1]),
            guidance_scale=2.0,
            guidance_power=1.0,
            temperature=1.0,
            guidance_schedule="cosine",
        )


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
    ids = generate(
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
    a = generate(arch_model, labels, generator=torch.Generator().manual_seed(11), **kwargs)
    b = generate(arch_model, labels, generator=torch.Generator().manual_seed(11), **kwargs)
    c = generate(arch_model, labels, generator=torch.Generator().manual_seed(12), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_guidance_scale_one_equals_the_unguided_path(model):
    """g = 1 skips the unconditional half; the result equals sampling from the conditional
    logits alone, which we rebuild step by step here."""
    labels = torch.tensor([1, 7])
    ids = generate(
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
    ids = generate(model, labels, guidance_scale=g, guidance_power=p, temperature=1e-5)
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
    ids = generate(
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
    ids = generate(
        model, labels, guidance_scale=1.0, guidance_power=0.0, temperature=1e-5, order=name
    )
    tokens = torch.zeros(1, 16, dtype=torch.long)
    with torch.no_grad():
        for t in range(16):
            tokens[0, order[t]] = model(tokens, labels, order[None])[0, t].argmax()
    assert torch.equal(ids, tokens)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).expand(500, 5)
    g = torch.Generator().manual_seed(0)
    assert set(sample_token(logits, temperature=1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # softmax mass: 0.64, 0.24, 0.09, ...: top-p 0.7 keeps the first two
    assert set(sample_token(logits, temperature=1.0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert len(set(sample_token(logits, temperature=1.0, generator=g).tolist())) >= 4


def test_resolve_orders_rejects_non_permutations():
    with pytest.raises(ValueError, match="permutations"):
        resolve_orders(torch.zeros(16, dtype=torch.long), 2, 4, device="cpu")


def test_generation_matches_official(official_tiny):
    ref = official_tiny["rar"]
    model = RAR(config_from_state_dict(ref["state_dict"]))
    model.load_state_dict(ref["state_dict"], strict=True)
    gen = ref["generate"]
    ids = generate(
        model.eval(),
        gen["labels"],
        guidance_scale=gen["guidance_scale"],
        guidance_power=gen["guidance_power"],
        temperature=gen["temperature"],
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(ids, gen["ids"])


@pytest.mark.gpu
def test_bf16_generation_on_gpu(model):
    cuda_model = model.to("cuda")
    labels = torch.arange(4, device="cuda")
    ids = generate(
        cuda_model,
        labels,
        guidance_scale=2.0,
        guidance_power=1.0,
        temperature=1.0,
        amp_dtype=torch.bfloat16,
        generator=torch.Generator("cuda").manual_seed(0),
    )
    assert ids.shape == (4, 16) and ids.device.type == "cuda"


@pytest.mark.gpu
def test_gpu_logits_and_greedy_generation_equal_the_cpus(arch_model):
    """fp32 on the GPU (TF32 off, as outside a rar.train.train call) computes what the CPU
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
    greedy = dict(guidance_scale=2.0, guidance_power=1.0, temperature=1.0, top_k=1)
    ids_cpu = generate(cpu, labels, **greedy)
    ids_gpu = generate(gpu, labels.cuda(), **greedy)
    assert torch.equal(ids_gpu.cpu(), ids_cpu)


@pytest.mark.gpu
def test_compiled_decode_step_generates_what_eager_does_on_gpu():
    """`compile=True` (torch.compile "reduce-overhead" of the decode step) draws the same
    tokens as eager decoding from the same generator."""
    gpu = _tiny_model("adaln").to("cuda")
    labels = torch.arange(8, device="cuda")
    kw = dict(guidance_scale=2.0, guidance_power=1.0, temperature=1.0)
    eager = generate(gpu, labels, generator=torch.Generator("cuda").manual_seed(0), **kw)
    compiled = generate(
        gpu, labels, generator=torch.Generator("cuda").manual_seed(0), compile=True, **kw
    )
    assert torch.equal(compiled, eager)
