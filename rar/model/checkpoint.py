"""One safe loader for every checkpoint and weights file the pipeline reads.

Every `.pt` / `.bin` file (our training checkpoints, the released RAR and MaskGIT-VQGAN state
dicts, tokenizer files, extractor weights) goes through `load_file`. It always loads with
`torch.load(weights_only=True)`, whose unpickler builds tensors, containers and plain values
only and runs no code from the file, and it turns every way a file can fail into one
`CheckpointError` (a ValueError) whose message names the file and what it should have been:

- missing (`CheckpointMissing`, also a FileNotFoundError), a folder, or unreadable;
- truncated or corrupt, or not written by `torch.save` at all;
- a pickle that refers to Python code (a class or function): refused for safety;
- loaded, but not of the expected type (`expect`).

The messages never suggest loading with `weights_only=False`: a file that needs it is exactly
the file that must not be loaded.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rar.model.transformer import (
    RAR,
    RAR_CONFIGS,
    RARConfig,
    config_from_state_dict,
    rar_from_state_dict,
)

# Our training checkpoints (rar.training.resume.save_checkpoint): a dict with this "format", the
# model and optimizer states, step, epoch and the run config.
CHECKPOINT_FORMAT = "rar-train/1"


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used; the message names the file."""


class CheckpointMissing(CheckpointError, FileNotFoundError):
    """The file does not exist (also a FileNotFoundError, for callers that catch that)."""


def load_file(
    path: str | os.PathLike,
    *,
    what: str,
    expect: type | tuple[type, ...] | None = dict,
    map_location: str | torch.device = "cpu",
) -> Any:
    """`torch.load(path, weights_only=True)`, with one error type for every failure.

    what: what the file should be, for the messages ("a training checkpoint of this pipeline").
    expect: the type(s) the loaded object must have (None: anything torch returns).
    Raises CheckpointError (CheckpointMissing when there is no such file).
    """
    name = os.fspath(path)
    try:
        obj = torch.load(name, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointMissing(f"{name} does not exist (expected: {what})") from None
    except IsADirectoryError:
        raise CheckpointError(f"{name} is a folder, not a file (expected: {what})") from None
    except PermissionError as err:
        raise CheckpointError(
            f"{name} cannot be read ({err.strerror}) (expected: {what})"
        ) from None
    except pickle.UnpicklingError as err:
        # torch's text for these suggests weights_only=False: it is never passed on (`from
        # None`), only the name of the global the file asked for.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(
                f"{name} contains Python objects other than tensors (it refers to "
                f"{found.group(1)}) and is refused for safety: loading it could run code from "
                f"the file (expected: {what})"
            ) from None
        raise CheckpointError(_corrupt(name, what, "its pickle data is not valid")) from None
    except Exception as err:  # zip, EOF, legacy-format and I/O errors of a bad file
        raise CheckpointError(_corrupt(name, what, _detail(err))) from None
    if expect is not None and not isinstance(obj, expect):
        raise CheckpointError(f"{name}: expected {what}, found a {type(obj).__name__}")
    return obj


def _corrupt(name: str, what: str, detail: str) -> str:
    try:
        size = f"{os.path.getsize(name):,} bytes"
    except OSError:
        size = "size unknown"
    return (
        f"{name} ({size}) is truncated, corrupt or not a PyTorch file: {detail} (expected: {what})"
    )


def _detail(err: Exception) -> str:
    """The first sentence of a load error, without torch's advice (which may mention
    `weights_only`); the exception type when there is nothing else to say."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    if not text or "weights_only" in text:
        return type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        text = f"read error: {err.strerror}"
    return f"{type(err).__name__}: {text}"


# ##########################################################################################
# Generators: our training checkpoints and the released RAR files, one loader
# ##########################################################################################


def load_official_rar(path: str | Path, **config_overrides) -> RAR:
    """Load a released RAR checkpoint (`rar_b.bin` ... `rar_xxl.bin`, a plain state dict),
    inferring the architecture from its shapes. Returns the model in eval mode, on the CPU.

    `config_overrides` set the fields the weights do not determine (dropout rates).
    """
    state_dict = load_file(path, what="an official RAR state dict (rar_{b,l,xl,xxl}.bin)")
    try:
        config = replace(config_from_state_dict(state_dict), **config_overrides)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: {err}") from err
    return rar_from_state_dict(state_dict, config, source=str(path))


def load_generator(path: str | os.PathLike) -> tuple[RAR, dict]:
    """Load a RAR model from our training checkpoint (`rar-train/1`: `model`, `model_config`)
    or from an official release file (`rar_b.bin` ... `rar_xxl.bin`, a plain state dict).

    Returns (model in eval mode on the CPU, description) where the description holds `kind`
    ("rar-train/1" or "official"), `model_size` (a name of RAR_CONFIGS or None), `step`/`epoch`
    for our checkpoints, and the `model_config`.
    """
    obj = load_file(
        path, what="a RAR generator: a rar-train/1 checkpoint or an official RAR state dict"
    )
    if obj.get("format") == CHECKPOINT_FORMAT:
        config = RARConfig(**obj["model_config"])
        state_dict = obj["model"]
        desc = {
            "kind": CHECKPOINT_FORMAT,
            "model_size": obj.get("config", {}).get("model"),
            "step": obj.get("step"),
            "epoch": obj.get("epoch"),
        }
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        config, state_dict = None, obj
        desc = {"kind": "official"}
    else:
        raise ValueError(f"{path}: neither a rar-train checkpoint nor an official RAR state dict")
    # From the dict already in memory: a 6 GB XXL file is read once.
    model = rar_from_state_dict(state_dict, config, source=str(path))
    desc.setdefault("model_size", _size_name(model.config))
    desc["model_config"] = dataclasses.asdict(model.config)
    return model, desc


def _size_name(config: RARConfig) -> str | None:
    """The RAR_CONFIGS name whose width and depth `config` has, if any."""
    for name, sizes in RAR_CONFIGS.items():
        if all(getattr(config, k) == v for k, v in sizes.items()):
            return name
    return None
