"""Training: the recipe's pieces, exact resume, branching, and DDP equivalence (CPU)."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import assert_same_weights, host_reads_banned, tiny_run, tiny_source, weights
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

import rar.training.loop
from rar.data.batches import stream_from
from rar.model.checkpoint import CheckpointError
from rar.model.orders import scan_order
from rar.runtime import DistEnv, autocast_dtype
from rar.settings.training import TrainConfig
from rar.training.loop import (
    Job,
    StepLog,
    batch_split,
    build_optimizer,
    finished_checkpoint,
    learning_rate,
    load_checkpoint,
    model_from_config,
    no_weight_decay,
    optimizer_step,
    segment_end_of,
    stop_step_of,
    train,
)
from rar.training.resume import find_resume_point
from rar.training.watch import MetricsLog

# -- recipe ---------------------------------------------------------------------------------


def test_learning_rate_warms_up_then_decays_to_min():
    cfg = tiny_run(epochs=4, warmup_epochs=1)  # 32 steps, 8 of warmup
    assert learning_rate(0, cfg) == 0.0
    assert learning_rate(4, cfg) == pytest.approx(cfg.lr / 2)
    assert learning_rate(8, cfg) == pytest.approx(cfg.lr)
    assert learning_rate(20, cfg) == pytest.approx((cfg.lr + cfg.min_lr) / 2)
    assert learning_rate(32, cfg) == pytest.approx(cfg.min_lr)


def test_paper_schedule_in_steps():
    cfg = TrainConfig()  # RAR-L: 1,281,167 images, batch 2048
    assert cfg.total_steps == 250_228  # ceil(400 * 1281167 / 2048)
    assert cfg.step_at(100) == 62_557  # warmup
    assert cfg.epoch_at(cfg.step_at(200)) >= 200 > cfg.epoch_at(cfg.step_at(200) - 1)


def test_weight_decay_follows_the_official_name_filter():
    model = model_from_config(tiny_run())
    exempt = {n for n, p in model.named_parameters() if no_weight_decay(n, p)}
    assert "blocks.0.attn.qkv.weight" not in exempt
    assert "blocks.0.adaLN_modulation.1.weight" not in exempt  # "adaLN": no lower-case "ln"
    assert "cls_token" not in exempt
    for name in [
        "adaln_before_head.adaLN_modulation.1.weight",
        "embeddings.weight",
        "pos_embed",
        "target_aware_pos_embed",
        "timesteps_embeddings",
        "blocks.0.attn.qkv.bias",
        "blocks.0.norm1.weight",
        "blocks.0.attn.q_norm.weight",
    ]:
        assert name in exempt, name


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 10\nanneal_start: 0\nanneal_end: 20\n")
    with pytest.raises(ValueError, match=r"run.yaml: anneal_end 20.0 > epochs 10.0"):
        TrainConfig.load(path)
    path.write_text("epochz: 10\n")
    with pytest.raises(ValueError, match=r"run.yaml: unknown key.*epochz"):
        TrainConfig.load(path)
    path.write_text("global_batch: many\n")
    with pytest.raises(ValueError, match="key 'global_batch' must be int"):
        TrainConfig.load(path)


def test_config_yaml_round_trip_and_run_id(tmp_path):
    cfg = tiny_run(checkpoint_epochs=(1, 2))
    cfg.save(tmp_path / "c.yaml")
    again = TrainConfig.load(tmp_path / "c.yaml")
    assert again == cfg and again.run_id() == cfg.run_id()
    assert dataclasses.replace(cfg, anneal_end=3).run_id() != cfg.run_id()


# -- the loop -------------------------------------------------------------------------------


# The GPU variants: precision "auto" is bf16 autocast there, with fused AdamW and TF32, and
# `deterministic: true` is docs/stages.md's promise of bit-identical resumes (conftest fixes
# cuBLAS's workspace setting). On the CPU training is always deterministic.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def test_a_finished_run_whose_final_checkpoint_was_deleted_trains_nothing(tmp_path, capsys):
    """Snakemake deletes the outputs of a job it reruns (one it saw as incomplete when it died
    while the job ran on): the rerun writes final.pt again from the run's last step."""
    cfg = tiny_run(epochs=2)
    final = train(cfg, tmp_path, source=tiny_source())
    weights = load_checkpoint(final)["model"]
    rows = (tmp_path / "metrics.csv").read_text()
    final.unlink()
    capsys.readouterr()
    again = train(cfg, tmp_path, source=tiny_source())
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'checkpoints/last.pt'} at step {cfg.total_steps}" in out
    assert (tmp_path / "metrics.csv").read_text() == rows  # no step trained again
    restored = load_checkpoint(again)["model"]
    assert all(torch.equal(restored[k], weights[k]) for k in weights)


