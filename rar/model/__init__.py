"""The model and generation core: the RAR transformer, its scan orders, KV-cache generation,
the tokenizers and the one safe loader of checkpoints.

- `transformer`    the RAR transformer (adaLN or plain ViT), configs from state-dict shapes
- `orders`         the scan orders of Fig. 6, shuffling, the annealing ratio, order draws
- `generate`       the decode engine and `generate` (classifier-free guidance, sync-free draws)
- `tokenizer`      the `Tokenizer` interface every tokenizer follows, loading and saving
- `maskgit_vqgan`  the MaskGIT-VQGAN network (the paper's tokenizer)
- `llamagen_vq`    LlamaGen's VQ network (VQ-16, the tokenizer of supplementary Table 3)
- `checkpoint`     the one safe loader of files, and of generators (ours and released)
"""

from rar import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "CHECKPOINT_FORMAT": "checkpoint",
        "CheckpointError": "checkpoint",
        "generate": "generate",
        "load_file": "checkpoint",
        "load_generator": "checkpoint",
        "llamagen_vq_from_state_dict": "tokenizer",
        "LlamaGenVQ": "tokenizer",
        "LlamaGenVQConfig": "llamagen_vq",
        "LlamaGenVQModel": "llamagen_vq",
        "load_official_llamagen_vq": "tokenizer",
        "load_official_maskgit_vqgan": "tokenizer",
        "load_official_rar": "checkpoint",
        "load_tokenizer": "tokenizer",
        "MaskGITVQGAN": "tokenizer",
        "MaskGITVQGANConfig": "tokenizer",
        "num_parameters": "transformer",
        "order_generator": "orders",
        "randomness_ratio": "orders",
        "RAR": "transformer",
        "rar_config": "transformer",
        "RAR_CONFIGS": "transformer",
        "release_engine": "generate",
        "sample_orders": "orders",
        "save_tokenizer": "tokenizer",
        "scan_order": "orders",
        "shuffle": "orders",
        "to_uint8": "tokenizer",
        "Tokenizer": "tokenizer",
    },
)
