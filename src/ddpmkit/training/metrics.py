"""Metrics: JSONL (one object a line) and CSV files in the run folder, plus TensorBoard when installed."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..errors import DdpmkitError
from ..run import RunFolder


class MetricsLogger:
    """Appends ``{"step": …, name: value, …}`` rows to metrics.jsonl and metrics.csv; mirrors scalars and images
    to TensorBoard (``tb/``). On resume, rows after the resumed step are dropped so the files match the state."""

    def __init__(self, run: RunFolder, tensorboard: bool = True, resume_step: int | None = None):
        self.jsonl, self.csv = run.metrics_jsonl, run.metrics_csv
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.jsonl.exists():
            self.rows = [r for r in read_metrics(self.jsonl) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))
        elif self.jsonl.exists():
            self.jsonl.unlink()
        self._write_csv()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run.tensorboard_dir), purge_step=resume_step)
            except ImportError:  # tensorboard is a dependency, but a trimmed install should still train
                warnings.warn("tensorboard is not installed; logging to metrics.jsonl only", stacklevel=2)

    def log(self, step: int, **values: float) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self.rows.append(row)
        try:
            with open(self.jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        except OSError as exc:  # a full disk: one line; the checkpoints written so far are intact
            raise DdpmkitError(f"cannot write {self.jsonl} ({exc.strerror or exc}); free some space (or fix the "
                               "folder) and continue with --resume from the last checkpoint") from exc
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key.replace(".", "/"), value, step)
        self._write_csv()

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")
            self.writer.flush()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        try:
            with open(self.csv, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=keys or ["step"])
                writer.writeheader()
                writer.writerows(self.rows)
        except OSError as exc:
            raise DdpmkitError(f"cannot write {self.csv} ({exc.strerror or exc}); free some space (or fix the "
                               "folder) and continue with --resume from the last checkpoint") from exc

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not Path(path).exists():  # no metrics hook ran
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line after a crash
            continue
    return rows
