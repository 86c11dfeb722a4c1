"""Atomic file writes: a file is either its old self or complete, never half written.

Every stage writes through these (DESIGN.md "Files"): write to a temporary name in the same
folder, flush and fsync, `os.replace` onto the final name, then fsync the folder so the rename
itself survives a crash. A job killed at any moment leaves at most a hidden `.name.*.tmp` file,
never a file that looks finished to a rerun or to Snakemake. Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """`with atomic_open(p) as f: torch.save(obj, f)`: `p` appears only if the block ends
    without an exception. Concurrent writers of the same file are harmless (the last rename
    wins), since each writes its own temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Persist the rename (best effort: not every filesystem allows fsync on a folder).
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: str | os.PathLike, *, block: int = 1 << 24) -> str:
    """sha256 hex digest of a file's bytes, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Canonical JSON (sorted keys, 1-space indent, trailing newline), so equal content always
    gives equal bytes."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())
