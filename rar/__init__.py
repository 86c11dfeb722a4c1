"""rar-pipeline: Randomized Autoregressive visual generation (RAR), reproduced.

The package's rooms and their layers: ARCHITECTURE.md. Nothing is imported here: the Snakefile
imports `rar.experiments` at parse time, and parsing must never import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A package's API, each name imported from its module on first use (PEP 562).

    `exports` maps each name to the module of `package` that defines it. Returns the package's
    `__getattr__` and `__all__`: importing the package imports none of its modules, so a
    torch-free caller may import a torch-free module of a package that also holds torch.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(exports)
