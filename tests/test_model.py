"""The RAR transformer: shapes, causality, named sizes, and compatibility with the release."""

from __future__ import annotations

import pytest
import torch

from rar.model import (
    RAR,
    RAR_CONFIGS,
    RARConfig,
    config_from_state_dict,
    load_official_rar,
    num_parameters,
    rar_config,
)

# The official parameter counts (bytedance/1d-tokenizer release; reference JSON).
OFFICIAL_PARAMS = {
    "rar_b": 260_923_648,
    "rar_l": 461_668_352,
    "rar_xl": 955_425_024,
    "rar_xxl": 1_498_520_704,
}


@pytest.fixture
def tiny_config() -> RARConfig:
    return rar_config("rar_tiny", codebook_size=32, num_classes=10, num_tokens=16)


def _batch(cfg: RARConfig, B: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(cfg.codebook_size, (B, cfg.num_tokens), generator=g)
    labels = torch.randint(cfg.num_classes + 1, (B,), generator=g)
    return tokens, labels


def _randomised(cfg: RARConfig, seed: int = 0) -> RAR:
    """A model whose adaLN and cls token are not zero, so no block is the identity."""
    torch.manual_seed(seed)
    model = RAR(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_logit_shapes(tiny_config):
    model = RAR(tiny_config).eval()
    tokens, labels = _batch(tiny_config)
    logits = model(tokens, labels)
    assert logits.shape == (3, 16, 32)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_named_sizes_match_official_parameter_counts(name):
    with torch.device("meta"):
        model = RAR(rar_config(name))
    assert num_parameters(model) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_state_dict_keys_and_shapes_equal_the_release(name, official_shapes):
    with torch.device("meta"):
        model = RAR(rar_config(name))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_shapes[name]["keys"]


def test_named_sizes_are_file_name_safe():
    assert all(name.replace("_", "").isalnum() and name.islower() for name in RAR_CONFIGS)


def test_logits_depend_only_on_earlier_tokens_in_the_order(tiny_config):
    model = _randomised(tiny_config)
    tokens, labels = _batch(tiny_config, B=1)
    orders = torch.randperm(16, generator=torch.Generator().manual_seed(3))[None]
    k = 7  # change the token visited k-th: logits[:, :k + 1] predict earlier visits
    changed = tokens.clone()
    changed[0, orders[0, k]] = (tokens[0, orders[0, k]] + 1) % tiny_config.codebook_size
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


def test_config_is_inferred_from_a_state_dict():
    cfg = rar_config("rar_mini", codebook_size=48, num_classes=7, num_tokens=64)
    with torch.device("meta"):
        sd = RAR(cfg).state_dict()
    assert config_from_state_dict(sd) == cfg


def test_load_official_rar_round_trip(tmp_path, tiny_config):
    model = _randomised(tiny_config)
    path = tmp_path / "rar_tiny.bin"
    torch.save(model.state_dict(), path)
    loaded = load_official_rar(path)
    assert loaded.config == tiny_config
    assert not loaded.training
    tokens, labels = _batch(tiny_config)
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
