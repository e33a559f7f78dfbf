"""Is the data pipeline a bottleneck? BatchLoader batches/s against the time of one UNet training step.

    .venv/bin/python benchmarks/data.py [--seconds 3] [--unet-steps 5] [--device cpu|cuda] [--synthetic]

Measures (CPU, the threads torch uses by default):
- loading the cached .npz (mnist, pokemon);
- BatchLoader throughput: mnist batch 128 at 28x28 (no flip) and pokemon batch 32 at 64x64 (hflip);
- if ddpmkit.models.UNet exists: one training step (forward, MSE, backward, AdamW) of
  UNet(UNetConfig.named("mnist")) at batch 128, fp32, and the loader's share of step time.
With --device cuda the loader time includes the copy to the GPU, and the step runs there.
--synthetic uses random uint8 arrays of the same shapes (the loader's speed does not depend on content).
Prints a table and writes benchmarks/results/data.json. Target: loader < 5% of the mnist step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data import BatchLoader, ImageArray, load_dataset

SHAPES = {"mnist": (60000, 28, 28, 1), "pokemon": (1008, 64, 64, 3)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def loader_rate(name: str, batch_size: int, hflip: bool, seconds: float, device: str = "cpu",
                synthetic: bool = False) -> dict:
    start = time.perf_counter()
    if synthetic:
        images = np.random.default_rng(0).integers(0, 256, SHAPES[name], dtype=np.uint8)
        data = ImageArray(images, np.zeros(len(images), dtype=np.int64), [], name)
    else:
        data = load_dataset(name, progress=False)
    load_s = time.perf_counter() - start
    batches = BatchLoader(data, batch_size, hflip=hflip, seed=0).batches()
    for _ in range(5):  # warm-up
        next(batches)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        x, y = next(batches)
        if device != "cpu":
            x, y = x.to(device), y.to(device)
            _sync(device)
        count += 1
    return {"data": name, "batch_size": batch_size, "image": list(data.images.shape[1:]), "hflip": hflip,
            "load_npz_s": round(load_s, 3), "batches_per_s": round(count / elapsed, 1),
            "ms_per_batch": round(1000 * elapsed / count, 3)}


def unet_step_ms(steps: int, batch_size: int = 128, device: str = "cpu") -> float | None:
    try:
        from ddpmkit.models import UNet, UNetConfig
    except ImportError:
        return None
    model = UNet(UNetConfig.named("mnist")).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 1, 28, 28, device=device)
    times = []
    for i in range(steps + 3):
        t = torch.randint(0, 1000, (batch_size,), device=device)
        _sync(device)
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x, t), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= 3:  # the first steps warm up allocators and kernels
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per loader measurement")
    parser.add_argument("--unet-steps", type=int, default=5, help="timed steps (>= 1; 3 warm-up steps first)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--synthetic", action="store_true", help="random arrays of the real shapes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data.json")
    args = parser.parse_args()
    args.unet_steps = max(1, args.unet_steps)

    dev, syn = args.device, args.synthetic
    rows = [loader_rate("mnist", 128, False, args.seconds, dev, syn),
            loader_rate("mnist", 128, True, args.seconds, dev, syn),
            loader_rate("pokemon", 32, True, args.seconds, dev, syn)]
    step = unet_step_ms(args.unet_steps, device=dev)
    print(f"{'data':8s} {'batch':>5s} {'image':>12s} {'hflip':>5s} {'load .npz':>9s} {'batches/s':>10s} "
          f"{'ms/batch':>9s}")
    for r in rows:
        print(f"{r['data']:8s} {r['batch_size']:5d} {'x'.join(map(str, r['image'])):>12s} {r['hflip']!s:>5s} "
              f"{r['load_npz_s']:8.3f}s {r['batches_per_s']:10.1f} {r['ms_per_batch']:9.3f}")
    result = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "synthetic": syn,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(),
              "load_average_1min": round(os.getloadavg()[0], 2),  # a shared machine: context for the timings
              "loader": rows, "unet_mnist_step_ms_fp32_batch128": step}
    if step is not None:
        share = rows[0]["ms_per_batch"] / step
        result["loader_share_of_mnist_step"] = round(share, 5)
        print(f"UNet('mnist') training step on {dev}, batch 128, fp32: {step:.1f} ms (median of "
              f"{args.unet_steps}); loader = {100 * share:.3f}% of it (target < 5%)")
    else:
        print("ddpmkit.models.UNet not available: no step-time comparison")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
