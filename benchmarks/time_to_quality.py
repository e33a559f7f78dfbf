"""Time to quality: FID against training minutes, our default job against diffusers' train_unconditional recipe.

All train on MNIST on this CPU, back to back in one run. Ours is the ``mnist`` preset as the default job runs it
(2,600 steps of 32 images); theirs takes batches of 64. Diffusers' recipe
(examples/unconditional_image_generation/train_unconditional.py, scaled to 28 px) runs twice: as diffusers' own
code (``diffusers``: UNet2DModel, DDPMScheduler.add_noise, EMAModel, get_scheduler("cosine"), DDIMPipeline;
``diffusers_recipe.py``) and expressed in ddpmkit (``diffusers-recipe``: our Trainer and our UNet configured as
the very same network, which computes what UNet2DModel computes within 1e-5, tests/test_export.py), so the gap
between ours and diffusers splits into the recipe (ddpmkit against diffusers-recipe: same library) and the library
(diffusers-recipe against diffusers: same recipe and network). Every setting of that script:

- UNet2DModel with block channels 32/64/128, two res blocks a level, attention at the lowest resolution;
- linear β (1e-4 … 0.02, T = 1,000), ε-prediction, plain MSE;
- AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, 500 warm-up steps then cosine, gradient clip 1.0;
- EMA with diffusers' warm-up d_t = min(0.9999, 1 − (1 + t)^−¾);
- DDIM-50 from the EMA weights (its pipeline's default sampler for evaluation here).

Each gets the same training minutes as ours: its step count is ours times the ratio of the step rates, measured
interleaved before training. At thirds of each run (and early in ours: 1/26, 2/26 and 4/26 of
it, to find the minutes ours needs to match their final score) the EMA weights are snapshotted, and each snapshot
is scored: N samples (seed 0), Inception FID against MNIST test[:2000], and the floor (the first N training images
against the same reference) so the numbers can be read.

Ours is sampled as the default job recommends (the preset's ``train.sample_sampler``/``sample_steps``: ancestral
DDPM-50, class-balanced labels, guidance 1), and its last snapshot with DDIM-50 too, the sampler diffusers' gets.

    python benchmarks/time_to_quality.py                     # the full comparison (~1 h on 2 cores)
    python benchmarks/time_to_quality.py --steps 4 --num 20 --no-inception --work /tmp/ttq-smoke   # smoke test
    python benchmarks/time_to_quality.py --resume            # rescore the trainings a cut-off run finished

``--resume`` reuses the step rates (``WORK/rates.json``) and every training that finished in ``WORK`` with the
same configuration (its ``candidate.json`` is written last), and trains only what is missing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import diffusers_recipe
import numpy as np
import torch
from harness import Candidate, Judge, diffusers_ema_decay, draw, finished_training, load_snapshot, train

from ddpmkit.data import load_dataset
from ddpmkit.device import cpu_description
from ddpmkit.models import UNet
from ddpmkit.training import build_diffusion, build_unet_config

OURS = Candidate("ddpmkit")
DIFFUSERS = Candidate(
    "diffusers-recipe",
    ["diffusion.schedule=linear", "diffusion.prediction=eps", "diffusion.min_snr_gamma=null",
     "train.timestep_sampler=uniform", "train.lr=1e-4", "train.warmup_steps=500", "train.betas=[0.95,0.999]",
     "train.weight_decay=1e-6", "train.grad_clip=1.0", "train.ema_decay=0.9999"],
    {"base_channels": 32, "channel_mults": [1, 2, 4], "num_res_blocks": 2, "attention_resolutions": [7],
     "mid_attention": True, "head_channels": 8, "time_conditioning": "additive"},  # UNet2DModel's defaults
    preset="mnist-uncond",  # unconditional like train_unconditional, GroupNorm 32 like UNet2DModel's norm_num_groups
    ema_decay_at=diffusers_ema_decay(),
)
LIBRARY = "diffusers"  # the recipe run by diffusers' own code
RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parent.parent / "docs"


def step_rates(candidates: list[Candidate], data, rounds: int = 3, steps: int = 3) -> dict[str, float]:
    """Training steps/s of each candidate's UNet and loss, and of diffusers' own loop, interleaved so a noisy
    neighbour slows all alike."""
    built = {}
    for cand in candidates:
        config = cand.config()
        model = UNet(build_unet_config(config, data))
        built[cand.name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), build_diffusion(config),
                            config.train.batch_size)
    x_all = torch.from_numpy(data.images[:64]).float().permute(0, 3, 1, 2) / 127.5 - 1
    steppers = {}
    for name, (model, opt, diffusion, batch) in built.items():
        def step(model=model, opt=opt, diffusion=diffusion, x=x_all[:batch]):
            diffusion.loss(model, x).backward()
            opt.step()
            opt.zero_grad()
        steppers[name] = step
    steppers[LIBRARY] = diffusers_recipe.Loop(library_unet(data), 1000, data).train_step
    rates: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(rounds):
        for name, step in steppers.items():
            step()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates[name].append(steps / (time.perf_counter() - start))
    return {k: float(np.median(v)) for k, v in rates.items()}


def library_unet(data):
    """The network diffusers' own code trains: UNet2DModel configured as the diffusers-recipe candidate's UNet."""
    return build_unet_config(DIFFUSERS.config(), data)


def plot(rows: list[dict], floor: float | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = {"ddpmkit": "ddpmkit's default job", DIFFUSERS.name: "diffusers' recipe in ddpmkit's trainer",
              LIBRARY: "diffusers' recipe, diffusers' own code"}
    for name, style in (("ddpmkit", "o-"), (DIFFUSERS.name, "^:"), (LIBRARY, "s--")):
        mine = [r for r in rows if r["recipe"] == name]
        pts = sorted((r["train_seconds"] / 60, r["fid"]) for r in mine)
        if pts:
            ax.plot(*zip(*pts), style, label=f"{labels[name]}, {mine[0]['sampler']}")
    if floor is not None:
        ax.axhline(floor, color="gray", ls=":", label=f"floor (real vs real, N={rows[0]['num']})")
    ax.set_xlabel("training minutes on this CPU")
    ax.set_ylabel(f"Inception FID (N={rows[0]['num']})")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title("MNIST: FID against training time, same CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="our steps (default: the preset's 2,600)")
    p.add_argument("--num", type=int, default=500, help="samples per FID")
    p.add_argument("--no-inception", action="store_true", help="classifier FID only (smoke tests)")
    p.add_argument("--work", type=Path, default=Path("/tmp/time_to_quality"))
    p.add_argument("--out", type=Path, default=RESULTS / "time_to_quality.json")
    p.add_argument("--plot", type=Path, default=DOCS / "time_to_quality.png")
    p.add_argument("--resume", action="store_true", help="reuse the rates and finished trainings in --work")
    args = p.parse_args()
    data = load_dataset("mnist", "train", progress=False)
    ours_steps = args.steps or OURS.config().train.steps
    rates_file = args.work / "rates.json"
    saved = json.loads(rates_file.read_text()) if args.resume and rates_file.exists() else {}
    if saved.get("ddpmkit_steps") == ours_steps:
        rates = saved["steps_per_s"]
    else:
        rates = step_rates([OURS, DIFFUSERS], data)
        args.work.mkdir(parents=True, exist_ok=True)
        rates_file.write_text(json.dumps({"steps_per_s": rates, "ddpmkit_steps": ours_steps}))
    theirs_steps = max(1, round(ours_steps * rates[DIFFUSERS.name] / rates["ddpmkit"]))
    library_steps = max(1, round(ours_steps * rates[LIBRARY] / rates["ddpmkit"]))
    print(f"step rates {rates}; ddpmkit {ours_steps} steps, {DIFFUSERS.name} {theirs_steps}, {LIBRARY} "
          f"{library_steps}", flush=True)
    # ours also early (1/26, 2/26, 4/26 of its steps: 100, 200, 400 of 2,600): the minutes it needs to match theirs
    plan = {OURS.name: (OURS, ours_steps, (1 / 26, 2 / 26, 4 / 26, 1 / 3, 2 / 3, 1.0)),
            DIFFUSERS.name: (DIFFUSERS, theirs_steps, (1 / 3, 2 / 3, 1.0))}
    snaps = {}
    for name, (candidate, steps, fractions) in plan.items():
        reused = finished_training(candidate, args.work / name, steps) if args.resume else None
        if reused is not None:
            print(f"{name}: reusing the finished training in {args.work / name}", flush=True)
        snaps[name] = reused if reused is not None else train(candidate, args.work / name, steps, fractions, data=data)
    unet = library_unet(data)
    reused = diffusers_recipe.finished(args.work / LIBRARY, unet, library_steps) if args.resume else None
    if reused is not None:
        print(f"{LIBRARY}: reusing the finished training in {args.work / LIBRARY}", flush=True)
    snaps[LIBRARY] = reused if reused is not None else diffusers_recipe.train(
        args.work / LIBRARY, unet, library_steps, (1 / 3, 2 / 3, 1.0), data)
    judge = Judge(inception=not args.no_inception)
    floor = judge(data.images[:args.num])
    ours_train = OURS.config().train
    samplers = {OURS.name: (ours_train.sample_sampler, ours_train.sample_steps, ours_train.sample_spacing),
                DIFFUSERS.name: ("ddim", 50, None), LIBRARY: ("DDIMPipeline", 50, None)}
    rows, extra = [], []
    for name, rows_of in snaps.items():
        for snap in rows_of:
            if name == LIBRARY:
                images = diffusers_recipe.draw(args.work / LIBRARY, unet, snap["step"], args.num)
                row = {"recipe": name, **snap, "sampler": "DDIMPipeline-50", **judge(images)}
                row.setdefault("fid", row["cfid"])
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            model, diffusion = load_snapshot(args.work / name, snap["step"])
            todo = [samplers[name]]
            if name == OURS.name and snap is rows_of[-1] and samplers[name] != samplers[DIFFUSERS.name]:
                todo.append(samplers[DIFFUSERS.name])  # the last snapshot also with diffusers' sampler
            for sampler, steps, spacing in todo:
                images = draw(model, diffusion, args.num, sampler, steps, spacing=spacing)
                row = {"recipe": name, **snap, "sampler": f"{sampler}-{steps}", **judge(images)}
                if "fid" not in row:
                    row["fid"] = row["cfid"]
                (rows if (sampler, steps, spacing) == samplers[name] else extra).append(row)
                print(json.dumps(row), flush=True)
    floor_fid = floor.get("fid", floor["cfid"])
    print(f"\n| recipe | sampler | step | images | training min | FID (N={args.num}) | classifier FID | p>0.9 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows + extra:
        print(f"| {r['recipe']} | {r['sampler']} | {r['step']} | {r['images']:,} | {r['train_seconds'] / 60:.1f} | "
              f"{r['fid']:.1f} | {r['cfid']:.1f} | {100 * r['confident']:.1f}% |")
    print(f"floor (train[:{args.num}] vs test[:2000]): FID {floor_fid:.1f}, classifier FID {floor['cfid']:.1f}")
    # minutes ours needs to match diffusers' final FID (linear interpolation on our curve, from 0 min = no model)
    theirs_final = [r for r in rows if r["recipe"] == LIBRARY][-1]
    recipe_final = [r for r in rows if r["recipe"] == DIFFUSERS.name][-1]
    ours_curve = [(r["train_seconds"] / 60, r["fid"]) for r in rows if r["recipe"] == "ddpmkit"]
    match = next((m for m, f in ours_curve if f <= theirs_final["fid"]), None)
    summary = {"cpu": cpu_description(), "cpu_rates_steps_per_s": rates, "num": args.num, "floor": floor, "rows": rows,
               "ours_last_snapshot_with_diffusers_sampler": extra,
               "ours_first_snapshot_at_or_below_diffusers_final_minutes": match,
               "diffusers_final_fid": theirs_final["fid"], "diffusers_minutes": theirs_final["train_seconds"] / 60,
               "diffusers_recipe_in_ddpmkit_final_fid": recipe_final["fid"],
               "torch_threads": torch.get_num_threads(), "resumed": args.resume}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    plot(rows, floor_fid, args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
