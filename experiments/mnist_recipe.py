"""Which MNIST recipe gives the best digits for a fixed CPU wall-time budget?

Each recipe is trained for the number of steps this 2-core CPU completes in ``--budget`` seconds (from the
throughput of its UNet measured on the CPU with ``--measure``), then judged by the pinned MNIST classifier on
samples from its EMA weights: the share of samples it classifies confidently (max softmax > 0.9, a proxy for
"clearly recognizable"), the classifier-feature FID against the test set, and the class-histogram entropy.

The training dynamics per step do not depend on the device, so the comparison can run on a GPU at CPU-sized
step budgets (that is how the mnist preset was chosen); ``--measure`` must run on the CPU itself.

    python experiments/mnist_recipe.py --measure                 # on the CPU: images/s per UNet variant
    python experiments/mnist_recipe.py --device cuda --budget 720  # the comparison
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data import load_dataset
from ddpmkit.eval import MnistClassifier, class_histogram, reference_stats
from ddpmkit.models import UNet
from ddpmkit.presets import load_preset
from ddpmkit.sampling import sample
from ddpmkit.training import Trainer, build_diffusion, build_unet_config
from ddpmkit.viz import to_uint8

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON

# UNet variants (overrides of the named "mnist" size) and recipes (config overrides).
MODELS = {
    "m2": {},                                              # 2 res blocks a level, attention at 7x7 and middle
    "m1": {"num_res_blocks": 1},                           # 1 res block a level
    "m1-noattn": {"num_res_blocks": 1, "attention_resolutions": [], "mid_attention": False},
}
RECIPES = {
    "base": ["diffusion.prediction=eps", "diffusion.min_snr_gamma=null", "train.lr=1e-3"],
    "minsnr": ["diffusion.prediction=eps", "diffusion.min_snr_gamma=5.0", "train.lr=1e-3"],
    "v-minsnr": ["diffusion.prediction=v", "diffusion.min_snr_gamma=5.0", "train.lr=1e-3"],
    "minsnr-lr2e-3": ["diffusion.prediction=eps", "diffusion.min_snr_gamma=5.0", "train.lr=2e-3"],
    "minsnr-b64": ["diffusion.prediction=eps", "diffusion.min_snr_gamma=5.0", "train.lr=1e-3",
                   "train.batch_size=64"],
    "minsnr-ema995": ["diffusion.prediction=eps", "diffusion.min_snr_gamma=5.0", "train.lr=1e-3",
                      "train.ema_decay=0.995"],
    "minsnr-linear": ["diffusion.prediction=eps", "diffusion.min_snr_gamma=5.0", "train.lr=1e-3",
                      "diffusion.schedule=linear"],
}


def measure(batch: int = 128, repeats: int = 3) -> dict[str, float]:
    """Training images/s of each UNet variant on this machine (fp32 and native-bf16 autocast if available)."""
    config = load_preset("mnist")
    data = load_dataset("mnist", "train")
    diffusion = build_diffusion(config)
    x = torch.randn(batch, 1, 28, 28)
    rates: dict[str, list[float]] = {k: [] for k in MODELS}
    models = {}
    for name, overrides in MODELS.items():
        config.model.overrides = dict(overrides)
        model = UNet(build_unet_config(config, data))
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True))
    for _ in range(repeats):  # interleaved, so a noisy neighbour slows all variants alike
        for name, (model, opt) in models.items():
            def step(model=model, opt=opt):
                diffusion.loss(model, x).backward()
                opt.step()
                opt.zero_grad()
            step()
            start = time.perf_counter()
            for _ in range(3):
                step()
            rates[name].append(3 * batch / (time.perf_counter() - start))
    return {k: float(np.median(v)) for k, v in rates.items()}


def judge(images: torch.Tensor, classifier: MnistClassifier, reference) -> dict[str, float]:
    """Samples in [-1, 1] -> share classified with confidence > 0.9, classifier FID, class-histogram entropy."""
    feats, logits = classifier.outputs(to_uint8(images), progress=False)
    probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    hist = class_histogram(probs.argmax(1))
    return {"confident": float((probs.max(1) > 0.9).mean()), "cfid": reference.fid(feats),
            "class_entropy": hist["entropy"], "smallest_class_share": hist["min_share"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget", type=float, default=720.0, help="CPU seconds of training")
    p.add_argument("--rates", type=Path, default=RESULTS / "mnist_unet_rates.json")
    p.add_argument("--runs", default="", help="comma-separated model:recipe pairs (default: a standard set)")
    p.add_argument("--num", type=int, default=1000, help="samples judged per recipe")
    p.add_argument("--out", type=Path, default=RESULTS / "mnist_recipe.json")
    args = p.parse_args()
    if args.measure:
        rates = measure()
        args.rates.parent.mkdir(parents=True, exist_ok=True)
        args.rates.write_text(json.dumps(rates, indent=1))
        print(json.dumps(rates, indent=1))
        return
    rates = json.loads(args.rates.read_text())
    pairs = [r.split(":") for r in args.runs.split(",") if r] or [
        ["m2", "minsnr"], ["m1", "base"], ["m1", "minsnr"], ["m1", "v-minsnr"], ["m1", "minsnr-lr2e-3"],
        ["m1", "minsnr-b64"], ["m1-noattn", "minsnr"], ["m1", "minsnr-linear"], ["m1", "minsnr-ema995"],
        ["m2", "v-minsnr"]]
    data = load_dataset("mnist", "train", progress=False)
    classifier = MnistClassifier()
    reference = reference_stats("mnist", classifier, split="test", progress=False)
    rows = []
    for model_name, recipe in pairs:
        config = load_preset("mnist")
        config.override(RECIPES[recipe] + [f"train.device={args.device}", "train.precision=fp32",
                                           "train.tensorboard=false", "train.sample_every=1000000"])
        config.model.overrides = dict(MODELS[model_name])
        steps = int(args.budget * rates[model_name] / config.train.batch_size)
        config.override([f"train.steps={steps}", "train.epochs=null"])
        run_dir = Path("/tmp/mnist_recipe") / f"{model_name}-{recipe}"
        start = time.perf_counter()
        trainer = Trainer(config, run_dir, data=data, progress=False)
        result = trainer.fit()
        seconds = time.perf_counter() - start
        images = sample(trainer.ema.model, trainer.diffusion, (args.num, 1, 28, 28), sampler="ddim", steps=50,
                        generator=torch.Generator().manual_seed(0), device=trainer.device)
        row = {"model": model_name, "recipe": recipe, "steps": steps, "batch": config.train.batch_size,
               "final_loss": result.summary.get("final_loss"), "train_seconds_here": seconds,
               **judge(images, classifier, reference)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = "| model | recipe | steps | batch | confident | cFID | class entropy |"
    print(header + "\n|" + "---|" * 7)
    for r in rows:
        print(f"| {r['model']} | {r['recipe']} | {r['steps']} | {r['batch']} | {r['confident']:.3f} | "
              f"{r['cfid']:.1f} | {r['class_entropy']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget_cpu_seconds": args.budget, "rates": rates, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
