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

from rar import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "CROP_MODES": "images",
        "CROPS_PER_IMAGE": "images",
        "center_crop_arr": "images",
        "center_crop_plan": "images",
        "make_crops": "images",
        "ShardError": "shards",
        "VerifyReport": "shards",
        "load_manifest": "shards",
        "verify_shards": "shards",
        "tokenize_images": "tokenize",
        "TokenShards": "loader",
        "benchmark_loader": "loader",
        "epoch_segments": "loader",
        "token_loader": "loader",
    },
)
