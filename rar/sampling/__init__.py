"""Sampling a run: sample sets in resumable chunks, the guidance sweep and the reference rows.

- `sampler`         `rar sample`: the plan, the completeness check, this rank's chunks, the finish
- `chunks`          the class-interleaved layout, per-chunk seeds, chunk files, the merge, the grid
- `sweep`           the guidance sweep: sample and score each scale, keep the lowest FID
- `reference_rows`  the untrained checkpoint and the tokenizer reconstructions rows
"""

from rar import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "sample": "sampler",
        "sweep_guidance": "sweep",
        "write_reconstructions": "reference_rows",
        "write_untrained_checkpoint": "reference_rows",
    },
)
