# rule run_config: write one run's resolved training config (rar.settings.training).
import contextlib

from rar.settings.training import TrainConfig

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    TrainConfig.from_dict(dict(snakemake.params.config)).save(snakemake.output.config)
