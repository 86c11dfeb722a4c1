"""Token shards on disk: deterministic tar writing, atomic files, sidecars, manifest, checks.

Layout of a shard directory (`results/data/<dataset>-<tokenizer>-<crop>/`, docs/stages.md):

    train-000000.tar  train-000000.json   one shard + its sidecar per part (see rar.data.tokenize)
    ...
    manifest.json                         written by the merge step once every part exists

A shard is a WebDataset tar: per sample `<key>.cls` (class id as decimal text, the WebDataset
convention), `<key>.tokens.npy` ((N,) uint16 code ids, raster order) and optionally
`<key>.crop` (crop index as text). Keys are `<wnid>_<stem>_<crop index>`; the `samples_per_image`
crops of one source image are consecutive. Tar headers carry fixed metadata (mtime 0, uid/gid
0, no user names, mode 0644), so the same tokens always give the same bytes and sha256.

This module is torch-free: `rar verify-shards` runs without importing torch.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rar.files import (  # noqa: F401 (re-exported for rar.data)
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    sha256_file,
)

MANIFEST = "manifest.json"
FORMAT = "rar-token-shards/1"


def shard_name(part: int) -> str:
    """Shard file name of a part: `train-000003.tar`."""
    return f"train-{part:06d}.tar"


def sidecar_name(part: int) -> str:
    """Sidecar of a part: `train-000003.json` (count, sha256, unreadable files, settings)."""
    return f"train-{part:06d}.json"


class ShardError(RuntimeError):
    """A shard is missing, truncated or does not match its manifest entry.

    The message names the shard and the command that re-creates it.
    """


# ------------------------------------------------------------------------------------------
# atomic, deterministic writing
# ------------------------------------------------------------------------------------------


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A tar archive of `(name, data)` members, in order, with fixed header metadata.

    Byte-deterministic: mtime 0, uid/gid 0, empty uname/gname, mode 0644, PAX format (names
    longer than 100 characters get a deterministic PAX header).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ------------------------------------------------------------------------------------------
# fast reading
# ------------------------------------------------------------------------------------------

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    return int(field, 8) if field else 0


def iter_tar(data: bytes, *, checksums: bool = False) -> Iterator[tuple[str, bytes]]:
    """`(name, content)` of each regular member of an in-memory tar, in order.

    Python's `tarfile` (and so WebDataset's `tar_file_iterator`) spends ~50 us per member
    building TarInfo objects; this walks the 512-byte headers directly (ustar, GNU and the
    PAX `path` records `tar_bytes` writes for long names), about 10x faster, which matters
    when a ten-crop shard has 20 members per source image. Every header must carry the ustar
    magic; `checksums` also checks each header's checksum (costs 2/3 of the time; the loader
    leaves it to `verify_shards`). ValueError on a truncated or corrupt archive (including a
    0-byte file).
    """
    view, n, off, long_name = memoryview(data), len(data), 0, None
    while True:
        if off + _BLOCK > n:
            raise ValueError(f"truncated tar: no end-of-archive block after byte {off}")
        header = data[off : off + _BLOCK]
        if header == _ZERO_BLOCK:
            return
        if header[257:262] != b"ustar" or (
            checksums and _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:])
        ):
            raise ValueError(f"corrupt tar header at byte {off}")
        size, kind = _octal(header[124:136]), header[156:157]
        start = off + _BLOCK
        if start + size > n:
            raise ValueError(f"truncated tar: member at byte {off} needs {size} bytes")
        off = start + -(-size // _BLOCK) * _BLOCK
        if kind in (b"x", b"L"):  # PAX extended header / GNU long name for the next member
            long_name = _long_name(bytes(view[start : start + size]), kind)
            continue
        if kind not in (b"0", b"\0"):
            long_name = None
            continue
        name = long_name
        if name is None:
            name = header[:100].rstrip(b"\0").decode()
            prefix = header[345:500].rstrip(b"\0")
            if prefix:
                name = prefix.decode() + "/" + name
        long_name = None
        yield name, data[start : start + size]


def _long_name(payload: bytes, kind: bytes) -> str | None:
    if kind == b"L":
        return payload.rstrip(b"\0").decode()
    # PAX records: "<len> <key>=<value>\n"
    pos = 0
    while pos < len(payload):
        length = int(payload[pos : payload.index(b" ", pos)])
        record = payload[pos : pos + length]
        key, _, value = record[record.index(b" ") + 1 : -1].partition(b"=")
        if key == b"path":
            return value.decode()
        pos += length
    return None


def iter_samples(data: bytes) -> Iterator[dict[str, Any]]:
    """WebDataset samples of an in-memory tar: consecutive members sharing a key (the name up
    to the first dot of its last path component) become one dict `{"__key__": key,
    "<ext>": bytes, ...}`, as WebDataset's `group_by_keys` makes them."""
    sample: dict[str, Any] | None = None
    for name, content in iter_tar(data):
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        if dot < 0:
            continue
        key, ext = name[:dot], name[dot + 1 :]
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key}
        sample[ext] = content
    if sample is not None:
        yield sample


# ------------------------------------------------------------------------------------------
# the command that re-creates a part
# ------------------------------------------------------------------------------------------


def recreate_command(
    directory: str | os.PathLike, tokenize: dict | None, parts: Sequence[int]
) -> str:
    """The `rar tokenize` command line that re-creates `parts` of a shard directory.

    `tokenize` is the manifest's `tokenize` block (image folder, tokenizer file, crop, ...);
    unknown values are left as `<...>` placeholders for the user to fill in.
    """
    t = tokenize or {}
    part_list = ",".join(str(p) for p in parts)
    return (
        f"rar tokenize --images {t.get('image_dir') or '<IMAGE_DIR>'} --out {directory} "
        f"--tokenizer {t.get('tokenizer_path') or '<TOKENIZER>'} --crop {t.get('crop', '<CROP>')} "
        f"--images-per-part {t.get('images_per_part', '<N>')} "
        f"--shuffle-seed {t.get('shuffle_seed', 0)} --parts {part_list}"
    )


