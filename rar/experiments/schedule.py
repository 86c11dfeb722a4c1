"""The training jobs of a study as the workflow runs them, and how long they take on a cluster.
Torch-free.

A trunk trains in segments, one job after another; a branch starts when the trunk's segment
that ends at its branch point is done; a run from scratch starts at once. `training_jobs`
lists them (for the whole study, or for what some tables need: `snakemake results/<table>.csv`
trains exactly these), `wall_clock` schedules them on a number of GPUs.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from rar.experiments.study import Study


@dataclass(frozen=True)
class TrainJob:
    run: str
    start: float  # the epoch it starts from
    stop: float  # the epoch it ends at
    after: tuple[str, float] | None  # the job it waits for: (run, the epoch that job ends at)

    @property
    def epochs(self) -> float:
        return self.stop - self.start


def needed_ends(study: Study, tables: list[str] | None = None) -> dict[str, float]:
    """Run id -> the epoch its training must reach for `tables` (all: None): a row's run its
    end, a trunk its end or, when no row of these tables is the trunk, its last branch point
    that one of their branches starts from."""
    if tables is None:
        return {rid: run.end_epoch for rid, run in study.runs.items()}
    ends: dict[str, float] = {}
    for table in tables:
        for rid in study.table_runs(table):
            ends[rid] = study.runs[rid].end_epoch
    for rid in list(ends):
        run = study.runs[rid]
        if run.kind == "branch":
            ends[run.trunk] = max(ends.get(run.trunk, 0.0), run.branch_epoch)
    return ends


def training_jobs(
    study: Study, tables: list[str] | None = None, *, left: bool = False
) -> list[TrainJob]:
    """The training jobs of `tables` (all: None), each waiting for the job before it. left:
    only what is still to train given what the runs' folders show (`Study.on_disk`): a job
    done is dropped, one begun starts where its run got to."""
    jobs = []
    for rid, end in needed_ends(study, tables).items():
        run = study.runs[rid]
        if run.kind == "trunk":
            stops = sorted({s for s in run.segments if s < end} | {end})
            starts = [0.0, *stops[:-1]]
            pairs = zip(starts, stops, strict=True)
            chain = [TrainJob(rid, a, b, (rid, a) if a else None) for a, b in pairs]
        elif run.kind == "branch":
            chain = [TrainJob(rid, run.branch_epoch, end, (run.trunk, run.branch_epoch))]
        else:
            chain = [TrainJob(rid, 0.0, end, None)]
        reached = study.on_disk(rid).reached if left else 0.0
        for job in chain:
            if job.stop > reached:
                jobs.append(TrainJob(rid, max(job.start, reached), job.stop, job.after))
    return jobs


def wall_clock(
    jobs: list[TrainJob], hours_per_epoch: dict[str, float], gpus: int, gpus_per_run: int
) -> tuple[float, float]:
    """(hours until every job is done, hours of the longest chain of jobs) with `gpus` GPUs,
    `gpus_per_run` to a job, a job's hours its GPU-hours over its GPUs. Jobs are started as
    GPUs free up, those with the longest chain still behind them first (list scheduling);
    the longest chain (a trunk's segments and the branch after them) bounds it from below.
    `hours_per_epoch`: GPU-hours per epoch by run id."""
    duration = {j: j.epochs * hours_per_epoch[j.run] / gpus_per_run for j in jobs}
    by_end = {(j.run, j.stop): j for j in jobs}
    waits_on = {j: by_end.get(j.after) if j.after else None for j in jobs}
    followers: dict[TrainJob, list[TrainJob]] = {j: [] for j in jobs}
    for job, before in waits_on.items():
        if before is not None:
            followers[before].append(job)
    tail: dict[TrainJob, float] = {}

    def chain(job: TrainJob) -> float:
        if job not in tail:
            tail[job] = duration[job] + max(map(chain, followers[job]), default=0.0)
        return tail[job]

    longest = max(map(chain, jobs), default=0.0)
    slots = max(1, gpus // gpus_per_run)
    ready = [(-chain(j), i, j) for i, j in enumerate(jobs) if waits_on[j] is None]
    heapq.heapify(ready)
    running: list[tuple[float, int, TrainJob]] = []
    now, count = 0.0, len(jobs)
    while ready or running:
        while ready and len(running) < slots:
            _, i, job = heapq.heappop(ready)
            heapq.heappush(running, (now + duration[job], i, job))
        now, _, done = heapq.heappop(running)
        for job in followers[done]:
            count += 1
            heapq.heappush(ready, (-chain(job), count, job))
    return now, longest
