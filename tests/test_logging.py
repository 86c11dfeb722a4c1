"""Watching a run: TensorBoard and W&B trackers, the held-out NLL, sample grids, ETA and mail.

Training here is rar_tiny on a 4 x 4 grid (24 steps), as tests/test_train.py; W&B runs offline
(no network), and TensorBoard's event files are read back with TensorBoard's own reader.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from helpers import SAMPLES, tiny_tokens, weights
from torch import nn

from rar.data.batches import TensorBatchSource
from rar.evaluation.heldout import (
    HeldOut,
    grid_classes,
    heldout_nll,
    heldout_orders,
    load_heldout,
    sample_grid,
    sequence_nll,
    validation_nll,
)
from rar.experiments.records import eta_seconds, format_duration, read_progress
from rar.settings.training import OUTSIDE_IDENTITY, TrainConfig
from rar.training.loop import loss_and_accuracy, model_from_config, train
from rar.training.tracking import Tracker, open_tracker, read_history, run_name
from rar.training.watch import Watcher, steps_every


def tiny_run(**overrides) -> TrainConfig:
    """helpers.tiny_run logging every step."""
    return helpers.tiny_run(**{"log_every": 1, **overrides})


def tokens_and_labels(seed: int, n: int = SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of the class patterns that `tiny_source` trains on."""
    return tiny_tokens(seed, n, pattern_seed=0)


def tiny_source() -> TensorBatchSource:
    return helpers.tiny_source(pattern_seed=0)


def tiny_heldout() -> HeldOut:
    tokens, labels = tokens_and_labels(99, 24)  # same class patterns, other samples
    return HeldOut(tokens, labels, ("a", "b", "c", "d"), "held-out")


class ColourTokenizer(nn.Module):
    """A stand-in decoder: each code is a 2 x 2 patch of its own grey level (4 x 4 codes ->
    8 x 8 images)."""

    codebook_size, grid, image_size = 16, 4, 8

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        grey = (ids.float() / 15).view(-1, 1, 4, 4) * self.scale  # (B, 1, 4, 4)
        return grey.repeat_interleave(2, 2).repeat_interleave(2, 3).expand(-1, 3, -1, -1)


def tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """A tag's (step, value) points as TensorBoard shows them (its reader applies purges)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def csv_column(path: Path, column: str) -> list[tuple[int, float]]:
    lines = path.read_text().split()
    header = lines[0].split(",")
    i = header.index(column)
    return [(int(r.split(",")[0]), float(r.split(",")[i])) for r in lines[1:]]


def same_points(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """Equal steps, and values equal to the 6 digits metrics.csv keeps."""
    return [s for s, _ in a] == [s for s, _ in b] and [v for _, v in a] == pytest.approx(
        [v for _, v in b], rel=1e-5
    )


# -- settings -------------------------------------------------------------------------------


def test_watching_settings_are_outside_the_run_identity():
    cfg = tiny_run()
    watched = tiny_run(
        tensorboard=True,
        wandb="offline",
        log_dir="x/tb",
        log_group="demo",
        val_every=0.5,
        val_data="x/val",
        sample_every=1,
    )
    assert watched.run_id() == cfg.run_id() and watched.trunk_key() == cfg.trunk_key()
    assert {"tensorboard", "wandb", "val_every", "sample_every", "log_dir"} <= OUTSIDE_IDENTITY
    with pytest.raises(ValueError, match="wandb 'yes' is not one of off, online, offline"):
        tiny_run(wandb="yes")


def test_steps_every_counts_epochs_and_ends_at_the_last_step():
    cfg = tiny_run()  # 8 steps per epoch, 24 in all
    assert steps_every(cfg, 1) == {8, 16, 24}
    assert steps_every(cfg, 0.5) == {4, 8, 12, 16, 20, 24}
    assert steps_every(cfg, 2) == {16, 24} and steps_every(cfg, 0) == set()


# -- validation NLL -------------------------------------------------------------------------


def test_validation_nll_is_the_training_loss_with_dropout_off():
    torch.manual_seed(0)
    model = model_from_config(tiny_run(architecture="plain", dropout=0.3, attn_dropout=0.3))
    tokens, labels = tokens_and_labels(5, 12)
    orders = heldout_orders("z-curve", 12, 4, seed=0)
    model.eval()
    loss, _ = loss_and_accuracy(model, tokens, labels, orders, amp=None)
    model.train()  # validation_nll turns dropout off itself, and restores the mode
    assert validation_nll(model, tokens, labels, orders, batch_size=5) == pytest.approx(
        loss.item(), rel=1e-6
    )
    assert model.training
    with torch.no_grad():  # and dropout on gives another number: it was really off
        noisy, _ = loss_and_accuracy(model, tokens, labels, orders, amp=None)
    assert noisy.item() != pytest.approx(loss.item(), rel=1e-6)


def test_a_tables_val_nll_is_the_validation_nll_with_an_interval_over_sequences():
    torch.manual_seed(0)
    model = model_from_config(tiny_run(architecture="plain"))
    heldout = tiny_heldout()
    for order in ("spiral-in", "random"):
        orders = heldout_orders(order, len(heldout.tokens), 4, seed=7)
        record = heldout_nll(model, heldout, order, seed=7)
        mean = validation_nll(model, heldout.tokens, heldout.labels, orders)
        assert record["val_nll"] == pytest.approx(mean, rel=1e-9)
        per_sequence = sequence_nll(model, heldout.tokens, heldout.labels, orders)
        half = 1.96 * per_sequence.std().item() / len(per_sequence) ** 0.5
        assert record["val_nll_ci_high"] - record["val_nll"] == pytest.approx(half, rel=1e-9)
        assert record["val_nll_ci_low"] < record["val_nll"] < record["val_nll_ci_high"]
        assert (record["val_nll_order"], record["val_nll_sequences"]) == (order, 24)
    # an untrained model knows nothing: about ln(codebook) nats a token
    assert record["val_nll"] == pytest.approx(np.log(16), rel=0.1)


def test_heldout_orders_are_fixed_per_seed():
    raster = heldout_orders("row-major", 3, 4, seed=0)
    assert torch.equal(raster, torch.arange(16).expand(3, 16))
    a, b = heldout_orders("random", 5, 4, seed=1), heldout_orders("random", 5, 4, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, heldout_orders("random", 5, 4, seed=2))
    assert all(torch.equal(row.sort().values, torch.arange(16)) for row in a)


def test_validation_csv_holds_the_nll_of_each_named_checkpoint(tmp_path):
    cfg = tiny_run(val_every=1, checkpoint_epochs=(1, 2))
    heldout = tiny_heldout()
    train(cfg, tmp_path, source=tiny_source(), heldout=heldout)
    lines = (tmp_path / "validation.csv").read_text().split()
    assert lines[0] == "step,epoch,val_loss,val_nll,order"
    rows = {int(r.split(",")[0]): r.split(",") for r in lines[1:]}
    assert sorted(rows) == [8, 16, 24] and rows[8][4] == "row-major"
    for step, name in ((8, "epoch_1.pt"), (16, "epoch_2.pt"), (24, "final.pt")):
        model = model_from_config(cfg)
        model.load_state_dict(weights(tmp_path / "checkpoints" / name))
        raster = heldout_orders("row-major", 24, 4, seed=cfg.seed)
        nll = validation_nll(model, heldout.tokens, heldout.labels, raster)
        assert float(rows[step][3]) == pytest.approx(nll, rel=1e-5)


def test_a_purely_random_run_validates_in_random_order(tmp_path, capsys):
    cfg = tiny_run(anneal_start=3, anneal_end=3, val_every=3)
    train(cfg, tmp_path, source=tiny_source(), heldout=tiny_heldout())
    row = (tmp_path / "validation.csv").read_text().split()[1].split(",")
    assert row[4] == "random" and float(row[2]) != float(row[3])  # random order vs raster
    assert "in random order (val_loss) and raster (val_nll)" in capsys.readouterr().out


def test_watching_never_changes_the_weights(tmp_path):
    """Validation, sample grids and TensorBoard run with dropout off and their own draws."""
    plain = train(tiny_run(), tmp_path / "plain", source=tiny_source())
    watched = train(
        tiny_run(val_every=0.5, sample_every=1, tensorboard=True, log_dir=str(tmp_path / "tb")),
        tmp_path / "watched",
        source=tiny_source(),
        heldout=tiny_heldout(),
        tokenizer=ColourTokenizer(),
    )
    a, b = weights(plain), weights(watched)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "watched/samples").iterdir()) == [
        "step_00000008.png",
        "step_00000016.png",
        "step_00000024.png",
    ]


def test_no_heldout_tokens_turns_validation_off_once(tmp_path, capsys):
    train(tiny_run(val_every=1, sample_every=1), tmp_path, source=tiny_source())
    out = capsys.readouterr().out
    assert out.count("validation is off: no held-out tokens were given") == 1
    assert out.count("sample grids are off: no tokenizer was given") == 1
    assert not (tmp_path / "validation.csv").exists()


def test_heldout_shards_load_in_manifest_order(heldout_shards):
    from rar.data.shards import load_manifest

    _, shards = heldout_shards
    heldout = load_heldout(shards)
    assert heldout.tokens.shape == (6, 16) and heldout.tokens.dtype == torch.int64
    assert sorted(heldout.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert heldout.classes == tuple(load_manifest(shards)["classes"])


# -- sample grids ---------------------------------------------------------------------------


def test_the_sample_grid_is_deterministic_for_a_checkpoint(tmp_path):
    cfg = tiny_run()
    final = train(cfg, tmp_path, source=tiny_source(), max_steps=6)
    grids = []
    for _ in range(2):
        model = model_from_config(cfg)
        model.load_state_dict(weights(final))
        grids.append(sample_grid(model, ColourTokenizer(), num_classes=4, order="z-curve", seed=7))
    assert grids[0].shape == (4 * 8, 4 * 8, 3) and grids[0].dtype == np.uint8
    assert np.array_equal(grids[0], grids[1])
    other = sample_grid(model, ColourTokenizer(), num_classes=4, order="z-curve", seed=8)
    assert not np.array_equal(grids[0], other)
    assert grid_classes(1000) == [0, 333, 666, 999] and grid_classes(2) == [0, 1]


# -- TensorBoard ----------------------------------------------------------------------------


def test_a_resumed_run_holds_each_step_once_in_tensorboard(tmp_path, capsys):
    cfg = tiny_run(tensorboard=True, log_dir=str(tmp_path / "tb"), val_every=1)
    run, ckpts = tmp_path / "run", tmp_path / "run/checkpoints"
    train(cfg, run, source=tiny_source(), heldout=tiny_heldout(), max_steps=9)  # last.pt: 9
    train(cfg, run, source=tiny_source(), heldout=tiny_heldout(), max_steps=5)  # logged to 14
    (ckpts / "last.pt").unlink()  # lost: the next job resumes at step 9, past which 10-14 are
    train(cfg, run, source=tiny_source(), heldout=tiny_heldout())
    assert "resuming from" in capsys.readouterr().out
    folder = tmp_path / "tb" / run_name(cfg, cfg.run_id())
    assert len(list(folder.glob("events.out.tfevents.*"))) == 3  # one per job
    loss = tb_scalars(folder, "train/loss")
    assert [s for s, _ in loss] == list(range(1, 25))  # each step once, none of 10-14 twice
    assert same_points(loss, csv_column(run / "metrics.csv", "loss"))
    assert [s for s, _ in tb_scalars(folder, "val/nll")] == [8, 16, 24]
    assert [s for s, _ in tb_scalars(folder, "train/r")] == list(range(1, 25))


def test_a_branch_starts_from_its_trunks_curve(tmp_path):
    tb = str(tmp_path / "tb")
    trunk = tiny_run(
        anneal_start=3, anneal_end=3, checkpoint_epochs=(1,), tensorboard=True, log_dir=tb
    )
    train(trunk, tmp_path / "trunk", source=tiny_source())
    branch = tiny_run(target_order="z-curve", tensorboard=True, log_dir=tb)
    point = tmp_path / "trunk/checkpoints/epoch_1.pt"
    train(branch, tmp_path / "branch", source=tiny_source(), init_from=point)
    trunk_loss = tb_scalars(Path(tb) / run_name(trunk, trunk.run_id()), "train/loss")
    branch_loss = tb_scalars(Path(tb) / run_name(branch, branch.run_id()), "train/loss")
    assert [s for s, _ in branch_loss] == list(range(1, 25))
    # the trunk's curve up to the branch point (replayed from its metrics.csv: 6 digits)
    assert same_points(branch_loss[:8], trunk_loss[:8])
    assert same_points(branch_loss[8:], csv_column(tmp_path / "branch/metrics.csv", "loss"))


def test_a_fresh_start_drops_the_curves_of_attempts_without_a_checkpoint(tmp_path):
    cfg = tiny_run(tensorboard=True, log_dir=str(tmp_path / "tb"), epochs=1, anneal_end=1)
    train(cfg, tmp_path / "run", source=tiny_source(), max_steps=3)
    shutil.rmtree(tmp_path / "run/checkpoints")  # as if it died before its first last.pt
    train(cfg, tmp_path / "run", source=tiny_source())
    loss = tb_scalars(tmp_path / "tb" / run_name(cfg, cfg.run_id()), "train/loss")
    assert [s for s, _ in loss] == list(range(1, 9))


# -- W&B, offline ---------------------------------------------------------------------------


def wandb_records(path: Path):
    """The records of an offline W&B run file (`run-<id>.wandb`: a LevelDB-style log of
    protobuf `Record`s after a 7-byte header), read without W&B's service or network."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's zero-filled trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or a fragmented one's last part
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def wandb_history(run_dir: Path) -> tuple[dict, dict[int, dict]]:
    run, history = {}, {}
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = {"id": r.run_id, "name": r.display_name, "group": r.run_group}
            run["tags"] = list(r.tags)
        elif kind == "history":
            items = record.history.item
            values = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
            history[values["_step"]] = values
    return run, history


