"""Speed of ddpmkit's UNet against diffusers' UNet2DModel configured alike (CPU or CUDA).

Training images/s (forward, MSE, backward, fused AdamW step) and inference images/s (no_grad forward), ours and
diffusers' interleaved (each repeat runs every variant once, in a rotated order) and the median of the repeats
reported, because machines are noisy; the ratio ours/diffusers is what to read. On the CPU: an MNIST-sized and a
CIFAR-sized configuration in fp32 and bf16 autocast. On CUDA (``--device cuda``, bf16 by default) also DDPM's
35.7M CIFAR model and the pokemon64 UNet, with larger batches, the measured bf16 matmul peak of the GPU and each
row's share of it (model FLOPs counted by torch.utils.flop_counter, a training step = 3x the forward).

    .venv/bin/python benchmarks/unet.py                 # CPU, ~3-6 minutes on 2 cores
    .venv/bin/python benchmarks/unet.py --quick         # fewer repeats, smaller batches: a smoke test
    python benchmarks/unet.py --device cuda             # GPU: 4 configs, bf16, ~2 minutes on an H200

Writes benchmarks/results/unet.md and unet.json (CPU), unet_cuda.md and unet_cuda.json (CUDA).
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
DDPM35 = "DDPM-paper 35.7M (32x32x3, base 128, mults 1,2,2,2, attn 16x16, 1 head, additive t, dropout 0.1)"
POKEMON64 = "pokemon64 59.4M (64x64x3, base 64, mults 1,2,4,8, attn 16x16)"


def configs(quick: bool, device: str = "cpu") -> dict[str, dict]:
    """Each configuration as (ours, diffusers kwargs), alike in every architectural choice; batches for the device.

    On CUDA the two large ones join, and every batch is large enough to fill the GPU (the CPU batches would
    measure kernel-launch overhead alone)."""
    out = _cpu_configs(quick)
    if device == "cpu":
        return out
    gpu_batches = {MNIST: (256, 512)}
    for name, c in out.items():
        c["train_batch"], c["infer_batch"] = gpu_batches.get(name, (128, 256))
    out[DDPM35] = dict(
        ours=UNetConfig.named("cifar10"), train_batch=128, infer_batch=256,
        diffusers=dict(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=256, norm_num_groups=32, resnet_time_scale_shift="default", dropout=0.1,
        ),
    )
    out[POKEMON64] = dict(
        ours=UNetConfig.named("pokemon64"), train_batch=128, infer_batch=256,
        diffusers=dict(  # 64-dim heads: 4 at 16x16 as ours, 8 in the 512-wide middle where ours has 4 of 128
            sample_size=64, in_channels=3, out_channels=3, block_out_channels=(64, 128, 256, 512), layers_per_block=2,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            attention_head_dim=64, norm_num_groups=32, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32,
        ),
    )
    return out


def _cpu_configs(quick: bool) -> dict[str, dict]:
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


def make_step(model, batch: int, shape, train: bool, bf16: bool, device: str = "cpu"):
    """A closure running one training step (or one inference forward) on fixed random data."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape[1:], generator=g).to(device)
    noise = torch.randn(batch, *shape[1:], generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    autocast = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
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


def synchronize(device: str = "cpu") -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a host clock alone would time the launches)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_group(steps: list, repeats: int, min_time: float, device: str = "cpu") -> list[float]:
    """Median seconds per call of each closure, all interleaved: every repeat runs each once, in a rotated order."""
    for s in steps:  # warm-up: allocator, oneDNN primitive caches / cuDNN autotuning, optimizer state
        s()
        s()
        s()
    synchronize(device)
    # calls per repeat so one repeat of an average closure lasts about min_time
    t0 = time.perf_counter()
    for s in steps:
        s()
    synchronize(device)
    per = (time.perf_counter() - t0) / len(steps)
    n = max(1, round(min_time / per))
    times: list[list[float]] = [[] for _ in steps]
    for r in range(repeats):
        for k in range(len(steps)):
            i = (k + r) % len(steps)
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(n):
                steps[i]()
            synchronize(device)
            times[i].append((time.perf_counter() - t0) / n)
    return [statistics.median(t) for t in times]