def shard_problem_message(directory: Path, name: str, problem: str, manifest: dict | None) -> str:
    """One-line error for a bad shard: what is wrong and how to re-create it."""
    part = None
    if manifest is not None:
        part = next((s["part"] for s in manifest.get("shards", []) if s["name"] == name), None)
    how = (
        f"re-create it with: {recreate_command(directory, manifest.get('tokenize'), [part])}"
        if manifest is not None and part is not None
        else "re-create it with `rar tokenize ... --parts <its part number>`"
    )
    return f"shard {directory / name}: {problem}; {how}"


# ------------------------------------------------------------------------------------------
# manifest
# ------------------------------------------------------------------------------------------


# What readers rely on (rar.data.loader, verify_shards, rar.training.loop's data check), as
# rar.data.tokenize.merge_parts writes it: key -> type, for the manifest and each shard entry.
_MANIFEST_KEYS = {
    "shards": list,
    "num_samples": int,
    "num_source_images": int,
    "num_classes": int,
    "samples_per_image": int,
    "tokens_per_sample": int,
    "tokenizer": dict,
}
_SHARD_KEYS = {"name": str, "part": int, "num_samples": int, "size": int, "sha256": str}
_REMAKE = (
    "rerun the `rar tokenize` command that made the directory: finished parts are skipped and "
    "the merge step writes the manifest again"
)


def manifest_problem(manifest: Any) -> str | None:
    """What is wrong with the shape of a parsed manifest ("key 'shards' is missing"), or None."""
    if not isinstance(manifest, dict):
        return f"expected a JSON object, found {type(manifest).__name__}"
    if manifest.get("format") != FORMAT:
        return f"unknown format {manifest.get('format')!r}, expected {FORMAT}"
    for where, entry, keys in [
        ("", manifest, _MANIFEST_KEYS),
        *((f"shards[{i}] ", s, _SHARD_KEYS) for i, s in enumerate(manifest.get("shards", []))),
    ]:
        if not isinstance(entry, dict):
            return f"{where}expected a JSON object, found {type(entry).__name__}"
        for key, kind in keys.items():
            if key not in entry:
                return f"{where}key {key!r} is missing"
            value = entry[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                return f"{where}key {key!r} must be {_JSON_TYPES[kind]}, found {value!r}"
    return None


_JSON_TYPES = {list: "a list", int: "an integer", dict: "a JSON object", str: "a string"}


def load_manifest(directory: str | os.PathLike) -> dict:
    """Read `<directory>/manifest.json`; ShardError naming the file, the problem and the fix
    when it is absent, not JSON, or not the shape `merge_parts` writes."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise ShardError(
            f"{path} not found: tokenization of {directory} has not finished. Run (or rerun) "
            "`rar tokenize` for every part; the merge step writes the manifest when all exist"
        )
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as err:  # ValueError: not JSON (rar.files.read_json)
        raise ShardError(f"{path}: not readable JSON ({err}); {_REMAKE}") from None
    problem = manifest_problem(manifest)
    if problem is not None:
        raise ShardError(f"{path}: {problem}; {_REMAKE}")
    return manifest


def count_tar_samples(path: str | os.PathLike) -> int:
    """Number of `*.tokens.npy` members of a tar; ValueError for truncated / corrupt files."""
    with open(path, "rb") as f:
        data = f.read()
    return sum(name.endswith(".tokens.npy") for name, _ in iter_tar(data, checksums=True))


@dataclass
class VerifyReport:
    """Result of `verify_shards`: `problems` holds one line per bad shard (empty when ok)."""

    directory: str
    num_shards: int = 0
    num_samples: int = 0
    num_source_images: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return (
                f"{self.directory}: OK, {self.num_shards} shards, {self.num_samples} samples "
                f"from {self.num_source_images} source images"
            )
        lines = [f"{self.directory}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def verify_shards(
    directory: str | os.PathLike, *, check_sha256: bool = True, count_samples: bool = True
) -> VerifyReport:
    """Check a shard directory against its manifest: every shard exists, has the recorded
    size and sha256, and holds the recorded number of samples. Never raises for bad shards:
    the report lists them (each line names the shard and the command that re-creates it)."""
    directory = Path(directory)
    report = VerifyReport(directory=str(directory))
    try:
        manifest = load_manifest(directory)
    except (ShardError, json.JSONDecodeError) as err:
        report.problems.append(str(err))
        return report
    report.num_shards = len(manifest["shards"])
    report.num_samples = manifest["num_samples"]
    report.num_source_images = manifest["num_source_images"]
    for entry in manifest["shards"]:
        name, path = entry["name"], directory / entry["name"]

        def bad(problem: str, name: str = name) -> None:
            report.problems.append(shard_problem_message(directory, name, problem, manifest))

        if not path.exists():
            bad("missing")
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            bad(f"size {size} bytes, manifest says {entry['size']} (truncated or replaced)")
            continue
        if check_sha256 and sha256_file(path) != entry["sha256"]:
            bad("sha256 differs from the manifest (corrupt)")
            continue
        if count_samples:
            try:
                n = count_tar_samples(path)
            except (ValueError, OSError, UnicodeDecodeError) as err:
                bad(f"unreadable tar ({err})")
                continue
            if n != entry["num_samples"]:
                bad(f"{n} samples, manifest says {entry['num_samples']}")
    return report