def test_wandb_offline_writes_the_metrics_without_network(tmp_path, monkeypatch):
    import wandb  # a dev dependency: without it, this fails

    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_run(wandb="offline", log_group="demo", val_every=1, sample_every=3)
    run = tmp_path / "run"
    train(cfg, run, source=tiny_source(), heldout=tiny_heldout(), tokenizer=ColourTokenizer())
    # run.finish() may return before W&B's service has written the last records; shutting the
    # service down waits for them, as a job's exit does (read before it, a loaded machine once
    # found 9 of the 24 steps)
    wandb.teardown()
    (offline,) = sorted((run / "wandb").glob(f"offline-run-*-{cfg.run_id()}"))
    info, history = wandb_history(offline)
    assert info == {
        "id": cfg.run_id(),
        "name": run_name(cfg, cfg.run_id()),
        "group": "demo",
        "tags": ["rar_tiny", "adaln", "anneal 1-2", "row-major"],
    }
    assert sorted(history) == list(range(1, 25))
    loss = [(s, history[s]["train/loss"]) for s in sorted(history)]
    assert same_points(loss, csv_column(run / "metrics.csv", "loss"))
    assert [s for s in sorted(history) if "val/nll" in history[s]] == [8, 16, 24]
    assert history[24]["samples/_type"] == "image-file"
    assert list(offline.glob("files/media/images/samples_24_*.png"))


