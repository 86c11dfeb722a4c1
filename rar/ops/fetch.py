"""`rar fetch`: download what a study needs into resources/, resumable and verified.

What to fetch comes from `rar.experiments.resources` (the one registry that `rar preflight` checks
too): the released RAR generators and MaskGIT-VQGAN tokenizer from the Hugging Face Hub, torch-
fidelity's Inception weights and ADM's reference batch over plain HTTPS.

- The Hub's files are located with its client (`huggingface_hub.hf_hub_url` and
  `get_hf_file_metadata`: the resolve URL at `$HF_ENDPOINT`, the redirect to its storage, the
  size and the LFS sha256). The bytes are then fetched by `download` below, not by
  `hf_hub_download`: that one (huggingface_hub 2.x) deletes a partial file when a transfer
  fails, and a 6 GB XXL checkpoint over a flaky link must resume.
- `download` writes `<dest>.part`, resumes it with an HTTP Range request, shows a progress
  bar, and renames it to `<dest>` only after the size and the sha256 (the Hub's LFS hash, or
  the published prefix of the Inception weights' hash) match; ADM's batch is checked for its
  arrays and shapes (`rar.experiments.resources.adm_reference_problems`). A file that does not
  verify is deleted with a message naming it; an interrupted one is kept for the next run.
- Offline, it fails at once (a connect timeout of a few seconds per host, or RAR_OFFLINE=1 /
  HF_HUB_OFFLINE=1), listing every missing file, its URL and where to put it.

Torch-free.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rar.experiments.resources import (
    RESOURCES,
    Needed,
    adm_reference_problems,
    describe,
    npz_arrays,
    study_resources,
)

CHUNK = 1 << 20
USER_AGENT = "rar-pipeline (rar fetch)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FetchError(OSError):
    """A download that failed or did not verify; the message names the file and the URL."""


# ##########################################################################################
# One file over HTTP: resumable, verified
# ##########################################################################################


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _total_size(response: http.client.HTTPResponse, have: int) -> int | None:
    """The whole file's size: from Content-Range (a 206 answer) or Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _transfer(url: str, part: Path, *, timeout: float, progress: bool, label: str) -> int | None:
    """Append the rest of `url` to `part` (a Range request from its current size); return the
    file's total size as the server states it. Raises OSError / HTTPException when cut."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after `have`: the part is complete
            return have
        raise
    with response:
        if have and response.status != 206:  # the server ignored the range: start again
            have = 0
        total = _total_size(response, have)
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:
        raise http.client.IncompleteRead(b"", total - got)
    return total


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 24):
            digest.update(data)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part` if an earlier attempt was cut.

    size / sha256 / sha256_prefix: what the bytes must be (any that is given is checked);
        the server's stated size is checked in any case.
    retries: transfers that break off are resumed this many times before giving up (the
        part stays for the next call).
    Raises FetchError naming the file and the URL.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if size is not None and part.exists() and part.stat().st_size > size:
        part.unlink()  # longer than the file can be: not a prefix of it
    total = None
    for attempt in range(retries + 1):
        try:
            total = _transfer(url, part, timeout=timeout, progress=progress, label=dest.name)
            break
        except urllib.error.HTTPError as err:
            raise FetchError(f"{dest}: {url} answered HTTP {err.code} ({err.reason})") from None
        except (OSError, http.client.HTTPException) as err:
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise FetchError(
                    f"{dest}: the transfer from {url} broke off after {have:,} bytes "
                    f"({type(err).__name__}: {err}); {part} is kept: run `rar fetch` again to "
                    "resume it"
                ) from None
            time.sleep(min(2.0**attempt, 10.0))
    got = part.stat().st_size
    problems = []
    for want in (size, total):
        if want is not None and got != want:
            problems.append(f"{got:,} bytes, expected {want:,}")
            break
    if not problems and (sha256 or sha256_prefix):
        digest = sha256_of(part)
        if sha256 and digest != sha256:
            problems.append(f"sha256 {digest}, expected {sha256}")
        if sha256_prefix and not digest.startswith(sha256_prefix):
            problems.append(f"sha256 {digest[:16]}..., expected it to start with {sha256_prefix}")
    if problems:
        part.unlink()
        raise FetchError(
            f"{dest}: the file from {url} does not verify ({'; '.join(problems)}); it was "
            "deleted: run `rar fetch` again, or download it by hand"
        )
    os.replace(part, dest)
    return dest


# ##########################################################################################
# A study's resources
# ##########################################################################################


@dataclass(frozen=True)
class Item:
    """One file to fetch: the registry entry, its destination, the URL it comes from."""

    needed: Needed
    dest: Path
    url: str


def _offline_reason() -> str | None:
    for var in ("RAR_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "") not in ("", "0"):
            return f"{var}={os.environ[var]}"
    return None


def unreachable_hosts(urls: list[str], *, timeout: float) -> dict[str, str]:
    """{host:port: why} for each host of `urls` that does not accept a TCP connection within
    `timeout` seconds (an empty dict: all reachable)."""
    down = {}
    for url in dict.fromkeys(urls):
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        where = f"{parts.hostname}:{port}"
        if where in down:
            continue
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
        except OSError as err:
            down[where] = str(err) or type(err).__name__
    return down


def plan(
    config: dict,
    *,
    root: str | os.PathLike = ".",
    only: list[str] | None = None,
    endpoint: str | None = None,
    mirror: str | None = None,
) -> list[Item]:
    """The study's resources (`rar.experiments.resources.study_resources`), restricted to `only`
    (registry names), with their destinations under `root` and their URLs."""
    needed = study_resources(config)
    if only:
        unknown = sorted(set(only) - {n.resource.name for n in needed})
        if unknown:
            names = ", ".join(n.resource.name for n in needed) or "none"
            raise ValueError(
                f"--only {', '.join(unknown)}: not a resource of this study (it names: {names}; "
                f"the registry knows: {', '.join(RESOURCES)})"
            )
        needed = [n for n in needed if n.resource.name in only]
    return [
        Item(n, Path(root) / n.path, n.resource.source_url(endpoint=endpoint, mirror=mirror))
        for n in needed
    ]


def check_local(item: Item) -> str | None:
    """What is wrong with a file already at `item.dest`, from what can be checked without the
    network (None: nothing found). The Hub's files are checked in depth by `rar preflight`."""
    r, path = item.needed.resource, item.dest
    if path.stat().st_size == 0:
        return "it is empty"
    if r.kind == "inception" and r.sha256_prefix:
        digest = sha256_of(path)
        if not digest.startswith(r.sha256_prefix):
            return f"its sha256 starts with {digest[:8]}, not {r.sha256_prefix}"
    if r.kind == "adm_reference":
        try:
            problems = adm_reference_problems(npz_arrays(path), r.image_size)
        except ValueError as err:
            return str(err)
        if problems:
            return "; ".join(problems)
    return None