@pytest.mark.parametrize("device", DEVICES)
def test_training_learns_and_logs(tmp_path, device):
    final = train(tiny_run(epochs=4), tmp_path, source=tiny_source(), device=device)
    # last.pt is final.pt, a hard link (no disk of its own)
    assert final.name == "final.pt" and (tmp_path / "checkpoints" / "last.pt").samefile(final)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss,accuracy,lr,ratio")
    first, last = rows[1].split(","), rows[-1].split(",")
    assert int(last[0]) == 32 and float(last[2]) < float(first[2])  # the loss went down
    # r of the step that ends at each logged step (4, 8, ..., 32): 1 up to epoch 1, then linear
    # to 0 at epoch 2 (steps 11 and 15 are at epochs 1.375 and 1.875), then 0 (RAR §3.2)
    ratios = [float(r.split(",")[5]) for r in rows[1:]]
    assert ratios == [1.0, 1.0, 0.625, 0.125, 0.0, 0.0, 0.0, 0.0]
    ckpt = load_checkpoint(final)
    assert ckpt["step"] == 32 and ckpt["config"]["model"] == "rar_tiny"
    assert TrainConfig.from_dict(ckpt["config"]) == tiny_run(epochs=4)
    assert {w.dtype for w in ckpt["model"].values() if w.is_floating_point()} == {torch.float32}


def printed_steps(out: str) -> list[int]:
    """The steps of the log lines a training call printed (rar.training.loop.StepLog)."""
    return [int(s) for s in re.findall(r"^step (\d+)/\d+ ", out, re.MULTILINE)]


@pytest.mark.parametrize("device", DEVICES)
def test_resume_is_bit_identical(tmp_path, device, capsys):
    """Stopped twice mid-epoch, each call resumes where the last stopped (its log says the
    step), trains no step twice, and the run ends with the uninterrupted run's weights."""
    cfg = tiny_run(deterministic=True, log_every=1)
    ref = train(cfg, tmp_path / "ref", source=tiny_source(), device=device)
    last = tmp_path / "cut/checkpoints/last.pt"
    capsys.readouterr()
    trained = []
    for start, stop_after in ((0, 5), (5, 7)):  # stop twice, mid-epoch, then finish
        out = train(
            cfg, tmp_path / "cut", source=tiny_source(), device=device, max_steps=stop_after
        )
        assert out == last and load_checkpoint(last)["step"] == start + stop_after
        log = capsys.readouterr().out
        assert (f"resuming from {last} at step {start}" in log) == (start > 0)
        assert printed_steps(log) == list(range(start + 1, start + stop_after + 1))
        trained += printed_steps(log)
    done = train(cfg, tmp_path / "cut", source=tiny_source(), device=device)
    log = capsys.readouterr().out
    assert f"resuming from {last} at step 12" in log
    trained += printed_steps(log)
    assert trained == list(range(1, cfg.total_steps + 1))  # every step once, none redone
    assert_same_weights(weights(done), weights(ref))
    steps = [int(r.split(",")[0]) for r in (tmp_path / "cut/metrics.csv").read_text().split()[1:]]
    assert steps == list(range(1, cfg.total_steps + 1))  # no duplicated rows after the resumes


def test_branch_from_trunk_equals_training_from_scratch(tmp_path):
    # The trunk is the purely random run (anneal 3, 3) keeping a checkpoint at epoch 1.
    trunk = tiny_run(anneal_start=3, anneal_end=3, checkpoint_epochs=(1,))
    train(trunk, tmp_path / "trunk", source=tiny_source())
    branch_point = tmp_path / "trunk/checkpoints/epoch_1.pt"
    assert load_checkpoint(branch_point)["step"] == 8

    run = tiny_run(anneal_start=1, anneal_end=2, target_order="z-curve", log_every=1)
    scratch = train(run, tmp_path / "scratch", source=tiny_source())
    # The branch's first step is the trunk's step 9: it starts from the trunk's weights,
    # optimizer moments and step count, and its loss is the scratch run's at step 9 (a run
    # that ignored the trunk would log step 1, with the untrained model's loss).
    first = train(
        run, tmp_path / "branch", source=tiny_source(), init_from=branch_point, max_steps=1
    )
    ckpt = load_checkpoint(first)
    assert ckpt["step"] == 9
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {9}  # AdamW's count
    assert metrics_rows(tmp_path / "branch")[0] == metrics_rows(tmp_path / "scratch")[8]
    branch = train(run, tmp_path / "branch", source=tiny_source(), init_from=branch_point)
    assert_same_weights(weights(branch), weights(scratch))


