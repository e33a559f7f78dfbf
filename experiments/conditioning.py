"""What conditioning costs per training step: the mnist preset's UNet unconditional, with the label embedding, and
with cross-attention to label tokens, timed interleaved in one process (this machine is noisy: ratios only).

    python experiments/conditioning.py [--rounds 5] [--steps 5] [--batch-size 64]

Prints a table and writes docs/experiments/conditioning.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ddpmkit.diffusion import Diffusion
from ddpmkit.models import UNet, UNetConfig
from ddpmkit.schedule import NoiseSchedule

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON

VARIANTS = {  # overrides of the mnist preset's UNet (the mnist size with one ResBlock a level)
    "unconditional (mnist)": {},
    "embedding (mnist-cond)": {"num_classes": 10},
    "cross-attention at 7x7": {"num_classes": 10, "conditioning": "cross_attention",
                               "cross_attention_resolutions": [7]},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per variant per round")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS / "conditioning.json")
    args = p.parse_args()

    diffusion = Diffusion(NoiseSchedule.cosine(1000), prediction="v", min_snr_gamma=5.0)
    setups = {}
    for name, overrides in VARIANTS.items():
        torch.manual_seed(0)
        model = UNet(UNetConfig.named("mnist", num_res_blocks=1, **overrides))
        setups[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), bool(overrides))
    x0 = torch.rand(args.batch_size, 1, 28, 28) * 2 - 1
    labels = torch.arange(args.batch_size) % 10
    rates: dict[str, list[float]] = {name: [] for name in setups}

    def step(name: str) -> None:
        model, opt, conditional = setups[name]
        loss = diffusion.loss(model, x0, {"labels": labels} if conditional else None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for name in setups:  # warm-up
        step(name)
    for _ in range(args.rounds):
        for name in setups:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))

    base = statistics.median(rates["unconditional (mnist)"])
    rows = []
    print(f"| UNet | parameters | train images/s (median of {args.rounds}) | vs unconditional |")
    print("|---|---|---|---|")
    for name, (model, _, _) in setups.items():
        median = statistics.median(rates[name])
        params = sum(p.numel() for p in model.parameters())
        rows.append({"variant": name, "params": params, "images_per_s": median, "rounds": rates[name],
                     "ratio": median / base})
        print(f"| {name} | {params:,} | {median:.1f} | {median / base:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{platform.processor() or platform.machine()}, "
                                               f"{torch.get_num_threads()} threads, torch {torch.__version__}",
                                    "batch_size": args.batch_size, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
