"""The trunk plan (RAR §3.2, annealing): which runs train from scratch, which trunk trains in
segments, which runs branch from it, and the checkpoints each must keep. Torch-free.

The plan reads what a trunk has already done (`run_on_disk`) so that a config edit only ever
adds work: a branch point the trunk has passed without keeping a checkpoint there is not a
new segment (that would ask the trunk to go back, and Snakemake to redo its later segments),
but a branch from the trunk's nearest kept checkpoint before it, or a run from scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from rar.experiments.records import NOTHING, RunOnDisk
from rar.experiments.study import Run
from rar.settings.training import TrainConfig


def plan_trunks(
    configs: dict[str, TrainConfig],
    curve_points: set[tuple[str, float]],
    *,
    keep_every: float = 0,
    on_disk: Callable[[str, float], RunOnDisk] | None = None,
) -> dict[str, Run]:
    """Assign every run its way of being trained and the checkpoints it must keep.

    Runs whose anneal starts after epoch 0 branch from the trunk of their group (the run with
    r = 1 throughout: anneal (E, E), raster target). The trunk is trained in segments ending at
    each branch epoch, so a branch can start as soon as its epoch is reached. `on_disk(trunk
    id, epochs)` says what a trunk has done (default: nothing); `keep_every` > 0 makes every
    trunk keep a checkpoint at each multiple of it, for branch points a later edit may add.
    """
    groups: dict[str, list[str]] = {}
    for rid, cfg in configs.items():
        groups.setdefault(cfg.trunk_key(), []).append(rid)
    runs: dict[str, Run] = {}
    for members in groups.values():
        runs.update(_plan_group(configs, members, on_disk))
    # Named checkpoints: branch points (trunks), every keep_every epochs (trunks), and the
    # epochs evaluated for curves, kept by the run that trains through them (a branch's trunk,
    # up to its branch point).
    keep_at: dict[str, set[float]] = {rid: set(run.segments) for rid, run in runs.items()}
    for rid, run in runs.items():
        if run.kind == "trunk" and keep_every > 0:
            count = int(run.config.epochs // keep_every)
            keep_at[rid] |= {i * keep_every for i in range(1, count + 1)} - {run.config.epochs}
    # ... and the epochs a config asks to keep (`checkpoint_epochs` in `train:` or a row).
    asked = [(rid, e) for rid, run in runs.items() for e in configs[rid].checkpoint_epochs]
    for rid, epoch in [*curve_points, *asked]:
        run = runs[rid]
        early = run.kind == "branch" and epoch <= run.branch_epoch
        keep_at[run.trunk if early else rid].add(epoch)
    for rid, run in runs.items():
        keep = keep_at[rid]
        runs[rid] = replace(run, config=replace(run.config, checkpoint_epochs=tuple(sorted(keep))))
    return runs


def _plan_group(
    configs: dict[str, TrainConfig],
    members: list[str],
    on_disk: Callable[[str, float], RunOnDisk] | None,
) -> dict[str, Run]:
    """The runs of one trunk group (runs equal but for their annealing and target order)."""
    any_cfg = configs[members[0]]
    E = any_cfg.epochs
    trunk_cfg = replace(any_cfg, anneal_start=E, anneal_end=E, target_order="row-major")
    trunk_id = trunk_cfg.run_id()
    disk = on_disk(trunk_id, E) if on_disk else NOTHING
    late = [r for r in members if configs[r].anneal_start > 0 and r != trunk_id]
    # Where each late run starts: its anneal start, unless the trunk went past it without a
    # checkpoint there; then the trunk's nearest kept checkpoint before it (0: from scratch).
    start = {}
    for rid in late:
        b = configs[rid].anneal_start
        start[rid] = max((k for k in disk.kept if k < b), default=0.0) if disk.passed(b) else b
    late = [r for r in late if start[r] > 0]
    # A trunk pays when the epochs its branches skip exceed what it costs itself (nothing
    # extra when a table needs the purely random run anyway, or when it has begun).
    saved = sum(start[r] for r in late)
    if not late or (disk.reached == 0 and saved <= (0 if trunk_id in members else E)):
        late, trunk_id = [], None
    runs: dict[str, Run] = {}
    if trunk_id is not None:
        configs.setdefault(trunk_id, trunk_cfg)
        segments = tuple(sorted({start[r] for r in late} - {E}))
        # A trunk no table row needs trains only to its last branch point.
        until = None if trunk_id in members or not segments else max(segments)
        runs[trunk_id] = Run(trunk_id, configs[trunk_id], "trunk", segments=segments, until=until)
    for rid in members:
        if rid == trunk_id:
            continue
        cfg = configs[rid]
        if rid in late:
            why = None
            if start[rid] != cfg.anneal_start:
                why = (
                    f"the trunk passed epoch {cfg.anneal_start:g} without keeping a checkpoint "
                    f"there; it starts from the trunk's epoch {start[rid]:g}"
                )
            runs[rid] = Run(rid, cfg, "branch", trunk=trunk_id, branch_epoch=start[rid], note=why)
        else:
            why = None
            if trunk_id is not None and cfg.anneal_start > 0:
                why = (
                    f"the trunk passed epoch {cfg.anneal_start:g} with no checkpoint kept before it"
                )
            runs[rid] = Run(rid, cfg, "scratch", note=why)
    return runs
