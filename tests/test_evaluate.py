"""`rar evaluate`: torch-fidelity's features and FID, ADM's IS and precision/recall on them,
content-keyed caches, the offline error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch_fidelity.metric_fid import fid_features_to_statistics

import rar.evaluation.scorer as ev
from rar.demo import extractor as efficientnet
from rar.evaluation.extractors import (
    EXTRACTORS,
    ExtractorUnavailable,
    check_extractor_available,
    inception_cache_path,
    inception_url,
)
from rar.evaluation.image_sets import NpzImages
from rar.evaluation.metrics import PAPER_METRICS, precision_recall
from rar.evaluation.scorer import evaluate
from rar.files import write_npz


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No test may reach the network or torch-fidelity's name-keyed cache in ~/.cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("RAR_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    yield
    assert not (tmp_path / "torch_home" / "fidelity_cache").exists()


def _images(seed: int, n: int = 10, size: int = 32, shift: int = 0) -> np.ndarray:
    """Smooth random pictures (n, size, size, 3) uint8: 4x4 colour noise, upsampled."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic")
    x = (x + shift).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _npz(path: Path, images: np.ndarray, **extra) -> Path:
    labels = np.arange(len(images), dtype=np.int64) % 4
    write_npz(path, {"arr_0": images, "labels": labels, **extra})
    return path


def _direct(samples: Path, reference: Path, extractor: str, weights: Path | None, **kw) -> dict:
    """torch-fidelity called directly, without our code in between (and without its cache)."""
    efficientnet.register()
    return torch_fidelity.calculate_metrics(
        input1=NpzImages(samples),
        input2=NpzImages(reference),
        feature_extractor=extractor,
        feature_extractor_weights_path=str(weights) if weights else None,
        cuda=False,
        cache=False,
        verbose=False,
        batch_size=10,
        **kw,
    )


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """Randomly initialised Inception in the exact layout torch-fidelity's loader expects."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    mp = pytest.MonkeyPatch()
    mp.setattr(inc, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    torch.manual_seed(0)
    fe = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    torch.save(fe.state_dict(), path)
    inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(path))  # loads strictly
    return path


# ------------------------------------------------------------------------------------------
# Weights: offline error, paths
# ------------------------------------------------------------------------------------------


def test_offline_without_inception_weights_says_what_to_fetch(tmp_path):
    with pytest.raises(ExtractorUnavailable) as err:
        check_extractor_available("inception-v3-compat")
    message = str(err.value)
    assert inception_url() in message and "weights-inception-2015-12-05" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message  # where to put it
    assert "--weights" in message
    with pytest.raises(ExtractorUnavailable, match="does not exist"):
        check_extractor_available("inception-v3-compat", tmp_path / "missing.pth")


def test_sampling_fails_before_any_work_when_scoring_would_fail(tmp_path):
    from rar.sampling.sampler import sample

    with pytest.raises(ExtractorUnavailable):  # not FileNotFoundError: nothing was loaded
        sample(
            tmp_path / "no.bin",
            tmp_path / "no_tok.bin",
            tmp_path / "s.npz",
            check_extractor="inception-v3-compat",
        )
    assert not list(tmp_path.iterdir())


def test_weights_found_in_the_cache_or_the_wheel(tmp_path, inception_weights):
    cached = inception_cache_path()
    assert cached.is_relative_to(tmp_path / "torch_home")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(inception_weights.read_bytes())
    assert check_extractor_available("inception-v3-compat") == cached
    lite = check_extractor_available("efficientnet-lite0")
    assert lite.name == "efficientnet-lite0-57934424.pth" and lite.is_file()


# ------------------------------------------------------------------------------------------
# Metrics equal torch-fidelity's own (FID) and ADM's on torch-fidelity's features (IS, P/R)
# ------------------------------------------------------------------------------------------


def _direct_features(samples: Path, extractor: str, weights: Path | None, layers) -> dict:
    """torch-fidelity's features of `samples`, extracted without our code in between."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    efficientnet.register()
    fe = create_feature_extractor(
        extractor,
        list(layers),
        cuda=False,
        feature_extractor_weights_path=str(weights) if weights else None,
        verbose=False,
    )
    return get_featuresdict_from_dataset(NpzImages(samples), fe, 10, False, True, False)


