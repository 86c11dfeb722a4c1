"""Data stage: crops, decoding, tokenize -> shards (resumable, deterministic), loader, checks."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rar.data.images import (
    CROP_MODES,
    CROPS_PER_IMAGE,
    SourceImage,
    center_crop_arr,
    center_crop_plan,
    list_images,
    load_rgb,
    make_crops,
    tencrop_boxes,
)
from rar.data.loader import TokenShards, benchmark_loader, epoch_segments, token_loader
from rar.data.shards import ShardError, load_manifest, tar_bytes, verify_shards
from rar.data.tokenize import (
    _batches_by_part,
    _members,
    parse_parts,
    plan_parts,
    select_parts,
    tokenize_images,
)

NUM_READABLE = 20  # divisible by 2 ranks x 2 workers: exactly-once holds without padding
IMAGES_PER_PART = 4  # 21 files -> 6 parts (the last has one file)

# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    """A small randomly initialised MaskGIT-VQGAN: 64x64 -> 4x4 grid, 64 codes."""
    from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

    torch.manual_seed(0)
    cfg = MaskGITVQGANConfig(hidden_channels=32, image_size=64, z_channels=32, codebook_size=64)
    return MaskGITVQGAN(cfg).eval()


def _photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth random colours (upsampled noise), so crops differ and codes vary.
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """ImageNet train layout: 3 classes, 20 readable files (RGB / CMYK / grayscale JPEG, RGBA
    and palette PNG, a dotted file name) and one garbage `.JPEG`."""
    root = tmp_path_factory.mktemp("imagenet") / "train"
    sizes = [(80, 60), (60, 90), (64, 64), (130, 70), (50, 75), (100, 100), (71, 65)]
    i = 0
    for wnid, n in (("n02000000", 7), ("n01000000", 7), ("n03000000", 6)):
        (root / wnid).mkdir(parents=True)
        for j in range(n):
            img = _photo(*sizes[(i + j) % len(sizes)], seed=i)
            i += 1
            if j == 0:
                img.convert("CMYK").save(root / wnid / f"{wnid}_{j}.JPEG")
            elif j == 1:
                img.convert("L").save(root / wnid / f"{wnid}_{j}.JPEG")
            elif j == 2:
                img.convert("RGBA").save(root / wnid / f"{wnid}_{j}.png")
            elif j == 3:
                img.convert("P").save(root / wnid / f"{wnid}.v{j}.PNG")
            else:
                img.save(root / wnid / f"{wnid}_{j}.JPEG", quality=90)
    (root / "n01000000" / "x.JPEG").write_bytes(b"this is not a jpeg" * 10)
    (root / "n01000000" / "notes.txt").write_text("not an image, not listed")
    return root


def _tokenize(image_dir, out, tokenizer, **kw):
    kw.setdefault("crop", "center+flip")
    kw.setdefault("images_per_part", IMAGES_PER_PART)
    return tokenize_images(
        image_dir, out, tokenizer=tokenizer, num_workers=0, progress=False, batch_size=4, **kw
    )


@pytest.fixture(scope="module")
def shards(image_dir, tokenizer, tmp_path_factory) -> Path:
    """An uninterrupted center+flip tokenization of `image_dir`."""
    out = tmp_path_factory.mktemp("shards") / "demo-tiny"
    summary = _tokenize(image_dir, out, tokenizer)
    assert summary["manifest"] is not None
    return out


def _dir_bytes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


# ------------------------------------------------------------------------------------------
# crop geometry
# ------------------------------------------------------------------------------------------


def test_center_crop_plan_hand_computed():
    # 500x375 to 256: short side 375 < 512, no halving; scale 256/375 -> (341.33, 256) ->
    # round -> (341, 256); left = (341 - 256) // 2 = 42.
    p = center_crop_plan(500, 375, 256)
    assert p.downsampled == (500, 375)
    assert p.resized == (341, 256)
    assert p.box == (42, 0, 298, 256)
    # To 128: 375 >= 256 -> one halving to (250, 187); scale 128/187 -> (171.12, 128) -> 171;
    # left = (171 - 128) // 2 = 21.
    p = center_crop_plan(500, 375, 128)
    assert p.downsampled == (250, 187)
    assert p.resized == (171, 128)
    assert p.box == (21, 0, 149, 128)
    # Portrait 375x500 to 64: halvings 375 -> 187 -> 93 (93 < 128 stops); 64/93 * 250 = 172.04.
    p = center_crop_plan(375, 500, 64)
    assert p.downsampled == (93, 125)
    assert p.resized == (64, 86)
    assert p.box == (0, 11, 64, 75)


def _adm_reference(pil_image, image_size):
    # guided-diffusion's center_crop_arr, as published, as the oracle.
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


@pytest.mark.parametrize(("w", "h", "size"), [(500, 375, 64), (375, 500, 32), (31, 90, 64)])
def test_center_crop_arr_matches_adm(w, h, size):
    img = _photo(w, h, seed=1)
    out = center_crop_arr(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _adm_reference(img, size))


def test_tencrop_boxes_hand_computed():
    assert int(256 * 1.1) == 281  # official script: crop_size = int(img_size * 1.1)
    assert tencrop_boxes(281, 256) == [
        (0, 0, 256, 256),
        (25, 0, 281, 256),
        (0, 25, 256, 281),
        (25, 25, 281, 281),
        (12, 12, 268, 268),  # round(12.5) = 12 (torchvision's center_crop)
    ]
    assert tencrop_boxes(35, 32)[4] == (2, 2, 34, 34)  # round(1.5) = 2, not floor


def test_make_crops_match_torchvision_tencrop():
    from torchvision import transforms

    img = _photo(120, 90, seed=2)
    ours = make_crops(img, "tencrop", 32)
    assert ours.shape == (10, 32, 32, 3)
    big = Image.fromarray(center_crop_arr(img, int(32 * 1.1)))
    theirs = np.stack([np.asarray(c) for c in transforms.TenCrop(32)(big)])
    np.testing.assert_array_equal(ours, theirs)
    flip = make_crops(img, "center+flip", 32)
    np.testing.assert_array_equal(flip[1], flip[0][:, ::-1])
    assert make_crops(img, "center", 32).shape == (1, 32, 32, 3)
    assert {m: make_crops(img, m, 16).shape[0] for m in CROP_MODES} == CROPS_PER_IMAGE


# ------------------------------------------------------------------------------------------
# listing and decoding
# ------------------------------------------------------------------------------------------


def test_list_images_layout(image_dir):
    classes, images = list_images(image_dir)
    assert classes == ["n01000000", "n02000000", "n03000000"]  # sorted wnids = class ids
    assert len(images) == NUM_READABLE + 1  # the .txt file is not listed
    assert all("." not in s.key for s in images)
    assert len({s.key for s in images}) == len(images)
    by_path = {s.relpath: s for s in images}
    assert by_path["n02000000/n02000000_0.JPEG"].label == 1
    assert by_path["n01000000/n01000000.v3.PNG"].key == "n01000000_n01000000_v3"


def test_decode_cmyk_grayscale_and_garbage(image_dir):
    for name in ("n02000000_0.JPEG", "n02000000_1.JPEG", "n02000000_2.png"):
        img = load_rgb(image_dir / "n02000000" / name)
        assert img.mode == "RGB"
    assert Image.open(image_dir / "n02000000" / "n02000000_0.JPEG").mode == "CMYK"
    assert Image.open(image_dir / "n02000000" / "n02000000_1.JPEG").mode == "L"
    with pytest.raises(OSError):
        load_rgb(image_dir / "n01000000" / "x.JPEG")


# ------------------------------------------------------------------------------------------
# parts
# ------------------------------------------------------------------------------------------


def test_parts_selection():
    plan = plan_parts(21, images_per_part=4, shuffle_seed=0)
    assert [len(p) for p in plan] == [4, 4, 4, 4, 4, 1]
    assert sorted(np.concatenate(plan).tolist()) == list(range(21))
    assert select_parts(6, job_index=1, num_jobs=4) == [1, 5]
    assert select_parts(6, parts=[3, 1, 3]) == [1, 3]
    assert select_parts(6) == list(range(6))
    assert parse_parts("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="out of range"):
        select_parts(6, parts=[6])


# ------------------------------------------------------------------------------------------
# tokenize
# ------------------------------------------------------------------------------------------


def test_tokenize_manifest_and_shards(shards, tokenizer, image_dir):
    m = load_manifest(shards)
    assert m["num_shards"] == 6 and len(m["shards"]) == 6
    assert m["num_files"] == NUM_READABLE + 1
    assert m["num_source_images"] == NUM_READABLE
    assert m["num_unreadable"] == 1 and m["unreadable"] == ["n01000000/x.JPEG"]
    assert m["samples_per_image"] == 2 and m["num_samples"] == 2 * NUM_READABLE
    assert m["classes"] == ["n01000000", "n02000000", "n03000000"]
    assert m["tokenizer"] == {
        "identity": tokenizer.identity(),
        "codebook_size": 64,
        "grid": 4,
        "image_size": 64,
    }
    assert m["crop"] == "center+flip" and m["tokens_per_sample"] == 16
    assert sum(s["num_samples"] for s in m["shards"]) == m["num_samples"]
    assert verify_shards(shards).ok

    # One shard, read back with plain tarfile: fixed headers, WebDataset naming.
    with tarfile.open(shards / "train-000000.tar") as tar:
        members = tar.getmembers()
        assert {(t.mtime, t.uid, t.gid, t.uname, t.mode) for t in members} == {(0, 0, 0, "", 0o644)}
        names = [t.name for t in members]
        keys = [n.split(".", 1)[0] for n in names[::2]]
        assert all(n.endswith((".cls", ".tokens.npy")) for n in names)
        assert keys[0].endswith("_0") and keys[1].endswith("_1")  # crop then its mirror
        arr = np.load(io.BytesIO(tar.extractfile(names[1]).read()))
        assert arr.dtype == np.uint16 and arr.shape == (16,) and arr.max() < 64
        label = int(tar.extractfile(names[0]).read())
    # The tokens are the tokenizer's codes for the ADM crop of that file.
    _, images = list_images(image_dir)
    src = next(s for s in images if s.key == keys[0].rsplit("_", 1)[0])
    assert label == src.label
    crop = make_crops(load_rgb(image_dir / src.relpath), "center", 64)
    x = torch.from_numpy(crop.copy()).permute(0, 3, 1, 2).float() / 255.0
    np.testing.assert_array_equal(tokenizer.encode(x)[0].numpy(), arr)


def test_tar_bytes_deterministic(monkeypatch):
    """The same members give the same bytes whenever and by whomever they are written: every
    header field that could carry the clock, the user or the umask is fixed."""
    import time

    long_name = "n" * 120 + ".tokens.npy"  # past ustar's 100 characters: a PAX header
    members = [("a_0.cls", b"3"), ("a_0.tokens.npy", b"\x00" * 40), (long_name, b"x")]
    first = tar_bytes(members)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    assert tar_bytes(members) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        infos = tar.getmembers()
        assert [(i.name, tar.extractfile(i).read()) for i in infos] == members  # in order
    for i in infos:
        assert (i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) == (0, 0, 0, "", "", 0o644)
        assert i.type == tarfile.REGTYPE and "mtime" not in i.pax_headers


def test_resumed_tokenization_is_byte_identical(image_dir, tokenizer, shards, tmp_path):
    out = tmp_path / "resumed"
    first = _tokenize(image_dir, out, tokenizer, parts=[0, 1])
    assert first["parts_run"] == [0, 1] and first["manifest"] is None  # not all parts yet
    assert not (out / "manifest.json").exists()
    # A killed job's leftovers: a temporary file must not count as a shard.
    (out / ".train-000002.tar.tmp-1-dead").write_bytes(b"partial")
    second = _tokenize(image_dir, out, tokenizer)
    assert second["parts_skipped"] == [0, 1] and second["parts_run"] == [2, 3, 4, 5]
    (out / ".train-000002.tar.tmp-1-dead").unlink()
    assert _dir_bytes(out) == _dir_bytes(shards)

    # A damaged shard (same size, flipped byte) is redone on rerun, again byte-identical.
    shard = out / "train-000003.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    third = _tokenize(image_dir, out, tokenizer, job_index=1, num_jobs=2)
    assert third["parts_run"] == [3] and third["parts_skipped"] == [1, 5]
    assert _dir_bytes(out) == _dir_bytes(shards)


# ------------------------------------------------------------------------------------------
# loader
# ------------------------------------------------------------------------------------------


def _image_of(key: str) -> str:
    return key.rsplit("_", 1)[0]


def _rank_batches(shards, *, rank, world_size, epoch, num_workers=2, **kw):
    ds = TokenShards(
        shards,
        batch_size=3,
        seed=7,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=8,
        with_keys=True,
        **kw,
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)
    return ds, list(loader)


def test_loader_every_image_once_per_epoch_2_ranks_2_workers(shards):
    m = load_manifest(shards)
    all_images = set()
    for s in m["shards"]:
        with tarfile.open(shards / s["name"]) as tar:
            all_images |= {_image_of(t.name.split(".")[0]) for t in tar}
    seen: list[str] = []
    counts = []
    for rank in range(2):
        ds, batches = _rank_batches(shards, rank=rank, world_size=2, epoch=0)
        counts.append(len(batches))
        assert len(batches) == ds.batches_per_rank(2)
        for tokens, labels, keys in batches:
            assert tokens.dtype == torch.int64 and tokens.shape == (len(keys), 16)
            assert labels.dtype == torch.int64 and labels.shape == (len(keys),)
            assert int(tokens.max()) < 64 and int(labels.max()) < 3
            seen += [_image_of(k) for k in keys]
    assert counts[0] == counts[1]  # equal batch counts on every rank
    assert Counter(seen) == Counter(all_images)  # each source image exactly once
    assert len(seen) == NUM_READABLE


def test_loader_resume_replays_same_order(shards):
    def flat(batches):
        return [
            (k, t.tolist(), int(y))
            for tk, lb, ks in batches
            for k, t, y in zip(ks, tk, lb, strict=True)
        ]

    _, epoch1 = _rank_batches(shards, rank=1, world_size=2, epoch=1)
    ds, _ = _rank_batches(shards, rank=1, world_size=2, epoch=0, num_workers=0)
    ds.set_epoch(1)  # the same dataset object, moved on to epoch 1 ...
    again = list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))
    assert flat(again) == flat(epoch1)  # ... gives exactly a fresh epoch-1 loader's batches
    _, epoch2 = _rank_batches(shards, rank=1, world_size=2, epoch=2)
    assert flat(epoch2) != flat(epoch1)  # and the next epoch is shuffled differently


def _units_keys(shards, *, world_size, num_workers, **kw):
    out = []
    for rank in range(world_size):
        ds = TokenShards(
            shards, batch_size=4, rank=rank, world_size=world_size, with_keys=True, **kw
        )
        for w in range(num_workers):
            unit = [k for _, _, ks in ds.iter_unit(worker=w, num_workers=num_workers) for k in ks]
            out.append(unit)
    return out


def test_loader_fewer_shards_than_units(shards):
    # 6 shards (one holds a single image), 4 ranks x 3 workers = 12 units.
    units = _units_keys(shards, world_size=4, num_workers=3, crops="all")
    assert all(len(u) == len(units[0]) for u in units)  # 40 samples -> 4 per unit, padded
    seen = Counter(k for u in units for k in u)
    assert len(seen) == 2 * NUM_READABLE and sum(seen.values()) == 12 * 4  # 8 repeats
    # tail="drop": 40 // 12 = 3 per unit, never a repeat.
    units = _units_keys(shards, world_size=4, num_workers=3, crops="all", tail="drop")
    seen = Counter(k for u in units for k in u)
    assert sum(seen.values()) == 36 and max(seen.values()) == 1
    # crops="random": items are images; 20 images over 12 units -> 2 each.
    units = _units_keys(shards, world_size=4, num_workers=3)
    assert {len(u) for u in units} == {2}
    assert len({_image_of(k) for u in units for k in u}) == NUM_READABLE  # all, 4 repeats


@pytest.mark.parametrize("tail", ["pad", "drop"])
def test_epoch_segments_cover_the_stream(tail):
    sizes = [5, 0, 3, 7, 1]  # a shard may be empty (all its files unreadable)
    for units in (1, 2, 3, 7, 16, 40):
        covered = Counter()
        for u in range(units):
            segs = epoch_segments(sizes, seed=1, epoch=3, unit=u, num_units=units, tail=tail)
            n = sum(b - a for _, a, b in segs)
            assert n == (-(-16 // units) if tail == "pad" else 16 // units)
            for s, a, b in segs:
                assert 0 <= a < b <= sizes[s]
                covered.update((s, i) for i in range(a, b))
        if tail == "drop":
            assert max(covered.values(), default=1) == 1
        else:
            assert len(covered) == 16  # every item at least once
    assert epoch_segments(sizes, seed=1, epoch=3, unit=0, num_units=2) == epoch_segments(
        sizes, seed=1, epoch=3, unit=0, num_units=2
    )


def test_benchmark_loader(shards):
    result = benchmark_loader(shards, batch_size=8, workers=0, seconds=0.3)
    assert result["samples_per_s"] > 0 and result["batches"] > 0


def test_token_loader_len(shards):
    loader = token_loader(shards, batch_size=3, num_workers=2, rank=0, world_size=2)
    assert len(loader) == len(list(loader)) == 2 * 2  # 5 images per worker -> 2 batches each


# ------------------------------------------------------------------------------------------
# corrupt shards
# ------------------------------------------------------------------------------------------


@pytest.fixture
def damaged(shards, tmp_path) -> Path:
    out = tmp_path / "damaged"
    shutil.copytree(shards, out)
    return out


def _expect_named(err: ShardError | str, shard: str, part: int):
    msg = str(err)
    assert shard in msg and "rar tokenize" in msg and f"--parts {part}" in msg


def test_zero_byte_shard(damaged):
    (damaged / "train-000002.tar").write_bytes(b"")
    with pytest.raises(ShardError) as err:
        TokenShards(damaged, batch_size=4)
    _expect_named(err.value, "train-000002.tar", 2)
    report = verify_shards(damaged)
    assert not report.ok and len(report.problems) == 1
    _expect_named(report.problems[0], "train-000002.tar", 2)


def test_truncated_shard_named_while_reading(damaged):
    path = damaged / "train-000004.tar"
    path.write_bytes(path.read_bytes()[:1536])
    ds = TokenShards(damaged, batch_size=4, verify="none", crops="all")
    with pytest.raises(ShardError) as err:
        for _ in ds.iter_unit(worker=0, num_workers=1):
            pass
    _expect_named(err.value, "train-000004.tar", 4)
    _expect_named(verify_shards(damaged).problems[0], "train-000004.tar", 4)


def test_wrong_checksum(damaged):
    path = damaged / "train-000001.tar"
    data = bytearray(path.read_bytes())
    data[600] ^= 0x01
    path.write_bytes(bytes(data))
    TokenShards(damaged, batch_size=4)  # same size: the cheap start-up check passes
    with pytest.raises(ShardError) as err:
        TokenShards(damaged, batch_size=4, verify="sha256")
    _expect_named(err.value, "train-000001.tar", 1)
    report = verify_shards(damaged)
    assert len(report.problems) == 1 and "sha256" in report.problems[0]


def test_missing_manifest(damaged):
    (damaged / "manifest.json").unlink()
    with pytest.raises(ShardError, match=r"manifest\.json not found"):
        TokenShards(damaged, batch_size=4)
    assert not verify_shards(damaged).ok


# ------------------------------------------------------------------------------------------
# tar format
# ------------------------------------------------------------------------------------------


def test_iter_tar_matches_tarfile_and_catches_corruption():
    from rar.data.shards import iter_samples, iter_tar

    long_key = "n0_" + "x" * 120  # > 100 characters: a PAX header carries the name
    members = [(f"{long_key}_0.cls", b"2"), (f"{long_key}_0.tokens.npy", b"\x01" * 37)]
    members += [("a_0.cls", b"1"), ("a_0.tokens.npy", b"")]
    data = tar_bytes(members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        ref = [(t.name, tar.extractfile(t).read()) for t in tar]
    assert ref == members
    assert list(iter_tar(data, checksums=True)) == members
    samples = list(iter_samples(data))
    assert [s["__key__"] for s in samples] == [f"{long_key}_0", "a_0"]
    assert samples[0]["cls"] == b"2" and samples[1]["tokens.npy"] == b""
    bad = bytearray(data)
    bad[1024 + 10] ^= 0x01  # a name byte of the second header
    with pytest.raises(ValueError, match="corrupt"):
        list(iter_tar(bytes(bad), checksums=True))
    for cut in (0, 100, 1536, 5632):  # 5632: all members, no end-of-archive blocks
        with pytest.raises(ValueError, match="truncated"):
            list(iter_tar(data[:cut]))


def test_shards_readable_by_webdataset(shards):
    import webdataset as wds

    ds = wds.WebDataset(str(shards / "train-000000.tar"), shardshuffle=False).decode()
    samples = list(ds)
    assert len(samples) == load_manifest(shards)["shards"][0]["num_samples"]
    assert samples[0]["tokens.npy"].dtype == np.uint16 and samples[0]["tokens.npy"].shape == (16,)
    assert isinstance(samples[0]["cls"], int)


def test_cli_verify_shards_exit_code(damaged, capsys):
    from rar.cli import main

    assert main(["verify-shards", str(damaged)]) == 0
    (damaged / "train-000003.tar").write_bytes(b"")
    assert main(["verify-shards", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert "train-000003.tar" in out and "--parts 3" in out


def test_verify_path_is_torch_free():
    import subprocess
    import sys

    code = "import sys, rar.data.shards; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_encode_batches_are_cut_at_part_boundaries():
    """A part's batches never depend on which other parts a job runs (byte-identical resume)."""
    batches, parts = _batches_by_part([5, 3], [7, 2], batch_size=2)
    assert batches == [[0, 1], [2, 3], [4], [5, 6], [7]] and parts == [7, 7, 7, 2, 2]
    assert _batches_by_part([3], [2], batch_size=2)[0] == [[0, 1], [2]]  # as when run alone


def test_tar_members_name_each_crop_of_each_image():
    sources = [SourceImage("n01/a.jpg", 0, "n01_a"), SourceImage("n02/b.jpg", 1, "n02_b")]
    ids = np.arange(4 * 3, dtype=np.uint16).reshape(4, 3)  # 2 images x 2 crops, 3 tokens
    members = dict(_members(sources, ids, 2, write_crop=True))
    assert list(members) == [
        f"{key}_{c}.{ext}"
        for key in ("n01_a", "n02_b")
        for c in (0, 1)
        for ext in ("cls", "crop", "tokens.npy")
    ]
    assert members["n02_b_0.cls"] == b"1" and members["n02_b_1.crop"] == b"1"
    assert np.load(io.BytesIO(members["n02_b_1.tokens.npy"])).tolist() == [9, 10, 11]
    assert len(_members(sources, ids, 2, write_crop=False)) == 8  # no .crop members
