"""Guidance sweeps: the lowest FID wins and is recorded with every point."""

from __future__ import annotations

import json
import math

import pytest

from rar.experiments.results import GUIDANCE_FORMAT as FORMAT
from rar.experiments.results import read_sweep
from rar.sampling.sweep import pick_best, summarize, sweep_point


def points(fids: dict[float, float]) -> list[dict]:
    return [{"guidance_scale": g, "fid": f} for g, f in fids.items()]


def test_the_lowest_fid_is_picked_and_recorded():
    result = summarize(points({2.0: 3.1, 4.0: 2.4, 8.0: 2.9}), "fid")
    assert result["guidance_scale"] == 4.0 and result["best"] == 2.4
    assert result["chosen_by"] == "lowest fid" and not result["at_edge"]
    assert [p["guidance_scale"] for p in result["points"]] == [2.0, 4.0, 8.0]
    assert result["format"] == FORMAT


def test_a_choice_at_the_edge_of_the_range_is_flagged():
    assert summarize(points({2.0: 3.1, 4.0: 2.4, 8.0: 2.1}), "fid")["at_edge"]
    assert summarize(points({2.0: 1.0, 4.0: 2.4}), "fid")["at_edge"]
    assert not summarize(points({4.0: 2.4}), "fid")["at_edge"]  # one point: no range


def test_ties_go_to_less_guidance_and_missing_values_cannot_win():
    assert pick_best(points({6.0: 2.0, 4.0: 2.0}), "fid")["guidance_scale"] == 4.0
    assert pick_best(points({2.0: math.nan, 4.0: 5.0}), "fid")["guidance_scale"] == 4.0
    assert pick_best([{"guidance_scale": 1.0}, *points({3.0: 9.0})], "fid")["guidance_scale"] == 3.0
    with pytest.raises(ValueError, match="no sweep point has a finite 'fid'"):
        pick_best(points({2.0: math.inf}), "fid")


def test_points_read_either_extractors_metric_names():
    demo = {
        "extractor": "efficientnet-lite0",
        "fid_efficientnet_lite0": 40.0,
        "isc_efficientnet_lite0_mean": 3.0,
        "precision_efficientnet_lite0": 0.5,
        "recall_efficientnet_lite0": 0.25,
        "num_samples": 40,
    }
    assert sweep_point(3.0, demo) == {
        "guidance_scale": 3.0,
        "fid": 40.0,
        "is": 3.0,
        "precision": 0.5,
        "recall": 0.25,
        "num_samples": 40,
    }
    paper = {"extractor": "inception-v3-compat", "fid": 2.5, "isc_mean": 250.0, "num_samples": 10}
    assert sweep_point(4.0, paper)["fid"] == 2.5 and sweep_point(4.0, paper)["is"] == 250.0


def test_read_sweep(tmp_path):
    assert read_sweep(tmp_path / "guidance.json") is None
    path = tmp_path / "guidance.json"
    path.write_text(json.dumps(summarize(points({2.0: 3.0}), "fid")))
    assert read_sweep(path)["guidance_scale"] == 2.0
    path.write_text(json.dumps({"guidance_scale": 2.0}))
    with pytest.raises(ValueError, match="not a guidance sweep result"):
        read_sweep(path)
