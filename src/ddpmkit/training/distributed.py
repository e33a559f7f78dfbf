"""Training past one process: PyTorch's DistributedDataParallel under ``torchrun``, one process to many nodes.

Nothing here is a launcher of ours: ``torchrun --nproc_per_node=N -m ddpmkit train ...`` (``--nnodes``,
``--rdzv_endpoint`` for several machines) starts the processes and :func:`setup_parallel` joins them from torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): gloo on CPUs, NCCL on CUDA GPUs (one per local
rank). ``ddpmkit train --nproc N`` is a convenience that runs torchrun's elastic agent in-process
(:func:`launch`). One process (no WORLD_SIZE, or 1) is the ordinary run: every method of :class:`Parallel` is then
the identity and nothing is initialised.

How N processes train as one: ``train.batch_size`` is the *global* batch. Each process reads its contiguous block of
it (:class:`~ddpmkit.data.BatchLoader` with ``rank``/``world_size``) and every process draws t and ε for the whole
global batch from the run's generator (same seed everywhere) and keeps its block (:meth:`Parallel.keep`). So the
generator's state is the same on every rank and equal to a single process's, each rank's loss is the mean over its
block, and DDP's mean of the gradients is the gradient of the global-batch mean: the single-process step, up to the
order of floating-point additions. The per-sample losses and t are gathered from all ranks (:meth:`Parallel.gather`)
so the importance sampler of t learns from the whole batch, in the single-process order (as improved-diffusion's
``update_with_all_losses``), and the metric rows report it. Weights, EMA, optimizer, learning rate and step stay
equal on every rank. The model's own randomness (dropout, classifier-free label dropout) draws from each process's
global torch RNG, seeded per rank (:func:`seed_rank_rng`); every rank's RNG state rides in the checkpoint
(:class:`RankRNG`), so a run resumed with the same process count continues exactly.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..data.loader import derived_seed
from ..device import select_device
from ..diffusion import LossTerms
from ..errors import DdpmkitError
from .hooks import Hook, HookContext

BACKENDS = ("auto", "gloo", "nccl")
RENDEZVOUS_TIMEOUT = 300.0  # s to wait for every process to join (--dist-timeout)
COLLECTIVE_TIMEOUT = 1800.0  # s a collective may wait (rank 0 alone samples grids and FIDs meanwhile): torch's default
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(DdpmkitError):
    """A failure of one process of a distributed run (it cannot reach the others, or lost them): every process
    that has it prints it, with its rank. Other errors are the same on every rank and rank 0 alone prints them."""


@dataclass(frozen=True)
class DistributedOptions:
    """How a process joins a distributed run (launch settings, not the run's: a run may resume with another count).

    backend: auto (NCCL on CUDA, gloo on CPU), gloo or nccl.
    timeout: seconds to wait for every process to join before giving up with one line.
    """

    backend: str = "auto"
    timeout: float = RENDEZVOUS_TIMEOUT


def torchrun_world_size() -> int:
    """WORLD_SIZE as torchrun (or srun with the variables set) gives it; 1 outside."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DdpmkitError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def under_launcher() -> bool:
    """True in a process started by torchrun (or with its variables set by hand)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def available_slots(device_name: str) -> tuple[int, str]:
    """(how many processes this machine can give a device each, what they are): CUDA GPUs, else CPU cores."""
    if device_name.split(":")[0] in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA GPUs"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return cores, "CPU cores"


def check_batch_split(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        lower, upper = batch_size // world_size * world_size, -(-batch_size // world_size) * world_size
        options = " or ".join(str(b) for b in dict.fromkeys((lower, upper)) if b > 0)
        raise DdpmkitError(f"train.batch_size {batch_size} is the global batch, split across {world_size} processes, "
                           f"and does not divide by {world_size}; use {options}")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise DdpmkitError(f"unknown distributed backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and (device.type != "cuda" or not dist.is_nccl_available()):
        raise DdpmkitError(f"the NCCL backend needs CUDA GPUs but this process trains on {device.type}"
                           f"{'' if device.type != 'cuda' else ' and this torch has no NCCL'}; "
                           "use --dist-backend gloo (or auto)")
    return backend


def check_launch(nproc: int, device_name: str, batch_size: int, backend: str = "auto", nnodes: int = 1) -> None:
    """The checks ``--nproc`` makes before starting anything (each process makes them again)."""
    if nproc < 1 or nnodes < 1:
        raise DdpmkitError(f"--nproc and --nnodes must be at least 1 (got {nproc} and {nnodes})")
    slots, what = available_slots(device_name)
    if nproc > slots:
        raise DdpmkitError(f"--nproc {nproc} is more processes than this machine has {what} ({slots}): each process "
                           f"needs one; use --nproc {slots} or fewer")
    check_batch_split(batch_size, nproc * nnodes)
    device = torch.device("cuda") if what == "CUDA GPUs" else select_device(device_name)
    resolve_backend(backend, device)


# ----- this process's part ----------------------------------------------------------------------------------------

@dataclass
class Parallel:
    """This process's place in a data-parallel run: rank, world size, device, and the few collective operations the
    training loop needs. ``Parallel()`` is the single process, where every method is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    rank_rng: RankRNG | None = None  # set by the builder in a distributed run

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def describe_batch(self, batch_size: int) -> str:
        """", 2 processes (gloo), each 16 of the global batch of 32" ("" for one process)."""
        if not self.active:
            return ""
        return (f", {self.world_size} processes ({self.backend}), each {batch_size // self.world_size} of the "
                f"global batch of {batch_size}")

    # the global batch and this process's block of it
    def global_batch(self, local: int) -> int:
        return local * self.world_size

    def keep(self, tensor: Tensor | None) -> Tensor | None:
        """This process's contiguous block of a tensor drawn for the whole global batch (dim 0)."""
        if tensor is None or not self.active:
            return tensor
        share = tensor.shape[0] // self.world_size
        return tensor[self.rank * share:(self.rank + 1) * share]

    # the model
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop runs forward and backward through: DistributedDataParallel (gradients averaged across
        processes in backward), or the model itself. Its weights stay ``model``'s (no ``module.`` prefix anywhere)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # a 1x1 convolution's gradient can have other strides than its bucket view in the size-1 dimensions only:
        # DDP copies it either way, and warns (once) that this might be slow
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def no_sync(self, model: nn.Module, inner: bool):
        """Gradient accumulation: no all-reduce on the inner micro-batches (``DDP.no_sync``), only on the last."""
        if inner and self.active and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    # collectives
    def gather(self, terms: LossTerms, t_weights: Tensor | None) -> tuple[LossTerms, Tensor | None]:
        """The whole global batch's per-sample losses, weights, t, L_t terms and importance weights, in rank order
        (= one process's order), as one all-gather; the loss is their mean. The gradient stays with the local
        ``terms.loss``."""
        if not self.active:
            return terms, t_weights
        parts = [terms.per_sample, terms.weights, terms.t, terms.vlb, t_weights]
        present = [p is not None for p in parts]
        local = torch.stack([p.detach().to(torch.float64).reshape(-1) for p in parts if p is not None])
        chunks = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(chunks, local)
        rows = iter(torch.cat(chunks, dim=1))
        per_sample, weights, t, vlb, tw = [next(rows) if here else None for here in present]
        dtype = terms.per_sample.dtype
        per_sample = per_sample.to(dtype)
        merged = LossTerms(per_sample.mean(), per_sample, weights.to(terms.weights.dtype), t.to(terms.t.dtype),
                           vlb.to(terms.vlb.dtype) if vlb is not None else None)
        return merged, tw.to(t_weights.dtype) if tw is not None else None

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any (so all stop at the same step)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather_rng(self) -> None:
        """Before a checkpoint, on every process: collect each one's model RNG state for rank 0 to write."""
        if self.active and self.rank_rng is not None:
            self.rank_rng.collect()

    def barrier(self) -> None:
        if self.active:
            dist.barrier(device_ids=[self.device.index] if self.backend == "nccl" else None)

    def hooks(self) -> list[Hook]:
        return [WaitForMainProcess(self)] if self.active else []


class WaitForMainProcess(Hook):
    """At the end of ``fit`` every process waits for rank 0 to finish writing the plots and summary (rank 0 runs
    the end-of-run hooks before this one), so no process leaves the group under it."""

    main_process_only = False

    def __init__(self, parallel: Parallel):
        super().__init__(None)
        self.parallel = parallel

    def end(self, ctx: HookContext) -> None:
        self.parallel.barrier()


class RankRNG:
    """Every process's global torch RNG (dropout, label dropout draw from it), gathered into the checkpoint so a run
    resumed with the same process count continues exactly (``restored``). With another count rank 0 continues the
    checkpoint's ``torch_cpu`` state and the builder gives the other ranks fresh streams (:func:`seed_rank_rng`)."""

    def __init__(self, parallel: Parallel):
        self.parallel = parallel
        self.restored = False
        self.states: Tensor | None = None

    def collect(self) -> None:
        """A collective: every process's state, for rank 0's :meth:`state_dict`."""
        p = self.parallel
        mine = torch.get_rng_state()
        if p.device.type == "cuda":
            mine = torch.cat([mine, torch.cuda.get_rng_state(p.device)])
        local = mine.to(p.device)
        chunks = [torch.empty_like(local) for _ in range(p.world_size)]
        dist.all_gather(chunks, local)
        self.states = torch.stack(chunks).cpu()

    def state_dict(self) -> dict[str, Any]:
        if self.states is None:
            raise RuntimeError("RankRNG.collect() must run on every process before a checkpoint is written")
        states, self.states = self.states, None
        return {"world_size": self.parallel.world_size, "states": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p = self.parallel
        if state.get("world_size") != p.world_size or "states" not in state:
            return  # another process count (or a single-process checkpoint): not restored
        self.restored = True
        if p.rank == 0:
            return  # rank 0's RNG is the checkpoint's torch_cpu (and torch_cuda), restored with the rest
        mine = state["states"][p.rank].to(torch.uint8)
        cpu = torch.get_rng_state().numel()
        torch.set_rng_state(mine[:cpu])
        if p.device.type == "cuda" and mine.numel() > cpu:
            torch.cuda.set_rng_state(mine[cpu:], p.device)


def seed_rank_rng(parallel: Parallel, seed: int, step: int = 0) -> None:
    """Rank 0 keeps the process's RNG as a single process has it (seeded with the run's seed); every other rank
    draws its model randomness from its own stream, so dropout masks do not repeat across ranks."""
    if parallel.rank > 0:
        torch.manual_seed(derived_seed(seed, "rank", parallel.rank, step))


# ----- joining and leaving ----------------------------------------------------------------------------------------

def setup_parallel(device_name: str, batch_size: int, options: DistributedOptions | None = None) -> Parallel:
    """This process's :class:`Parallel`: under torchrun (WORLD_SIZE > 1) join the process group (gloo on CPUs,
    NCCL on CUDA, a GPU per local rank), else the single process on ``select_device(device_name)``. A group that is
    already initialised (``dist.init_process_group`` by the caller) is used as it is."""
    options = options or DistributedOptions()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world, rank = dist.get_world_size(), dist.get_rank()
        check_batch_split(batch_size, world)
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        device = _rank_device(device_name, local_rank, world)
        return Parallel(rank, world, local_rank, device, dist.get_backend())
    world = torchrun_world_size()
    if world <= 1:
        return Parallel(device=select_device(device_name))
    if not dist.is_available():
        raise DdpmkitError("this torch build has no torch.distributed; run one process (without torchrun)")
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise DdpmkitError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set: start the processes with "
                           "torchrun (or ddpmkit train --nproc N)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    check_batch_split(batch_size, world)
    device = _rank_device(device_name, local_rank, world)
    backend = resolve_backend(options.backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _join(rank, world, backend, options.timeout)
    return Parallel(rank, world, local_rank, device, backend)


def _rank_device(device_name: str, local_rank: int, world: int) -> torch.device:
    """auto/cuda: the GPU of this local rank; cpu: the CPU; cuda:N: as given."""
    device = select_device(device_name)
    if device.type == "mps":
        raise DdpmkitError("distributed training runs on CPUs (gloo) or CUDA GPUs (NCCL), not MPS; use --device cpu")
    if device.type == "cuda" and device.index is not None and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        raise DdpmkitError(f"--device {device} puts every process of this machine on one GPU; use --device cuda (each "
                           "process takes the GPU of its local rank) or CUDA_VISIBLE_DEVICES")
    if device.type == "cuda" and device.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DdpmkitError(f"local rank {local_rank} has no GPU: this machine has {count}; start at most {count} "
                               "processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
    return device


def _join(rank: int, world: int, backend: str, timeout: float) -> None:
    """init_process_group through a TCPStore made here, so that joining has its own (short) timeout and the
    collectives torch's long one."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)  # torchrun's agent hosts the store
    try:
        with _quiet_native_stderr():  # c10d logs every retry with a C++ stack; the error below says it in one line
            store = dist.TCPStore(host, port, world, is_master=rank == 0 and not agent_store,
                                  timeout=datetime.timedelta(seconds=timeout), multi_tenant=True)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
        raise DistributedError(f"rank {rank} of {world} could not join the others at {host}:{port} within "
                               f"{timeout:g} s ({_first_line(exc)}); check that every process was started and "
                               "can reach that address (--dist-timeout sets the wait)") from None


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the duration (what native code writes there; Python's stderr is flushed
    first)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no real stderr (an embedding host): leave it
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def teardown() -> None:
    """Leave the process group (at the end of a command; harmless when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def lost_contact(exc: BaseException) -> str | None:
    """A one-line message when ``exc`` is another process dying under a collective of this one, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    dist_error = getattr(dist, "DistError", ())
    if isinstance(exc, dist_error) or (isinstance(exc, RuntimeError) and re.search(
            r"gloo|nccl|connection|peer|timed out|timeout", str(exc), re.IGNORECASE)):
        return (f"rank {dist.get_rank()} of {dist.get_world_size()} lost contact with another process "
                f"({_first_line(exc)}); the run stopped")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # gloo's "[../third_party/gloo/...cc:123] "
    return line[:200].rstrip(".")


# ----- ddpmkit train --nproc N: torchrun's agent, in-process --------------------------------------------------

LAUNCH_FLAGS = {"--nproc": True, "--nnodes": True, "--rdzv-endpoint": True}
LAUNCHED_ENV = "DDPMKIT_LAUNCHED"  # set by launch() for the processes it starts


def strip_launch_flags(argv: list[str]) -> list[str]:
    """argv without the launcher's own flags (the processes it starts must not launch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def record_failure(message: str, lost: bool = False) -> bool:
    """A process of a distributed run failed with ``message``: leave it for torchrun's agent (its error file, which
    :func:`launch` reads to print one line) and say whether this process should print it itself: a single process
    does; under plain torchrun rank 0 does, and any rank that lost the others (``lost``); under ``--nproc`` none
    does, the launcher prints the first failure."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file and under_launcher():
        try:
            Path(error_file).parent.mkdir(parents=True, exist_ok=True)
            Path(error_file).write_text(json.dumps({"message": message, "timestamp": int(time.time()),
                                                    "ddpmkit": "lost" if lost else "error"}))
        except OSError:
            pass
        else:
            if os.environ.get(LAUNCHED_ENV):
                return False
    return not under_launcher() or os.environ.get("RANK") == "0" or lost


def launch(argv: list[str], nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
           timeout: float = RENDEZVOUS_TIMEOUT, run_dir: Path | None = None) -> int:
    """Run ``python -m ddpmkit ARGV`` in ``nproc`` processes through torchrun's elastic agent (this process is the
    agent): ``--standalone`` on one machine, a c10d rendezvous at ``rdzv_endpoint`` across ``nnodes``. A failure
    of any process stops them all and is reported in one line; the exit status is non-zero."""
    from torch.distributed.run import parse_args, run

    if nnodes > 1 and not rdzv_endpoint:
        raise DdpmkitError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the first node's address, the same on all)")
    cores, _ = available_slots("cpu")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))  # torchrun would say 1, with a warning
    args = ["--nproc_per_node", str(nproc)]
    if nnodes > 1:
        seconds = max(1, round(timeout))
        args += ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv_endpoint,
                 "--rdzv_id", os.environ.get("DDPMKIT_RDZV_ID", "ddpmkit"),
                 "--rdzv_conf", f"join_timeout={seconds},read_timeout={seconds}"]
    else:
        args += ["--standalone"]
    _quiet_agent()
    os.environ[LAUNCHED_ENV] = "1"  # the processes leave their errors to this one (record_failure)
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        run(parse_args([*args, "--module", "ddpmkit", *argv]))
    except SignalException as exc:  # Ctrl-C (or a scheduler's SIGTERM): the agent stopped the processes
        print(f"ddpmkit: interrupted ({exc.sigval.name}); the last checkpoint is intact (resume with --resume)",
              file=sys.stderr)
        return 128 + int(exc.sigval)
    except Exception as exc:  # the agent's own errors: a rendezvous that failed, a process that failed
        message = _launch_failure(exc, nnodes, rdzv_endpoint, timeout, run_dir)
        if message:
            print(f"ddpmkit: error: {message}", file=sys.stderr)
        return _exit_status(exc)
    return 0


def _quiet_agent() -> None:
    """torchrun's agent logs every worker's exit at WARNING/ERROR; the one line :func:`launch` prints says it."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _exit_status(exc: BaseException) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(exc, ChildFailedError):
        _, failure = _root_failure(exc)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 2


def _root_failure(exc) -> tuple[int, Any]:
    """The process whose failure stopped the run: one killed by a signal other than the agent's SIGTERM, else one
    that failed with an error of its own (not "lost contact" with the others), else the first."""
    def kind(failure) -> int:
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        if failure.exitcode < 0 and failure.signal_name() != "SIGTERM":
            return 0
        if data.get("ddpmkit") == "error":
            return 1
        return 2 if data.get("ddpmkit") is None else 3
    return min(exc.failures.items(), key=lambda item: (kind(item[1]), item[1].timestamp, item[0]))


def _launch_failure(exc: BaseException, nnodes: int, endpoint: str | None, timeout: float,
                    run_dir: Path | None) -> str | None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    if isinstance(exc, RendezvousError):
        return (f"the {nnodes} nodes did not meet at the rendezvous {endpoint} within {timeout:g} s "
                f"({_first_line(exc) or type(exc).__name__}); start every node with the same --rdzv-endpoint "
                "(the first node's address) and --nnodes, and check that the port is open")
    if not isinstance(exc, ChildFailedError):
        return f"torchrun's agent failed: {_first_line(exc)}"
    from ..run import RunFolder

    rank, failure = _root_failure(exc)
    data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
    if "ddpmkit" in data and isinstance(failure.message, str):
        return failure.message  # the process's own one-line error
    how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
           else f"exited with status {failure.exitcode} (its error is above)")
    kept = ""
    if run_dir is not None:
        last = RunFolder(run_dir).checkpoints()
        kept = (f"; the last good checkpoint is {last[-1]} (continue with --resume)" if last
                else "; no checkpoint had been written yet")
    return f"process {rank} {how}; the other processes were stopped{kept}"


@contextlib.contextmanager
def parallel_errors() -> Iterator[None]:
    """Turn another process's death under a collective into a :class:`DistributedError` (one line)."""
    try:
        yield
    except DdpmkitError:
        raise
    except Exception as exc:
        message = lost_contact(exc)
        if message is None:
            raise
        raise DistributedError(message) from None


__all__ = ["BACKENDS", "DistributedError", "DistributedOptions", "Parallel", "RankRNG", "WaitForMainProcess",
           "check_batch_split", "check_launch", "launch", "lost_contact", "parallel_errors", "resolve_backend",
           "record_failure", "seed_rank_rng", "setup_parallel", "strip_launch_flags", "teardown", "under_launcher"]