def metrics_rows(workdir) -> list[tuple[int, float, float]]:
    """(step, loss, ratio) of each row of a run's metrics.csv."""
    rows = (workdir / "metrics.csv").read_text().split()[1:]
    return [(int(r.split(",")[0]), float(r.split(",")[2]), float(r.split(",")[5])) for r in rows]


def test_trunk_trained_in_segments_equals_one_job(tmp_path):
    trunk = tiny_run(anneal_start=3, anneal_end=3)
    whole = train(trunk, tmp_path / "whole", source=tiny_source())
    seg = tmp_path / "seg"
    first = train(trunk, seg, source=tiny_source(), until_epoch=1)
    assert first.name == "epoch_1.pt" and load_checkpoint(first)["step"] == 8
    assert train(trunk, seg, source=tiny_source(), until_epoch=1) == first  # already there
    second = train(trunk, seg, source=tiny_source(), until_epoch=2)
    assert load_checkpoint(second)["step"] == 16
    done = train(trunk, seg, source=tiny_source())
    assert_same_weights(weights(done), weights(whole))


def test_branching_past_the_anneal_start_is_refused(tmp_path):
    trunk = tiny_run(anneal_start=3, anneal_end=3, checkpoint_epochs=(2,))
    train(trunk, tmp_path / "trunk", source=tiny_source())
    with pytest.raises(ValueError, match="past this run's anneal start"):
        train(
            tiny_run(anneal_start=1, anneal_end=2),
            tmp_path / "b",
            source=tiny_source(),
            init_from=tmp_path / "trunk/checkpoints/epoch_2.pt",
        )


def test_resuming_a_different_model_names_the_mismatch(tmp_path):
    train(tiny_run(), tmp_path, source=tiny_source(), max_steps=2)
    with pytest.raises(ValueError, match=r"settings differ \(model: 'rar_tiny' -> 'rar_mini'"):
        train(tiny_run(model="rar_mini"), tmp_path, source=tiny_source())


def test_non_finite_loss_names_the_step(tmp_path):
    cfg = tiny_run(lr=1e30, warmup_epochs=0, grad_clip=1e30, checkpoint_minutes=0)
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d+"):
        train(cfg, tmp_path, source=tiny_source())
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


_KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from helpers import tiny_run, tiny_source
    from rar.training.loop import train
    import rar.training.loop as t
    step_fn = t.learning_rate
    def slow(step, cfg):  # give the parent time to kill us mid-run
        time.sleep(0.05)
        return step_fn(step, cfg)
    t.learning_rate = slow
    train(tiny_run(checkpoint_minutes=0), {workdir!r}, source=tiny_source())
    """
)


def test_sigkill_then_resume_is_bit_identical(tmp_path, capsys):
    """The killed run saves `last.pt` after every step; the reference and the resume need not
    (checkpoint timing does not change the computation). The child must reach step 6 alive
    and die of the signal; the resume starts from its last step and trains no earlier one."""
    cfg = tiny_run(log_every=1)
    ref = train(cfg, tmp_path / "ref", source=tiny_source())
    code = _KILLED_RUN.format(tests=os.path.dirname(__file__), workdir=str(tmp_path / "cut"))
    child_log = tmp_path / "child.log"
    with child_log.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)
    ckpts = tmp_path / "cut/checkpoints"
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and load_step(ckpts / "last.pt") < 6:
            assert time.monotonic() < deadline, f"no step 6 in 120 s: {child_log.read_text()}"
            time.sleep(0.02)
        assert proc.poll() is None, f"the child exited ({proc.returncode}): {child_log.read_text()}"
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (ckpts / "final.pt").exists()
    # Where the resume must start: last.pt, or the file that holds its step when the kill
    # fell between save_last's two renames (rar.training.resume.find_resume_point).
    point = find_resume_point(ckpts)
    killed_at = point.ckpt["step"]
    assert 6 <= killed_at < cfg.total_steps
    capsys.readouterr()
    done = train(cfg, tmp_path / "cut", source=tiny_source())
    out = capsys.readouterr().out
    assert f"resuming from {point.path} at step {killed_at}" in out
    assert printed_steps(out) == list(range(killed_at + 1, cfg.total_steps + 1))
    assert_same_weights(weights(done), weights(ref))


def load_step(path):
    try:
        return load_checkpoint(path)["step"]
    except Exception:  # being replaced right now
        return -1


# -- the pieces of a call: finished or not, the batch split, one step, its log line --------


def test_a_call_whose_checkpoint_exists_has_nothing_to_train(tmp_path):
    cfg, ckpts = tiny_run(), tmp_path / "checkpoints"
    ckpts.mkdir()
    assert segment_end_of(cfg, ckpts, None) is None is segment_end_of(cfg, ckpts, 3)  # the end
    segment = segment_end_of(cfg, ckpts, 1)
    assert segment == ckpts / "epoch_1.pt"
    assert finished_checkpoint(ckpts, segment) is None is finished_checkpoint(ckpts, None)
    (ckpts / "final.pt").touch()
    assert finished_checkpoint(ckpts, None) == ckpts / "final.pt"
    with pytest.raises(ValueError, match=r"is finished, and its checkpoint .*epoch_1.pt is gone"):
        finished_checkpoint(ckpts, segment)
    segment.touch()
    assert finished_checkpoint(ckpts, segment) == segment


def test_the_global_batch_splits_into_processes_and_accumulation():
    assert batch_split(tiny_run(micro_batch=4), 1) == (4, 2)
    assert batch_split(tiny_run(micro_batch=4), 2) == (4, 1)
    assert batch_split(tiny_run(micro_batch=0), 2) == (4, 1)  # 0: global batch / processes
    with pytest.raises(ValueError, match="global_batch 8 is not a multiple of micro_batch 4 x 3"):
        batch_split(tiny_run(micro_batch=4), 3)


def test_a_segment_stops_at_its_epoch_and_names_its_checkpoint(tmp_path):
    cfg, segment = tiny_run(checkpoint_epochs=(2,)), tmp_path / "epoch_1.pt"
    assert stop_step_of(cfg, 0, None, None) == (24, {16: 2})
    assert stop_step_of(cfg, 3, 1, segment) == (8, {16: 2, 8: 1})
    with pytest.raises(ValueError, match=r"last.pt is at step 9, past epoch 1 \(step 8\)"):
        stop_step_of(cfg, 9, 1, segment)


def test_a_stream_started_at_a_step_continues_the_stream_from_step_0():
    whole = stream_from(tiny_source(), start_step=0, rank=1, world_size=2, batch_size=4)
    batches = [next(whole) for _ in range(11)]  # 8 per epoch: into the second
    late = stream_from(tiny_source(), start_step=10, rank=1, world_size=2, batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(next(late), batches[10], strict=True))


def tiny_job(cfg, ckpt_dir, device: str = "cpu") -> Job:
    """A one-process job from step 0, as `train` sets it up (uncompiled)."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg).to(device)
    micro, accum = batch_split(cfg, 1)
    streams = [
        stream_from(tiny_source(), start_step=0, rank=a, world_size=accum, batch_size=micro)
        for a in range(accum)
    ]
    return Job(
        cfg,
        ckpt_dir,
        model,
        model,
        build_optimizer(model, cfg),
        DistEnv(),
        device,
        autocast_dtype(cfg.precision, device),
        scan_order(cfg.target_order, model.config.grid),
        streams,
    )


def test_one_optimizer_step_is_the_first_step_of_a_run(tmp_path):
    cfg = tiny_run(warmup_epochs=0)  # lr > 0 at step 0
    job = tiny_job(cfg, tmp_path / "checkpoints")
    stats = optimizer_step(job, 0)
    assert stats["lr"] == cfg.lr and stats["ratio"] == 1.0
    assert stats["loss"] > 0 and 0 <= stats["accuracy"] <= 1 and stats["grad_norm"] > 0
    one = train(cfg, tmp_path / "run", source=tiny_source(), max_steps=1)
    assert_same_weights(job.model.state_dict(), weights(one))

    with torch.no_grad():
        next(job.model.parameters()).fill_(float("nan"))
    optimizer_step(job, 1)  # noted on the device, not read back
    optimizer_step(job, 2)  # a later non-finite loss leaves the first one's record alone
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 1 "):
        job.check_finite()


def test_compile_auto_is_off_on_the_cpu_and_a_compiled_run_caches_beside_it(
    tmp_path, monkeypatch, capsys
):
    """`compile: auto` (the default) trains the CPU eagerly; `compile: true` compiles (a spy
    here, which runs the model as it is), with inductor's cache folder set in the run's folder
    while the model runs, and prints the compile time."""
    key, seen = "TORCHINDUCTOR_CACHE_DIR", []
    default = default_cache_dir()
    monkeypatch.setenv(key, default)  # as inductor exports it once imported

    class Spy(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args):
            seen.append(os.environ.get(key))
            return self.model(*args)

    monkeypatch.setattr(torch, "compile", Spy)
    assert TrainConfig().compile == "auto"
    train(tiny_run(compile="auto"), tmp_path / "eager", source=tiny_source(), max_steps=2)
    assert seen == [] and os.environ[key] == default
    train(tiny_run(compile=True), tmp_path / "run", source=tiny_source(), max_steps=2)
    folder = str((tmp_path / "run/.inductor-cache").resolve())
    assert seen == [folder] * 4 and os.environ[key] == default  # 2 steps x 2 micro-batches
    out = capsys.readouterr().out
    assert f"torch.compile (compile: True), inductor's cache {folder}" in out
    assert re.search(r"torch.compile: first step [\d.]+ s, second [\d.]+ s: about", out)


