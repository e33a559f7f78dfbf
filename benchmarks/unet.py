"""Speed of ddpmkit's UNet against diffusers' UNet2DModel configured alike (CPU).

For an MNIST-sized and a CIFAR-sized configuration, in fp32 and bf16 autocast:
training images/s (forward, MSE, backward, AdamW step) and inference images/s (no_grad forward).
Our and diffusers' timings are interleaved (alternating which goes first) and the median of the repeats
is reported, because the machine is shared and noisy; the ratio ours/diffusers is what to read.

    .venv/bin/python benchmarks/unet.py            # default run, ~3-6 minutes on 2 cores
    .venv/bin/python benchmarks/unet.py --quick    # fewer repeats, smaller batches: a smoke test

Writes benchmarks/results/unet.md (the table) and benchmarks/results/unet.json.
diffusers is a benchmark-only extra (``pip install ddpmkit[bench]``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.models import UNet, UNetConfig

RESULTS = Path(__file__).parent / "results"
MNIST = "mnist-sized (32x32x1, base 32, mults 1,2,4, attn 8x8)"


def configs(quick: bool) -> dict[str, dict]:
    """Two configurations, each as (ours, diffusers kwargs), alike in every architectural choice."""
    mnist = UNetConfig(image_size=32, in_channels=1, base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=2,
                       attention_resolutions=(8,), num_heads=4, norm_groups=32)
    cifar = UNetConfig(image_size=32, in_channels=3, base_channels=64, channel_mults=(1, 2, 2, 2),
                       num_res_blocks=2, attention_resolutions=(16,), num_heads=4, norm_groups=32)
    return {
        MNIST: dict(
            ours=mnist, train_batch=32 if quick else 64, infer_batch=64 if quick else 128,
            diffusers=dict(
                sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 128), layers_per_block=2,
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                attention_head_dim=32, norm_num_groups=32, resnet_time_scale_shift="scale_shift",
                attn_norm_num_groups=32,  # else scale_shift drops the middle attention's GroupNorm (256 params)
            ),
        ),
        "cifar-sized (32x32x3, base 64, mults 1,2,2,2, attn 16x16)": dict(
            ours=cifar, train_batch=16 if quick else 32, infer_batch=32 if quick else 64,
            diffusers=dict(
                sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128, 128),
                layers_per_block=2,
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=32, norm_num_groups=32, resnet_time_scale_shift="scale_shift",
                attn_norm_num_groups=32,  # else scale_shift drops the middle attention's GroupNorm (256 params)
            ),
        ),
    }


class _Diffusers(torch.nn.Module):
    """diffusers' UNet2DModel with our call signature (returns the tensor, not a dataclass)."""

    def __init__(self, **kw):
        super().__init__()
        from diffusers import UNet2DModel

        self.net = UNet2DModel(**kw)

    def forward(self, x, t):
        return self.net(x, t).sample


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Forward FLOPs of one image (torch.utils.flop_counter counts convs, matmuls, attention)."""
    x, t = torch.randn(1, *shape[1:]), torch.tensor([500])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, t)
    return fc.get_total_flops()


def make_step(model, batch: int, shape, train: bool, bf16: bool):
    """A closure running one training step (or one inference forward) on fixed random data."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape[1:], generator=g)
    noise = torch.randn(batch, *shape[1:], generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # same optimizer for both models

        def step():
            with autocast():
                loss = F.mse_loss(model(x, t).float(), noise)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                model(x, t)
    return step


def time_group(steps: list, repeats: int, min_time: float) -> list[float]:
    """Median seconds per call of each closure, all interleaved: every repeat runs each once, in a rotated order."""
    for s in steps:  # warm-up: allocator, oneDNN primitive caches, optimizer state
        s()
        s()
    # calls per repeat so one repeat of an average closure lasts about min_time
    t0 = time.perf_counter()
    for s in steps:
        s()
    per = (time.perf_counter() - t0) / len(steps)
    n = max(1, round(min_time / per))
    times: list[list[float]] = [[] for _ in steps]
    for r in range(repeats):
        for k in range(len(steps)):
            i = (k + r) % len(steps)
            t0 = time.perf_counter()
            for _ in range(n):
                steps[i]()
            times[i].append((time.perf_counter() - t0) / n)
    return [statistics.median(t) for t in times]


@contextlib.contextmanager
def stock_group_norm():
    """Swap the UNet's fused GroupNorm+FiLM+SiLU for the stock-op composition (for the ablation only)."""
    from ddpmkit.models import layers
    from ddpmkit.models.norm import group_norm_film_act_composed

    fused = layers.group_norm_film_act
    layers.group_norm_film_act = group_norm_film_act_composed
    try:
        yield
    finally:
        layers.group_norm_film_act = fused


def with_stock_norm(step):
    def wrapped():
        with stock_group_norm():
            step()
    return wrapped


def run(quick: bool, repeats: int, min_time: float, only: str | None) -> dict:
    """Ours (as shipped: channels_last, fused norm) against diffusers in its default NCHW and in channels_last."""
    torch.manual_seed(0)
    rows, models_info = [], {}
    for name, c in configs(quick).items():
        if only and only not in name:
            continue
        ours = UNet(c["ours"])
        theirs = _Diffusers(**c["diffusers"])
        theirs_cl = _Diffusers(**c["diffusers"]).to(memory_format=torch.channels_last)
        shape = (1, c["ours"].in_channels, c["ours"].image_size, c["ours"].image_size)
        info = dict(ours_params=n_params(ours), diffusers_params=n_params(theirs),
                    ours_gflops=forward_flops(ours, shape) / 1e9, diffusers_gflops=forward_flops(theirs, shape) / 1e9,
                    ours_config=c["ours"].to_dict(), diffusers_config=c["diffusers"])
        models_info[name] = info
        print(f"\n{name}: params ours {info['ours_params']:,} / diffusers {info['diffusers_params']:,}; "
              f"forward GFLOPs/image ours {info['ours_gflops']:.3f} / diffusers {info['diffusers_gflops']:.3f}")
        for precision in ("fp32", "bf16"):
            for mode, batch in (("train", c["train_batch"]), ("inference", c["infer_batch"])):
                steps = [make_step(m, batch, shape, mode == "train", precision == "bf16")
                         for m in (ours, theirs, theirs_cl)]
                t_ours, t_nchw, t_cl = time_group(steps, repeats, min_time)
                row = dict(config=name, precision=precision, mode=mode, batch=batch, ours_img_s=batch / t_ours,
                           diffusers_img_s=batch / t_nchw, diffusers_cl_img_s=batch / t_cl,
                           ratio=min(t_nchw, t_cl) / t_ours)
                rows.append(row)
                print(f"  {precision:4s} {mode:9s} batch {batch:3d}: ours {row['ours_img_s']:7.1f} img/s, "
                      f"diffusers {row['diffusers_img_s']:7.1f} (NCHW) / {row['diffusers_cl_img_s']:7.1f} "
                      f"(channels_last) img/s, ratio to the faster {row['ratio']:.2f}", flush=True)
        del ours, theirs, theirs_cl
    return dict(rows=rows, models=models_info)


def ablation(repeats: int, min_time: float) -> list[dict]:
    """What each layout/norm choice gains on the MNIST-sized config (fp32), all variants interleaved.

    "NCHW + stock GroupNorm" is what a 1-channel model ran before the channels_last fix (see unet.md).
    """
    c = configs(False)[MNIST]
    shape = (1, 1, 32, 32)
    torch.manual_seed(0)
    nchw = UNet(dataclasses.replace(c["ours"], channels_last=False))
    cl = UNet(c["ours"])
    cl.load_state_dict(nchw.state_dict())
    variants = [("NCHW + stock GroupNorm ops", nchw, True), ("NCHW + fused GroupNorm", nchw, False),
                ("channels_last + stock GroupNorm ops", cl, True),
                ("channels_last + fused GroupNorm (shipped)", cl, False)]
    out = []
    for mode, batch in (("train", c["train_batch"]), ("inference", c["infer_batch"])):
        steps = []
        for _, model, stock in variants:
            step = make_step(model, batch, shape, mode == "train", False)
            steps.append(with_stock_norm(step) if stock else step)
        times = time_group(steps, repeats, min_time)
        for (label, _, _), t in zip(variants, times):
            out.append(dict(variant=label, mode=mode, batch=batch, img_s=batch / t))
            print(f"  ablation {mode:9s} {label:45s} {batch / t:7.1f} img/s", flush=True)
    return out


def markdown(result: dict, env: dict) -> str:
    lines = ["# UNet speed: ddpmkit vs diffusers UNet2DModel (CPU)", "",
             f"torch {env['torch']}, diffusers {env['diffusers']}, {env['threads']} threads, {env['cpu']}; "
             f"command: `{env['command']}`; load before run: {env['load']}", "",
             "Configured alike: scale-shift (FiLM) time conditioning in both (diffusers "
             "`resnet_time_scale_shift=\"scale_shift\"`), 4 heads of 32 dims, GroupNorm 32 groups eps 1e-5, "
             "dropout 0, attention at the same level(s) and in the middle block (GroupNorm in every attention: "
             "diffusers `attn_norm_num_groups=32`; parameter counts equal to the unit), fused AdamW for both.", "",
             "| config | params ours / diffusers | fwd GFLOPs/img ours / diffusers |", "|---|---|---|"]
    for name, i in result["models"].items():
        lines.append(f"| {name} | {i['ours_params'] / 1e6:.2f}M / {i['diffusers_params'] / 1e6:.2f}M | "
                     f"{i['ours_gflops']:.3f} / {i['diffusers_gflops']:.3f} |")
    lines += ["", "Ours as shipped (channels_last, fused GroupNorm); diffusers in its default NCHW and converted with "
              "`.to(memory_format=torch.channels_last)`; the ratio is ours over the faster of the two.", "",
              "| config | precision | mode | batch | ours img/s | diffusers NCHW img/s | diffusers channels_last img/s "
              "| ours / faster diffusers |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['config']} | {r['precision']} | {r['mode']} | {r['batch']} | {r['ours_img_s']:.1f} | "
                     f"{r['diffusers_img_s']:.1f} | {r['diffusers_cl_img_s']:.1f} | {r['ratio']:.2f} |")
    if result.get("ablation"):
        lines += ["", f"Ablation, {MNIST}, fp32, ours only, all variants interleaved in one run:", "",
                  "| variant | train img/s | inference img/s |", "|---|---|---|"]
        by = {}
        for a in result["ablation"]:
            by.setdefault(a["variant"], {})[a["mode"]] = a["img_s"]
        for label, v in by.items():
            lines.append(f"| {label} | {v['train']:.1f} | {v['inference']:.1f} |")
    return "\n".join(lines) + "\n"


NOTES_MARKER = "<!-- notes: kept when the script rewrites this file -->"


def write_markdown(path: Path, table: str) -> None:
    """Write the generated tables, keeping the hand-written notes below NOTES_MARKER of the old file."""
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text(table + "\n" + NOTES_MARKER + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, half batches: a smoke test (~1 minute)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats per row (default 5)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per repeat (default 1.0)")
    ap.add_argument("--only", default=None, help="run only configs whose name contains this string")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results")
    ap.add_argument("--no-ablation", action="store_true", help="skip the layout/norm ablation (~2 minutes)")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    min_time = args.min_time or (0.3 if args.quick else 1.0)
    import diffusers

    env = dict(torch=torch.__version__, diffusers=diffusers.__version__, threads=torch.get_num_threads(),
               cpu=f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()})",
               load=" ".join(f"{v:.2f}" for v in os.getloadavg()),
               command="python benchmarks/unet.py" + (" --quick" if args.quick else ""))
    t0 = time.perf_counter()
    result = run(args.quick, repeats, min_time, args.only)
    if not (args.quick or args.no_ablation or args.only):
        print("\nablation (MNIST-sized, fp32):")
        result["ablation"] = ablation(repeats, min_time)
    env["seconds"] = round(time.perf_counter() - t0, 1)
    md = markdown(result, env)
    print("\n" + md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_markdown(RESULTS / "unet.md", md)
        (RESULTS / "unet.json").write_text(json.dumps({"env": env, **result}, indent=2))
        print(f"wrote {RESULTS / 'unet.md'} and {RESULTS / 'unet.json'} ({env['seconds']} s)")


if __name__ == "__main__":
    main()