def _hub_source(item: Item, *, timeout: float) -> tuple[str, int | None, str | None]:
    """(download URL, size, sha256) of a Hub file, from its metadata (a HEAD request)."""
    from huggingface_hub import get_hf_file_metadata

    try:
        meta = get_hf_file_metadata(item.url, timeout=timeout)
    except Exception as err:  # the client's HTTP, offline and not-found errors
        raise FetchError(f"{item.dest}: the Hub has no {item.url} ({err})") from None
    etag = (meta.etag or "").lower()
    return meta.location or item.url, meta.size, etag if _SHA256.match(etag) else None


def fetch(
    config: dict,
    *,
    root: str | os.PathLike = ".",
    only: list[str] | None = None,
    endpoint: str | None = None,
    mirror: str | None = None,
    connect_timeout: float = 5.0,
    timeout: float = 60.0,
    retries: int = 3,
    progress: bool = True,
) -> list[dict]:
    """Fetch every resource of the study (`plan`) that is not there yet; one record per file:
    {"name", "path", "url", "status": "present" | "downloaded", "sha256"?}.

    A present file that fails the local checks (`check_local`) is an error (delete it to fetch
    it again). Offline (a host that does not answer within `connect_timeout`), raises
    FetchError at once, listing every file to bring by hand. Every other failure is a
    FetchError naming the file; the files fetched before it stay.
    """
    items = plan(config, root=root, only=only, endpoint=endpoint, mirror=mirror)
    records, todo = [], []
    for item in items:
        if item.dest.is_file():
            problem = check_local(item)
            if problem:
                raise FetchError(
                    f"{item.dest} is there but is not {item.needed.resource.what}: {problem}; "
                    f"delete it and run `rar fetch` again (config key {item.needed.key})"
                )
            records.append({**_record(item), "status": "present"})
        else:
            todo.append(item)
    if not todo:
        return records
    why = _offline_reason()
    down = {} if why else unreachable_hosts([i.url for i in todo], timeout=connect_timeout)
    if why or down:
        reason = why or ", ".join(f"cannot reach {h} ({e})" for h, e in down.items())
        lines = [
            f"offline ({reason}). On a machine with internet, download these files and put "
            "each where the config says:"
        ]
        lines += [f"  {describe(i.needed, endpoint=endpoint, mirror=mirror)}" for i in todo]
        raise FetchError("\n".join(lines))
    for item in todo:
        r = item.needed.resource
        url, size, sha256 = item.url, None, None
        if r.hf_repo:
            url, size, sha256 = _hub_source(item, timeout=timeout)
        print(f"fetching {item.dest} from {item.url}", flush=True)
        download(
            url,
            item.dest,
            size=size,
            sha256=sha256,
            sha256_prefix=r.sha256_prefix,
            timeout=timeout,
            retries=retries,
            progress=progress,
        )
        problem = check_local(item)
        if problem:
            item.dest.unlink()
            raise FetchError(
                f"{item.dest}: the file from {item.url} is not {r.what}: {problem}; it was deleted"
            )
        if sha256:
            verified = f"sha256 {sha256[:16]}... as the Hub states"
        elif r.sha256_prefix:
            verified = f"sha256 starts with {r.sha256_prefix} as published"
        else:
            verified = "size as the server states" + (
                ", arrays and shapes" if r.kind == "adm_reference" else ""
            )
        print(
            f"  {item.dest}: {item.dest.stat().st_size:,} bytes; verified: {verified}", flush=True
        )
        records.append({**_record(item), "status": "downloaded", "sha256": sha256})
    return records


def _record(item: Item) -> dict:
    return {
        "name": item.needed.resource.name,
        "path": str(item.dest),
        "url": item.url,
        "key": item.needed.key,
    }
