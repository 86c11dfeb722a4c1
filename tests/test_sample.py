"""`rar sample`: chunk arithmetic, per-chunk seeds, the ADM npz layout (class-interleaved),
resume and byte identity for any number of ranks, settings and their CLI flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rar.experiments.results import read_guidance_scale
from rar.model.checkpoint import load_generator
from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig
from rar.model.transformer import RAR, rar_config
from rar.sampling.chunks import (
    CHUNK_NAME,
    SAMPLES_FORMAT,
    chunk_bounds,
    chunk_dir_for,
    chunk_generator,
    class_labels,
    num_chunks,
)
from rar.sampling.sampler import sample
from rar.settings.presets import DEFAULT_CHUNK_SIZE
from rar.settings.stages import SampleSettings, SamplingConfig, resolve_sampling

NUM_CLASSES, PER_CLASS, CHUNK = 3, 2, 2  # 6 images in 3 chunks


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny random RAR (official state-dict layout) and MaskGIT-VQGAN (16 tokens -> 64 px)."""
    root = tmp_path_factory.mktemp("sample_files")
    torch.manual_seed(0)
    model = RAR(rar_config("rar_tiny", codebook_size=64, num_classes=NUM_CLASSES, num_tokens=16))
    with torch.no_grad():  # leave adaLN-zero so that the classes matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tok = MaskGITVQGAN(
        MaskGITVQGANConfig(hidden_channels=32, image_size=64, z_channels=32, codebook_size=64)
    )
    torch.save(model.state_dict(), root / "rar_tiny.bin")
    torch.save(tok.state_dict(), root / "tokenizer.bin")
    return {"checkpoint": root / "rar_tiny.bin", "tokenizer": root / "tokenizer.bin"}


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """Tests choose rank and world size themselves, whatever launched pytest (srun, torchrun)."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)


def _sample(files, out, **kw):
    args = dict(
        num_per_class=PER_CLASS,
        chunk_size=CHUNK,
        seed=3,
        device="cpu",
        progress=False,
        rank=0,
        world_size=1,
    )
    return sample(files["checkpoint"], files["tokenizer"], out, **{**args, **kw})


@pytest.fixture(scope="module")
def reference_run(files, tmp_path_factory) -> Path:
    """One uninterrupted single-process run: the bytes every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "samples.npz"
    _sample(files, out)
    return out


def _assert_interleaved(labels: np.ndarray, num_classes: int) -> None:
    """Every consecutive block of `num_classes` labels holds each class exactly once."""
    blocks = labels.reshape(-1, num_classes)
    assert (np.sort(blocks, axis=1) == np.arange(num_classes)).all()


# ------------------------------------------------------------------------------------------
# Loading and settings
# ------------------------------------------------------------------------------------------


