"""``ddpmkit eval merge``: several ``ddpmkit eval`` sweeps of one run merged into one table, JSON and plot.

A long steps-versus-quality sweep is often run in parts (``ddpmkit eval RUN --sampler ddim --steps 5,10,50
--out A``, then ``--sampler unipc --out B``, possibly on different machines); each part writes ``sweep.json``.
Merging checks that the parts are comparable, then writes what one sweep would have written.

Comparable means every row has the same value of each of ``SHARED``: the images per setting N, the seed, the
reference statistics (name and N), the feature extractor and the x̂₀ clipping. FID is biased upward at small N and
depends on the reference, so rows that differ in any of these are not one table, and merging refuses them. Two rows
of the same setting (sampler, steps, NFE, eta, guidance) are refused too: the table would hold two answers.

Rows keep every field they had. They are ordered by sampler (in order of first appearance) and then by NFE. Beside
the sweep table, the pivot puts NFE down and samplers across, each score with its ratio to a base setting
(DDIM at 50 NFE unless told otherwise): ``score / score_base - 1``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import DdpmkitError
from .sweep import _json_default, plot_sweep, sweep_markdown

SHARED = ("num", "seed", "ref", "ref_n", "extractor", "clip_denoised")
SETTING = ("sampler", "steps", "nfe", "eta", "guidance")


@dataclass
class MergedSweep:
    rows: list[dict]
    run: str = ""
    base: tuple[str, int] = ("ddim", 50)

    @property
    def markdown(self) -> str:
        table = pivot_markdown(self.rows, base=self.base)
        head = f"Run: {self.run}\n\n" if self.run else ""
        return head + sweep_markdown(self.rows) + ("\n" + table + "\n" if table else "")


def read_sweep(path: str | Path) -> list[dict]:
    """The rows of a ``sweep.json`` (a list of rows), or of a merged JSON ({"run": ..., "rows": [...]})."""
    path = Path(path)
    if not path.is_file():
        raise DdpmkitError(f"{path} does not exist; pass the sweep.json files that `ddpmkit eval RUN --out DIR` wrote")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DdpmkitError(f"{path} is not JSON ({exc}); pass the sweep.json of a `ddpmkit eval` report") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "sampler" in r and "steps" in r for r in rows):
        raise DdpmkitError(f"{path} is not a sweep (a list of rows with sampler and steps); pass the sweep.json "
                           "of a `ddpmkit eval` report")
    return rows


def _nfe(row: dict) -> int:
    return row["nfe"] if row.get("nfe") is not None else row["steps"]


def merge_rows(sweeps: Sequence[Sequence[dict]], names: Sequence[str] | None = None) -> list[dict]:
    """All rows of ``sweeps`` in one list, refused unless comparable (module docstring), sorted by sampler and NFE."""
    names = list(names) if names is not None else [f"sweep {k + 1}" for k in range(len(sweeps))]
    tagged = [(name, row) for name, rows in zip(names, sweeps) for row in rows]
    if not tagged:
        raise DdpmkitError("the sweeps hold no rows; pass sweep.json files of `ddpmkit eval` reports")
    for field in SHARED:
        values = {}
        for name, row in tagged:
            values.setdefault(json.dumps(row.get(field)), name)
        if len(values) > 1:
            found = "; ".join(f"{value} in {name}" for value, name in values.items())
            raise DdpmkitError(f"the sweeps differ in {field} ({found}); merge only sweeps of one run with the same "
                               f"--num, --seed, reference and --clip")
    seen: dict[str, str] = {}
    for name, row in tagged:
        key = json.dumps([row.get(f) for f in SETTING])
        if key in seen:
            setting = ", ".join(f"{f} {row.get(f)}" for f in SETTING if row.get(f) is not None)
            raise DdpmkitError(f"{seen[key]} and {name} both hold the setting {setting}; leave one of them out")
        seen[key] = name
    rows = [dict(row) for _, row in tagged]
    order = {s: k for k, s in enumerate(dict.fromkeys(r["sampler"] for r in rows))}
    rows.sort(key=lambda r: (order[r["sampler"]], _nfe(r), r.get("guidance") or 0.0))
    return rows


def merge_sweeps(paths: Iterable[str | Path], run: str = "", base: tuple[str, int] = ("ddim", 50)) -> MergedSweep:
    """Read and merge ``sweep.json`` files (see ``merge_rows``)."""
    paths = list(paths)
    return MergedSweep(merge_rows([read_sweep(p) for p in paths], [str(p) for p in paths]), run=run, base=base)


def pivot_markdown(rows: Sequence[dict], key: str | None = None, base: tuple[str, int] = ("ddim", 50)) -> str:
    """NFE down, samplers across; each cell the score (``key``: fid, else cfid) and its ratio to the base setting's.

    Empty when no row has the score or the rows hold more than one score per sampler and NFE (a guidance sweep).
    """
    key = key or next((k for k in ("fid", "cfid") if any(k in r for r in rows)), None)
    if key is None:
        return ""
    scored = [r for r in rows if key in r]
    cell = {(r["sampler"], _nfe(r)): r[key] for r in scored}
    if len(cell) < len(scored):
        return ""
    samplers = list(dict.fromkeys(r["sampler"] for r in scored))
    reference = cell.get(base)
    name = {"fid": "FID", "cfid": "classifier FID"}.get(key, key)
    ratio = f"; in brackets the ratio to {base[0]} at {base[1]} NFE" if reference else ""
    lines = [f"{name} by NFE (N = {scored[0].get('num')}{ratio})", "",
             "| NFE | " + " | ".join(samplers) + " |", "|---|" + "---|" * len(samplers)]
    for n in sorted({_nfe(r) for r in scored}):
        cells = []
        for s in samplers:
            v = cell.get((s, n))
            percent = round(100 * (v / reference - 1)) if reference and v is not None else None
            cells.append("" if v is None else f"{v:.1f}" + ("" if percent is None else f" ({percent:+d}%)"))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_merged(merged: MergedSweep, out_dir: str | Path) -> dict[str, Path]:
    """Write ``merged.json`` ({"run", "rows"}), ``merged.md`` and ``merged.png`` (as a sweep's plot) in ``out_dir``."""
    out = Path(out_dir)
    if out.suffix == ".json":
        raise DdpmkitError(f"--out is a folder (merged.json, merged.md, merged.png go in it), got {out}; "
                           f"pass {out.with_suffix('')}")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "merged.json", "markdown": out / "merged.md"}
    atomic_write_text(paths["json"], json.dumps({"run": merged.run, "rows": merged.rows}, indent=1,
                                                default=_json_default) + "\n")
    atomic_write_text(paths["markdown"], merged.markdown)
    plot = plot_sweep(merged.rows, out / "merged.png")
    if plot is not None:
        paths["plot"] = plot
    return paths
