"""`rar evaluate`: FID, Inception Score, precision and recall of a sample set, as ADM's evaluator.

The Scorer composes the pieces, each a module of one mechanism:

- rar.evaluation.extractors: one extractor for all four metrics: `inception-v3-compat` (2048-d pool
  features for FID and precision/recall with k = 3, as ADM; unbiased logits for IS), or the
  offline demo's `efficientnet-lite0` (rar.demo.extractor), whose metrics carry its name
  (`fid_efficientnet_lite0`, ...) so they are never mistaken for Inception FID;
- rar.evaluation.image_sets: the samples and the reference, an `.npz` of images or a folder of
  images (the reference is the ADM batch `VIRTUAL_imagenet256_labeled.npz`: its `mu`/`sigma` for
  FID, its images `arr_0` for precision/recall; a folder of real images in class folders scores
  like samples: the tables' floor row);
- rar.evaluation.feature_cache: reference features and the class probe, cached by content;
- rar.evaluation.metrics: torch-fidelity's FID, ADM's IS (consecutive splits of 5,000 in the file's
  order) and precision/recall (ADM's ManifoldEstimator), the FID's 95% bootstrap interval
  (`fid_ci_low`, `fid_ci_high`, `fid_ci_method`) and the comparability to the paper, per
  metric (docs/metrics.md);
- rar.evaluation.probe: `class_accuracy`, the fraction of samples a linear probe fitted on real
  training images gives the class they were generated for (null without `probe_images`, as in the
  paper's studies); rar.evaluation.heldout: `val_nll`, the checkpoint's held-out NLL.

`metrics.json` names the extractor, its weights' hash, the reference's hash, the sample count
and the sampling settings, and says per metric whether it is comparable to the paper's
(`comparable_to_paper`: {fid, is, precision, recall} -> true, false, or null where not computed).
`evaluate_many` scores several sample sets in one job, loading the extractor, the reference
features, the probe and each checkpoint once (`Scorer`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from rar.evaluation.extractors import (
    extract_features,
    load_feature_extractor,
    resolve_weights,
)
from rar.evaluation.feature_cache import class_probe, reference_features
from rar.evaluation.image_sets import images_dataset, npz_keys, samples_labels
from rar.evaluation.metrics import (
    PAPER_METRICS,
    all_reasons,
    class_interleaved_order,
    comparability,
    fid_bootstrap,
    fid_of_statistics,
    inception_score,
    matrix_sqrt_psd,
    named_metrics,
    precision_recall,
)
from rar.experiments.results import METRICS_FORMAT, read_samples_info, write_metrics
from rar.files import content_sha256, sha256_file
from rar.runtime import make_current, resolve_device
from rar.settings.presets import EXTRACTORS, INCEPTION
from rar.settings.stages import ScoringSettings

# ##########################################################################################
# Scoring: one job loads the extractor, reference and probe once, and scores many sample sets
# ##########################################################################################

# The interval's fields at the top level of metrics.json (the rest go under "settings").
FID_CI_FIELDS = ("fid_ci_low", "fid_ci_high", "fid_ci_level", "fid_ci_method")


def sampling_fields(info: dict) -> dict:
    """What metrics.json copies from the samples' samples.json (rar.sampling.sampler): how and from
    which checkpoint they were made; nulls for real images, which have none."""
    return {
        "sampling": info.get("sampling"),
        "sampling_preset": info.get("preset"),
        "sampling_seed": info.get("seed"),
        "sampling_dtype": info.get("dtype"),
        "guidance_sweep": info.get("guidance_sweep"),  # the sweep that chose the scale
        "num_per_class": info.get("num_per_class"),
        "checkpoint": info.get("checkpoint"),
        "checkpoint_sha256": info.get("checkpoint_sha256"),
        "checkpoint_info": info.get("checkpoint_info"),
        "tokenizer_sha256": info.get("tokenizer_sha256"),
    }


def summary_line(record: dict, metric_keys) -> str:
    """One line for the log: the samples, their metrics, and whether they compare."""
    shown = ", ".join(
        f"{k} {v:.4f}"
        for k, v in record.items()
        if k in {*metric_keys, "fid_ci_low", "fid_ci_high", "class_accuracy", "val_nll"}
        and isinstance(v, float)
    )
    reasons = record["not_comparable_because"]
    tag = "comparable to the paper" if not reasons else "NOT comparable: " + "; ".join(reasons)
    if reasons and any(record.get("comparable_to_paper", {}).values()):
        tag += (
            " (comparable: "
            + ", ".join(m for m, ok in record["comparable_to_paper"].items() if ok)
            + ")"
        )
    return (
        f"{record['samples']}: {shown} ({record['num_samples']} samples, "
        f"{record['extractor']}); {tag}"
    )


class Scorer:
    """What every evaluation against one reference shares, loaded once: the extractor, its
    weights' hash, the reference's features and FID statistics (and their square root, for
    the bootstrap), the class probe, the held-out tokens, the last checkpoint's generator.
    `score(samples, out)` then costs the samples' features and the metrics only.
    `settings`: the fields of ScoringSettings."""

    def __init__(self, reference: str | os.PathLike, **settings) -> None:
        s = self.settings = ScoringSettings(**settings)
        started = time.perf_counter()
        self.reference = Path(reference)
        if s.extractor not in EXTRACTORS:
            raise ValueError(f"unknown extractor {s.extractor!r}; known: {', '.join(EXTRACTORS)}")
        self.extractor, self.spec = s.extractor, EXTRACTORS[s.extractor]
        self.weights_path = resolve_weights(s.extractor, s.weights, allow_download=s.allow_download)
        self.weights_sha256 = sha256_file(self.weights_path)
        self.features_id = self.spec.features_id(self.weights_sha256)
        self.dev = resolve_device(s.device)
        make_current(self.dev)  # torch-fidelity works on the current CUDA device
        self.cuda, self.verbose = self.dev.type == "cuda", s.verbose
        self.fe = load_feature_extractor(
            s.extractor, self.weights_path, cuda=self.cuda, verbose=s.verbose
        )
        self.reference_sha256 = content_sha256(self.reference)
        keys = npz_keys(self.reference)
        self.ref = self._reference_features(keys)
        self.ref_stats, self.fid_reference = self._fid_reference(keys)
        self._ref_sqrt = None  # computed at the first bootstrap
        self.probe_images = Path(s.probe_images) if s.probe_images is not None else None
        self.probe = self._class_probe()
        self.heldout = None
        if s.heldout is not None:
            from rar.evaluation.heldout import load_heldout

            self.heldout = load_heldout(s.heldout)
        self._generator: tuple[str, torch.nn.Module] | None = None  # (checkpoint, model)
        self.setup_seconds = round(time.perf_counter() - started, 3)

    # -- what is loaded once ----------------------------------------------------------------

    def _cache_kw(self) -> dict:
        """How the cached features of a set of images are computed."""
        s = self.settings
        return dict(
            feature_extractor=self.fe,
            features_id=self.features_id,
            cache_dir=s.cache_dir,
            cuda=self.cuda,
            batch_size=s.batch_size,
            verbose=self.verbose,
        )

    def _reference_features(self, keys: set[str]) -> dict[str, np.ndarray]:
        """The reference images' FID statistics and precision/recall features (cached by
        content), or {} for a reference without images (an npz of mu/sigma only)."""
        if not (self.reference.is_dir() or "arr_0" in keys):
            return {}
        return reference_features(
            self.reference,
            extractor=self.extractor,
            reference_sha256=self.reference_sha256,
            **self._cache_kw(),
        )

    def _fid_reference(self, keys: set[str]) -> tuple[dict[str, np.ndarray], str]:
        """The FID's reference statistics {mu, sigma} and what they are. ADM's batch carries
        the statistics of its Inception pool features (mu, sigma); with the same extractor
        they are the FID reference, as in ADM's evaluator. Else the reference images'."""
        if self.extractor == INCEPTION and {"mu", "sigma"} <= keys:
            with np.load(self.reference) as z:
                return {"mu": z["mu"], "sigma": z["sigma"]}, "reference_npz_mu_sigma"
        if self.ref:
            return {"mu": self.ref["mu"], "sigma": self.ref["sigma"]}, "reference_images"
        raise ValueError(f"{self.reference}: neither images (arr_0 or a folder) nor mu/sigma")

    def _class_probe(self):
        """The class probe of `probe_images` (cached by content), or None without them."""
        if self.probe_images is None:
            return None
        return class_probe(self.probe_images, feature_layer=self.spec.fid_layer, **self._cache_kw())

    def ref_sqrt(self) -> torch.Tensor:
        """The reference covariance's square root (FidBootstrap's D x D path), once a job."""
        if self._ref_sqrt is None:
            self._ref_sqrt = matrix_sqrt_psd(self.ref_stats["sigma"], self.dev)
        return self._ref_sqrt

    def generator(self, checkpoint: str) -> torch.nn.Module:
        """The generator of `checkpoint` on this job's device, loaded once for consecutive
        sample sets of one checkpoint (a guidance sweep's scales); only the last is kept."""
        if self._generator is None or self._generator[0] != checkpoint:
            from rar.model.checkpoint import load_generator

            self._generator = None  # the previous model's memory is free before the next loads
            model, _ = load_generator(checkpoint)
            self._generator = (checkpoint, model.to(self.dev))
        return self._generator[1]

    # -- one sample set ---------------------------------------------------------------------

    def score(self, samples: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
        """Score one sample set; write `out` (metrics.json) when given. Returns the record."""
        from torch_fidelity import __version__ as fidelity_version

        started = time.perf_counter()
        samples, layer = Path(samples), self.spec.fid_layer
        dataset = images_dataset(samples)
        feats = extract_features(
            dataset,
            self.fe,
            batch_size=self.settings.batch_size,
            cuda=self.cuda,
            verbose=self.verbose,
        )
        classes = list(self.probe.classes) if self.probe is not None else None
        labels = samples_labels(samples, classes)
        # IS splits the file as written (ADM); a folder has no written order, so its images
        # are laid out as rar.sampling.sampler writes a file (class-interleaved).
        is_order = None
        if samples.is_dir() and labels is not None and len(labels) == len(dataset):
            is_order = class_interleaved_order(labels)
        metrics, isc_splits = self._fidelity_metrics(feats, is_order)
        ci = self._fid_interval(
            feats[layer], metrics[self.spec.metric_names()["frechet_inception_distance"]]
        )
        info = read_samples_info(samples)
        scored = self._describe(samples, dataset, labels)
        is_labels = labels if is_order is None or labels is None else labels[is_order]
        reasons = self._not_comparable(scored, is_labels, info)
        record = {
            "format": METRICS_FORMAT,
            **metrics,
            **{k: ci[k] for k in FID_CI_FIELDS},
            **self._class_accuracy(feats[layer], labels, samples),
            **self._heldout_nll(info),
            # per metric: null where it was not computed (precision/recall without images)
            "comparable_to_paper": {
                m: None if m in ("precision", "recall") and not self.ref else not reasons[m]
                for m in PAPER_METRICS
            },
            "not_comparable_because": all_reasons(reasons),
            **scored,
            "settings": self._settings_fields(isc_splits, is_order is not None, ci),
            **sampling_fields(info),
            "torch_fidelity_version": fidelity_version,
            "torch_version": torch.__version__,
            "seconds": round(time.perf_counter() - started, 3),
            "setup_seconds": self.setup_seconds,  # extractor, reference, probe: once per job
        }
        if out is not None:
            write_metrics(out, record)
        if self.verbose:
            print(summary_line(record, metrics), flush=True)
        return record

    def _fidelity_metrics(
        self, feats: dict[str, torch.Tensor], is_order: np.ndarray | None
    ) -> tuple[dict[str, float | None], int]:
        """FID, IS (logits in `is_order`, default the file's) and (with reference images)
        precision/recall, under this extractor's names (rar.evaluation.metrics: torch-fidelity's
        FID, ADM's IS and precision/recall), and the number of IS splits."""
        from torch_fidelity.metric_fid import fid_features_to_statistics

        features = feats[self.spec.fid_layer]  # (N, D)
        sample_stats = fid_features_to_statistics(features)
        if self.ref_stats["mu"].shape != sample_stats["mu"].shape:
            raise ValueError(
                f"{self.reference}: mu has shape {self.ref_stats['mu'].shape}, the "
                f"{self.extractor} features {sample_stats['mu'].shape}"
            )
        results = dict(fid_of_statistics(sample_stats, self.ref_stats, verbose=self.verbose))
        s = self.settings
        logits = feats[self.spec.isc_layer]  # (N, C)
        if is_order is not None:
            logits = logits[torch.from_numpy(is_order)]
        isc = inception_score(logits, split_size=s.isc_split_size)
        results.update(isc)
        if self.ref:
            results.update(
                precision_recall(
                    features,
                    self.ref["prc_features"],
                    neighborhood=s.prc_neighborhood,
                    block=s.prc_batch_size,
                    device=self.dev,
                )
            )
        return named_metrics(results, self.spec.metric_names()), isc["inception_score_splits"]

    def _fid_interval(self, features: torch.Tensor, fid: float | None) -> dict:
        """The FID's bootstrap interval (rar.evaluation.metrics.fid_bootstrap; all null without
        a FID)."""
        s = self.settings
        return fid_bootstrap(
            features.numpy(),
            self.ref_stats["mu"],
            self.ref_stats["sigma"],
            estimate=fid,
            resamples=s.bootstrap_resamples if fid is not None else 0,
            seed=s.bootstrap_seed,
            ref_sqrt=self.ref_sqrt,  # computed once, and only for N > D
            device=self.dev,
        )

    def _describe(self, samples: Path, dataset, labels: np.ndarray | None) -> dict:
        """What was scored, and with what: the samples, the extractor, the reference."""
        return {
            "num_samples": len(dataset),
            "num_classes": len(np.unique(labels)) if labels is not None else None,
            "image_size": list(dataset[0].shape[1:]),
            "extractor": self.extractor,
            "extractor_weights": str(self.weights_path),
            "extractor_weights_sha256": self.weights_sha256,
            "extractor_input_size": self.spec.input_size,  # None: the extractor's own
            "samples": str(samples),
            "samples_sha256": content_sha256(samples),
            "samples_kind": "images" if samples.is_dir() else "npz",
            "reference": str(self.reference),
            "reference_sha256": self.reference_sha256,
            "num_reference_images": len(self.ref["prc_features"]) if self.ref else None,
            "fid_reference_statistics": self.fid_reference,
        }

    def _not_comparable(
        self, scored: dict, labels: np.ndarray | None, info: dict
    ) -> dict[str, list[str]]:
        """Why each metric cannot stand next to the paper's (rar.evaluation.metrics.comparability;
        labels in the order IS splits them), and a samples.json that describes another file than the
        one scored (every metric)."""
        s = self.settings
        prc = None
        if self.ref:
            kind = "reference_images" if self.reference.is_dir() else "reference_npz_images"
            if kind == "reference_npz_images" and self.fid_reference != "reference_npz_mu_sigma":
                kind = "reference_images"  # an npz of images, but no ADM batch (no mu/sigma)
            prc = {"reference": kind, "neighborhood": s.prc_neighborhood, "block": s.prc_batch_size}
        reasons = comparability(
            extractor=self.extractor,
            weights_sha256=self.weights_sha256,
            num_samples=scored["num_samples"],
            labels=labels,
            image_size=tuple(scored["image_size"]),
            fid_reference=self.fid_reference,
            isc_split_size=s.isc_split_size,
            prc=prc,
        )
        if info and info.get("samples_sha256") not in (None, scored["samples_sha256"]):
            info_path = Path(scored["samples"]).with_suffix(".json")
            for metric_reasons in reasons.values():
                metric_reasons.append(f"{info_path} describes another sample file")
        return reasons

    def _settings_fields(self, isc_splits: int, interleaved: bool, ci: dict) -> dict:
        """metrics.json's `settings`: how the numbers were computed."""
        s = self.settings
        return {
            "isc_split_size": s.isc_split_size,
            "isc_splits": isc_splits,
            # the file's order, or a folder's images class-interleaved
            "isc_order": "class-interleaved" if interleaved else "file",
            "prc_neighborhood": s.prc_neighborhood,
            "prc_batch_size": s.prc_batch_size,
            "batch_size": s.batch_size,
            "device": str(self.dev),
            "fid_ci_resamples": ci["fid_ci_resamples"],
            "fid_ci_seed": ci["fid_ci_seed"],
            "fid_ci_seconds": ci["fid_ci_seconds"],
        }

    def existing(self, samples: Path, out: Path | None) -> dict | None:
        """`out`'s record if it already scores these samples with this job's settings."""
        if out is None or not out.exists():
            return None
        try:
            record = json.loads(out.read_text())
        except (OSError, ValueError):
            return None
        same = {
            "format": METRICS_FORMAT,
            "samples_sha256": content_sha256(samples),
            "reference_sha256": self.reference_sha256,
            "extractor_weights_sha256": self.weights_sha256,
            "extractor_input_size": self.spec.input_size,
        }
        if any(record.get(k) != v for k, v in same.items()):
            return None
        settings = record.get("settings") or {}
        probe = record.get("class_probe") or {}
        scoring = ("isc_split_size", "prc_neighborhood", "prc_batch_size")
        if (
            any(settings.get(k) != getattr(self.settings, k) for k in scoring)
            or settings.get("fid_ci_resamples") != self.settings.bootstrap_resamples
            or settings.get("fid_ci_seed") != self.settings.bootstrap_seed
            or (probe.get("images") if probe else None)
            != (str(self.probe_images) if self.probe_images else None)
            or (self.heldout is not None and record.get("heldout") != self.heldout.directory)
        ):
            return None
        if self.verbose:
            print(f"{out} already scores {samples}; kept", flush=True)
        return record

    def _heldout_nll(self, info: dict) -> dict:
        """The samples' checkpoint's held-out NLL in their sampling order (rar.evaluation.heldout:
        `heldout_nll`; a random order draws its permutations from HELDOUT_SEED, the same for
        every row). Nulls without `heldout` or without a checkpoint (real images). The
        generator is loaded once for consecutive sample sets of one checkpoint (`generator`)."""
        from rar.evaluation.heldout import NLL_KEYS

        checkpoint = info.get("checkpoint")
        if self.heldout is None or not checkpoint:
            return dict.fromkeys(NLL_KEYS)
        from rar.evaluation.heldout import HELDOUT_SEED, heldout_nll

        model = self.generator(checkpoint)
        codebook = model.config.codebook_size
        if int(self.heldout.tokens.max()) >= codebook:
            raise ValueError(
                f"{self.heldout.directory}: held-out tokens reach "
                f"{int(self.heldout.tokens.max())}, but {checkpoint} has {codebook} codes"
            )
        order = (info.get("sampling") or {}).get("order") or "row-major"
        return heldout_nll(model, self.heldout, order, seed=HELDOUT_SEED)

    def _class_accuracy(self, features: torch.Tensor, labels, samples: Path) -> dict:
        """class_accuracy (None without a probe or labels) and what it was measured with."""
        if self.probe is None:
            return {"class_accuracy": None, "class_probe": None}
        desc = {
            "images": str(self.probe_images),
            "num_images": self.probe.num_train,
            "classes": list(self.probe.classes),
            "train_accuracy": self.probe.train_accuracy,
            "l2": self.probe.l2,
            "method": "logistic regression (L-BFGS, L2) on standardised "
            f"{self.spec.fid_layer}-d {self.extractor} features (rar.evaluation.probe)",
        }
        usable = labels is not None and len(labels) == len(features)
        if usable and int(labels.max(initial=0)) >= len(self.probe.classes):
            usable = False  # samples of classes the probe never saw
        if not usable:
            desc["skipped"] = f"{samples} has no labels within the probe's classes"
            return {"class_accuracy": None, "class_probe": desc}
        return {
            "class_accuracy": self.probe.accuracy(features.numpy(), labels),
            "class_probe": desc,
        }


def evaluate_many(
    pairs: list[tuple[str | os.PathLike, str | os.PathLike | None]],
    reference: str | os.PathLike,
    **kwargs,
) -> list[dict]:
    """Score several sample sets against one reference in one process: the extractor, the
    reference features and the class probe load once (`Scorer`), then each (samples, out)
    pair is scored and its metrics.json written. kwargs: the fields of ScoringSettings. A
    pair whose `out` exists with the same samples, reference and extractor is not scored
    again (a rerun of a partly finished job). Returns the records in order."""
    pairs = [(Path(s), Path(o) if o is not None else None) for s, o in pairs]
    outs = [o for _, o in pairs if o is not None]
    if len(set(outs)) != len(outs):
        raise ValueError("two evaluations would write the same metrics file")
    scorer = Scorer(reference, **kwargs)
    records = []
    for samples, out in pairs:
        done = scorer.existing(samples, out)
        records.append(done if done is not None else scorer.score(samples, out))
    return records


def evaluate(
    samples: str | os.PathLike,
    reference: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    **settings,
) -> dict:
    """Score `samples` against `reference` with torch-fidelity; write `out` (metrics.json).

    samples: our `.npz` (`arr_0` (N, H, W, 3) uint8 and `labels`; its `samples.json` beside it
        is copied in) or a folder of images (real images scored like samples: the table's
        floor row; in class folders, their folder is their label).
    reference: the ADM reference batch (`arr_0` images; `mu`/`sigma` used for FID with the
        Inception extractor), another npz of images, or a folder of images.
    settings: the fields of ScoringSettings (the extractor, the interval, the probe, ...).
    Returns the metrics dict that is written. Several sample sets against one reference:
    `evaluate_many`, which loads the extractor, reference and probe once.
    """
    return evaluate_many([(samples, out)], reference, **settings)[0]
