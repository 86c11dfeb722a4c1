"""Where and how code runs: the one place that turns a `--device` setting into a torch device
and a precision setting into an autocast dtype, deterministic algorithms and TF32 (each for the
duration of a call), whether training compiles and where inductor caches, the distributed
environment a process finds itself in (torchrun's or SLURM's variables), host-to-device copies
and flags that do not make the host wait, and training's seeds.

Seeds: `derive_seed` is training's; rar.model.orders, rar.sampling.sampler and rar.data.loader each
derive their own streams from numpy's SeedSequence, and unifying them would change every seeded
stream (and so every result), so they stay as they are.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")
PRECISIONS = ("auto", "fp32", "bf16")  # "auto": bf16 on a GPU, fp32 elsewhere


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU (`cuda:<local_rank>`) when there is one, else the CPU;
    anything else is passed to torch.device ('cpu', 'cuda', 'cuda:1')."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_current(device: torch.device) -> None:
    """Make an indexed CUDA device (`cuda:1`) the current one, for libraries that place their
    work on the current device (torch-fidelity). Plain `cuda` already means the current one,
    and torch.cuda.set_device refuses a device without an index."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting on `device`: 'bf16' -> torch.bfloat16, 'fp32'
    -> None (no autocast), 'auto' -> bf16 on a GPU and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, amp: torch.dtype | None) -> torch.autocast:
    """Autocast to `amp` on `device`'s kind, or a disabled one for None (full precision)."""
    return torch.autocast(device.type, dtype=amp, enabled=amp is not None)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """`torch.use_deterministic_algorithms(True)` for the duration, then the caller's setting.

    CPU (training: always on): the backward of the positional tables' advanced indexing
    (`pos_embed[0, PREFIX + at]` in rar.model.transformer) is an index_put with accumulate, which
    PyTorch runs as a multi-threaded scatter of atomic adds once it exceeds one parallel grain
    (32,768 elements: e.g. rar_mini at 32 x 15 x 128); its summation order, and so the last bits
    of the gradient, then changes from run to run. Deterministic mode runs that scatter
    serially. Measured cost (2-core CPU, median and minimum of 60 steps): 0-4 % per step for
    rar_tiny at micro-batch 4 and rar_mini at 32 and 64, within the machine's noise.
    GPU (`deterministic: true`): deterministic kernels throughout, and cuBLAS with a fixed
    workspace (`CUBLAS_WORKSPACE_CONFIG=:4096:8`, which cuBLAS reads at its first call, so it
    is set here, before the model exists; a process that ran cuBLAS earlier must export it
    itself). Cost unmeasured here: PyTorch's reproducibility notes say "deterministic
    operations are often slower than nondeterministic operations"
    (https://pytorch.org/docs/stable/notes/randomness.html). An operation without a
    deterministic implementation raises RuntimeError instead of running.
    On a CPU with one intra-op thread nothing runs in parallel, so the mode is not switched
    on: switching it imports torch._inductor, 2.7 s of every one-thread job (the demo's).
    """
    if not enabled or (device.type == "cpu" and torch.get_num_threads() == 1):
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@contextlib.contextmanager
def tf32(device: torch.device) -> Iterator[None]:
    """TF32 matrix products and convolutions on a GPU for the duration (training: what runs
    outside bf16 autocast), then the caller's settings. Scoped, because the flags are
    process-wide: measured on an H200 (torch 2.11), a `rar.training.loop.train` call that left them
    on moved a caller's later fp32 logits by up to 9e-4 from the CPU's."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """Whether training compiles its model (TrainConfig.compile): "auto" -> on a GPU (measured
    on an H200, RAR-L bf16: 30.9 % MFU compiled against 20.9 % eager, docs/gpu.md), not on the
    CPU, whose runs (the demo's, the tests') are short and must keep their eager results bit
    for bit; true / false as set."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


