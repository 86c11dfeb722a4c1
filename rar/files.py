"""File writing and formats: atomic writes, JSON, and the `.npz` of samples. Torch-free.

Atomic: a file is either its old self or complete, never half written.

Every stage writes through these (docs/stages.md): write to a temporary name in the same
folder, flush and fsync, `os.replace` onto the final name, then fsync the folder so the rename
itself survives a crash. A job killed at any moment leaves at most a hidden `.name.*.tmp` file,
never a file that looks finished to a rerun or to Snakemake.

JSON: `write_json` (readable, keys in the writer's order: metrics.json, samples.json) and
`atomic_write_json` (canonical, sorted keys: files whose bytes are compared or hashed);
`read_json` names a file that is not JSON.
`.npz`: `write_npz` (byte-deterministic, streamed) and `open_npz_array` (memory-mapped);
`npz_members` lists the arrays; both name a file that is not an archive.
Hashes: `sha256_file` (a file's bytes) and `content_sha256` (a file, or a folder of images).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import struct
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np


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


# What counts as an image in a folder of images (a reference, real images scored like samples,
# a class probe's training set): torch-fidelity's `samples_find_ext`, as rar.evaluation.scorer
# passes it.
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")


def image_files(folder: str | os.PathLike) -> list[str]:
    """The images under `folder`, searched recursively: their real paths, sorted. The list
    torch-fidelity's `glob_samples_paths(folder, True, "png,jpg,jpeg")` returns (so the file
    order of a folder's features, labels and hash is one), without importing torch.
    ValueError when there are none."""
    files = [
        os.path.realpath(os.path.join(root, name))
        for root, _, names in os.walk(folder)
        for name in names
        if os.path.splitext(name)[1].lower().removeprefix(".") in IMAGE_EXTENSIONS
    ]
    if not files:
        raise ValueError(f"{folder}: no images ({','.join(IMAGE_EXTENSIONS)}) found")
    return sorted(files)


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's images: their paths relative to it and contents."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    root = path.resolve()
    for f in image_files(path):
        digest.update(os.path.relpath(f, root).encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(f)))
    return digest.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in `path`; ValueError naming the file when it is not JSON (FileNotFoundError
    when it is missing), so a damaged record is named wherever it is read."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err})") from None


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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON in its own key order, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ##########################################################################################
# .npz: byte-deterministic, streamed writes and memory-mapped reads
# ##########################################################################################


@dataclass(frozen=True)
class StreamedArray:
    """An array written piece by piece: `parts` yields C-ordered blocks along axis 0 whose
    concatenation has `shape` and `dtype` (so 10 GB of samples never sit in memory)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    parts: Iterable[np.ndarray]


# A fixed timestamp (the zip epoch) and fixed attributes make the archive's bytes depend only on
# its content; np.savez stamps the current local time into each member.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buf = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(s) for s in shape),
    }
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray | StreamedArray]) -> None:
    """Write an uncompressed `.npz` that `np.load` reads, byte-deterministic in its content.

    Each value is an array or a `StreamedArray`; member `k` is `k.npy` in npy format 1.0, as
    `np.savez` writes it. Atomic: temporary file in the same folder, fsync, rename.
    """
    with (
        atomic_open(path) as f,
        zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
    ):
        for name, value in arrays.items():
            if isinstance(value, StreamedArray):
                shape, dtype, parts = value.shape, np.dtype(value.dtype), value.parts
            else:
                value = np.asarray(value)
                shape, dtype, parts = value.shape, value.dtype, [value]
            header = _npy_header(shape, dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # "Unix", whatever the writing platform
            info.external_attr = 0o644 << 16
            info.file_size = len(header) + nbytes
            written = 0
            with zf.open(info, "w", force_zip64=True) as member:
                member.write(header)
                for part in parts:
                    part = np.ascontiguousarray(part, dtype=dtype)
                    member.write(part.data.cast("B") if part.size else b"")
                    written += part.nbytes
            if written != nbytes:
                raise ValueError(f"{name}: wrote {written} bytes, expected {nbytes}")


def _npz_archive(path: Path) -> zipfile.ZipFile:
    """`path` opened as the zip archive an `.npz` is; ValueError naming it when it is not one
    (a truncated copy, another format under the name)."""
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: not an .npz archive ({err})") from None


def npz_members(path: str | os.PathLike) -> set[str]:
    """The names of the arrays an `.npz` holds."""
    with _npz_archive(Path(path)) as zf:
        return {name.removesuffix(".npy") for name in zf.namelist()}


def open_npz_array(path: str | os.PathLike, key: str) -> np.ndarray:
    """Array `key` of an `.npz`, memory-mapped when the member is stored uncompressed (ours and
    np.savez's are), so a 50,000-image file is read lazily; loaded into memory otherwise."""
    path = Path(path)
    with _npz_archive(path) as zf:
        try:
            info = zf.getinfo(f"{key}.npy")
        except KeyError:
            raise KeyError(f"{path}: no array {key!r} (has {sorted(zf.namelist())})") from None
        stored = info.compress_type == zipfile.ZIP_STORED
    if stored:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the local file header; name and extra field lengths at 26..30
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is not None:
                shape, fortran, dtype = read_header(f)
                if not dtype.hasobject:
                    order = "F" if fortran else "C"
                    return np.memmap(
                        path, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order=order
                    )
    with np.load(path) as npz:
        return npz[key]