def matmul_peak_tflops(device: str, n: int = 8192, repeats: int = 10) -> float:
    """The GPU's bf16 matrix-multiply rate on random n x n x n products (median of ``repeats`` after warm-up),
    the ceiling the model rows are read against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


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


def run_cuda(repeats: int, min_time: float, only: str | None, device: str, compile_only: str | None,
             checkpoint=None) -> dict:
    """bf16 on a GPU, all variants of a config interleaved: ours as shipped (channels_last, the few-launch GroupNorm
    form), ours in NCHW, diffusers in NCHW and in channels_last, and with ``compile_only`` matching the config, ours
    and diffusers through torch.compile. (The CPU's hand-written GroupNorm backward cannot run on CUDA: ATen's CUDA
    GroupNorm kernel rejects channels_last input, seen on an H200 with torch 2.11.) ``checkpoint(result)`` is called
    after every config, so a run cut short by a time limit keeps the rows it measured."""
    from ddpmkit.device import configure_backend

    configure_backend(torch.device(device))  # cuDNN autotuning, as training sets it (for every variant alike)
    peak = matmul_peak_tflops(device)
    print(f"bf16 matmul peak measured: {peak:.0f} TFLOP/s (8192^3, median of 10)", flush=True)
    torch.manual_seed(0)
    rows, models_info = [], {}
    for name, c in configs(False, device).items():
        if only and only not in name:
            continue
        shape = (1, c["ours"].in_channels, c["ours"].image_size, c["ours"].image_size)
        ours = UNet(c["ours"])
        ours_nchw = UNet(dataclasses.replace(c["ours"], channels_last=False))
        ours_nchw.load_state_dict(ours.state_dict())
        theirs = _Diffusers(**c["diffusers"])
        info = dict(ours_params=n_params(ours), diffusers_params=n_params(theirs),
                    ours_gflops=forward_flops(ours, shape) / 1e9, diffusers_gflops=forward_flops(theirs, shape) / 1e9,
                    ours_config=c["ours"].to_dict(), diffusers_config=c["diffusers"])
        models_info[name] = info
        theirs_cl = _Diffusers(**c["diffusers"]).to(memory_format=torch.channels_last)
        variants = {"ours": ours, "ours NCHW": ours_nchw, "diffusers NCHW": theirs,
                    "diffusers channels_last": theirs_cl}
        variants = {k: m.to(device) for k, m in variants.items()}
        compiled = bool(compile_only) and compile_only in name
        print(f"\n{name}: params ours {info['ours_params']:,} / diffusers {info['diffusers_params']:,}; "
              f"forward GFLOPs/image ours {info['ours_gflops']:.3f} / diffusers {info['diffusers_gflops']:.3f}",
              flush=True)
        for mode, batch in (("train", c["train_batch"]), ("inference", c["infer_batch"])):
            labels, steps = [], []
            for label, model in variants.items():
                labels.append(label)
                steps.append(make_step(model, batch, shape, mode == "train", True, device))
            if compiled:
                for label, model in (("ours compiled", ours), ("diffusers compiled", theirs)):
                    t0 = time.perf_counter()
                    step = make_step(torch.compile(model), batch, shape, mode == "train", True, device)
                    for _ in range(3):
                        step()
                    synchronize(device)
                    print(f"  torch.compile of {label.split()[0]} ({mode}): {time.perf_counter() - t0:.0f} s",
                          flush=True)
                    labels.append(label)
                    steps.append(step)
            seconds = time_group(steps, repeats, min_time, device)
            img_s = {label: batch / t for label, t in zip(labels, seconds)}
            flops = info["ours_gflops"] * 1e9 * (3 if mode == "train" else 1)
            best_theirs = max(img_s["diffusers NCHW"], img_s["diffusers channels_last"])
            row = dict(config=name, precision="bf16", mode=mode, batch=batch, img_s=img_s,
                       ours_img_s=img_s["ours"], diffusers_img_s=img_s["diffusers NCHW"],
                       diffusers_cl_img_s=img_s["diffusers channels_last"], ratio=img_s["ours"] / best_theirs,
                       ours_tflops=img_s["ours"] * flops / 1e12, ours_peak_fraction=img_s["ours"] * flops / 1e12 / peak)
            rows.append(row)
            print(f"  bf16 {mode:9s} batch {batch:3d}: " + ", ".join(f"{k} {v:.0f}" for k, v in img_s.items())
                  + f" img/s; ours/diffusers {row['ratio']:.2f}; ours {row['ours_tflops']:.0f} TFLOP/s = "
                  f"{100 * row['ours_peak_fraction']:.0f}% of peak", flush=True)
        del ours, ours_nchw, theirs, theirs_cl, variants
        torch.cuda.empty_cache()
        if checkpoint is not None:
            checkpoint(dict(rows=rows, models=models_info, matmul_peak_tflops=peak))
    return dict(rows=rows, models=models_info, matmul_peak_tflops=peak)


def batch_sweep(device: str, batches: tuple[int, ...], repeats: int, min_time: float) -> list[dict]:
    """Training images/s of the pokemon64 UNet (bf16) against the batch size, all batches interleaved: where the
    GPU saturates, which sets the preset's batch."""
    model = UNet(UNetConfig.named("pokemon64")).to(device)
    shape = (1, 3, 64, 64)
    steps = [make_step(model, b, shape, True, True, device) for b in batches]
    seconds = time_group(steps, repeats, min_time, device)
    out = []
    for b, t in zip(batches, seconds):
        out.append(dict(batch=b, img_s=b / t, step_ms=1e3 * t))
        print(f"  pokemon64 bf16 train batch {b:4d}: {b / t:7.0f} img/s ({1e3 * t:.1f} ms/step)", flush=True)
    return out


