"""The trunk plan (RAR §3.2, annealing): which runs train from scratch, which trunk trains in
segments, which runs branch from it, and the checkpoints each must keep. Torch-free."""

from __future__ import annotations

from dataclasses import replace

from rar.config import TrainConfig
from rar.experiments.study import Run


def plan_trunks(configs: dict[str, TrainConfig], curve_points: set[tuple[str, float]]) -> dict:
    """Assign every run its way of being trained and the checkpoints it must keep.

    Runs whose anneal starts after epoch 0 branch from the trunk of their group (the run with
    r = 1 throughout: anneal (E, E), raster target). The trunk is trained in segments ending at
    each branch epoch, so a branch can start as soon as its epoch is reached.
    """
    groups: dict[str, list[str]] = {}
    for rid, cfg in configs.items():
        groups.setdefault(cfg.trunk_key(), []).append(rid)
    runs: dict[str, Run] = {}
    for members in groups.values():
        any_cfg = configs[members[0]]
        E = any_cfg.epochs
        trunk_cfg = replace(any_cfg, anneal_start=E, anneal_end=E, target_order="row-major")
        trunk_id = trunk_cfg.run_id()
        late = [r for r in members if configs[r].anneal_start > 0 and r != trunk_id]
        # A trunk pays when the epochs its branches skip exceed what it costs itself (nothing
        # extra when a table needs the purely random run anyway).
        saved = sum(configs[r].anneal_start for r in late)
        if saved <= (0 if trunk_id in members else E):
            late, trunk_id = [], None
        starts = sorted({configs[r].anneal_start for r in late})
        if trunk_id is not None:
            configs.setdefault(trunk_id, trunk_cfg)
            segments = tuple(s for s in starts if s < E)
            runs[trunk_id] = Run(trunk_id, configs[trunk_id], "trunk", segments=segments)
        for rid in members:
            cfg = configs[rid]
            if rid == trunk_id:
                continue
            if rid in late:
                runs[rid] = Run(rid, cfg, "branch", trunk=trunk_id, branch_epoch=cfg.anneal_start)
            else:
                runs[rid] = Run(rid, cfg, "scratch")
    # Named checkpoints: branch points (trunks) and the epochs evaluated for curves, kept by
    # the run that trains through them (a branch's trunk, up to its branch point).
    keep_at: dict[str, set[float]] = {rid: set(run.segments) for rid, run in runs.items()}
    for rid, epoch in curve_points:
        run = runs[rid]
        early = run.kind == "branch" and epoch <= run.branch_epoch
        keep_at[run.trunk if early else rid].add(epoch)
    for rid, run in runs.items():
        keep = keep_at[rid]
        runs[rid] = replace(run, config=replace(run.config, checkpoint_epochs=tuple(sorted(keep))))
    return runs
