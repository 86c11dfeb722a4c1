"""The untrained-model row: a step-0 checkpoint with exactly the weights training starts from."""

from __future__ import annotations

import torch
from helpers import tiny_run, tiny_source, weights

from rar.model.checkpoint import load_generator
from rar.sampling.reference_rows import write_untrained_checkpoint
from rar.training.loop import train


def test_untrained_checkpoint_holds_the_initial_weights_of_the_run(tmp_path):
    cfg = tiny_run()
    ckpt = write_untrained_checkpoint(cfg, tmp_path / "untrained.pt")
    _, desc = load_generator(ckpt)  # `rar sample` takes it like any checkpoint
    assert desc["step"] == 0 and desc["epoch"] == 0.0 and desc["model_size"] == "rar_tiny"
    # One step from it equals the first step of the run trained from scratch: same weights,
    # same optimizer state, same data.
    scratch = train(cfg, tmp_path / "scratch", source=tiny_source(), device="cpu", max_steps=1)
    branched = train(
        cfg,
        tmp_path / "from_init",
        source=tiny_source(),
        init_from=ckpt,
        device="cpu",
        max_steps=1,
    )
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
    assert (
        main(
            [
                "init-checkpoint",
                "--config",
                str(tmp_path / "config.yaml"),
                "--out",
                str(tmp_path / "u" / "init.pt"),
            ]
        )
        == 0
    )
    assert load_generator(tmp_path / "u" / "init.pt")[1]["step"] == 0
