"""LlamaGen VQ tokenizer: the release's layout, parity with the official code, the `Tokenizer`
wrapper and loading (reference data: tests/data/README.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rar.model import LlamaGenVQ, LlamaGenVQConfig, LlamaGenVQModel
from rar.model.tokenizer import (
    load_official_llamagen_vq,
    load_tokenizer,
    save_tokenizer,
)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def tiny():
    """Official LlamaGen VQ outputs for seeded tiny weights (tests/data/README.md)."""
    return torch.load(DATA / "llamagen_vq_tiny.pt", weights_only=True)


def _config(tiny) -> LlamaGenVQConfig:
    ref = tiny["config"]
    return LlamaGenVQConfig(
        ch=ref["ch"],
        ch_mult=ref["ch_mult"],
        num_res_blocks=ref["num_res_blocks"],
        z_channels=ref["z_channels"],
        codebook_size=ref["codebook_size"],
        codebook_embed_dim=ref["codebook_embed_dim"],
        codebook_l2_norm=ref["codebook_l2_norm"],
        image_size=ref["image_size"],
    )


@pytest.fixture(scope="module")
def model(tiny):
    """Our raw network built from the record's config, the official weights loaded strictly."""
    net = LlamaGenVQModel(_config(tiny))
    net.load_state_dict(tiny["state_dict"], strict=True)
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Architecture matches the release
# ----------------------------------------------------------------------------------------------