def test_metrics_equal_torch_fidelity_called_directly(tmp_path):
    samples = _npz(tmp_path / "samples.npz", _images(0))
    reference = _npz(tmp_path / "reference.npz", _images(1))
    info = {
        "sampling": {"guidance_scale": 16.0},
        "seed": 5,
        "checkpoint_sha256": "ab" * 32,
        "preset": "rar_b",
    }
    (tmp_path / "samples.json").write_text(json.dumps(info))  # as `rar sample` writes it
    m = evaluate(
        samples,
        reference,
        extractor="efficientnet-lite0",
        cache_dir=tmp_path / "c",
        out=tmp_path / "m.json",
        device="cpu",
        batch_size=10,
        verbose=False,
    )
    # FID, and IS as ADM's for N <= 5,000: one split, unshuffled
    direct = _direct(
        samples,
        reference,
        "efficientnet-lite0",
        None,
        isc=True,
        fid=True,
        isc_splits=1,
        samples_shuffle=False,
    )
    assert m["fid_efficientnet_lite0"] == pytest.approx(
        direct["frechet_inception_distance"], rel=1e-6
    )
    assert m["isc_efficientnet_lite0_mean"] == pytest.approx(direct["inception_score_mean"])
    assert m["isc_efficientnet_lite0_std"] == 0.0 and m["settings"]["isc_splits"] == 1
    # precision/recall: ADM's (rar.evaluation.metrics) on the samples' and the reference's features
    x, ref = (
        _direct_features(f, "efficientnet-lite0", None, ["1280"])["1280"]
        for f in (samples, reference)
    )
    prc = precision_recall(x, ref)
    assert m["precision_efficientnet_lite0"] == prc["precision"]
    assert m["recall_efficientnet_lite0"] == prc["recall"]
    # Named for its extractor: nothing in the file can pass for an Inception number.
    written = json.loads((tmp_path / "m.json").read_text())
    assert not {"fid", "isc_mean", "precision", "recall"} & set(written)
    assert written["extractor"] == "efficientnet-lite0" and written["num_samples"] == 10
    assert written["comparable_to_paper"] == dict.fromkeys(PAPER_METRICS, False)
    assert written["format"] == "rar-metrics/2"
    assert any("10 samples" in r for r in written["not_comparable_because"])
    assert written["extractor_weights_sha256"].startswith("57934424")
    assert written["torch_fidelity_version"] == torch_fidelity.__version__
    assert written["sampling"] == {"guidance_scale": 16.0} and written["sampling_seed"] == 5
    assert written["checkpoint_sha256"] == "ab" * 32 and written["sampling_preset"] == "rar_b"


def test_fid_of_a_set_against_itself_is_zero_and_rises_with_a_shift(tmp_path):
    base = _npz(tmp_path / "base.npz", _images(2))
    shifted = _npz(tmp_path / "shifted.npz", _images(2, shift=60))
    kw = dict(
        extractor="efficientnet-lite0",
        cache_dir=tmp_path / "c",
        device="cpu",
        batch_size=10,
        verbose=False,
    )
    same = evaluate(base, base, **kw)
    moved = evaluate(shifted, base, **kw)
    assert abs(same["fid_efficientnet_lite0"]) < 1e-3
    assert same["precision_efficientnet_lite0"] == same["recall_efficientnet_lite0"] == 1.0
    assert moved["fid_efficientnet_lite0"] > 1.0


