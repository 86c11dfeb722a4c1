"""Demo VQ tokenizer: trains, round-trips through files, reports reconstruction metrics."""

from __future__ import annotations

import json

import pytest
import torch

from rar.demo.vq import (
    VQDemo,
    VQDemoConfig,
    evaluate_reconstruction,
    save_tokenizer,
    spectral_loss,
    train_vq_demo,
)
from rar.model.tokenizer import Tokenizer, load_tokenizer
from rar.settings.stages import TokenizerTraining

# Small enough that a few dozen steps take about a second on a 2-core CPU.
TINY = VQDemoConfig(
    image_size=16, base_channels=8, channel_mult=(1, 2), codebook_size=32, code_dim=8
)


def _shapes(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Synthetic class-folder-like images: a coloured square on a coloured background.

    Returns uint8 (n, size, size, 3), the layout the data pipeline hands over.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        bg, fg = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
        cy, cx = torch.randint(3, size - 3, (2,), generator=g).tolist()
        r = int(torch.randint(2, size // 3, (1,), generator=g))
        mask = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
        out[i] = torch.where(mask[None], fg, bg)
    return (out * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: with 2 threads on a busy 2-core machine, OpenMP barriers dominate and a
    1-second run can take 20 s. One thread is steadier; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images():
    return _shapes(128)


@pytest.fixture(scope="module")
def trained(images):
    return train_vq_demo(
        images, TINY, TokenizerTraining(steps=40, batch_size=16, lr=3e-3, seed=0), progress=False
    )


def test_training_reduces_reconstruction_error(images, trained, capsys):
    untrained = train_vq_demo(images, TINY, TokenizerTraining(steps=0, seed=0), progress=False)
    before = evaluate_reconstruction(untrained, images)
    after = evaluate_reconstruction(trained, images, batch_size=50)
    assert after["mse"] < 0.5 * before["mse"]
    assert after["psnr"] > before["psnr"]
    # Dead-code restarts keep most of the codebook alive even in a very short run.
    assert after["codebook_usage"] > 0.5
    assert 1.0 <= after["perplexity"] <= TINY.codebook_size
    assert after["tokens_per_image"] == TINY.grid**2 and after["num_images"] == 128
    json.dumps(after)  # JSON-ready: plain floats and ints
    assert untrained.identity() != trained.identity()


def test_spectral_loss_known_values():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert spectral_loss(x, x) == 0
    # A constant offset c moves only the constant term, by c * sqrt(H * W) = 0.1 * 8, of the
    # H x (W / 2 + 1) = 8 x 5 terms of each of the 6 channel images.
    assert spectral_loss(x + 0.1, x).item() == pytest.approx(0.1 * 8 / (8 * 5), rel=1e-5)
    # What the term is for: a faint high-frequency error (a checkerboard of amplitude eps:
    # one term of each channel's transform, 8 * eps) costs in proportion to eps, not to
    # eps squared as under MSE, so its gradient does not fade as the error does.
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    for eps in (0.1, 0.001):
        assert spectral_loss(x + eps * checker, x).item() == pytest.approx(8 * eps / 40, rel=1e-3)
        mse = torch.nn.functional.mse_loss(x + eps * checker, x).item()
        assert mse == pytest.approx(eps**2, rel=1e-3)


def test_the_spectral_weight_enters_the_loss(images):
    model = VQDemo(TINY)
    x = images[:4].permute(0, 3, 1, 2).float() / 255
    _, _, plain = model(x)
    _, _, weighted = model(x, spectral_weight=2.0)
    assert plain["spectral"] > 0
    expected = plain["recon"] + plain["vq"] + 2.0 * plain["spectral"]
    assert weighted["loss"].item() == pytest.approx(expected.item())
    a, b = (
        train_vq_demo(
            images,
            TINY,
            TokenizerTraining(steps=6, batch_size=8, spectral_weight=w),
            progress=False,
        )
        for w in (0.0, 1.0)
    )
    assert a.identity() != b.identity()


def test_progress_lines_are_printed(images, capsys):
    train_vq_demo(
        images, TINY, TokenizerTraining(steps=4, batch_size=4, seed=1), log_every=2, progress=True
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("vq_demo step 4/4 loss")


def test_training_is_deterministic(images):
    a, b, c = (
        train_vq_demo(
            images, TINY, TokenizerTraining(steps=12, batch_size=8, seed=s), progress=False
        )
        for s in (3, 3, 4)
    )
    assert a.identity() == b.identity() != c.identity()


def test_training_is_deterministic_on_two_threads():
    """At the demo's size the codebook's gradient (an index_put with accumulate) is summed by
    several threads; rar.runtime's deterministic mode keeps its order fixed."""
    images32 = _shapes(64, size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = (
            train_vq_demo(
                images32, VQDemoConfig(), TokenizerTraining(steps=10, batch_size=32), progress=False
            )
            for _ in range(2)
        )
    finally:
        torch.set_num_threads(threads)
    assert a.identity() == b.identity()


def test_interface_shapes_and_range(images, trained):
    assert isinstance(trained, Tokenizer)
    assert not trained.training and not any(p.requires_grad for p in trained.parameters())
    assert (trained.codebook_size, trained.grid, trained.image_size) == (32, 8, 16)
    x = images[:5].permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W) in [0, 1]
    ids = trained.encode(x)
    assert ids.dtype == torch.int64 and ids.shape == (5, 64)
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    out = trained.decode(ids)
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_save_load_round_trip(images, trained, tmp_path):
    path = tmp_path / "sub" / "tokenizer.pt"
    save_tokenizer(trained, path)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.pt"]  # no temp file left
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["kind"] == "vq_demo" and raw["config"]["codebook_size"] == 32
    loaded = load_tokenizer(path)
    assert isinstance(loaded, VQDemo) and loaded.config == TINY
    assert loaded.identity() == trained.identity()
    x = images[:8].permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(loaded.encode(x), trained.encode(x))


def test_plain_codes_and_8x_downsampling_train():
    cfg = VQDemoConfig(
        image_size=16,
        base_channels=8,
        channel_mult=(1, 2, 2, 2),
        codebook_size=16,
        code_dim=4,
        l2_norm_codes=False,
    )
    tok = train_vq_demo(_shapes(32), cfg, TokenizerTraining(steps=3, batch_size=8), progress=False)
    assert tok.grid == 2 and tok.encode(torch.rand(2, 3, 16, 16)).shape == (2, 4)


def test_config_and_input_checks(images):
    with pytest.raises(ValueError, match="divisible"):
        VQDemoConfig(image_size=30, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="config wants 32"):
        train_vq_demo(
            images, VQDemoConfig(image_size=32), TokenizerTraining(steps=1), progress=False
        )
