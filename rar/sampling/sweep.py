"""Guidance sweeps: sample one checkpoint at several guidance scales, score each, keep the best.

The paper does not give the guidance scale (or temperature) of its ablations (Tables 2 and 3,
linear guidance; tests/data/README.md), and every autoregressive image model's FID
depends strongly on it, so a fair reproduction tunes it per run as the paper's authors must
have: each scale is sampled on a smaller set (the study's `sweep_per_class`, 10,000 images
for ImageNet), scored with the study's extractor, and the scale with the lowest FID is written
to `guidance.json`, which the table's full evaluation reads (`rar sample
--guidance-scale-from`). The sweep's own numbers stay beside it, so a reader sees how flat or
sharp the optimum is and whether it sits at an edge of the range (then widen the range).

One job does the whole sweep: the extractor and the reference features load once for every
scale (each scale's `rar.sampling.sampler.sample` loads the checkpoint and tokenizer again, small
next to sampling), and both stages resume (sampling by chunks, scoring by the per-scale
metrics.json).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rar.experiments.results import (
    GUIDANCE_FORMAT,
    METRICS_JSON,
    read_metrics_record,
    write_guidance,
)
from rar.settings.presets import EXTRACTORS
from rar.settings.stages import SampleSettings, ScoringSettings

# ##########################################################################################
# The sweep
# ##########################################################################################


def pick_best(points: list[dict], metric: str) -> dict:
    """The point with the lowest `metric` (ties: the smaller scale, i.e. less guidance).

    points: [{"guidance_scale": float, metric: float, ...}]; a point whose metric is missing
    or not finite cannot win. Raises ValueError when no point has the metric.
    """
    scored = [
        p for p in points if isinstance(p.get(metric), (int, float)) and math.isfinite(p[metric])
    ]
    if not scored:
        raise ValueError(f"no sweep point has a finite {metric!r}")
    return min(scored, key=lambda p: (p[metric], p["guidance_scale"]))


def summarize(points: list[dict], metric: str) -> dict:
    """What `guidance.json` holds: the chosen scale, the metric it was chosen by, every point,
    and whether the choice lies at an edge of the swept range."""
    best = pick_best(points, metric)
    scales = sorted(p["guidance_scale"] for p in points)
    return {
        "format": GUIDANCE_FORMAT,
        "guidance_scale": best["guidance_scale"],
        "chosen_by": f"lowest {metric}",
        "metric": metric,
        "best": best[metric],
        "at_edge": len(scales) > 1 and best["guidance_scale"] in (scales[0], scales[-1]),
        "points": sorted(points, key=lambda p: p["guidance_scale"]),
    }


def sweep_point(scale: float, metrics: dict) -> dict:
    """One point of a sweep from its metrics.json: FID, IS, precision, recall under their
    plain names, whatever the extractor ("fid" or the demo's "fid_efficientnet_lite0")."""
    names = EXTRACTORS[metrics["extractor"]].metric_names()
    plain = {
        "frechet_inception_distance": "fid",
        "inception_score_mean": "is",
        "precision": "precision",
        "recall": "recall",
    }
    point = {"guidance_scale": scale}
    point.update({ours: metrics.get(names[theirs]) for theirs, ours in plain.items()})
    point["num_samples"] = metrics.get("num_samples")
    return point


def sweep_guidance(
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    *,
    scales: list[float],
    reference: str | os.PathLike,
    settings: SampleSettings,
    sampling: Mapping[str, Any] | None = None,
    scoring: ScoringSettings,
    progress: bool = True,
) -> dict | None:
    """Sample `checkpoint` at every scale of `scales` and score each; write `out`.

    settings: how every scale's set is drawn (`rar.sampling.sampler.sample`'s SampleSettings);
    sampling:
        the SamplingConfig keys every scale shares (the preset's otherwise), `guidance_scale`
        set per point. scoring: how each set is scored (no bootstrap: a sweep compares means).
    Writes `<out folder>/scale_<g>/samples.npz` and `metrics.json` per scale, then `out`
    (guidance.json, `summarize`). Returns its content from rank 0, None from other ranks.
    """
    from rar.evaluation.scorer import Scorer
    from rar.sampling.sampler import sample

    if not scales:
        raise ValueError("a guidance sweep needs at least one scale")
    folder = Path(out).parent
    points, scorer = [], None
    for scale in sorted(scales):
        point_dir = folder / f"scale_{scale:g}"
        metrics_path = point_dir / METRICS_JSON
        if not metrics_path.exists():
            info = sample(
                checkpoint,
                tokenizer,
                point_dir / "samples.npz",
                settings,
                progress=progress,
                **{**(sampling or {}), "guidance_scale": scale},
            )
            if info is None:  # another rank merges and scores
                continue
            if scorer is None:  # the extractor and reference features load once per sweep
                # the sweep compares means; intervals cost minutes
                no_interval = dataclasses.replace(scoring, bootstrap_resamples=0)
                scorer = Scorer(reference, **dataclasses.asdict(no_interval))
            scorer.score(point_dir / "samples.npz", metrics_path)
        points.append(sweep_point(scale, read_metrics_record(metrics_path)))
    if len(points) < len(scales):
        return None
    result = summarize(points, "fid")
    write_guidance(out, result)
    best = result["guidance_scale"]
    edge = " (at an edge of the range: consider widening it)" if result["at_edge"] else ""
    print(
        f"guidance sweep: scale {best:g} has the lowest FID {result['best']:.3f}{edge}", flush=True
    )
    return result