def test_adm_reference_uses_its_mu_sigma_for_fid_and_its_images_for_pr(tmp_path, inception_weights):
    """An ADM-style batch whose mu/sigma are the samples' own statistics and whose images
    arr_0 are another set: FID is ~0 only if the file's mu/sigma are used; precision and
    recall against arr_0 equal ADM's on torch-fidelity's features."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    n = 4  # the fewest that k = 3 nearest neighbours allow
    samples = _npz(tmp_path / "samples.npz", _images(3, n=n, size=16))
    fe = create_feature_extractor(
        "inception-v3-compat",
        ["2048"],
        cuda=False,
        feature_extractor_weights_path=str(inception_weights),
        verbose=False,
    )
    feats = get_featuresdict_from_dataset(NpzImages(samples), fe, n, False, True, False)
    stats = fid_features_to_statistics(feats["2048"])
    adm = _npz(
        tmp_path / "VIRTUAL_adm.npz",
        _images(4, n=n, size=16),
        mu=stats["mu"].astype(np.float64),
        sigma=stats["sigma"],
    )
    m = evaluate(
        samples,
        adm,
        extractor="inception-v3-compat",
        weights=inception_weights,
        cache_dir=tmp_path / "c",
        device="cpu",
        batch_size=n,
        isc_split_size=2,
        verbose=False,
    )
    ref_feats = get_featuresdict_from_dataset(NpzImages(adm), fe, n, False, True, False)
    prc = precision_recall(feats["2048"], ref_feats["2048"])
    assert abs(m["fid"]) < 1e-3 and m["fid_reference_statistics"] == "reference_npz_mu_sigma"
    assert (m["precision"], m["recall"]) == (prc["precision"], prc["recall"])
    assert m["isc_mean"] > 0 and m["num_reference_images"] == n
    assert m["settings"]["isc_splits"] == 2 and m["settings"]["isc_order"] == "file"
    # Random weights are not torch-fidelity's: never comparable, whatever the sample count;
    # and IS splits of 2 are not ADM's 5,000: a reason of the IS only.
    assert any("Inception weights" in r for r in m["not_comparable_because"])
    assert "IS: splits of 2 images; ADM's are 5000" in m["not_comparable_because"]
    assert m["comparable_to_paper"] == dict.fromkeys(PAPER_METRICS, False)


# ------------------------------------------------------------------------------------------
# Caches keyed by content
# ------------------------------------------------------------------------------------------


def test_reference_cache_follows_the_content_not_the_name(tmp_path):
    samples = _npz(tmp_path / "samples.npz", _images(6, n=6))
    folder = tmp_path / "real"
    for i, im in enumerate(_images(7, n=6)):
        (folder / f"class_{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"class_{i % 2}" / f"{i}.png")
    kw = dict(
        extractor="efficientnet-lite0",
        cache_dir=tmp_path / "cache",
        device="cpu",
        batch_size=10,
        verbose=False,
    )
    first = evaluate(samples, folder, **kw)
    again = evaluate(samples, folder, **kw)
    assert again["fid_efficientnet_lite0"] == first["fid_efficientnet_lite0"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    # The same folder name, other pictures: a new cache entry and new numbers.
    Image.fromarray(_images(8)[0]).save(folder / "class_0" / "0.png")
    changed = evaluate(samples, folder, **kw)
    assert changed["reference_sha256"] != first["reference_sha256"]
    assert changed["fid_efficientnet_lite0"] != first["fid_efficientnet_lite0"]
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*.npz"))
    # keyed by the weights and the input size the demo extractor resizes to
    features = f"{first['extractor_weights_sha256']}-{first['extractor_input_size']}px"
    assert first["extractor_input_size"] == EXTRACTORS["efficientnet-lite0"].input_size
    assert cached == sorted(
        f"{h}-{features}.npz" for h in (first["reference_sha256"], changed["reference_sha256"])
    )


# ------------------------------------------------------------------------------------------
# The CLI
# ------------------------------------------------------------------------------------------


def test_cli_evaluate_offline_fails_at_once_with_the_file_to_fetch(tmp_path, capsys):
    from rar.cli import main

    samples = _npz(tmp_path / "samples.npz", _images(0, n=4))
    args = [
        "evaluate",
        "--samples",
        str(samples),
        "--reference",
        str(samples),
        "--out",
        str(tmp_path / "metrics.json"),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert main(args) == 2  # bad input: one error line naming the file to fetch
    assert inception_url() in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------
# Real images scored like samples, the class probe, several evaluations in one job
# ------------------------------------------------------------------------------------------


COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def _class_folder(root: Path, n: int, seed: int) -> Path:
    """Class folders of noisy single-colour pictures (blue, green, red)."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            im = np.clip(np.array(rgb) + rng.normal(0, 8, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(im).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def colour_sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("colours")
    return {
        split: _class_folder(root / split, 6, seed)
        for seed, split in enumerate(("train", "val", "test"))
    }


