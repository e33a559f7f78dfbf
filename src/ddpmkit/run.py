"""The run folder: one object that knows where everything of a training run lives.

Layout (the only place it is spelled out; train, sample, eval and ``Pipeline`` all go through :class:`RunFolder`)::

    RUN/
      config.yaml                  the resolved RunConfig (resume and sampling never need the flags again)
      checkpoints/step_0001300/    model/ema/optimizer/rng .safetensors + state.json (see ddpmkit.checkpoint)
      samples/step_0001300.png     EMA sample grids during training, and samples/latest.png
      metrics.jsonl, metrics.csv   one row per logged step
      tb/                          TensorBoard events
      loss_curve.png, loss_by_timestep.png, summary.json
      eval/                        ``ddpmkit eval`` reports (sweep.md, sweep.json, sweep.png)

A run folder has one writer at a time (``train``, ``lora``, ``lora merge``): :meth:`RunFolder.acquire_writer`
takes an advisory lock on ``RUN/.lock`` that names the writing process, and a second writer is refused in one line.
The kernel drops the lock when its process ends, however it ends, so a killed run never blocks the next one. A new
run is written only into a new or empty folder, or one that holds nothing but a run's own files
(:data:`RUN_ENTRIES`).

A run is addressed by its folder, its ``checkpoints/`` folder or one checkpoint folder: :meth:`RunFolder.locate`
turns any of them into (run folder, checkpoint). A lone checkpoint copied out of its run is a run of its own
whose config is the copy in its state.json.

What a checkpoint says about its run (the model and diffusion it holds, the config and data it was trained with,
its adapters, the versions that wrote it) is one typed object, :class:`RunInfo`: the only code that writes those
fields of state.json and the only code that reads them.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import read_state
from .config import RunConfig
from .diffusion import Diffusion
from .errors import DdpmkitError
from .models import UNetConfig
from .version import __version__

try:
    import fcntl
except ImportError:  # Windows: no flock; run folders are then not guarded against a second writer
    fcntl = None

CHECKPOINT_DIR = "checkpoints"
STEP_PATTERN = re.compile(r"^step_(\d+)$")
LOCK_FILE = ".lock"
# Everything a run folder may hold (train, lora, lora merge, eval write these): a new run goes only where nothing else
# is, so that it never mixes with, or overwrites, a user's own files
RUN_ENTRIES = frozenset({"config.yaml", CHECKPOINT_DIR, "samples", "eval", "tb", "metrics.jsonl", "metrics.csv",
                         "loss_curve.png", "loss_by_timestep.png", "summary.json", "adapter.json",
                         "adapter.safetensors", LOCK_FILE})
ATOMIC_TMP = re.compile(r"^\..+\.tmp$")                # what an interrupted atomic_file write leaves
OLD_COPY = re.compile(r"^\.old-(step_\d+)-\d+$")       # a re-saved step's previous copy, while the new one moves in


def sweep_files(out_dir: Path) -> dict[str, Path]:
    """The files of an ``ddpmkit eval`` report in ``out_dir`` (a run's eval/ by default): json, markdown, plot."""
    return {"json": Path(out_dir) / "sweep.json", "markdown": Path(out_dir) / "sweep.md",
            "plot": Path(out_dir) / "sweep.png"}


def nll_files(out_dir: Path) -> dict[str, Path]:
    """The files of an ``ddpmkit eval --nll`` report in ``out_dir``: json and the plot of the terms."""
    return {"json": Path(out_dir) / "nll.json", "plot": Path(out_dir) / "nll_terms.png"}


def checkpoint_step(path: Path) -> int:
    """The step of a ``step_NNNNNNN`` checkpoint folder."""
    match = STEP_PATTERN.match(Path(path).name)
    if not match:
        raise DdpmkitError(f"{path} is not a checkpoint folder (step_NNNNNNN)")
    return int(match.group(1))


def is_checkpoint(path: Path) -> bool:
    """A folder holding a checkpoint's state.json."""
    return (Path(path) / "state.json").is_file()


def describe_process() -> str:
    """This process as its user started it, in a word or two: ``ddpmkit train``, ``pytest``, ``train.py``."""
    argv = sys.argv or ["python"]
    first = Path(argv[0])
    name = first.parent.name if first.name == "__main__.py" else first.name  # python -m ddpmkit ...
    words = [name or "python", *[a for a in argv[1:2] if re.fullmatch(r"[A-Za-z][\w-]*", a)]]
    return " ".join(words)


class WriterLock:
    """The right to write one run folder, held by one process: an exclusive ``flock`` on ``RUN/.lock`` (which
    holds the writer's pid and command, for the message a second writer gets). :meth:`release` (or leaving a
    ``with`` block) gives it up; the kernel also drops it when the process ends, even by SIGKILL, so a stale
    ``.lock`` file never blocks anyone."""

    def __init__(self, run: RunFolder, handle):
        self.run, self._handle = run, handle

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()  # closing the file drops the flock

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _busy(path: Path, holder: bytes) -> str:
    pid, _, command = holder.decode("utf-8", "replace").strip().partition(" ")
    who = f"process {pid} ({command})" if pid.isdigit() and command else "another process"
    return f"{path} is being written by {who}; wait for it or pass another --out"


@dataclass(frozen=True)
class RunFolder:
    """Paths and listings of one run; nothing is created until a writer asks for it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ----- files ------------------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tb"

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def loss_curve(self) -> Path:
        return self.path / "loss_curve.png"

    @property
    def loss_by_timestep(self) -> Path:
        return self.path / "loss_by_timestep.png"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step:07d}"

    def sample_grid(self, step: int) -> Path:
        return self.samples_dir / f"step_{step:07d}.png"

    @property
    def latest_grid(self) -> Path:
        return self.samples_dir / "latest.png"


    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    # ----- the one writer -----------------------------------------------------------------------------------

    def writer(self) -> str | None:
        """A one-line error message naming the process writing this run now, or None; creates nothing."""
        if fcntl is None or not self.lock_file.is_file():
            return None
        try:
            handle = open(self.lock_file, "rb")  # noqa: SIM115 (closed below; the flock lives as long as it)
        except OSError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # dropped when the file closes
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    return _busy(self.path, handle.read())
        return None

    def check_no_writer(self) -> None:
        """Refuse, in one line naming it, when another process is writing this run (nothing is created)."""
        message = self.writer()
        if message:
            raise DdpmkitError(message)

    def acquire_writer(self, wait: float = 0.5) -> WriterLock:
        """Become the run's one writer (the folder and its .lock are created), or a one-line error naming the
        process that is. ``wait`` seconds of retries cover a reader's momentary :meth:`writer` probe."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a+b")  # noqa: SIM115 (the lock lives as long as the file is open)
        if fcntl is None:
            return WriterLock(self, handle)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a file system without locks
                    return WriterLock(self, handle)
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) or time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read()
                    handle.close()
                    raise DdpmkitError(_busy(self.path, holder)) from None
                time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {describe_process()}\n".encode())
        handle.flush()
        return WriterLock(self, handle)

    def foreign_entries(self) -> list[str]:
        """The folder's entries that no ddpmkit run writes, sorted ([] for a new, empty or run folder)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in RUN_ENTRIES and not ATOMIC_TMP.match(p.name))

    def check_new_run_folder(self, flag: str = "--out") -> None:
        """Refuse a folder holding the user's own files: a run written there would mix with them."""
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise DdpmkitError(f"{flag} {self.path} holds files that are not part of a ddpmkit run ({shown}); "
                               "pass a new or empty folder")

    def clean_interrupted_saves(self) -> list[str]:
        """Remove what interrupted saves left behind (call as the run's writer only): ``checkpoints/.tmp-*`` folders
        (incomplete checkpoints), ``.NAME.*.tmp`` files (incomplete atomic writes) and the previous copy of a
        re-saved step (``.old-step_*``) once the new copy is in place; an ``.old-step_*`` copy whose step is missing
        is the only copy of that checkpoint and stays. Returns what was removed, relative to the run folder."""
        removed = []
        for folder in (self.path, self.samples_dir, self.checkpoints_dir):
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                in_checkpoints = folder == self.checkpoints_dir
                old = OLD_COPY.match(entry.name) if in_checkpoints else None
                stale = ((old and (folder / old.group(1)).exists()) or ATOMIC_TMP.match(entry.name)
                         or (in_checkpoints and entry.name.startswith(".tmp-")))
                if not stale:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(str(entry.relative_to(self.path)))
        return removed

    # ----- checkpoints ------------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
        if is_checkpoint(self.path):
            return [self.path]  # a lone checkpoint copied out of its run is a run of its own
        root = self.checkpoints_dir
        if not root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path:
        """The newest checkpoint, or a one-line error saying there is none."""
        found = self.checkpoints()
        if not found:
            raise DdpmkitError(f"no checkpoint found in {self.path}; train first, or pass a run folder that has "
                               f"{CHECKPOINT_DIR}/")
        return found[-1]

    def has_checkpoints(self) -> bool:
        return bool(self.checkpoints())

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest ``keep`` checkpoints."""
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    # ----- what the run was trained with --------------------------------------------------------------------

    def load_config(self, checkpoint: Path | None = None) -> RunConfig:
        """config.yaml, else the copy in the (given or newest) checkpoint's state.json."""
        if self.config_file.is_file():
            return RunConfig.load(self.config_file)
        checkpoint = checkpoint or self.latest_checkpoint()
        config = RunInfo.read(checkpoint).config
        if config is None:
            raise DdpmkitError(f"{checkpoint} holds no config; pass --preset with the settings it was trained with")
        return config

    def info(self, checkpoint: Path | None = None) -> RunInfo:
        """What the (given or newest) checkpoint says about the run: :class:`RunInfo`."""
        return RunInfo.read(checkpoint or self.latest_checkpoint())

    # ----- finding a run -----------------------------------------------------------------------------------

    @classmethod
    def locate(cls, path: str | Path) -> tuple[RunFolder, Path]:
        """(run folder, checkpoint) from a run folder (its newest checkpoint), its checkpoints/ folder, or one
        checkpoint folder (inside a run, or copied out of one)."""
        path = Path(path)
        if not path.exists():
            raise DdpmkitError(f"no checkpoint found: {path} does not exist; pass a run folder or a checkpoint "
                               "folder")
        if is_checkpoint(path):
            inside_run = path.parent.name == CHECKPOINT_DIR and STEP_PATTERN.match(path.name)
            return (cls(path.parent.parent) if inside_run else cls(path)), path
        run = cls(path.parent if path.name == CHECKPOINT_DIR else path)
        return run, run.latest_checkpoint()

    def describe(self) -> dict[str, Any]:
        """What is there, for printing: checkpoints, steps and whether a config is present."""
        found = self.checkpoints()
        return {"path": str(self.path), "config": self.config_file.is_file(),
                "checkpoints": [p.name for p in found]}


