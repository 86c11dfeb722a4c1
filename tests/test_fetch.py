"""`rar fetch` against a local HTTP server started here (never the internet).

The server plays the Hugging Face Hub (HEAD `/<repo>/resolve/<rev>/<file>` with the Hub's
headers, then a redirect to its storage) and the other hosts (`--mirror`), serves HTTP Range
requests, and can cut a transfer halfway or serve corrupt bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import rar.experiments.resources
from rar.cli import main
from rar.experiments import load_study
from rar.ops.fetch import FetchError, download, fetch, plan

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Server:
    """A threaded HTTP server on 127.0.0.1 over `files` ({url path: bytes})."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hub: dict[str, str] = {}  # resolve path -> storage path (the Hub's files)
        self.advertised: dict[str, str] = {}  # storage path -> the sha256 the Hub states
        self.cut_once: dict[str, int] = {}  # path -> bytes to send before dropping the line
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                path = self.path.split("?")[0]
                server.log.append((self.command, path, self.headers.get("Range")))
                if path in server.hub:  # the Hub: metadata, then its storage
                    storage = server.hub[path]
                    data = server.files[storage]
                    self.send_response(302)
                    # another origin, as the Hub's CDN: the client stops at this response
                    self.send_header("Location", f"{server.storage_url}{storage}")
                    self.send_header("X-Repo-Commit", COMMIT)
                    sha = server.advertised.get(storage) or hashlib.sha256(data).hexdigest()
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("ETag", '"abc"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in server.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files[path]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                cut = server.cut_once.pop(path, None)
                if cut is not None:  # promise everything, send a part, hang up
                    self.wfile.write(data[start : start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.storage_url = f"http://localhost:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add_hub_file(self, repo: str, filename: str, data: bytes) -> None:
        storage = f"/storage/{hashlib.sha256(data).hexdigest()}"
        self.files[storage] = data
        self.hub[f"/{repo}/resolve/main/{filename}"] = storage

    def gets(self, path_part: str) -> list[str | None]:
        return [r for m, p, r in self.log if m == "GET" and path_part in p]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def adm_batch(image_size: int = 256) -> bytes:
    """An .npz with ADM's arrays and shapes (2 images; zeros compress to almost nothing)."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        arr_0=np.zeros((2, image_size, image_size, 3), np.uint8),
        mu=np.zeros(2048),
        sigma=np.zeros((2048, 2048)),
    )
    return buf.getvalue()


@pytest.fixture
def paper(server, tmp_path, monkeypatch) -> tuple[Path, dict]:
    """The paper's config; the server holds a stand-in of every file it names (random bytes:
    fetch verifies bytes and hashes, `rar preflight` the state dicts' layout)."""
    rng = np.random.default_rng(0)
    files = {}
    for name, r in rar.experiments.resources.RESOURCES.items():
        if r.kind == "adm_reference":
            data = adm_batch(r.image_size)
        else:
            data = rng.bytes(150_000 + len(files))
        files[name] = data
        if r.hf_repo:
            server.add_hub_file(r.hf_repo, r.hf_filename, data)
        else:
            path = "/" + r.url.split("://", 1)[1].split("/", 1)[1]
            server.files[path] = data
    # No file of ours can have the Inception weights' published sha256 prefix: the test's
    # stand-in gets its own.
    inception = rar.experiments.resources.RESOURCES["inception"]
    prefix = hashlib.sha256(files["inception"]).hexdigest()[:8]
    monkeypatch.setitem(
        rar.experiments.resources.RESOURCES,
        "inception",
        dataclasses.replace(inception, sha256_prefix=prefix),
    )
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("RAR_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, files


def named(config: Path) -> dict:
    """The registry's files a study config names (`rar fetch` fetches these)."""
    needed = rar.experiments.resources.study_resources(yaml.safe_load(config.read_text()))
    return {n.resource.name: n.resource for n in needed}


def test_a_study_on_llamagen_vq16_fetches_its_tokenizer_from_the_hub(paper, server, tmp_path):
    path, files = paper
    config = yaml.safe_load(path.read_text())
    config["tokenizer"] = {"name": "llamagen_vq16", "weights": "resources/vq_ds16_c2i.pt"}
    config["tokenizer"] |= {"codebook_size": 16384, "grid": 16}
    path.write_text(yaml.safe_dump(config))
    assert "llamagen_vq16" in named(path) and "maskgit_vqgan" not in named(path)
    root = tmp_path / "root"
    argv = ["fetch", "--config", str(path), "--root", str(root), "--mirror", server.url]
    assert main([*argv, "--only", "llamagen_vq16"]) == 0
    got = (root / "resources/vq_ds16_c2i.pt").read_bytes()
    assert got == files["llamagen_vq16"]
    assert ("HEAD", "/FoundationVision/LlamaGen/resolve/main/vq_ds16_c2i.pt", None) in server.log


def test_fetch_downloads_and_verifies_every_file_of_the_paper_study(paper, server, tmp_path):
    path, files = paper
    root = tmp_path / "root"
    argv = ["fetch", "--config", str(path), "--root", str(root), "--mirror", server.url]
    assert main(argv) == 0
    for name, r in named(path).items():
        assert (root / "resources" / r.filename).read_bytes() == files[name], name
    assert not list((root / "resources").glob("*.part"))
    # the Hub's files came through its metadata and redirect to the storage
    assert server.gets("/storage/") and (
        "HEAD",
        "/yucornetto/RAR/resolve/main/rar_b.bin",
        None,
    ) in (server.log)
    # a second run finds everything there and downloads nothing
    server.log.clear()
    assert main(argv) == 0
    assert not [entry for entry in server.log if entry[0] == "GET"]


def test_a_cut_transfer_resumes_with_a_range_request(paper, server, tmp_path):
    path, files = paper
    config = load_study(yaml.safe_load(path.read_text())).config
    storage = server.hub["/yucornetto/RAR/resolve/main/rar_b.bin"]
    server.cut_once[storage] = 40_000
    with pytest.raises(FetchError, match=r"broke off after 40,000 bytes.*run `rar fetch` again"):
        fetch(config, root=tmp_path, only=["rar_b"], retries=0, progress=False)
    part = tmp_path / "resources/rar_b.bin.part"
    assert part.stat().st_size == 40_000 and not (tmp_path / "resources/rar_b.bin").exists()
    records = fetch(config, root=tmp_path, only=["rar_b"], progress=False)
    assert records[0]["status"] == "downloaded"
    assert server.gets(storage) == [None, "bytes=40000-"]  # the second GET resumed
    assert (tmp_path / "resources/rar_b.bin").read_bytes() == files["rar_b"]
    assert not part.exists()


def test_bytes_that_do_not_match_the_hubs_sha256_are_refused(paper, server, tmp_path):
    path, _ = paper
    config = load_study(yaml.safe_load(path.read_text())).config
    storage = server.hub["/fun-research/TiTok/resolve/main/maskgit-vqgan-imagenet-f16-256.bin"]
    server.advertised[storage] = "0" * 64  # the Hub says another file
    with pytest.raises(FetchError, match=r"maskgit.*does not verify \(sha256 [0-9a-f]{64}, "):
        fetch(config, root=tmp_path, only=["maskgit_vqgan"], progress=False)
    assert not list((tmp_path / "resources").iterdir())  # neither the file nor a .part


def test_inception_weights_are_checked_against_their_published_hash_prefix(
    paper, server, tmp_path, monkeypatch
):
    path, _ = paper
    config = load_study(yaml.safe_load(path.read_text())).config
    inception = rar.experiments.resources.RESOURCES["inception"]
    monkeypatch.setitem(
        rar.experiments.resources.RESOURCES,
        "inception",
        dataclasses.replace(inception, sha256_prefix="6726825d"),
    )
    with pytest.raises(FetchError, match="expected it to start with 6726825d"):
        fetch(config, root=tmp_path, only=["inception"], mirror=server.url, progress=False)


def test_a_stale_part_is_caught_by_the_hash_and_replaced(server, tmp_path):
    """A `.part` left by another file: resumed, it cannot verify, so it is deleted with a
    message, and the next call downloads the file whole. A part longer than the file is
    discarded before any request."""
    data = bytes(range(256)) * 100
    server.files["/plain.bin"] = data
    url, dest, sha = f"{server.url}/plain.bin", tmp_path / "plain.bin", hashlib.sha256(data)
    part = tmp_path / "plain.bin.part"
    part.write_bytes(b"x" * 500)
    with pytest.raises(FetchError, match="does not verify"):
        download(url, dest, sha256=sha.hexdigest(), progress=False)
    assert not part.exists() and not dest.exists()
    assert download(url, dest, sha256=sha.hexdigest(), progress=False).read_bytes() == data
    dest.unlink()
    part.write_bytes(b"x" * (len(data) + 1))
    assert download(url, dest, size=len(data), progress=False).read_bytes() == data
    assert server.gets("/plain.bin") == ["bytes=500-", None, None]


def test_offline_fails_at_once_listing_every_file(paper, tmp_path, monkeypatch, capsys):
    path, _ = paper
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    start = time.monotonic()
    argv = [
        "fetch",
        "--config",
        str(path),
        "--root",
        str(tmp_path),
        "--mirror",
        "http://127.0.0.1:9",
        "--connect-timeout",
        "2",
    ]
    assert main(argv) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert err.startswith("rar fetch: error: offline (cannot reach 127.0.0.1:9")
    for r in named(REPO / "config/config.yaml").values():
        assert f"resources/{r.filename} <- http://127.0.0.1:9/" in err, r.name
    assert "config key official.rar_xxl.checkpoint" in err
    monkeypatch.setenv("RAR_OFFLINE", "1")
    assert main(argv) == 2 and "offline (RAR_OFFLINE=1)" in capsys.readouterr().err


def test_list_names_each_file_its_url_and_destination(paper, tmp_path, capsys):
    path, _ = paper
    assert main(["fetch", "--config", str(path), "--root", str(tmp_path), "--list"]) == 0
    out = capsys.readouterr().out
    assert "maskgit_vqgan" in out and "/fun-research/TiTok/resolve/main/" in out
    assert "missing" in out
    with pytest.raises(ValueError, match="--only rar_q: not a resource of this study"):
        plan(load_study(yaml.safe_load(path.read_text())).config, only=["rar_q"])


def test_a_present_file_that_is_not_the_expected_thing_is_an_error(paper, tmp_path):
    path, _ = paper
    config = load_study(yaml.safe_load(path.read_text())).config
    bad = tmp_path / "resources/VIRTUAL_imagenet256_labeled.npz"
    bad.parent.mkdir()
    buf = io.BytesIO()
    np.savez(buf, arr_0=np.zeros((2, 64, 64, 3), np.uint8))
    bad.write_bytes(buf.getvalue())
    with pytest.raises(FetchError, match=r"is there but is not ADM's .*arr_0 has shape \(2, 64"):
        fetch(config, root=tmp_path, only=["adm_reference"], progress=False)


def test_the_supplementary_tables_fetch_their_own_files(paper):
    """The paper study names VQ-16 (table llamagen_vq's tokenizer) and ADM's 512 batch (table
    imagenet512's reference) beside its own, each the one table's."""
    path, _ = paper
    needed = rar.experiments.resources.study_resources(yaml.safe_load(path.read_text()))
    by_name = {n.resource.name: n for n in needed}
    assert by_name["llamagen_vq16"].table == "llamagen_vq"
    assert by_name["llamagen_vq16"].key == "tables.llamagen_vq.base.tokenizer.weights"
    assert by_name["adm_reference_512"].table == "imagenet512"
    assert by_name["adm_reference_512"].resource.image_size == 512
    assert by_name["maskgit_vqgan"].table is by_name["adm_reference"].table is None