def test_real_images_scored_like_samples_with_the_class_probe(tmp_path, colour_sets):
    """The floor row: a folder of real images in class folders scores like samples; the
    probe fitted on the training folder classifies them all correctly (its calibration),
    and samples whose labels are wrong score 0."""
    kw = dict(
        extractor="efficientnet-lite0",
        cache_dir=tmp_path / "c",
        device="cpu",
        batch_size=18,
        verbose=False,
        bootstrap_resamples=100,
        probe_images=colour_sets["train"],
    )
    m = evaluate(colour_sets["test"], colour_sets["val"], out=tmp_path / "m.json", **kw)
    assert m["class_accuracy"] == 1.0 and m["num_samples"] == 18 and m["num_classes"] == 3
    assert m["class_probe"]["classes"] == ["blue", "green", "red"]
    assert m["fid_ci_low"] <= m["fid_efficientnet_lite0"] <= m["fid_ci_high"]
    assert m["samples_kind"] == "images" and "100 resamples" in m["fid_ci_method"]
    # a folder has no written order: IS splits its images class-interleaved, as
    # rar.sampling.sampler's
    assert m["settings"]["isc_order"] == "class-interleaved"
    # The probe is cached by content: a second evaluation does not fit it again.
    assert len(list((tmp_path / "c").glob("probe-*.npz"))) == 1
    # An npz whose labels name the wrong classes (blue images labelled green, ...).
    images = np.stack(
        [np.asarray(Image.open(p)) for p in sorted((colour_sets["test"] / "blue").glob("*.png"))]
    )
    wrong = _npz(tmp_path / "wrong.npz", images)  # labels 0, 1, 2, 3, ... % 4
    write_npz(wrong, {"arr_0": images, "labels": np.ones(len(images), dtype=np.int64)})
    assert evaluate(wrong, colour_sets["val"], **kw)["class_accuracy"] == 0.0
    without = evaluate(wrong, colour_sets["val"], **{**kw, "probe_images": None})
    assert without["class_accuracy"] is None and without["class_probe"] is None


def test_evaluate_many_loads_the_extractor_once_and_matches_single_runs(
    tmp_path, colour_sets, monkeypatch
):
    a = _npz(tmp_path / "a.npz", _images(0, n=6))
    b = _npz(tmp_path / "b.npz", _images(1, n=6))
    kw = dict(
        extractor="efficientnet-lite0",
        cache_dir=tmp_path / "c",
        device="cpu",
        batch_size=6,
        verbose=False,
        bootstrap_resamples=20,
    )
    single = [evaluate(s, colour_sets["val"], **kw) for s in (a, b)]
    loads = []
    real = ev.load_feature_extractor
    monkeypatch.setattr(
        ev, "load_feature_extractor", lambda *a, **k: loads.append(1) or real(*a, **k)
    )
    many = ev.evaluate_many(
        [(a, tmp_path / "a.json"), (b, tmp_path / "b.json")], colour_sets["val"], **kw
    )
    assert len(loads) == 1
    for one, rec in zip(single, many, strict=True):
        for key in (
            "fid_efficientnet_lite0",
            "fid_ci_low",
            "fid_ci_high",
            "recall_efficientnet_lite0",
        ):
            assert rec[key] == one[key]
    assert json.loads((tmp_path / "b.json").read_text())["samples"] == str(b)
    # A rerun keeps finished metrics files instead of scoring again.
    again = ev.evaluate_many([(a, tmp_path / "a.json")], colour_sets["val"], **kw)
    assert again[0]["seconds"] == many[0]["seconds"]
    with pytest.raises(ValueError, match="same metrics file"):
        ev.evaluate_many([(a, tmp_path / "x.json"), (b, tmp_path / "x.json")], a, **kw)


