"""rar-pipeline: Randomized Autoregressive visual generation (RAR), reproduced.

Deliberately empty of imports: the Snakefile imports `rar.experiments` at parse time, and
parsing must never import torch.
"""
