"""The two reference rows of every demo table: what the metrics read at the floor and ceiling.

A FID of 40 means nothing alone; between the numbers of a perfect and of a useless generator
scored the same way it does (issue #13):

- `real held-out images` (the floor): real images the models never saw, as many as one
  evaluation's samples, scored against the reference exactly like samples: `rar evaluate
  --samples <folder of class folders>` (the folder of each image is its label, so
  class_accuracy calibrates the probe too). For the demo: `images/test` against the reference
  `images/val` (rar.demo.data: `test_per_class`); the two are disjoint random crops.
- `untrained model` (the ceiling): samples from a model at its initial weights, the weights
  the run's training starts from (`torch.manual_seed(seed)` then `model_from_config`, as
  rar.training.loop does at step 0). `write_untrained_checkpoint` saves them as a step-0 training
  checkpoint (`rar init-checkpoint`), which `rar sample` and `rar evaluate` take like any
  other.

- `tokenizer reconstructions`: the floor's real images encoded and decoded by the study's
  tokenizer (`write_reconstructions`, `rar reconstruct`): what a generator that put exactly the
  right tokens in every place would reach, so the part of the gap that no generator in this
  token space can close. The demo's small VQ tokenizer blurs; this row shows by how much.

The table then says how much of the gap from ceiling to floor each row closes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rar.settings.training import TrainConfig


def write_untrained_checkpoint(
    config: str | os.PathLike | TrainConfig, out: str | os.PathLike
) -> Path:
    """Save the model of run config `config` (a TrainConfig or its YAML file) at its initial
    weights, seeded with the run's seed, as a step-0 checkpoint in rar.training.loop's format
    (model, fresh optimizer state, step 0, epoch 0, config, model_config). The caller's random state
    is left as it was. Returns `out`."""
    from rar.training.loop import build_optimizer, code_version, model_from_config, save_checkpoint

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.load(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # as rar.training.loop before it builds the model
        model = model_from_config(cfg)
    optimizer = build_optimizer(model, cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        step=0,
        epoch=0.0,
        config=cfg.to_dict(),
        model_config=model.config.__dict__,
        code_version=code_version(),
        untrained=True,
    )
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {cfg.model} at its initial weights (seed {cfg.seed}, {n:,} parameters)")
    return out


@torch.no_grad()
def write_reconstructions(
    images: str | os.PathLike,
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    *,
    grid: int | None = None,
    batch_size: int = 64,
) -> Path:
    """Encode and decode every image of the class-folder set `images` with `tokenizer` (a
    file `rar.model.tokenizer.load_tokenizer` reads), center-cropped to its image size as the FID
    references are; write them as a sample file (`arr_0` (N, H, W, 3) uint8, `labels`: the
    class folder's index in sorted order) with its samples.json; `grid`: tokens a side (the
    study's `tokenizer.grid`; default the tokenizer's own). Returns `out`."""
    import numpy as np

    from rar.data.images import center_crop_arr, list_images, load_rgb
    from rar.experiments.results import write_samples_info
    from rar.files import content_sha256, sha256_file, write_npz
    from rar.model.tokenizer import load_tokenizer, to_uint8

    tok = load_tokenizer(tokenizer, grid=grid)
    classes, sources = list_images(images)
    if not sources:
        raise ValueError(f"{images}: no images in class folders")
    pixels, labels = [], []
    for start in range(0, len(sources), batch_size):
        batch = sources[start : start + batch_size]
        arr = np.stack(
            [center_crop_arr(load_rgb(Path(images) / s.relpath), tok.image_size) for s in batch]
        )  # (b, H, W, 3) uint8
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        pixels.append(to_uint8(tok.decode(tok.encode(x))).numpy())
        labels += [s.label for s in batch]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(out, {"arr_0": np.concatenate(pixels), "labels": np.asarray(labels, np.int64)})
    write_samples_info(
        out,
        {
            "kind": "tokenizer reconstructions",
            "images": str(images),
            "images_sha256": content_sha256(images),
            "classes": classes,
            "tokenizer": str(tokenizer),
            "tokenizer_sha256": sha256_file(tokenizer),
            "num_images": len(labels),
            "samples_sha256": content_sha256(out),
        },
    )
    print(f"wrote {out}: {len(labels)} reconstructions of {images} by {tokenizer}", flush=True)
    return out