# ----- what a checkpoint says about its run -------------------------------------------------------------------

@dataclass(frozen=True)
class RunInfo:
    """A checkpoint's metadata: the model and diffusion it holds, the run config and data it was trained with, its
    LoRA adapters (a LoRA run) or the adapter merged into it, and the versions that wrote it.

    Written into state.json beside the training state (:meth:`to_state`) and read back once (:meth:`read`); every
    command asks this object instead of parsing state.json. The run's recommendations for sampling come from its
    config: :attr:`sampler`, :attr:`guidance`.
    """

    unet: UNetConfig
    diffusion: Diffusion
    step: int = 0
    config: RunConfig | None = None
    data_name: str | None = None
    class_names: tuple[str, ...] = ()
    lora: dict[str, Any] | None = None          # rank, alpha, targets, base_fingerprint, base_checkpoint
    lora_merged: dict[str, Any] | None = None   # the base and adapter a merged run came from
    versions: dict[str, str] = field(default_factory=lambda: {"ddpmkit": __version__, "torch": torch.__version__})
    checkpoint: Path | None = None              # where it was read from

    # ----- state.json ---------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The state.json fields this object owns (the training state adds its own beside them)."""
        state: dict[str, Any] = {
            "step": self.step, "unet": self.unet.to_dict(), "diffusion": self.diffusion.to_dict(),
            "data": {"name": self.data_name, "class_names": list(self.class_names)}, "versions": dict(self.versions)}
        if self.config is not None:
            state["config"] = self.config.to_dict()
        if self.lora is not None:
            state["lora"] = dict(self.lora)
        if self.lora_merged is not None:
            state["lora_merged"] = dict(self.lora_merged)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], checkpoint: Path | None = None) -> RunInfo:
        """From a state.json dict; a missing model or diffusion record is a one-line error."""
        where = f"{checkpoint}/state.json" if checkpoint is not None else "state.json"
        try:
            unet = UNetConfig.from_dict(state["unet"])
            diffusion = Diffusion.from_dict(state["diffusion"])
        except KeyError as exc:
            raise DdpmkitError(f"{where} lacks {exc}; it is not a complete ddpmkit checkpoint") from None
        config = RunConfig.from_dict(state["config"], where=where) if state.get("config") else None
        data = state.get("data") or {}
        return cls(unet=unet, diffusion=diffusion, step=int(state.get("step", 0)), config=config,
                   data_name=data.get("name"), class_names=tuple(data.get("class_names") or ()),
                   lora=state.get("lora") or None, lora_merged=state.get("lora_merged") or None,
                   versions=dict(state.get("versions") or {}), checkpoint=checkpoint)

    @classmethod
    def read(cls, checkpoint: Path) -> RunInfo:
        """A checkpoint folder's metadata (no weights are read)."""
        return cls.from_state(read_state(checkpoint), Path(checkpoint))

    # ----- what the run says -----------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int | None:
        return self.unet.num_classes

    @property
    def trained_on(self) -> str:
        """The data set the run was trained on (its config, else the data record); an error where neither says."""
        name = (self.config.data.name if self.config is not None else None) or self.data_name
        if not name:
            raise DdpmkitError(f"{self.checkpoint or 'the checkpoint'} does not say which data set it was trained on "
                               "(no data.name in state.json)")
        return name

    @property
    def sampler(self) -> tuple[str, int | None, str | None]:
        """The sampler the run's preset recommends, as its grids used it: (``train.sample_sampler``,
        ``sample_steps``, ``sample_spacing``; None: the sampler's own). Without a config: DDIM's defaults."""
        if self.config is None:
            return "ddim", None, None
        train = self.config.train
        return train.sample_sampler, train.sample_steps, train.sample_spacing

    @property
    def guidance(self) -> float:
        """The classifier-free guidance scale the run's preset recommends (``train.sample_guidance``; 1: none)."""
        return float(self.config.train.sample_guidance) if self.config is not None else 1.0