# -- missing packages and failing loggers ---------------------------------------------------


def test_without_the_logger_packages_a_run_trains_and_says_so_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = tiny_run(tensorboard=True, wandb="online", log_dir=str(tmp_path / "tb"))
    train(cfg, tmp_path / "run", source=tiny_source(), max_steps=5)
    final = train(cfg, tmp_path / "run", source=tiny_source())
    assert final.name == "final.pt"
    out = capsys.readouterr().out
    for line in (
        "TensorBoard logging is off: the 'tensorboard' package is missing",
        "W&B logging is off: the 'wandb' package is missing",
    ):
        assert out.count(line) == 2, out  # once per job (two jobs here), never per step
    assert "pip install 'rar-pipeline[logging]'" in out
    assert not (tmp_path / "tb").exists()


class Broken:
    name, empty = "Fake", False

    def __init__(self) -> None:
        self.calls = 0

    def scalars(self, step, values):
        self.calls += 1
        raise OSError("disk full")

    def close(self):
        pass


def test_a_logger_that_fails_turns_off_with_one_message():
    said, broken = [], Broken()
    tracker = Tracker([broken], said.append)
    for step in range(5):
        tracker.scalars(step, {"loss": 1.0})
    tracker.close()
    assert broken.calls == 1 and said == [
        "Fake logging is off from now on: logging step 0 failed (OSError: disk full)"
    ]


