"""Steps against FID for every sampler: merge ``ddpmkit eval`` sweeps of one run into one table, JSON and plot.

The sweeps are what ``ddpmkit eval RUN --sampler A,B --steps 5,8,10 --metrics fid,cfid,classes`` writes
(``sweep.json``); run several (settings split for time) and merge them here. Every row must share the run, N,
seed and reference, or the FIDs are not comparable and the script refuses. Printed: NFE down, sampler across,
each FID with its ratio to the DDIM-50 row (the issue's yardstick: within 10% at 10 NFE).

    ddpmkit eval runs/mnist --num 500 --sampler ddim,dpm++2m,dpm++3m,unipc --steps 5,8,10,15,20,50 \\
        --metrics fid,cfid,classes --out /tmp/fs
    python benchmarks/few_step_table.py /tmp/fs/sweep.json --out benchmarks/results/mnist_few_step_fid.json \\
        --plot docs/mnist_few_step_fid.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddpmkit.eval.sweep import plot_sweep, sweep_markdown

SHARED = ("num", "seed", "ref", "ref_n", "extractor", "clip_denoised")


def pivot(rows: list[dict], key: str = "fid") -> str:
    """NFE rows × sampler columns; each cell the score and its ratio to DDIM-50's."""
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    nfes = sorted({r["nfe"] for r in rows})
    cell = {(r["sampler"], r["nfe"]): r[key] for r in rows if key in r}
    base = cell.get(("ddim", 50))
    lines = ["| NFE | " + " | ".join(samplers) + " |", "|---|" + "---|" * len(samplers)]
    for n in nfes:
        cells = []
        for s in samplers:
            v = cell.get((s, n))
            cells.append("" if v is None else f"{v:.1f}" + (f" ({v / base - 1:+.0%})" if base else ""))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep.json files of one run")
    p.add_argument("--run", default="", help="what the rows were sampled from (written to the JSON)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args()
    rows = [r for path in args.sweeps for r in json.loads(path.read_text())]
    for field in SHARED:
        values = {json.dumps(r.get(field)) for r in rows}
        if len(values) > 1:
            sys.exit(f"error: the sweeps differ in {field} ({', '.join(sorted(values))}); merge only comparable runs")
    order = {s: k for k, s in enumerate(dict.fromkeys(r["sampler"] for r in rows))}
    rows.sort(key=lambda r: (order[r["sampler"]], r["nfe"]))
    print(sweep_markdown(rows))
    print(pivot(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": args.run, "rows": rows}, indent=1))
    if args.plot:
        plot_sweep(rows, args.plot)
        print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