def test_vq16_matches_release_layout():
    ref = json.loads((DATA / "llamagen_vq16_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        tok = LlamaGenVQ()
    shapes = {k: list(v.shape) for k, v in tok.state_dict().items()}
    assert shapes == ref["keys"]
    assert sum(p.numel() for p in tok.parameters()) == 71_883_403 == ref["num_params"]
    assert shapes["quantize.codebook_used"] == [65536]
    # and `rar preflight` checks a release file against the same keys and shapes
    from rar.ops.preflight.checks import expected_shapes

    assert {k: list(v) for k, v in expected_shapes("llamagen_vq").items()} == ref["keys"]
    assert (tok.codebook_size, tok.grid, tok.image_size) == (16384, 16, 256)
    ours = dataclasses.asdict(tok.config) | {"ch_mult": list(tok.config.ch_mult)}
    for key in ("ch", "ch_mult", "z_channels", "codebook_size", "codebook_embed_dim"):
        assert ours[key] == ref[key], key


# ----------------------------------------------------------------------------------------------
# Parity with the official code (seeded tiny weights)
# ----------------------------------------------------------------------------------------------


def test_encode_parity_with_official_tiny(model, tiny):
    quant, ids = model.encode_latents(tiny["images"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 16)
    assert torch.equal(ids, tiny["ids"])
    torch.testing.assert_close(quant, tiny["quant"], atol=1e-5, rtol=0)


def test_decode_and_forward_parity_with_official_tiny(model, tiny):
    decoded = model.decode_code(tiny["ids"])
    assert decoded.shape == (2, 3, 64, 64)
    torch.testing.assert_close(decoded, tiny["decoded"], atol=1e-5, rtol=0)
    torch.testing.assert_close(model(tiny["images"]), tiny["reconstruction"], atol=1e-5, rtol=0)


def test_quantized_codes_are_unit_vectors(model, tiny):
    quant, _ = model.encode_latents(tiny["images"])
    torch.testing.assert_close(quant.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# The Tokenizer wrapper: [0, 1] images outside, [-1, 1] inside
# ----------------------------------------------------------------------------------------------


def test_tokenizer_wrapper_agrees_with_the_raw_model(model, tiny):
    tok = LlamaGenVQ(_config(tiny))
    tok.load_state_dict(tiny["state_dict"], strict=True)
    tok.freeze()
    assert (tok.codebook_size, tok.grid, tok.image_size) == (64, 4, 64)
    images01 = (tiny["images"] + 1.0) / 2.0
    ids = tok.encode(images01)
    assert ids.dtype == torch.int64
    assert torch.equal(ids, model.encode_latents(images01 * 2.0 - 1.0)[1])
    assert torch.equal(ids, tiny["ids"])
    decoded = tok.decode(ids)
    expected = ((model.decode_code(ids) + 1.0) / 2.0).clamp(0.0, 1.0)
    torch.testing.assert_close(decoded, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        decoded, ((tiny["decoded"] + 1.0) / 2.0).clamp(0.0, 1.0), atol=1e-5, rtol=0
    )


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def test_release_layout_file_loads_through_load_tokenizer(tiny, tmp_path):
    path = tmp_path / "vq_tiny_c2i.pt"
    torch.save({"model": tiny["state_dict"], "steps": torch.tensor(7)}, path)
    for loader in (load_tokenizer, load_official_llamagen_vq):
        tok = loader(path)
        assert isinstance(tok, LlamaGenVQ) and not tok.training
        # The weights do not record the image size: the loaders take it (default 256 px).
        assert tok.config == dataclasses.replace(_config(tiny), image_size=256)
        assert not any(p.requires_grad for p in tok.parameters())
        assert torch.equal(tok.encode((tiny["images"] + 1.0) / 2.0), tiny["ids"])
    # A bare state dict in the release's layout loads too.
    bare = tmp_path / "bare.pt"
    torch.save(tiny["state_dict"], bare)
    assert load_tokenizer(bare).identity() == load_tokenizer(path).identity()


def test_release_file_with_training_entries_loads(tiny, tmp_path):
    """LlamaGen's training script saves the optimizer, the step and its options (an
    `argparse.Namespace`) next to the weights; only `model` is read."""
    path = tmp_path / "vq_full.pt"
    extras = {"optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "steps": 10}
    args = argparse.Namespace(vq_model="VQ-16", codebook_size=64, lr=1e-4)
    torch.save({"model": tiny["state_dict"], **extras, "args": args}, path)
    tok = load_tokenizer(path)
    assert isinstance(tok, LlamaGenVQ)
    assert torch.equal(tok.encode((tiny["images"] + 1.0) / 2.0), tiny["ids"])


def test_our_checkpoint_round_trips(tiny, tmp_path):
    tok = load_official_llamagen_vq(_save_release(tiny, tmp_path))
    path = tmp_path / "ours.pt"
    save_tokenizer(tok, path)
    again = load_tokenizer(path)
    assert isinstance(again, LlamaGenVQ) and again.config == tok.config
    assert again.identity() == tok.identity()


def test_wrong_files_name_the_file_and_keys(tiny, tmp_path):
    sd = dict(tiny["state_dict"])
    del sd["decoder.conv_out.bias"]
    path = tmp_path / "partial.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match=r"partial\.pt.*decoder\.conv_out\.bias"):
        load_tokenizer(path)
    sd = dict(tiny["state_dict"])
    sd["quant_conv.weight"] = torch.zeros(4, 32, 1, 1)
    path = tmp_path / "bad-shape.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match=r"bad-shape\.pt.*wrong shape.*quant_conv\.weight"):
        load_official_llamagen_vq(path)
    path = tmp_path / "other.pt"
    torch.save({"model": {"x": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"other\.pt"):
        load_official_llamagen_vq(path)


def _save_release(tiny, tmp_path) -> Path:
    path = tmp_path / "release.pt"
    torch.save({"model": tiny["state_dict"]}, path)
    return path


def test_a_study_grid_sets_the_image_size(tiny, tmp_path):
    """load_tokenizer(grid=g): the convolutional tokenizer at g x g tokens, images of g times
    its downsampling a side; decoding reads the grid from the ids."""
    path = tmp_path / "vq.pt"
    torch.save({"model": tiny["state_dict"]}, path)
    own = load_tokenizer(path)
    down = own.image_size // own.grid
    tok = load_tokenizer(path, grid=2)
    assert (tok.grid, tok.image_size) == (2, 2 * down)
    images = torch.rand(3, 3, 2 * down, 2 * down)
    ids = tok.encode(images)
    assert ids.shape == (3, 4)
    assert tok.decode(ids).shape == (3, 3, 2 * down, 2 * down)
    assert torch.equal(ids, own.encode(images))  # the same network: only the size changed
    with pytest.raises(ValueError, match="grid of 0"):
        tok.at_grid(0)


def test_rar_l_on_vq16_has_the_papers_493m_parameters():
    """Supplementary Table 3's RAR-L at VQ-16's 16,384 codes: 493M parameters, as the paper
    says; the run the paper's study trains for it has that codebook and 16 x 16 tokens."""
    import yaml

    from rar.experiments import load_study
    from rar.model.transformer import num_parameters
    from rar.training.recipe import model_from_config

    study = load_study(yaml.safe_load((DATA.parent.parent / "config/config.yaml").read_text()))
    [row] = study.tables["llamagen_vq"]
    cfg = study.runs[row.run].config
    assert (cfg.model, cfg.codebook_size, cfg.num_tokens) == ("rar_l", 16384, 256)
    with torch.device("meta"):
        n = num_parameters(model_from_config(cfg))
    assert round(n / 1e6) == 493, n