@pytest.fixture
def no_host_sync():
    """A context in which reading a tensor on the host raises (helpers.host_reads_banned, as
    for decoding): on a GPU each of these waits for the device."""
    return lambda: host_reads_banned("a training step")


def test_a_step_between_log_steps_makes_no_host_sync(tmp_path, no_host_sync):
    """An optimizer step, with a finite loss or not, reads nothing back to the host; the check
    of the log steps does (one read), and the ban catches it."""
    job = tiny_job(tiny_run(warmup_epochs=0), tmp_path / "checkpoints")
    optimizer_step(job, 0)  # the optimizer's state is made outside the ban
    with no_host_sync():
        optimizer_step(job, 1)
    with torch.no_grad():
        next(job.model.parameters()).fill_(float("nan"))
    with no_host_sync():
        optimizer_step(job, 2)
        with pytest.raises(AssertionError, match="host sync"):
            job.check_finite()
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 2 "):
        job.check_finite()


@pytest.mark.gpu
def test_on_a_gpu_compile_auto_compiles_and_a_step_makes_no_host_sync(tmp_path, capsys):
    """The default compiles on a GPU, prints its compile time and fills the run's inductor
    cache; an optimizer step (batches copied from pinned memory, bf16, fused AdamW) runs under
    CUDA's sync debug mode set to raise on any host synchronisation."""
    train(tiny_run(compile="auto", epochs=1), tmp_path, source=tiny_source(), device="cuda")
    assert "torch.compile: first step" in capsys.readouterr().out
    assert any((tmp_path / ".inductor-cache").iterdir())
    job = tiny_job(tiny_run(warmup_epochs=0), tmp_path / "job", device="cuda")
    optimizer_step(job, 0)  # the optimizer's state, cuBLAS handles: made outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        optimizer_step(job, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    job.check_finite()


