"""The data stage: ImageNet-layout images -> VQ token shards (WebDataset) -> training batches.

- `rar.data.images`   listing, robust decoding, ADM center crop / center+flip / ten-crop
- `rar.data.shards`   deterministic tar + atomic writes, manifest, `verify_shards` (torch-free)
- `rar.data.tokenize` `tokenize_images`: resumable, parallel parts -> shards + manifest
- `rar.data.loader`   `TokenShards` / `token_loader`: deterministic per-(rank, worker) streams,
                      `benchmark_loader`
- `rar.data.batches`  what training reads: `BatchSource`, in memory or on shards, `stream_from`

The names below are imported lazily (PEP 562), so `import rar.data.shards` (as
`rar verify-shards` does) never imports torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CROP_MODES": "rar.data.images",
    "CROPS_PER_IMAGE": "rar.data.images",
    "center_crop_arr": "rar.data.images",
    "center_crop_plan": "rar.data.images",
    "make_crops": "rar.data.images",
    "ShardError": "rar.data.shards",
    "VerifyReport": "rar.data.shards",
    "load_manifest": "rar.data.shards",
    "verify_shards": "rar.data.shards",
    "tokenize_images": "rar.data.tokenize",
    "TokenShards": "rar.data.loader",
    "benchmark_loader": "rar.data.loader",
    "epoch_segments": "rar.data.loader",
    "token_loader": "rar.data.loader",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rar.data' has no attribute {name!r}")
