"""Operations: where a stage runs and what a user asks of the cluster.

- `launch`     debug, local or SLURM (submitit); requeue, reattach, job records
- `status`     `rar status`: one table of every run and evaluation
- `preflight`  `rar preflight`: the whole grid rehearsed at toy scale
- `fetch`      the files a study needs from outside, downloaded and verified
- `bench`      throughput benchmarks of sampling and training
"""

from rar import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "bench_sample": "bench",
        "bench_train": "bench",
        "collect": "status",
        "fetch": "fetch",
        "format_status": "status",
        "launch": "launch",
        "run_preflight": "preflight",
        "TrainJob": "launch",
        "watch": "status",
    },
)