def test_wandb_online_without_a_login_or_network_does_not_stop_the_run(tmp_path, monkeypatch):
    import wandb  # noqa: F401  (a dev dependency: without it, this fails)

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no stored login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    said = []
    tracker = open_tracker(
        tiny_run(wandb="online"),
        tmp_path,
        run_id="abc",
        resume_step=0,
        own_checkpoint=False,
        say=said.append,
    )
    assert not tracker and len(said) == 1 and said[0].startswith("W&B logging is off: ")


def test_read_history_joins_metrics_and_validation_up_to_a_step(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "step,epoch,loss,accuracy,lr,ratio,grad_norm,tokens_per_s,images_per_s,elapsed_s\n"
        "1,0.1,5,0.1,1e-4,1,2,100,10,1\n2,0.2,4,0.2,2e-4,1,2,100,10,2\n3,0.3,3,0.3"
    )
    (tmp_path / "validation.csv").write_text("step,epoch,val_loss,val_nll,order\n2,0.2,4.5,4.6,z\n")
    rows = read_history(tmp_path, 2)
    assert [s for s, _ in rows] == [1, 2]
    assert rows[1][1]["val_nll"] == 4.6 and rows[1][1]["loss"] == 4.0
    assert "elapsed_s" not in rows[0][1]


# -- ETA and notifications ------------------------------------------------------------------


class _Env:
    rank, world_size, local_rank = 0, 1, 0


def test_the_log_line_carries_the_eta_that_rar_status_shows(tmp_path):
    cfg = tiny_run(epochs=4, anneal_end=2)
    watcher = Watcher(
        cfg,
        tmp_path,
        model=model_from_config(cfg),
        env=_Env(),
        device=torch.device("cpu"),
        amp=None,
        step=0,
        own_checkpoint=False,
        init_from=None,
        heldout=None,
        tokenizer=None,
        batch_size=4,
    )
    header = "step,epoch,loss,accuracy,lr,ratio,grad_norm,tokens_per_s,images_per_s,elapsed_s"
    lines, etas = [header], []
    for step in range(1, 11):  # one epoch per 600 s
        row = dict(
            step=step,
            epoch=step * 0.125,
            loss=1.0,
            accuracy=0.5,
            lr=1e-3,
            ratio=1.0,
            grad_norm=1.0,
            tokens_per_s=1.0,
            images_per_s=1.0,
            elapsed_s=75.0 * step,
        )
        lines.append(",".join(str(row[k]) for k in header.split(",")))
        etas.append(watcher.log_line(row))
    (tmp_path / "metrics.csv").write_text("\n".join(lines) + "\n")
    progress = read_progress(tmp_path / "metrics.csv")
    shown = format_duration(eta_seconds(progress.epoch, cfg.epochs, progress.epochs_per_s))
    assert etas[-1] == shown == "27m"  # 2.75 epochs left at 600 s each
    assert etas[0] == "-"  # one point: no rate yet


def test_mail_settings_reach_the_sbatch_script(monkeypatch, tmp_path):
    import rar.ops.launch
    from rar.ops.launch import LauncherConfig, _executor

    monkeypatch.setattr(rar.ops.launch.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    launcher = LauncherConfig(
        backend="slurm",
        folder=str(tmp_path),
        mail_user="me@example.org",
        mail_type="FAIL,REQUEUE",
    )
    script = _executor(launcher, "train_x")._make_submission_file_text("python -c 1", "uid")
    assert "#SBATCH --mail-type=FAIL,REQUEUE" in script
    assert "#SBATCH --mail-user=me@example.org" in script
    plain = _executor(LauncherConfig(backend="slurm", folder=str(tmp_path)), "x")
    assert "--mail" not in plain._make_submission_file_text("python -c 1", "uid")
    with pytest.raises(ValueError, match=r"unknown event.*FAILURE"):
        LauncherConfig(mail_user="me@example.org", mail_type="FAILURE")
    with pytest.raises(ValueError, match="needs 'mail_user'"):
        LauncherConfig(mail_type="FAIL")
    for stage in ("train", "tokenize", "sample", "evaluate"):  # the profiles document them
        text = (Path(__file__).parents[1] / f"profiles/slurm/{stage}.yaml").read_text()
        assert "mail_type:" in text and "mail_user:" in text
        LauncherConfig.load(Path(__file__).parents[1] / f"profiles/slurm/{stage}.yaml")
