"""rar.model.checkpoint: one safe loader, one error type, messages that name the file."""

from __future__ import annotations

import os
import pickle
import traceback

import pytest
import torch

from rar.model.checkpoint import CheckpointError, CheckpointMissing, load_file

WHAT = "a test checkpoint"


class RunsCode:
    """Unpickling this calls `os.system` (that is what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Plain:
    """A harmless custom class: still not tensors, still refused."""


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.arange(4096.0).view(64, 64)}, "step": 3}, path)
    return path


def refused(path, match, **kwargs) -> CheckpointError:
    """The CheckpointError for `path`, checked for what every message must do: name the
    file and what it should be, and never pass on torch's advice to set weights_only=False
    (neither in the message nor anywhere in the printed traceback)."""
    with pytest.raises(CheckpointError, match=match) as info:
        load_file(path, what=WHAT, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(path) in str(err) and WHAT in str(err)
    assert "weights_only" not in "".join(traceback.format_exception(err))
    return err


def test_a_good_file_loads(good):
    obj = load_file(good, what=WHAT)
    assert obj["step"] == 3 and torch.equal(obj["model"]["w"][1], torch.arange(64.0, 128.0))
    assert load_file(str(good), what=WHAT, expect=None)["step"] == 3


def test_missing_file_is_a_value_error_and_a_file_not_found_error(tmp_path):
    err = refused(tmp_path / "absent.pt", r"absent\.pt does not exist")
    assert isinstance(err, CheckpointMissing) and isinstance(err, FileNotFoundError)


def test_a_folder_is_refused(tmp_path):
    (tmp_path / "ckpt.pt").mkdir()
    refused(tmp_path / "ckpt.pt", "is a folder, not a file")


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.01, 0.5, 0.99])
def test_truncated_file_says_truncated(good, tmp_path, keep):
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * keep)])
    refused(cut, r"cut\.pt \([\d,]+ bytes\) is truncated, corrupt or not a PyTorch file")


@pytest.mark.parametrize("content", [b"hello world\n", bytes(range(256)) * 20])
def test_not_a_pytorch_file(tmp_path, content):
    path = tmp_path / "other.bin"
    path.write_bytes(content)
    refused(path, "is truncated, corrupt or not a PyTorch file")


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "hook": RunsCode(marker)}, path)
    err = refused(path, r"contains Python objects other than tensors \(it refers to \w+\.system\)")
    assert "refused for safety" in str(err)
    assert not marker.exists()


def test_a_custom_class_is_refused(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"config": Plain()}, path)
    refused(path, r"contains Python objects other than tensors .*Plain")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, about this file
def test_a_raw_pickle_is_refused_and_runs_nothing(tmp_path):
    """Not torch.save's format at all: refused before anything in it is called."""
    marker = tmp_path / "pwned"
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(RunsCode(marker)))
    refused(path, "refused for safety|not a PyTorch file")
    assert not marker.exists()


def test_unexpected_type(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    refused(path, r"list\.pt: expected a test checkpoint, found a list")
    assert isinstance(load_file(path, what=WHAT, expect=(list, tuple)), list)


@pytest.mark.not_root
def test_unreadable_file(good):
    good.chmod(0)
    try:
        refused(good, "cannot be read")
    finally:
        good.chmod(0o644)


# -- every loader of the package goes through it ---------------------------------------------


def _loaders():
    from rar.model.checkpoint import load_generator, load_official_rar
    from rar.model.tokenizer import load_official_maskgit_vqgan, load_tokenizer
    from rar.training.loop import load_checkpoint

    return {
        "load_checkpoint": load_checkpoint,
        "load_generator": load_generator,
        "load_official_rar": load_official_rar,
        "load_official_maskgit_vqgan": load_official_maskgit_vqgan,
        "load_tokenizer": load_tokenizer,
    }


@pytest.mark.parametrize("loader", sorted(_loaders()))
def test_every_loader_reports_a_bad_file_the_same_way(good, tmp_path, loader):
    load = _loaders()[loader]
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut\.pt .* is truncated"):
        load(cut)
    evil = tmp_path / "evil.pt"
    torch.save({"w": RunsCode(tmp_path / "pwned")}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt contains Python objects"):
        load(evil)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointMissing, match=r"absent\.pt does not exist"):
        load(tmp_path / "absent.pt")


def test_no_torch_load_outside_the_loader():
    """A new loader that calls torch.load itself would bypass the checks above."""
    root = os.path.join(os.path.dirname(__file__), "..", "rar")
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and name != "checkpoint.py":
                with open(path) as f:
                    if "torch.load(" in f.read():
                        offenders.append(os.path.relpath(path, root))
    assert offenders == []