def test_load_generator_reads_training_checkpoints_and_official_files(files, tmp_path):
    official, desc = load_generator(files["checkpoint"])
    assert desc["kind"] == "official" and desc["model_size"] == "rar_tiny"
    ckpt = {
        "format": "rar-train/1",
        "model": official.state_dict(),
        "model_config": desc["model_config"],
        "config": {"model": "rar_tiny"},
        "step": 7,
        "epoch": 1.5,
    }
    torch.save(ckpt, tmp_path / "final.pt")
    ours, desc2 = load_generator(tmp_path / "final.pt")
    assert desc2["kind"] == "rar-train/1" and desc2["step"] == 7
    for k, v in official.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k])
    torch.save({"a": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="neither"):
        load_generator(tmp_path / "bad.pt")


def test_sampling_settings_come_from_the_preset_then_overrides():
    s, name = resolve_sampling("rar_b")
    assert name == "rar_b" and (s.guidance_scale, s.guidance_power) == (16.0, 2.75)
    assert s.guidance_schedule == "pow-cosine"
    s, _ = resolve_sampling("rar_b", overrides={"guidance_schedule": "linear", "order": None})
    assert s.guidance_schedule == "linear" and s.guidance_scale == 16.0
    assert s.order == "row-major"  # None: keep
    with pytest.raises(ValueError, match="guidance schedule"):
        resolve_sampling("rar_b", overrides={"guidance_schedule": "cosine"})
    s, name = resolve_sampling("rar_tiny", "rar_xl", {"temperature": 1.0, "order": "random"})
    assert name == "rar_xl" and s.guidance_scale == 6.9 and s.temperature == 1.0
    assert s.order == "random"
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_sampling(None, preset="rar_q")
    with pytest.raises(ValueError, match="unknown sampling key"):
        resolve_sampling(None, overrides={"top_k": 5})


def test_a_size_without_a_preset_falls_back_to_rar_ls():
    """One fallback: a model size without a preset samples with SamplingConfig's defaults,
    which are FALLBACK_PRESET's (RAR-L's) values, as rar sample and rar bench-sample do."""
    from rar.settings.stages import FALLBACK_PRESET, SAMPLING_PRESETS

    s, name = resolve_sampling("rar_tiny")
    assert name is None and s == SamplingConfig() == SAMPLING_PRESETS[FALLBACK_PRESET]
    assert FALLBACK_PRESET == "rar_l" and (s.guidance_scale, s.temperature) == (15.5, 1.02)


# ------------------------------------------------------------------------------------------
# End to end: layout, resume, byte identity
# ------------------------------------------------------------------------------------------


def test_samples_npz_has_the_adm_layout(reference_run):
    with zipfile.ZipFile(reference_run) as zf:
        assert sorted(zf.namelist()) == ["arr_0.npy", "labels.npy"]
    with np.load(reference_run) as z:
        images, labels = z["arr_0"], z["labels"]
    assert images.shape == (NUM_CLASSES * PER_CLASS, 64, 64, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.array_equal(labels, class_labels(NUM_CLASSES, PER_CLASS, seed=3))
    _assert_interleaved(labels, NUM_CLASSES)
    assert len({im.tobytes() for im in images}) == len(images)  # no repeated draws
    info = json.loads(reference_run.with_suffix(".json").read_text())
    assert info["num_samples"] == 6 and info["per_class_min"] == info["per_class_max"] == 2
    assert info["format"] == info["plan"]["format"] == SAMPLES_FORMAT == "rar-samples/2"
    assert info["sampling"]["guidance_scale"] == 15.5  # rar_tiny has no preset: the defaults
    assert info["sampling"]["guidance_schedule"] == "pow-cosine"
    assert len(info["checkpoint_sha256"]) == 64 and info["num_chunks"] == 3
    from PIL import Image

    grid = Image.open(reference_run.with_name("grid.png"))
    assert grid.size == (PER_CLASS * 64, NUM_CLASSES * 64)
    # merged chunks are removed; finished/ keeps hard links to the merged files
    chunks = chunk_dir_for(reference_run)
    assert sorted(p.name for p in chunks.iterdir()) == ["finished", "plan.json"]
    assert (chunks / "finished/samples.npz").samefile(reference_run)


def test_samples_deleted_after_the_merge_come_back_without_sampling(files, tmp_path, capsys):
    """Snakemake deletes a job's outputs before running it again (one it saw as incomplete
    after it died while the job ran on): the kept links restore them; nothing is sampled."""
    out = tmp_path / "samples.npz"
    _sample(files, out)
    made = {p: p.read_bytes() for p in (out, out.with_name("grid.png"), out.with_suffix(".json"))}
    out.unlink()
    out.with_name("grid.png").unlink()
    capsys.readouterr()
    _sample(files, out)
    printed = capsys.readouterr().out
    assert "restored samples.npz, grid.png, samples.json" in printed
    assert "is complete with these settings; nothing to do" in printed
    assert {p: p.read_bytes() for p in made} == made
    # other settings: the kept files are not restored
    out.unlink()
    _sample(files, out, seed=4)
    assert "restored" not in capsys.readouterr().out


def test_ranks_and_resume_reproduce_the_uninterrupted_file(files, reference_run, tmp_path):
    """Two "processes" (rank 1 of 2, then rank 0 of 2 after a crash left a half-written file)
    give the same bytes as one uninterrupted process."""
    out = tmp_path / "samples.npz"
    assert _sample(files, out, rank=1, world_size=2, keep_chunks=True) is None
    chunks = chunk_dir_for(out)
    assert sorted(p.name for p in chunks.glob("chunk_*")) == [CHUNK_NAME.format(1)]
    (chunks / f".{CHUNK_NAME.format(0)}.999.tmp").write_bytes(b"half a chunk")  # a crash
    info = _sample(files, out, rank=0, world_size=2, merge_timeout_s=0)
    assert out.read_bytes() == reference_run.read_bytes()
    assert (
        info["samples_sha256"]
        == json.loads(reference_run.with_suffix(".json").read_text())["samples_sha256"]
    )


def test_three_ranks_reproduce_the_single_process_file(files, reference_run, tmp_path):
    """Ranks 1 and 2 of 3 first (as separate jobs would), then rank 0 merges: same bytes."""
    out = tmp_path / "samples.npz"
    for rank in (2, 1):
        assert _sample(files, out, rank=rank, world_size=3, keep_chunks=True) is None
    assert sorted(p.name for p in chunk_dir_for(out).glob("chunk_*")) == [
        CHUNK_NAME.format(1),
        CHUNK_NAME.format(2),
    ]
    _sample(files, out, rank=0, world_size=3, merge_timeout_s=0)
    assert out.read_bytes() == reference_run.read_bytes()


def test_each_image_was_generated_for_its_label(files, reference_run):
    """Regenerating chunk k from the stored labels and the chunk's generator gives the stored
    images: labels[i] is the class image i was made for."""
    from rar.model.generate import generate
    from rar.model.tokenizer import load_tokenizer, to_uint8

    model, _ = load_generator(files["checkpoint"])
    tok = load_tokenizer(files["tokenizer"])
    with np.load(reference_run) as z:
        images, labels = z["arr_0"], z["labels"]
    for k in range(num_chunks(len(labels), CHUNK)):
        start, stop = chunk_bounds(k, len(labels), CHUNK)
        generator = chunk_generator(3, k, "cpu")
        ids = generate(
            model, torch.from_numpy(labels[start:stop]), SamplingConfig(), generator=generator
        )
        assert np.array_equal(to_uint8(tok.decode(ids)).numpy(), images[start:stop])


def test_rerun_after_sigkill_skips_finished_chunks(files, reference_run, tmp_path):
    out = tmp_path / "samples.npz"
    code = textwrap.dedent(f"""
        from rar.sampling.sampler import sample
        sample({str(files["checkpoint"])!r}, {str(files["tokenizer"])!r}, {str(out)!r},
               num_per_class={PER_CLASS}, chunk_size={CHUNK}, seed=3, device="cpu",
               progress=False, keep_chunks=True)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    first = chunk_dir_for(out) / CHUNK_NAME.format(0)
    deadline = time.monotonic() + 60
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name for p in chunk_dir_for(out).glob("chunk_*.npz")}
    assert CHUNK_NAME.format(0) in done
    mtimes = {n: (chunk_dir_for(out) / n).stat().st_mtime_ns for n in done}
    _sample(files, out, keep_chunks=True)
    for n, t in mtimes.items():  # finished chunks were kept, not regenerated
        assert (chunk_dir_for(out) / n).stat().st_mtime_ns == t
    assert out.read_bytes() == reference_run.read_bytes()


def test_chunks_of_other_settings_are_refused(files, tmp_path):
    out = tmp_path / "samples.npz"
    _sample(files, out, rank=1, world_size=2)  # leaves chunk 1 made with seed 3
    with pytest.raises(ValueError, match=r"other settings.*seed"):
        _sample(files, out, seed=4)


def test_chunks_of_the_old_class_sorted_layout_are_refused(files, tmp_path):
    out = tmp_path / "samples.npz"
    chunks = chunk_dir_for(out)
    chunks.mkdir()
    (chunks / "plan.json").write_text(json.dumps({"format": "rar-samples/1", "seed": 3}))
    with pytest.raises(ValueError, match=r"rar-samples/1.*class-sorted.*delete that folder"):
        _sample(files, out)


def test_a_complete_output_is_not_sampled_again(files, reference_run, capsys):
    before = reference_run.stat().st_mtime_ns
    info = _sample(files, reference_run)
    assert "nothing to do" in capsys.readouterr().out
    assert info["num_samples"] == 6 and reference_run.stat().st_mtime_ns == before


def small_plan(files) -> dict:
    """The plan of 2 images a class of 3 classes, chunks of 2, seed 3, the default sampling."""
    from rar.sampling.sampler import sampling_plan

    settings = SampleSettings(num_per_class=2, chunk_size=2, seed=3)
    return sampling_plan(
        files["checkpoint"],
        files["tokenizer"],
        settings,
        num_classes=3,
        sampling=SamplingConfig(),
        dtype=None,
    )


def test_a_complete_output_is_recognised_by_its_plan(files, tmp_path, capsys):
    """completed_samples: samples.json's plan equal to this call's -> that record; another
    plan or the old class-sorted layout -> None, saying why it samples again."""
    from rar.sampling.sampler import completed_samples

    plan = small_plan(files)
    assert plan["format"] == SAMPLES_FORMAT and plan["dtype"] == "fp32"
    out = tmp_path / "samples.npz"
    assert completed_samples(out, plan) is None  # nothing there yet
    out.write_bytes(b"")
    (tmp_path / "samples.json").write_text(json.dumps({"plan": plan, "num_samples": 6}))
    assert completed_samples(out, plan)["num_samples"] == 6
    assert "nothing to do" in capsys.readouterr().out
    assert completed_samples(out, {**plan, "seed": 4}) is None
    assert "other settings; sampling again" in capsys.readouterr().out
    old = {**plan, "format": "rar-samples/1"}
    (tmp_path / "samples.json").write_text(json.dumps({"plan": old}))
    assert completed_samples(out, plan) is None
    assert "'rar-samples/1'" in capsys.readouterr().out


def test_sets_and_chunks_from_before_top_k_was_removed_are_kept(files, tmp_path, capsys):
    """Plans written while top_k / top_p were settings recorded them at their off values: such
    a set is complete and its chunks belong to it (nothing redrawn, nothing refused or
    dropped); one drawn with top-k on is another set."""
    from rar.sampling.chunks import check_plan, read_plan, write_plan
    from rar.sampling.sampler import completed_samples

    plan = small_plan(files)
    old = {**plan, "sampling": {**plan["sampling"], "top_k": 0, "top_p": 1.0}}
    out = tmp_path / "samples.npz"
    out.write_bytes(b"")
    (tmp_path / "samples.json").write_text(json.dumps({"plan": old, "num_samples": 6}))
    assert completed_samples(out, plan)["num_samples"] == 6
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    write_plan(chunks, old)
    assert read_plan(chunks) == plan
    check_plan(chunks, plan)  # no error: the same plan
    on = {**plan, "sampling": {**plan["sampling"], "top_k": 50, "top_p": 1.0}}
    (tmp_path / "samples.json").write_text(json.dumps({"plan": on, "num_samples": 6}))
    assert completed_samples(out, plan) is None
    write_plan(chunks, on)
    with pytest.raises(ValueError, match="other settings"):
        check_plan(chunks, plan)


def test_num_classes_must_fit_the_model(files, tmp_path):
    with pytest.raises(ValueError, match=r"num_classes 4 must be in 1\.\.3"):
        _sample(files, tmp_path / "samples.npz", num_classes=4)
    assert not list(tmp_path.iterdir())  # refused before any chunk


def test_a_misspelt_sampling_setting_is_an_error(files, tmp_path):
    with pytest.raises(TypeError, match="guidance_scal"):
        _sample(files, tmp_path / "samples.npz", guidance_scal=2.0)


def test_cli_sample_writes_the_set(files, reference_run, tmp_path, capsys):
    from rar.cli import main

    out = tmp_path / "cli" / "samples.npz"
    args = [
        "sample",
        "--checkpoint",
        str(files["checkpoint"]),
        "--tokenizer",
        str(files["tokenizer"]),
        "--out",
        str(out),
        "--num-per-class",
        str(PER_CLASS),
        "--chunk-size",
        str(CHUNK),
        "--seed",
        "3",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert out.read_bytes() == reference_run.read_bytes()
    assert "wrote" in capsys.readouterr().out
    # An override changes the plan: recorded in samples.json.
    assert main([*args[:-4], "--guidance-scale", "1.0", "--out", str(tmp_path / "g1.npz")]) == 0
    assert json.loads((tmp_path / "g1.json").read_text())["sampling"]["guidance_scale"] == 1.0


def _cli_args(files, out) -> list[str]:
    return [
        "sample",
        "--checkpoint",
        str(files["checkpoint"]),
        "--tokenizer",
        str(files["tokenizer"]),
        "--out",
        str(out),
        "--num-per-class",
        "1",
        "--chunk-size",
        str(NUM_CLASSES),
        "--device",
        "cpu",
    ]


def test_cli_guidance_schedule_and_scale_from_file_are_recorded(files, tmp_path, capsys):
    from rar.cli import main

    picked = tmp_path / "guidance.json"
    picked.write_text(json.dumps({"guidance_scale": 2.5, "fid": 3.1}))  # as sweep-guidance
    out = tmp_path / "samples.npz"
    extra = ["--guidance-schedule", "linear", "--guidance-scale", "9.0"]
    assert main([*_cli_args(files, out), *extra, "--guidance-scale-from", str(picked)]) == 0
    sampling = json.loads(out.with_suffix(".json").read_text())["sampling"]
    assert sampling["guidance_schedule"] == "linear"
    assert sampling["guidance_scale"] == 2.5  # the file's scale wins over --guidance-scale
    assert read_guidance_scale(picked) == 2.5


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ('{"fid": 2.0}', "no key 'guidance_scale'"),
        ('{"guidance_scale": "high"}', "not a finite number"),
    ],
)
def test_cli_guidance_scale_from_a_bad_file_is_one_clear_error(
    files, tmp_path, capsys, content, match
):
    from rar.cli import main

    picked = tmp_path / "guidance.json"
    if content is not None:
        picked.write_text(content)
    out = tmp_path / "samples.npz"
    assert main([*_cli_args(files, out), "--guidance-scale-from", str(picked)]) == 2
    err = capsys.readouterr().err
    assert match in err and str(picked) in err and "guidance_scale" in err
    assert not out.exists() and not chunk_dir_for(out).exists()  # nothing was sampled


def test_chunk_size_has_one_default(files, tmp_path, monkeypatch):
    """sample()'s signature, `rar sample` and the study schema's `sampling.chunk_size` all
    use DEFAULT_CHUNK_SIZE (rar.settings.presets, torch-free)."""
    import yaml

    import rar.ops.launch
    from rar.cli import build_parser, main
    from rar.experiments import SCHEMA

    assert DEFAULT_CHUNK_SIZE == 250
    assert SampleSettings().chunk_size == DEFAULT_CHUNK_SIZE  # sample()'s default settings
    calls = []
    monkeypatch.setattr(rar.ops.launch, "launch", lambda fn, *a, **kw: calls.append(a))
    args = _cli_args(files, tmp_path / "samples.npz")
    i = args.index("--chunk-size")
    assert main(args[:i] + args[i + 2 :]) == 0
    assert calls[0][3].chunk_size == DEFAULT_CHUNK_SIZE  # the SampleSettings passed on
    assert main(args) == 0 and calls[1][3].chunk_size == NUM_CLASSES
    for command in ("sample", "sweep-guidance"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]
        flag = next(a for a in sub._actions if "--chunk-size" in a.option_strings)
        assert flag.default == DEFAULT_CHUNK_SIZE
    schema = yaml.safe_load(SCHEMA.read_text())
    chunk = schema["properties"]["sampling"]["allOf"][1]["properties"]["chunk_size"]
    assert chunk["default"] == DEFAULT_CHUNK_SIZE


def test_a_guidance_sweep_loads_its_scorer_once_and_scores_like_evaluate(
    files, tmp_path, monkeypatch
):
    """Every scale of a sweep is scored by one Scorer (the extractor, its weights' hash and
    the reference features load once per job), and each point's metrics.json is what
    `rar evaluate` writes for the same samples."""
    from PIL import Image

    import rar.evaluation.scorer
    from rar.evaluation.scorer import evaluate
    from rar.sampling.sweep import sweep_guidance
    from rar.settings.stages import ScoringSettings

    reference = tmp_path / "reference"
    rng = np.random.default_rng(0)
    for c in range(NUM_CLASSES):
        (reference / str(c)).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((64, 64)).save(reference / str(c) / f"{i}.png")
    made, scorer = [], rar.evaluation.scorer.Scorer
    monkeypatch.setattr(
        rar.evaluation.scorer, "Scorer", lambda *a, **k: made.append(1) or scorer(*a, **k)
    )
    scoring = dict(extractor="efficientnet-lite0", cache_dir=tmp_path / "cache", device="cpu")
    settings = SampleSettings(num_per_class=PER_CLASS, chunk_size=CHUNK, seed=3, device="cpu")
    result = sweep_guidance(
        files["checkpoint"],
        files["tokenizer"],
        tmp_path / "sweep/guidance.json",
        scales=[1.0, 3.0],
        reference=reference,
        settings=settings,
        scoring=ScoringSettings(**scoring),
        progress=False,
    )
    assert len(made) == 1 and [p["guidance_scale"] for p in result["points"]] == [1.0, 3.0]
    point = tmp_path / "sweep/scale_3"
    alone = evaluate(point / "samples.npz", reference, bootstrap_resamples=0, **scoring)
    swept = json.loads((point / "metrics.json").read_text())
    timings = {"seconds", "setup_seconds", "scoring_seconds"}
    assert {k: v for k, v in swept.items() if k not in timings} == {
        k: v for k, v in alone.items() if k not in timings
    }


def test_a_chunk_decodes_in_slices_equal_to_one_decode(monkeypatch):
    """The tokenizer decodes a chunk in slices of rar.settings.presets.decode_slice images (at
    the image size the ids and the tokenizer give), in fp32 even under an autocast around it,
    and the images equal one fp32 decode of all (rar.model.tokenizer.decode_to_uint8, which
    `rar bench-sample` times too)."""
    import rar.model.tokenizer
    import rar.sampling.sampler as sampler
    from rar.model.tokenizer import to_uint8

    config = MaskGITVQGANConfig(hidden_channels=32, channel_mult=(1, 2), z_channels=32)
    tok = MaskGITVQGAN(MaskGITVQGANConfig(**{**config.__dict__, "image_size": 16})).eval()
    ids = torch.randint(0, tok.codebook_size, (7, tok.grid * tok.grid))
    sizes, seen = [], []
    decode = tok.decode
    monkeypatch.setattr(tok, "decode", lambda x: sizes.append(len(x)) or decode(x))
    monkeypatch.setattr(sampler, "generate", lambda *a, **k: ids)
    monkeypatch.setattr(
        rar.model.tokenizer, "decode_slice", lambda pixels: seen.append(pixels) or 3
    )
    labels = np.zeros(7, np.int64)
    kwargs = dict(sampling=None, generator=None, device="cpu", dtype=None, compile=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = sampler._generate_chunk(None, tok, labels, **kwargs)
    assert seen == [16 * 16] and sizes == [3, 3, 1]
    assert images.shape == (7, 16, 16, 3) and images.dtype == np.uint8
    assert np.array_equal(images, to_uint8(decode(ids)).numpy())