def test_a_nan_stops_the_run_at_the_next_log_step(tmp_path, monkeypatch):
    """A run whose loss turns NaN at step k trains on to the next log step, then stops with
    the error naming step k; nothing after the last good checkpoint is saved."""
    real, steps = rar.training.loop.optimizer_step, []

    def nan_from_step_5(job, step):
        if step == 5:
            with torch.no_grad():
                next(job.model.parameters()).fill_(float("nan"))
        steps.append(step)
        return real(job, step)

    monkeypatch.setattr(rar.training.loop, "optimizer_step", nan_from_step_5)
    cfg = tiny_run(log_every=4, checkpoint_epochs=(0.5,))  # a named checkpoint at step 4
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 5 \(epoch"):
        train(cfg, tmp_path, source=tiny_source())
    assert steps == list(range(8))  # steps 0-7: the log step after step 5 is 8
    assert os.listdir(tmp_path / "checkpoints") == ["epoch_0.5.pt"]
    last = load_checkpoint(tmp_path / "checkpoints/epoch_0.5.pt")
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_the_log_line_counts_training_time_only(tmp_path, capsys):
    class Watch:  # validates for 5 s after step 1
        def after_step(self, step):
            return 5.0 if step == 1 else 0.0

        def log_line(self, row):
            return "1 min"

    cfg = tiny_run(log_every=2)
    times = iter([100.0, 108.0])  # the start; the log at step 2, 8 s later (5 s watching)
    log = StepLog(cfg, MetricsLog(tmp_path / "metrics.csv", 0), Watch(), clock=lambda: next(times))
    stats = dict(
        loss=torch.tensor(2.0),
        accuracy=torch.tensor(0.5),
        lr=1e-3,
        ratio=1.0,
        grad_norm=torch.tensor(3.0),
    )
    log.after(1, stats)  # not a logging step
    log.after(2, stats)
    header, row = (tmp_path / "metrics.csv").read_text().split()
    values = dict(zip(header.split(","), map(float, row.split(",")), strict=True))
    tokens = 2 * cfg.global_batch * cfg.num_tokens  # two steps' worth
    assert values["tokens_per_s"] == pytest.approx(tokens / 3.0, rel=1e-5)  # 8 s less 5 s
    assert values["elapsed_s"] == 8.0 and values["step"] == 2 and values["grad_norm"] == 3.0
    assert "step 2/24 epoch 0.25 loss 2.0000 acc 0.500 lr 0.001 r 1.000" in capsys.readouterr().out


# -- damaged checkpoints --------------------------------------------------------------------


def test_corrupt_last_resumes_from_the_previous_one(tmp_path, capsys):
    cfg = tiny_run(log_every=1)
    ref = train(cfg, tmp_path / "ref", source=tiny_source())
    cut, ckpts = tmp_path / "cut", tmp_path / "cut/checkpoints"
    train(cfg, cut, source=tiny_source(), max_steps=5)
    train(cfg, cut, source=tiny_source(), max_steps=2)
    assert load_checkpoint(ckpts / "last.pt")["step"] == 7
    assert load_checkpoint(ckpts / "last.prev.pt")["step"] == 5  # kept by the second save
    bad = (ckpts / "last.pt").read_bytes()[:3000]  # e.g. a disk that filled up
    (ckpts / "last.pt").write_bytes(bad)
    capsys.readouterr()

    done = train(cfg, cut, source=tiny_source())
    out = capsys.readouterr().out
    assert "last.pt (3,000 bytes) is truncated" in out
    assert f"resuming from {ckpts / 'last.prev.pt'} at step 5" in out
    assert "metrics.csv had reached step 7, so at least 2 steps are trained again" in out
    kept = list(ckpts.glob("last.pt.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == bad  # set aside, never deleted
    names = ["final.pt", "last.pt", kept[0].name]  # last.pt: final.pt's hard link
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(names)
    assert (ckpts / "last.pt").samefile(ckpts / "final.pt")
    assert_same_weights(weights(done), weights(ref))
    steps = [int(r.split(",")[0]) for r in (cut / "metrics.csv").read_text().split()[1:]]
    assert steps == list(range(1, cfg.total_steps + 1))


def test_resume_falls_back_to_the_newest_named_checkpoint(tmp_path, capsys):
    cfg = tiny_run(checkpoint_epochs=(1,))
    ref = train(cfg, tmp_path / "ref", source=tiny_source())
    cut, ckpts = tmp_path / "cut", tmp_path / "cut/checkpoints"
    train(cfg, cut, source=tiny_source(), max_steps=10)  # epoch_1.pt (step 8), last.pt
    train(cfg, cut, source=tiny_source(), max_steps=2)  # last.pt 12, last.prev.pt 10
    (ckpts / "last.pt").unlink()  # as if lost between save_last's two renames
    (ckpts / "last.prev.pt").write_bytes(b"\0" * 100)
    capsys.readouterr()

    done = train(cfg, cut, source=tiny_source())
    out = capsys.readouterr().out
    assert f"{ckpts / 'last.pt'} is missing; resuming from {ckpts / 'epoch_1.pt'} at step 8" in out
    assert len(list(ckpts.glob("last.prev.pt.corrupt-*"))) == 1
    assert_same_weights(weights(done), weights(ref))


def test_when_no_checkpoint_loads_the_run_fails_listing_each(tmp_path):
    cfg = tiny_run()
    train(cfg, tmp_path, source=tiny_source(), max_steps=2)
    train(cfg, tmp_path, source=tiny_source(), max_steps=1)
    ckpts = tmp_path / "checkpoints"
    (ckpts / "last.pt").write_bytes(b"")
    (ckpts / "last.prev.pt").write_bytes(b"not a checkpoint")
    pattern = r"(?s)none of this run's checkpoints loads.*last\.pt: .*\(0 bytes\).*last\.prev\.pt: "
    for init_from in (None, ckpts / "x.pt"):  # nor does it branch instead
        with pytest.raises(CheckpointError, match=pattern):
            train(cfg, tmp_path, source=tiny_source(), init_from=init_from)
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.prev.pt", "last.pt"]  # untouched


def test_a_periodic_save_that_fails_does_not_stop_the_run(tmp_path, monkeypatch, capsys):
    import rar.training.resume

    def disk_full(path, **state):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    ref = train(tiny_run(), tmp_path / "ref", source=tiny_source())
    real = rar.training.resume.save_checkpoint
    monkeypatch.setattr(
        rar.training.resume,
        "save_checkpoint",
        lambda path, **state: (disk_full if path.name == "last.next.pt" else real)(path, **state),
    )
    cfg = tiny_run(checkpoint_minutes=0)  # last.pt after every step
    done = train(cfg, tmp_path / "full", source=tiny_source())
    assert "could not write" in capsys.readouterr().out
    assert_same_weights(weights(done), weights(ref))
    with pytest.raises(OSError, match="No space left"):  # stopping without it loses work
        train(cfg, tmp_path / "stop", source=tiny_source(), max_steps=2)


# -- determinism at any thread count --------------------------------------------------------


def mini_run(**overrides) -> TrainConfig:
    """rar_mini at micro-batch 32: the positional tables' index backward sees 32 x 15 x 128 =
    61,440 rows, above PyTorch's parallel grain (32,768). There, without deterministic
    algorithms, it is a multi-threaded scatter of atomic adds and two runs differ."""
    base = dict(model="rar_mini", global_batch=32, micro_batch=32, anneal_start=0)
    return tiny_run(**{**base, **overrides})


def test_two_threads_give_identical_runs_and_the_callers_setting_is_restored(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = train(mini_run(epochs=2, anneal_end=2), tmp_path / "a", source=tiny_source())
        b = train(mini_run(epochs=2, anneal_end=2), tmp_path / "b", source=tiny_source())
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()
    assert_same_weights(weights(a), weights(b))


@pytest.mark.slow
def test_rar_train_killed_and_rerun_at_default_threads_is_bit_identical(demo_shards, tmp_path):
    """`rar train` as people run it (its default thread count: the machine's cores), killed
    with SIGKILL once a checkpoint exists and run again, ends bit for bit where an
    uninterrupted `rar train` ends."""
    from rar.data.shards import load_manifest

    cfg = mini_run(
        codebook_size=64,
        source_images=load_manifest(demo_shards)["num_source_images"],
        data=str(demo_shards),
        data_workers=0,
        epochs=10,
        anneal_start=2,
        anneal_end=8,
        checkpoint_minutes=0,
    )
    cfg.save(tmp_path / "run.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    def rar_train(workdir):
        return [
            sys.executable,
            "-m",
            "rar.cli",
            "train",
            "--config",
            str(tmp_path / "run.yaml"),
            "--workdir",
            str(workdir),
            "--device",
            "cpu",
            "--launcher",
            "debug",
        ]

    subprocess.run(rar_train(tmp_path / "ref"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(rar_train(tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL)
    last = tmp_path / "cut/checkpoints/last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut/checkpoints/final.pt").exists()  # killed mid-run
    out = subprocess.run(rar_train(tmp_path / "cut"), env=env, check=True, capture_output=True)
    assert "resuming from" in out.stdout.decode()
    assert_same_weights(
        weights(tmp_path / "cut/checkpoints/final.pt"),
        weights(tmp_path / "ref/checkpoints/final.pt"),
    )


# -- distributed ----------------------------------------------------------------------------


_DDP_RUN = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from helpers import tiny_run, tiny_source
    from rar.training.loop import train
    torch.set_num_threads(1)
    train(tiny_run(micro_batch=4), {workdir!r}, source=tiny_source(), device="cpu")
    torch.distributed.destroy_process_group()
    """
)


def free_port() -> int:
    """A TCP port that nothing listens on now: the kernel's pick for port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_gloo_processes(code: str) -> list[str]:
    """Run `code` as ranks 0 and 1 of a gloo process group; their stdout, after both exit 0."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env={
                **os.environ,
                "RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(r),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs


def test_two_gloo_processes_equal_one_process(tmp_path):
    """Global batch 8 as 2 processes x 4 equals 1 process x 4 x 2 accumulation steps."""
    single = train(tiny_run(micro_batch=4), tmp_path / "one", source=tiny_source())
    two_gloo_processes(
        _DDP_RUN.format(tests=os.path.dirname(__file__), workdir=str(tmp_path / "two"))
    )
    assert_same_weights(
        weights(tmp_path / "two/checkpoints/final.pt"), weights(single), exact=False
    )


_DDP_STOP = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from helpers import tiny_run, tiny_source
    from rar.training.loop import train
    torch.set_num_threads(1)
    rank, polls = int(os.environ["RANK"]), []

    def should_stop():  # rank 1 alone is signalled, from its third poll on
        polls.append(1)
        return rank == 1 and len(polls) >= 3

    path = train(tiny_run(micro_batch=4), {workdir!r}, source=tiny_source(), device="cpu",
                 should_stop=should_stop)
    print(len(polls), path.name, torch.load(path, weights_only=False)["step"])
    torch.distributed.destroy_process_group()
    """
)


def test_a_stop_on_one_rank_stops_every_rank_one_step_later(tmp_path):
    """Rank 1 alone asks to stop after step 3; the ranks agree on it without a host read per
    step (rar.runtime.AnyRank), so both stop after step 4, together (a rank that went on
    would wait forever in the next step's all-reduce), with last.pt at step 4."""
    code = _DDP_STOP.format(tests=os.path.dirname(__file__), workdir=str(tmp_path / "run"))
    ends = [out.splitlines()[-1].split() for out in two_gloo_processes(code)]
    assert ends == [["4", "last.pt", "4"]] * 2  # polls, the checkpoint returned, its step


# -- the command line on real shards --------------------------------------------------------


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    """Demo photographs (4 classes x 16 images, 64 px) tokenized by a small random
    MaskGIT-VQGAN (64 codes, 4 x 4 grid) into center+flip shards."""
    from rar.demo.data import make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    images = make_demo_dataset(
        root / "images", num_classes=4, images_per_class=16, image_size=64, seed=0
    )
    tokenize_demo(
        images / "train", root / "shards", crop="center+flip", images_per_part=24, batch_size=16
    )
    return root / "shards"


def tokenize_demo(images, out, *, crop: str, images_per_part: int, batch_size: int) -> None:
    """`images` into token shards in `out` by the fixture's tokenizer: a small MaskGIT-VQGAN
    (64 codes, 4 x 4 grid) at seed 0."""
    from rar.data.tokenize import tokenize_images
    from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

    torch.manual_seed(0)
    cfg = MaskGITVQGANConfig(hidden_channels=32, image_size=64, z_channels=32, codebook_size=64)
    tokenizer = MaskGITVQGAN(cfg).eval()
    tokenize_images(
        images,
        out,
        tokenizer=tokenizer,
        crop=crop,
        images_per_part=images_per_part,
        num_workers=0,
        progress=False,
        batch_size=batch_size,
    )


def shard_run(shards, **overrides) -> TrainConfig:
    """A tiny run of 2 epochs on the demo shards, annealed throughout."""
    from rar.data.shards import load_manifest

    images = load_manifest(shards)["num_source_images"]
    base = dict(codebook_size=64, source_images=images, data=str(shards), data_workers=0)
    return tiny_run(**base, epochs=2, anneal_start=0, anneal_end=2, **overrides)


def test_rar_train_cli_on_shards(demo_shards, tmp_path, capsys):
    from rar.cli import main
    from rar.data.shards import load_manifest

    images = load_manifest(demo_shards)["num_source_images"]
    cfg = shard_run(demo_shards)
    cfg.save(tmp_path / "run.yaml")
    args = ["train", "--config", str(tmp_path / "run.yaml"), "--workdir", str(tmp_path / "run")]
    assert main(args) == 0
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/final.pt")
    assert ckpt["step"] == cfg.total_steps == 2 * images // 8
    assert "done:" in capsys.readouterr().out


def test_rar_train_rejects_shards_that_do_not_match(demo_shards, tmp_path):
    cfg = tiny_run(codebook_size=1024, data=str(demo_shards), data_workers=0)
    cfg.save(tmp_path / "run.yaml")
    from rar.training.loop import run

    with pytest.raises(ValueError, match=r"run.yaml: data .* codebook_size 64 \(config: 1024\)"):
        run(tmp_path / "run.yaml", tmp_path / "run")


# -- watching a run on real shards (rar.evaluation.heldout, rar.training.tracking;
# tests/test_logging.py) -------


def test_rar_train_validates_on_the_held_out_shards(demo_shards, tmp_path, capsys):
    """`<data>/val`-style held-out shards (here `val_data`), center-cropped from the demo's
    val/ images, are found, checked against the training shards and validated on; without a
    tokenizer file to decode with, sample grids say once that they are off."""
    from rar.data.shards import load_manifest
    from rar.training.loop import run
    from rar.training.watch import find_heldout

    val_images = demo_shards.parent / "images/val"
    tokenize_demo(val_images, tmp_path / "val", crop="center", images_per_part=100, batch_size=50)
    run_cfg = shard_run(demo_shards, val_every=1, sample_every=1, val_data=str(tmp_path / "val"))
    run_cfg.save(tmp_path / "run.yaml")
    run(tmp_path / "run.yaml", tmp_path / "run")
    out = capsys.readouterr().out
    assert "validation: 200 held-out samples of" in out
    assert out.count("sample grids are off: the shards' tokenizer file None is not here") == 1
    rows = (tmp_path / "run/validation.csv").read_text().split()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [run_cfg.step_at(1), run_cfg.total_steps]
    assert "eta " in out

    other = dataclasses.replace(run_cfg, val_data=str(tmp_path / "nowhere"))
    assert find_heldout(other, load_manifest(demo_shards)).startswith("no held-out tokens at")
    wrong = {**load_manifest(demo_shards), "classes": ["a", "b", "c", "d"]}
    assert "other classes than the training shards" in find_heldout(run_cfg, wrong)
