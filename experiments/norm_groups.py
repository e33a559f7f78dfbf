"""GroupNorm groups in the default MNIST UNet: step time of 32 groups (one channel a group at 32 channels, i.e.
instance norm) against 8, alternated in one run, fp32, batch 64 at 28x28.

    python experiments/norm_groups.py      # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ddpmkit.models import UNet
from ddpmkit.models.unet import UNetConfig

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON


def step_seconds(model: UNet, batch: int, train: bool) -> float:
    x, t = torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,))
    start = time.perf_counter()
    if train:
        model(x, t).square().mean().backward()
    else:
        with torch.no_grad():
            model(x, t)
    return time.perf_counter() - start


def main(groups: tuple[int, ...] = (32, 8), batch: int = 64, repeats: int = 12,
         out: Path = RESULTS / "norm_groups.json") -> None:
    torch.manual_seed(0)
    models = {g: UNet(UNetConfig.named("mnist", num_res_blocks=1, norm_groups=g)) for g in groups}
    times: dict[str, dict[int, list[float]]] = {"train": {g: [] for g in groups}, "sample": {g: [] for g in groups}}
    for mode in times:
        for g in groups:  # warm-up
            step_seconds(models[g], batch, mode == "train")
        for _ in range(repeats):
            for g in groups:
                times[mode][g].append(step_seconds(models[g], batch, mode == "train"))
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "batch": batch, "repeats": repeats, "median_seconds": {}}
    print("| norm_groups | train step (fwd+bwd) s | sampling forward s |")
    print("|---|---|---|")
    for g in groups:
        med = {mode: sorted(times[mode][g])[repeats // 2] for mode in times}
        report["median_seconds"][g] = med
        print(f"| {g} | {med['train']:.3f} | {med['sample']:.3f} |")
    base, new = report["median_seconds"][groups[0]], report["median_seconds"][groups[-1]]
    report["speedup"] = {mode: base[mode] / new[mode] for mode in base}
    print(f"speed-up of {groups[-1]} groups over {groups[0]}: train {report['speedup']['train']:.2f}x, "
          f"sampling {report['speedup']['sample']:.2f}x")
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS / "norm_groups.json")
    args = parser.parse_args()
    main(repeats=args.repeats, out=args.out)
