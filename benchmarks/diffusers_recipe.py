"""diffusers' train_unconditional recipe run by diffusers' own code, for the time-to-quality race.

The loop of examples/unconditional_image_generation/train_unconditional.py without accelerate (one CPU process,
fp32), scaled to 28 px MNIST: ``UNet2DModel``, ``DDPMScheduler.add_noise`` (linear β 1e-4 … 0.02, T = 1,000,
ε-prediction), MSE, ``AdamW`` (lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8), gradient clipping at
1.0, ``get_scheduler("cosine")`` with 500 warm-up steps, ``EMAModel`` (warm-up with inv_gamma 1, power 3/4, up to
0.9999), and ``DDIMPipeline`` (50 steps) for samples. The UNet is built from ddpmkit's description of the same
network (``ddpmkit.export.diffusers.unet2d_config``), so both libraries train the very same function; the batches
come from ddpmkit's loader (the same data in the same order, batch 64).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ddpmkit.data import BatchLoader
from ddpmkit.export.diffusers import unet2d_config
from ddpmkit.models import UNetConfig

LR, BETAS, WEIGHT_DECAY, EPS, WARMUP, CLIP, BATCH = 1e-4, (0.95, 0.999), 1e-6, 1e-8, 500, 1.0, 64


def build(unet: UNetConfig):
    """(UNet2DModel, DDPMScheduler) of the recipe, the UNet configured as ddpmkit's ``unet``."""
    from diffusers import DDPMScheduler, UNet2DModel

    spec = {k: v for k, v in unet2d_config(unet).items() if not k.startswith(("_", "ddpmkit"))}
    model = UNet2DModel(**spec)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    return model, scheduler


class Loop:
    """One optimizer step of the recipe at a time (so step rates can be measured beside ddpmkit's)."""

    def __init__(self, unet: UNetConfig, total_steps: int, data, seed: int = 0):
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(seed)
        self.model, self.noise_scheduler = build(unet)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                                           eps=EPS)
        self.lr_scheduler = get_scheduler("cosine", optimizer=self.optimizer, num_warmup_steps=WARMUP,
                                          num_training_steps=total_steps)
        self.ema = EMAModel(self.model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                            model_cls=type(self.model), model_config=self.model.config)
        self.batches = BatchLoader(data, BATCH, shuffle=True, seed=seed).batches()
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0

    def train_step(self) -> float:
        x, _ = next(self.batches)
        noise = torch.randn(x.shape, generator=self.generator)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x.shape[0],), generator=self.generator)
        noisy = self.noise_scheduler.add_noise(x, noise, t)
        loss = F.mse_loss(self.model(noisy, t).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        self.ema.step(self.model.parameters())
        self.step += 1
        return float(loss.detach())

    def ema_weights(self) -> dict[str, torch.Tensor]:
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())
        weights = {k: v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}
        self.ema.restore(self.model.parameters())
        return weights


def train(out_dir: Path, unet: UNetConfig, steps: int, snapshot_fractions, data, seed: int = 0) -> list[dict]:
    """Train ``steps`` steps; at the fractions save the EMA weights with the training seconds so far (the
    snapshots' own time excluded), as the harness does for ddpmkit's trainer."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loop = Loop(unet, steps, data, seed)
    at = sorted({max(1, round(f * steps)) for f in snapshot_fractions})
    rows, seconds = [], 0.0
    for _ in tqdm(range(steps), desc="diffusers", unit="step"):
        start = time.perf_counter()
        loop.train_step()
        seconds += time.perf_counter() - start
        if loop.step in at:
            save_file(loop.ema_weights(), out_dir / f"step{loop.step:06d}.safetensors")
            rows.append({"step": loop.step, "images": loop.step * BATCH, "train_seconds": seconds})
            (out_dir / "snapshots.json").write_text(json.dumps(rows, indent=1))
    (out_dir / "done.json").write_text(json.dumps({"steps": steps, "unet": unet.to_dict()}))
    return rows


def finished(out_dir: Path, unet: UNetConfig, steps: int) -> list[dict] | None:
    done = Path(out_dir) / "done.json"
    if not done.exists() or json.loads(done.read_text()) != {"steps": steps, "unet": unet.to_dict()}:
        return None
    return json.loads((Path(out_dir) / "snapshots.json").read_text())


def draw(out_dir: Path, unet: UNetConfig, step: int, num: int, seed: int = 0, steps: int = 50,
         batch: int = 500) -> np.ndarray:
    """``num`` uint8 (N, H, W, C) samples of a snapshot from ``DDIMPipeline`` (η = 0, ``steps`` steps)."""
    from diffusers import DDIMPipeline, DDIMScheduler

    model, noise_scheduler = build(unet)
    model.load_state_dict(load_file(Path(out_dir) / f"step{step:06d}.safetensors"))
    pipe = DDIMPipeline(unet=model.eval(), scheduler=DDIMScheduler.from_config(noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, num, batch):
        images = pipe(batch_size=min(batch, num - start), generator=generator, eta=0.0, num_inference_steps=steps,
                      output_type="np").images  # float (n, H, W, C) in [0, 1]
        chunks.append(np.round(images * 255).clip(0, 255).astype(np.uint8))
    return np.concatenate(chunks)
