# rule run_config: write one run's resolved training config (rar.config).
import contextlib

from rar.config import TrainConfig

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    TrainConfig.from_dict(dict(snakemake.params.config)).save(snakemake.output.config)