def test_cli_evaluate_scores_pairs_in_one_job(tmp_path, colour_sets):
    from rar.cli import main

    a = _npz(tmp_path / "a.npz", _images(0, n=4))
    b = _npz(tmp_path / "b.npz", _images(1, n=4))
    common = ["--reference", str(colour_sets["val"]), "--extractor", "efficientnet-lite0"]
    common += ["--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--bootstrap-resamples", "10"]
    args = ["evaluate", "--samples", str(a), "--out", str(tmp_path / "a.json")]
    args += ["--samples", str(b), "--out", str(tmp_path / "b.json"), *common]
    assert main(args) == 0
    for name in ("a", "b"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["samples"] == str(tmp_path / f"{name}.npz") and record["fid_ci_high"] > 0
    odd = ["evaluate", "--samples", str(a), "--samples", str(b), "--out", str(tmp_path / "x.json")]
    assert main([*odd, *common]) == 2  # pairs only: one line naming the problem
    assert not (tmp_path / "x.json").exists()


def test_val_nll_is_the_samples_checkpoints_heldout_nll_in_their_order(tmp_path, heldout_shards):
    """`--heldout`: metrics.json's val_nll is rar.evaluation.heldout.heldout_nll of the checkpoint
    that samples.json names, in the order it records; real images (no checkpoint) get null."""
    from rar.evaluation.heldout import HELDOUT_SEED, heldout_nll, load_heldout
    from rar.model.checkpoint import load_generator
    from rar.sampling.reference_rows import write_untrained_checkpoint
    from rar.settings.training import TrainConfig

    images, shards = heldout_shards
    cfg = TrainConfig(
        model="rar_tiny",
        architecture="plain",
        codebook_size=64,
        num_classes=2,
        num_tokens=16,
        source_images=4,
        epochs=1,
        global_batch=2,
        anneal_start=0,
        anneal_end=1,
        seed=3,
    )
    checkpoint = write_untrained_checkpoint(cfg, tmp_path / "init.pt")
    samples = _npz(tmp_path / "samples.npz", _images(6, n=6))
    info = {"checkpoint": str(checkpoint), "sampling": {"order": "spiral-out"}}
    (tmp_path / "samples.json").write_text(json.dumps(info))
    kw = dict(
        extractor="efficientnet-lite0",
        cache_dir=tmp_path / "cache",
        device="cpu",
        batch_size=10,
        verbose=False,
        heldout=shards,
    )
    record = evaluate(samples, images / "val", out=tmp_path / "metrics.json", **kw)

    model, _ = load_generator(checkpoint)
    want = heldout_nll(model, load_heldout(shards), "spiral-out", seed=HELDOUT_SEED)
    assert record["val_nll"] == pytest.approx(want["val_nll"], rel=1e-9)
    assert (record["val_nll_order"], record["val_nll_sequences"]) == ("spiral-out", 6)
    assert record["val_nll_ci_low"] < record["val_nll"] < record["val_nll_ci_high"]
    real = evaluate(images / "train", images / "val", **kw)  # the floor row: real images
    assert real["val_nll"] is None and real["val_nll_order"] is None


def test_a_checkpoint_is_loaded_once_for_consecutive_sample_sets(monkeypatch):
    """Scorer.generator: the sample sets of one checkpoint (a guidance sweep's scales) share
    one load; another checkpoint replaces it (one generator in memory at a time)."""
    import rar.model.checkpoint

    loads = []

    def load_generator(path):
        loads.append(path)
        return torch.nn.Linear(1, 1), {}

    monkeypatch.setattr(rar.model.checkpoint, "load_generator", load_generator)
    scorer = object.__new__(ev.Scorer)  # only what `generator` uses: no extractor, no reference
    scorer._generator, scorer.dev = None, torch.device("cpu")
    first = scorer.generator("a.pt")
    assert scorer.generator("a.pt") is first and loads == ["a.pt"]
    assert scorer.generator("b.pt") is not first and loads == ["a.pt", "b.pt"]
    scorer.generator("a.pt")
    assert loads == ["a.pt", "b.pt", "a.pt"]


def test_summary_line_shows_the_metrics_and_why_they_do_not_compare():
    record = {
        "fid_efficientnet_lite0": 12.5,
        "precision_efficientnet_lite0": None,
        "fid_ci_low": 11.0,
        "class_accuracy": 0.75,
        "num_samples": 10,
        "extractor": "efficientnet-lite0",
        "samples": "s.npz",
        "not_comparable_because": ["10 samples", "features"],
        "seconds": 3.0,
    }
    line = ev.summary_line(record, ["fid_efficientnet_lite0", "precision_efficientnet_lite0"])
    assert line == (
        "s.npz: fid_efficientnet_lite0 12.5000, fid_ci_low 11.0000, class_accuracy 0.7500 "
        "(10 samples, efficientnet-lite0); NOT comparable: 10 samples; features"
    )
    assert ev.summary_line({**record, "not_comparable_because": []}, []).endswith(
        "; comparable to the paper"
    )


def test_metrics_json_copies_how_the_samples_were_made():
    info = {"sampling": {"order": "raster"}, "preset": "rar_b", "seed": 3, "dtype": "bf16"}
    fields = ev.sampling_fields(info)
    assert (fields["sampling"], fields["sampling_preset"]) == ({"order": "raster"}, "rar_b")
    assert (fields["sampling_seed"], fields["sampling_dtype"]) == (3, "bf16")
    assert set(ev.sampling_fields({}).values()) == {None}  # real images: no samples.json
