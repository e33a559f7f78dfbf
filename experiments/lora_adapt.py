"""LoRA against full fine-tuning: adapt a trained base to new data for the same wall time, back to back.

    python experiments/lora_adapt.py --base runs/mnist --data fashion-mnist --seconds 240 --num 1000

Each method trains from the base's EMA weights on ``--data`` for ``--seconds`` of wall time (same batch, same
seed, same data order): LoRA (rank/α/targets as given, base frozen, lr ``--lora-lr``) and full fine-tuning (every
weight trains, lr ``--full-lr``). Then ``--num`` samples of the base ("before") and of each adapted EMA model are
scored against the target data's test split: FID in the pinned MNIST classifier's feature space (fast; it sees
28x28 grey shapes, digits or clothes alike) and, with ``--inception-num N``, the standard Inception FID on the
first N samples. The floor (real training images against the same reference, same N) is measured beside them.

Prints a table and writes docs/experiments/lora_adapt.json and a before/after grid (base | LoRA | full).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ddpmkit.config import RunConfig
from ddpmkit.data import load_dataset
from ddpmkit.eval import MnistClassifier
from ddpmkit.eval.reference import reference_stats_with_fallback
from ddpmkit.eval.sweep import score_images
from ddpmkit.lora.adapter import ADAPTER_WEIGHTS, parse_targets
from ddpmkit.run import RunFolder
from ddpmkit.sampling import sample
from ddpmkit.training import Trainer
from ddpmkit.viz import save_grid, to_uint8

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON


def _config(base: Path, data: str, method: str, args: argparse.Namespace) -> RunConfig:
    run, checkpoint = RunFolder.locate(base)
    config = run.load_config(checkpoint)
    config.override([f"data.name={data}", "train.steps=100000", "train.epochs=null", "train.warmup_steps=20",
                     f"train.batch_size={args.batch_size}", "train.tensorboard=false", f"train.seed={args.seed}",
                     f"train.lr={args.lora_lr if method == 'lora' else args.full_lr}", "train.device=cpu"])
    if method == "lora":
        config.override([f"lora.base={checkpoint.resolve()}", f"lora.rank={args.rank}", f"lora.alpha={args.alpha}",
                         f"lora.targets=[{','.join(parse_targets(args.targets))}]"])
    return config


def train_for(config: RunConfig, out: Path, seconds: float, base: Path | None) -> tuple[Trainer, dict]:
    """Train for ``seconds`` of wall time; ``base`` (full fine-tuning): start from its EMA weights."""
    trainer = Trainer(config, out, progress=False, hooks=[])
    if base is not None:
        from ddpmkit.checkpoint import load_checkpoint

        _, checkpoint = RunFolder.locate(base)
        weights = load_checkpoint(checkpoint, names=("ema",))[0]["ema"]
        trainer.model.load_state_dict(weights)
        trainer.ema.model.load_state_dict(weights)
    batches = trainer.loader.batches()
    start, losses = time.perf_counter(), []
    while time.perf_counter() - start < seconds:
        losses.append(trainer.train_step(batches)[0])
    elapsed = time.perf_counter() - start
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    info = {"steps": trainer.step, "seconds": elapsed, "images_per_s": trainer.step * config.train.batch_size / elapsed,
            "trainable_params": trainable, "total_params": sum(p.numel() for p in trainer.model.parameters()),
            "loss_first_20": float(np.mean(losses[:20])), "loss_last_20": float(np.mean(losses[-20:]))}
    if trainer.lora is not None:
        path = trainer.lora.export(trainer.ema.model, config.lora, out, trainer.step, trainer.data)
        info["adapter_bytes"] = (out / ADAPTER_WEIGHTS).stat().st_size
        info["adapter"] = str(path)
    return trainer, info


@torch.no_grad()
def draw(model: torch.nn.Module, trainer_or_diffusion, num: int, steps: int, seed: int) -> np.ndarray:
    diffusion = trainer_or_diffusion.diffusion
    shape = (num, model.config.in_channels, model.config.image_size, model.config.image_size)
    images = sample(model.eval(), diffusion, shape, sampler="dpm++2m", steps=steps,
                    generator=torch.Generator().manual_seed(seed))
    return to_uint8(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, default=Path("runs/mnist"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--seconds", type=float, default=240.0, help="wall time of each method's training")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--targets", default="attn,conv")
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--full-lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num", type=int, default=1000, help="samples per model (classifier-feature FID)")
    p.add_argument("--inception-num", type=int, default=0, help="also Inception FID on this many (slow on a CPU)")
    p.add_argument("--sample-steps", type=int, default=20, help="DPM-Solver++(2M) steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/ddpmkit-lora-adapt"))
    p.add_argument("--out", type=Path, default=RESULTS / "lora_adapt.json")
    p.add_argument("--grid", type=Path, default=Path("docs/lora_adapt.png"))
    args = p.parse_args()

    results: dict = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
                     "base": str(args.base), "data": args.data, "seconds_each": args.seconds, "num": args.num,
                     "sampler": f"dpm++2m-{args.sample_steps}", "methods": {}}
    trainers = {}
    for method in ("lora", "full"):
        config = _config(args.base, args.data, method, args)
        trainer, info = train_for(config, args.work / method, args.seconds, None if method == "lora" else args.base)
        trainers[method] = trainer
        results["methods"][method] = info
        print(method, json.dumps(info), flush=True)
    results["methods"]["lora"].update(rank=args.rank, alpha=args.alpha, targets=args.targets, lr=args.lora_lr)
    results["methods"]["full"]["lr"] = args.full_lr
    _, base_checkpoint = RunFolder.locate(args.base)
    results["base_weights_bytes"] = (base_checkpoint / "ema.safetensors").stat().st_size

    # the base itself ("before"): the LoRA model at scale 0 is exactly the base (B = 0 is also checked in tests)
    from ddpmkit.lora.adapter import set_scale

    lora_model = trainers["lora"].ema.model
    images = {}
    set_scale(lora_model, 0.0)
    images["before (base)"] = draw(lora_model, trainers["lora"], args.num, args.sample_steps, args.seed)
    set_scale(lora_model, 1.0)
    images["LoRA"] = draw(lora_model, trainers["lora"], args.num, args.sample_steps, args.seed)
    images["full fine-tuning"] = draw(trainers["full"].ema.model, trainers["full"], args.num, args.sample_steps,
                                      args.seed)

    classifier = MnistClassifier()
    image_size = lora_model.config.image_size
    references = {"classifier": reference_stats_with_fallback(args.data, classifier, split="test", num=2000,
                                                              image_size=image_size)}
    metrics = ("cfid",)
    inception = None
    if args.inception_num:
        from ddpmkit.eval.inception import InceptionFeatures

        inception = InceptionFeatures()
        references["inception"] = reference_stats_with_fallback(args.data, inception, split="test", num=2000,
                                                                 image_size=image_size)
    train_images = load_dataset(args.data, "train", image_size, progress=False)
    real = train_images.images[:args.num]
    rows = {}
    for name, imgs in {"floor (real train images)": real, **images}.items():
        row = score_images(imgs, references, metrics, classifier=classifier, progress=False)
        if inception is not None:
            row.update({k: v for k, v in score_images(imgs[:args.inception_num], references, ("fid",),
                                                      inception=inception, progress=False).items()
                        if k in ("fid", "ref_n")}, inception_num=args.inception_num)
        rows[name] = row
        print(name, {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    results["scores"] = rows

    args.grid.parent.mkdir(parents=True, exist_ok=True)
    tiles = np.concatenate([imgs[:16] for imgs in images.values()])
    save_grid(tiles, args.grid, nrow=16, row_labels=list(images))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")

    lines = ["| | trainable params | weights written | steps in the budget | images/s | classifier FID |",
             "|---|---|---|---|---|---|"]
    for name, key in (("before (base)", None), ("LoRA", "lora"), ("full fine-tuning", "full")):
        info = results["methods"].get(key, {})
        size = (f"{info['adapter_bytes'] / 1024:.0f} KiB adapter" if "adapter_bytes" in info else
                f"{results['base_weights_bytes'] / 1024:.0f} KiB model" if key else "–")
        lines.append(f"| {name} | {info.get('trainable_params', '–'):,} | {size} | {info.get('steps', '–')} | "
                     f"{info.get('images_per_s', 0):.1f} | {rows[name]['cfid']:.1f} |" if key else
                     f"| {name} | – | – | – | – | {rows[name]['cfid']:.1f} |")
    lines.append(f"| floor (real images) | | | | | {rows['floor (real train images)']['cfid']:.1f} |")
    print("\n".join(lines))
    print(f"N = {args.num} per row; wrote {args.out} and {args.grid}")


if __name__ == "__main__":
    main()