def markdown_cuda(result: dict, env: dict) -> str:
    lines = ["# UNet speed on CUDA: ddpmkit vs diffusers UNet2DModel (bf16 autocast)", "",
             f"{env['gpu']}, torch {env['torch']}, diffusers {env['diffusers']}; command: `{env['command']}`; "
             f"bf16 matmul peak measured in the same run: **{result['matmul_peak_tflops']:.0f} TFLOP/s**", "",
             "Configured alike (parameter counts equal to the unit); fused AdamW for all; cuDNN autotuning on; all "
             "variants of a row interleaved, median of the repeats. Ratio: ours over the faster diffusers layout. "
             "Share of peak: ours' model FLOPs (forward counted, training = 3x) per second over the measured peak.",
             "", "| config | params ours / diffusers | fwd GFLOPs/img |", "|---|---|---|"]
    for name, i in result["models"].items():
        lines.append(f"| {name} | {i['ours_params'] / 1e6:.2f}M / {i['diffusers_params'] / 1e6:.2f}M | "
                     f"{i['ours_gflops']:.2f} |")
    variants = sorted({k for r in result["rows"] for k in r["img_s"]}, key=lambda k: (not k.startswith("ours"), k))
    lines += ["", "| config | mode | batch | " + " | ".join(f"{v} img/s" for v in variants)
              + " | ours / diffusers | ours TFLOP/s (share of peak) |",
              "|---|---|---|" + "---|" * len(variants) + "---|---|"]
    for r in result["rows"]:
        cells = " | ".join(f"{r['img_s'][v]:.0f}" if v in r["img_s"] else "" for v in variants)
        lines.append(f"| {r['config'].split(' (')[0]} | {r['mode']} | {r['batch']} | {cells} | **{r['ratio']:.2f}** | "
                     f"{r['ours_tflops']:.0f} ({100 * r['ours_peak_fraction']:.0f}%) |")
    if result.get("batch_sweep"):
        lines += ["", "pokemon64 training (bf16), ours, against the batch size (interleaved):", "",
                  "| batch | img/s | ms/step |", "|---|---|---|"]
        lines += [f"| {b['batch']} | {b['img_s']:.0f} | {b['step_ms']:.1f} |" for b in result["batch_sweep"]]
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--device", default="cpu", help="cpu (fp32 and bf16 rows) or cuda (bf16 rows, 4 configs)")
    ap.add_argument("--quick", action="store_true", help="2 repeats, half batches: a smoke test (~1 minute)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats per row (default 5; 3 on CUDA)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per repeat (default 1.0; 0.3 on CUDA)")
    ap.add_argument("--only", default=None, help="run only configs whose name contains this string")
    ap.add_argument("--compile", default=None, metavar="SUBSTRING",
                    help="CUDA: add torch.compile rows (ours and diffusers) for configs whose name contains this")
    ap.add_argument("--batch-sweep", default=None, metavar="B,B,...",
                    help="CUDA: pokemon64 training img/s at these batch sizes, e.g. 32,64,128,256")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results")
    ap.add_argument("--no-ablation", action="store_true", help="skip the layout/norm ablation (~2 minutes)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    repeats = args.repeats or (2 if args.quick else 3 if cuda else 5)
    min_time = args.min_time or (0.3 if args.quick or cuda else 1.0)
    import diffusers

    command = "python benchmarks/unet.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False) and k != "device")
    command += f" --device {args.device}" if cuda else ""
    env = dict(torch=torch.__version__, diffusers=diffusers.__version__, threads=torch.get_num_threads(),
               cpu=f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()})",
               load=" ".join(f"{v:.2f}" for v in os.getloadavg()), command=command)
    t0 = time.perf_counter()
    stem = "unet_cuda" if cuda else "unet"

    def write(result: dict) -> None:
        if not args.no_write:
            RESULTS.mkdir(parents=True, exist_ok=True)
            write_markdown(RESULTS / f"{stem}.md", markdown_cuda(result, env) if cuda else markdown(result, env))
            (RESULTS / f"{stem}.json").write_text(json.dumps({"env": env, **result}, indent=2))

    if cuda:
        env["gpu"] = torch.cuda.get_device_name(args.device)
        result = run_cuda(repeats, min_time, args.only, args.device, args.compile, checkpoint=write)
        if args.batch_sweep:
            print("\nbatch sweep:")
            result["batch_sweep"] = batch_sweep(args.device, tuple(int(b) for b in args.batch_sweep.split(",")),
                                                repeats, min_time)
    else:
        result = run(args.quick, repeats, min_time, args.only)
        if not (args.quick or args.no_ablation or args.only):
            print("\nablation (MNIST-sized, fp32):")
            result["ablation"] = ablation(repeats, min_time)
    env["seconds"] = round(time.perf_counter() - t0, 1)
    md = markdown_cuda(result, env) if cuda else markdown(result, env)
    print("\n" + md)
    write(result)
    if not args.no_write:
        print(f"wrote {RESULTS / stem}.md and .json ({env['seconds']} s)")


if __name__ == "__main__":
    main()
