"""The untrained-model row: a step-0 checkpoint with exactly the weights training starts from."""

from __future__ import annotations

import torch

from rar.checkpoint import load_generator
from rar.config import TrainConfig
from rar.data.batches import TensorBatchSource
from rar.reference_rows import write_untrained_checkpoint
from rar.train import load_checkpoint, train

SAMPLES = 64


def tiny_run() -> TrainConfig:
    """rar_tiny on a 4x4 grid (as tests/test_train.py's): 8 steps per epoch."""
    return TrainConfig(
        model="rar_tiny", codebook_size=16, num_classes=4, num_tokens=16,
        source_images=SAMPLES, epochs=3, global_batch=8, micro_batch=4,
        warmup_epochs=1, lr=1e-3, min_lr=1e-4, anneal_start=1, anneal_end=2,
        checkpoint_minutes=60, log_every=4, seed=3,
    )  # fmt: skip


def tiny_source() -> TensorBatchSource:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (SAMPLES,), generator=g)
    tokens = torch.randint(16, (SAMPLES, 16), generator=g)
    return TensorBatchSource(tokens.to(torch.int16), labels, seed=0)


def weights(path):
    return load_checkpoint(path)["model"]


def test_untrained_checkpoint_holds_the_initial_weights_of_the_run(tmp_path):
    cfg = tiny_run()
    ckpt = write_untrained_checkpoint(cfg, tmp_path / "untrained.pt")
    _, desc = load_generator(ckpt)  # `rar sample` takes it like any checkpoint
    assert desc["step"] == 0 and desc["epoch"] == 0.0 and desc["model_size"] == "rar_tiny"
    # One step from it equals the first step of the run trained from scratch: same weights,
    # same optimizer state, same data.
    scratch = train(cfg, tmp_path / "scratch", source=tiny_source(), device="cpu", max_steps=1)
    branched = train(
        cfg, tmp_path / "from_init", source=tiny_source(), init_from=ckpt, device="cpu",
        max_steps=1,
    )  # fmt: skip
    a, b = weights(scratch), weights(branched)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The caller's random state is untouched, and a second call writes the same weights.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = write_untrained_checkpoint(cfg, tmp_path / "again.pt")
    assert torch.equal(torch.rand(3), expected)
    first, second = weights(ckpt), weights(again)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_cli_init_checkpoint(tmp_path):
    from rar.cli import main

    cfg = tiny_run()
    cfg.save(tmp_path / "config.yaml")
    assert main(["init-checkpoint", "--config", str(tmp_path / "config.yaml"),
                 "--out", str(tmp_path / "u" / "init.pt")]) == 0  # fmt: skip
    assert load_generator(tmp_path / "u" / "init.pt")[1]["step"] == 0