class CompileTime:
    """How long torch.compile took, printed once (rank 0) when the model is compiled: the wall
    time of a call's first step (tracing, compiling, running) minus its second's (running),
    each ended by a device synchronisation, the only two a training call makes outside its
    log steps. A requeued job that finds inductor's cache (`inductor_cache`) takes less."""

    def __init__(
        self,
        enabled: bool,
        device: torch.device,
        rank: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.device, self.rank, self.clock = device, rank, clock
        self.seconds: list[float] = []
        self.todo = 2 if enabled else 0  # steps still to time

    def timed(self, step: Callable[..., T], *args) -> T:
        """`step(*args)`, timed while steps are still to time."""
        if not self.todo:
            return step(*args)
        t0 = self.clock()
        out = step(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds.append(self.clock() - t0)
        self.todo -= 1
        if not self.todo and self.rank == 0:
            first, second = self.seconds
            print(
                f"torch.compile: first step {first:.1f} s, second {second:.2f} s: about "
                f"{first - second:.1f} s compiling",
                flush=True,
            )
        return out


INDUCTOR_CACHE = ".inductor-cache"  # beside the run's checkpoints
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def users_inductor_cache() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR as the user set it: None when unset, and when it holds inductor's
    default, which inductor writes into the environment itself once imported (and
    torch.use_deterministic_algorithms imports it)."""
    value = os.environ.get(INDUCTOR_CACHE_ENV)
    if value is None:
        return None
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch that moved it: take the value as the user's
        return value
    return None if os.path.abspath(value) == os.path.abspath(default_cache_dir()) else value


@contextlib.contextmanager
def inductor_cache(workdir: str | os.PathLike | None) -> Iterator[Path | None]:
    """TORCHINDUCTOR_CACHE_DIR = <workdir>/.inductor-cache for the duration (None: nothing), so
    that a requeued job finds the kernels its predecessor compiled, on whichever node, instead
    of compiling again; yields the folder inductor uses. A folder the user exported stays (and
    is the one yielded). Set before the first compiled call: inductor reads the variable then."""
    if workdir is None:  # before `users_inductor_cache`, which may import inductor (2.7 s)
        yield None
        return
    users, before = users_inductor_cache(), os.environ.get(INDUCTOR_CACHE_ENV)
    if users is not None:
        yield Path(users)
        return
    os.environ[INDUCTOR_CACHE_ENV] = str(Path(workdir).resolve() / INDUCTOR_CACHE)
    try:
        yield Path(os.environ[INDUCTOR_CACHE_ENV])
    finally:
        if before is None:
            os.environ.pop(INDUCTOR_CACHE_ENV, None)
        else:
            os.environ[INDUCTOR_CACHE_ENV] = before


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls) -> DistEnv:
        """Rank and world size from torchrun's variables or SLURM's (srun / submitit)."""
        env = os.environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            return cls(
                int(env["SLURM_PROCID"]),
                int(env["SLURM_NTASKS"]),
                int(env.get("SLURM_LOCALID", 0)),
            )
        return cls()

    def init_process_group(self, device: torch.device) -> None:
        """Join the process group (NCCL on GPUs, gloo on the CPU) when there is more than one
        process and it is not joined yet."""
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in one process)."""
        if self.world_size > 1:
            dist.barrier()


# ##########################################################################################
# Host and device: copies that do not wait, flags read only when the host reads anyway
# ##########################################################################################


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` (on the host) on `device`. To a GPU the copy goes from pinned memory with
    non_blocking=True: it is queued on the stream (the kernels that read it wait for it) and
    the host goes on. A copy from pageable memory would first wait for the stream to drain,
    a host synchronisation per batch. On a CPU it is `tensor` itself, as `.to` gives."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class AnyRank:
    """Whether a flag was raised on any rank, agreed without a host synchronisation: called
    with this step's flag, it queues an all-reduce (max) of every rank's and returns the
    agreement of the call before, which the device finished while this step was queued (the
    host waits for that call's copy back only, never for this step's kernels). Every rank
    reads the same agreement at the same call, so all act on it together, one step after
    the first rank raised its flag: e.g. a stop, as SLURM signals every task at a slightly
    different step. In one process, the flag itself at once."""

    def __init__(self, env: DistEnv, device: torch.device) -> None:
        self.env = env
        pinned = device.type == "cuda"
        # one set of buffers for every call: a call reuses them only after waiting on the
        # previous call's event, by when its copies have run
        self.mine = torch.zeros(1, pin_memory=pinned)  # this rank's flag, on the host
        self.flag = torch.zeros(1, device=device)  # all-reduced on the device
        self.back = torch.zeros(1, pin_memory=pinned)  # the agreement, back on the host
        self.event = torch.cuda.Event() if pinned else None
        self.pending = False

    def __call__(self, flag: bool) -> bool:
        if self.env.world_size == 1:
            return flag
        agreed = False
        if self.pending:
            if self.event is not None:
                self.event.synchronize()  # the previous call's copies, not this step's kernels
            agreed = bool(self.back[0] > 0)
        self.mine[0] = float(flag)
        self.flag.copy_(self.mine, non_blocking=True)
        dist.all_reduce(self.flag, op=dist.ReduceOp.MAX)  # NCCL: queued on the stream; gloo: done
        self.back.copy_(self.flag, non_blocking=True)
        if self.event is not None:
            self.event.record()
        self.pending = True
        return agreed


class FirstNonFinite:
    """The first step whose loss was not finite, and that loss, kept on the device: `note` (every
    step) reads nothing back to the host; `first` reads the flag (one host synchronisation),
    at the steps that read the device anyway (log lines, checkpoints)."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), device=device)

    def note(self, step: int, loss: torch.Tensor) -> None:
        """loss: () float, this step's; kept when it is the first non-finite one."""
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.step.masked_fill_(first, step)
        self.loss = torch.where(first, loss.float(), self.loss)

    def first(self) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss noted, or None."""
        step = int(self.step.item())
        return None if step < 0 else (step, self.loss.item())


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy's SeedSequence): training's data order
    and dropout masks."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
