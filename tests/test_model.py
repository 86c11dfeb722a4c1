"""The RAR transformer: shapes, causality, named sizes, and compatibility with the release."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rar.model.checkpoint import load_official_rar
from rar.model.transformer import (
    RAR,
    RAR_CONFIGS,
    RARConfig,
    config_from_state_dict,
    num_parameters,
    rar_config,
    rar_from_state_dict,
)
from rar.settings.presets import ARCHITECTURES

# The official parameter counts (bytedance/1d-tokenizer release; reference JSON).
OFFICIAL_PARAMS = {
    "rar_b": 260_923_648,
    "rar_l": 461_668_352,
    "rar_xl": 955_425_024,
    "rar_xxl": 1_498_520_704,
}
# The plain ViT of the ablations (RAR §4.1): the above minus every adaLN modulation, the final
# adaLN and the timestep table, plus an affine LayerNorm before the head (docs/reproducing.md).
PLAIN_PARAMS = {
    "rar_b": 174_425_344,
    "rar_l": 308_064_256,
    "rar_xl": 636_873_984,
    "rar_xxl": 1_017_925_248,
}


@pytest.fixture
def tiny_config() -> RARConfig:
    return rar_config("rar_tiny", codebook_size=32, num_classes=10, num_tokens=16)


def _batch(cfg: RARConfig, B: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(cfg.codebook_size, (B, cfg.num_tokens), generator=g)
    labels = torch.randint(cfg.num_classes + 1, (B,), generator=g)
    return tokens, labels


@pytest.fixture(params=ARCHITECTURES)
def arch_config(request) -> RARConfig:
    """The tiny config in each architecture."""
    return rar_config(
        "rar_tiny", codebook_size=32, num_classes=10, num_tokens=16, architecture=request.param
    )


def _randomised(cfg: RARConfig, seed: int = 0) -> RAR:
    """A model whose adaLN and cls token are not zero, so no block is the identity."""
    torch.manual_seed(seed)
    model = RAR(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_logit_shapes(arch_config):
    model = RAR(arch_config).eval()
    tokens, labels = _batch(arch_config)
    logits = model(tokens, labels)
    assert logits.shape == (3, 16, 32)
    assert logits.dtype == torch.float32


def test_plain_vit_parameter_names(tiny_config):
    """The plain ViT keeps every name of the adaLN model except the adaLN modulations, the
    final adaLN and the timestep table, and adds an affine LayerNorm before the head."""
    adaln = set(RAR(tiny_config).state_dict())
    plain = set(RAR(dataclasses.replace(tiny_config, architecture="plain")).state_dict())
    assert not any("adaLN" in k or "adaln" in k or "timesteps" in k for k in plain)
    dropped = {k for k in adaln if "adaLN_modulation" in k or "adaln_before_head" in k}
    assert plain == (adaln - dropped - {"timesteps_embeddings"}) | {
        "norm_before_head.weight",
        "norm_before_head.bias",
    }


def test_plain_vit_blocks_are_unconditioned_pre_norm(tiny_config):
    """x + attn(norm1(x)), then x + mlp(norm2(x)); the class reaches the output only through
    its token in the sequence, and the head normalises with an affine LayerNorm."""
    model = _randomised(dataclasses.replace(tiny_config, architecture="plain"))
    assert model.condition(torch.tensor([1]), torch.arange(3)) is None
    block = model.blocks[0]
    x = torch.randn(2, 5, 64)
    expected = x + block.attn(block.norm1(x))
    expected = expected + block.mlp(block.norm2(expected))
    with torch.no_grad():
        torch.testing.assert_close(block(x, None), expected)
        torch.testing.assert_close(
            model.head(x, None), model.lm_head(model.norm_before_head(x)), rtol=0, atol=0
        )


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_named_sizes_match_official_parameter_counts(name):
    with torch.device("meta"):
        model = RAR(rar_config(name))
    assert num_parameters(model) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", list(PLAIN_PARAMS))
def test_plain_named_sizes_parameter_counts(name):
    with torch.device("meta"):
        model = RAR(rar_config(name, architecture="plain"))
    assert num_parameters(model) == PLAIN_PARAMS[name]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_parameter_count_without_a_model_is_the_models(architecture):
    """GeneratorShape.parameters (`rar plan`'s checkpoint sizes, the sampling memory check)
    equals the built model's count: every size, the paper's shapes and other ones."""
    from rar.settings.presets import RAR_CONFIGS, GeneratorShape

    shapes = [{}, dict(codebook_size=16384), dict(num_tokens=1024), dict(num_classes=10)]
    for name in RAR_CONFIGS:
        for shape in shapes:
            with torch.device("meta"):
                model = RAR(rar_config(name, architecture=architecture, **shape))
            counted = GeneratorShape(name, architecture, **shape).parameters
            assert counted == num_parameters(model), (name, shape)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_mfus_flops_are_palms_count_of_the_built_model(architecture):
    """GeneratorShape.train_flops_per_token (MFU's numerator) is PaLM's count read off the
    built model: 6 x its parameters less the embedding, positional and timestep tables, plus
    12 x layers x width x sequence length."""
    from rar.settings.presets import RAR_CONFIGS, GeneratorShape

    for name in RAR_CONFIGS:
        with torch.device("meta"):
            model = RAR(rar_config(name, architecture=architecture))
        tables = [model.embeddings.weight, model.pos_embed, model.target_aware_pos_embed]
        if architecture == "adaln":
            tables.append(model.timesteps_embeddings)
        cfg = model.config
        palm = 6 * (num_parameters(model) - sum(t.numel() for t in tables))
        palm += 12 * cfg.num_layers * cfg.hidden_size * (cfg.num_tokens + 1)
        shape = GeneratorShape(name, architecture)
        assert shape.train_flops_per_token == palm, name
        # the plan's count of the matrix products, x3 for training, agrees to 0.2% at the
        # paper's sizes (biases and norms weigh more in the tiny ones: 1.4%)
        per_image = shape.train_flops_per_token * cfg.num_tokens
        tolerance = 2e-3 if name in ("rar_b", "rar_l", "rar_xl", "rar_xxl") else 2e-2
        assert 3 * shape.forward_flops == pytest.approx(per_image, rel=tolerance), name


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_state_dict_keys_and_shapes_equal_the_release(name, official_shapes):
    with torch.device("meta"):
        model = RAR(rar_config(name))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_shapes[name]["keys"]


def test_named_sizes_are_file_name_safe():
    assert all(name.replace("_", "").isalnum() and name.islower() for name in RAR_CONFIGS)


def test_logits_depend_only_on_earlier_tokens_in_the_order(arch_config):
    model = _randomised(arch_config)
    tokens, labels = _batch(arch_config, B=1)
    orders = torch.randperm(16, generator=torch.Generator().manual_seed(3))[None]
    k = 7  # change the token visited k-th: logits[:, :k + 1] predict earlier visits
    changed = tokens.clone()
    changed[0, orders[0, k]] = (tokens[0, orders[0, k]] + 1) % arch_config.codebook_size
    a, b = model(tokens, labels, orders), model(changed, labels, orders)
    torch.testing.assert_close(a[:, : k + 1], b[:, : k + 1], rtol=0, atol=0)
    assert not torch.allclose(a[:, k + 1 :], b[:, k + 1 :])


def test_raster_is_the_default_order(tiny_config):
    model = _randomised(tiny_config)
    tokens, labels = _batch(tiny_config)
    raster = torch.arange(16).expand(3, 16)
    torch.testing.assert_close(model(tokens, labels), model(tokens, labels, raster))


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        RARConfig(hidden_size=65, num_heads=4)
    with pytest.raises(ValueError, match="square"):
        RARConfig(num_tokens=15)
    with pytest.raises(ValueError, match="unknown model size 'rar_q'"):
        rar_config("rar_q")
    with pytest.raises(ValueError, match="unknown architecture 'vit'; known: adaln, plain"):
        rar_config("rar_tiny", architecture="vit")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_config_is_inferred_from_a_state_dict(architecture):
    cfg = rar_config(
        "rar_mini", codebook_size=48, num_classes=7, num_tokens=64, architecture=architecture
    )
    with torch.device("meta"):
        sd = RAR(cfg).state_dict()
    assert config_from_state_dict(sd) == cfg
    assert config_from_state_dict(sd).architecture == architecture


def test_load_official_rar_round_trip(tmp_path, arch_config):
    model = _randomised(arch_config)
    path = tmp_path / "rar_tiny.bin"
    torch.save(model.state_dict(), path)
    loaded = load_official_rar(path)
    assert loaded.config == arch_config
    assert not loaded.training
    tokens, labels = _batch(arch_config)
    torch.testing.assert_close(loaded(tokens, labels), model(tokens, labels), rtol=0, atol=0)


def test_state_dict_of_the_other_architecture_does_not_load(tiny_config):
    plain = RAR(dataclasses.replace(tiny_config, architecture="plain")).state_dict()
    with pytest.raises(RuntimeError, match="adaLN_modulation"):
        rar_from_state_dict(plain, tiny_config)


def test_plain_checkpoint_round_trips_through_load_generator(tmp_path):
    """A training checkpoint of a plain ViT, written as rar.training.loop writes it (`model_config`
    is the RARConfig's fields), loads as a plain ViT through rar.model.checkpoint.load_generator."""
    from rar.model.checkpoint import load_generator
    from rar.settings.training import TrainConfig
    from rar.training.loop import model_from_config, save_checkpoint

    cfg = TrainConfig(
        model="rar_tiny", architecture="plain", codebook_size=32, num_classes=10, num_tokens=16
    )
    model = model_from_config(cfg)
    assert model.config.architecture == "plain"
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "last.pt"
    save_checkpoint(
        path,
        model=model.state_dict(),
        step=3,
        epoch=cfg.epoch_at(3),
        config=cfg.to_dict(),
        model_config=dataclasses.asdict(model.config),
    )
    loaded, desc = load_generator(path)
    assert loaded.config == model.config
    assert desc["model_config"]["architecture"] == "plain"
    assert (desc["model_size"], desc["step"]) == ("rar_tiny", 3)
    model.eval()
    tokens, labels = _batch(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, labels), model(tokens, labels), rtol=0, atol=0)


def test_load_official_rar_names_the_file_on_bad_input(tmp_path):
    path = tmp_path / "not_rar.bin"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"not_rar.bin.*not a RAR state dict"):
        load_official_rar(path)


# -- parity with the official code on seeded tiny weights ----------------------------------


@pytest.fixture(scope="module")
def official_model(official_tiny):
    ref = official_tiny["rar"]
    model = RAR(config_from_state_dict(ref["state_dict"]))
    model.load_state_dict(ref["state_dict"], strict=True)
    return model.eval(), ref


def test_official_config_is_inferred(official_model):
    model, ref = official_model
    c = ref["config"]
    assert (model.config.hidden_size, model.config.num_layers) == (c["hidden"], c["depth"])
    assert (model.config.num_heads, model.config.mlp_size) == (c["heads"], c["mlp"])
    assert (model.config.codebook_size, model.config.num_classes) == (c["codebook"], c["classes"])
    assert model.config.num_tokens == c["seq_len"]


def test_raster_logits_equal_official(official_model):
    model, ref = official_model
    with torch.no_grad():
        logits = model(ref["tokens"], ref["labels"])
    torch.testing.assert_close(logits, ref["logits_raster"], rtol=0, atol=1e-5)


def test_permuted_logits_equal_official(official_model):
    model, ref = official_model
    with torch.no_grad():
        logits = model(ref["tokens"], ref["labels"], ref["orders"])
    torch.testing.assert_close(logits, ref["logits_random"], rtol=0, atol=1e-5)
