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

A run is addressed by its folder, its ``checkpoints/`` folder or one checkpoint folder: :meth:`RunFolder.locate`
turns any of them into (run folder, checkpoint). A lone checkpoint copied out of its run is a run of its own
whose config is the copy in its state.json.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DdpmkitError

if TYPE_CHECKING:
    from .config import RunConfig

CHECKPOINT_DIR = "checkpoints"
STEP_PATTERN = re.compile(r"^step_(\d+)$")


def checkpoint_step(path: Path) -> int:
    """The step of a ``step_NNNNNNN`` checkpoint folder."""
    match = STEP_PATTERN.match(Path(path).name)
    if not match:
        raise DdpmkitError(f"{path} is not a checkpoint folder (step_NNNNNNN)")
    return int(match.group(1))


def is_checkpoint(path: Path) -> bool:
    """A folder holding a checkpoint's state.json."""
    return (Path(path) / "state.json").is_file()


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
        from .checkpoint import read_state
        from .config import RunConfig

        if self.config_file.is_file():
            return RunConfig.load(self.config_file)
        checkpoint = checkpoint or self.latest_checkpoint()
        state = read_state(checkpoint)
        if "config" not in state:
            raise DdpmkitError(f"{checkpoint} holds no config; pass --preset with the settings it was trained with")
        return RunConfig.from_dict(state["config"], where=f"{checkpoint}/state.json")

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
