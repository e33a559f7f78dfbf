"""CUDA against the CPU: the same seed gives the same images, and training takes the GPU paths it was built with.

Marked ``cuda``: skipped on machines without a CUDA GPU (CI's), run on one with
``DDPMKIT_TEST_DEVICE=cuda python -m pytest -m "device or cuda"``. conftest turns TF32 off, so fp32 is fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training import tiny_config, tiny_data

from ddpmkit.cli import main
from ddpmkit.diffusion import Diffusion
from ddpmkit.models import UNet, UNetConfig
from ddpmkit.pipeline import Pipeline
from ddpmkit.sampling import sample
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training import Trainer

pytestmark = pytest.mark.cuda


def perturbed_unet(seed: int = 0, **overrides) -> UNet:
    """The tiny UNet with random non-zero weights everywhere (its zero-initialised layers would hide errors)."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig.named("tiny", **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("sampler,steps", [("ddpm", 20), ("ddim", 20), ("dpm++2m", 10), ("unipc", 10)])
def test_same_seed_same_images_on_cpu_and_cuda_in_fp32(sampler, steps):
    """The noise comes from one CPU generator on both devices, so only the arithmetic differs: fp32 rounding,
    which 20 steps grow to well under a grey level (1/127.5 in [-1, 1] units)."""
    model = perturbed_unet()
    diffusion = Diffusion(NoiseSchedule.cosine(1000))
    out = {}
    for device in ("cpu", "cuda"):
        out[device] = sample(model.to(device), diffusion, (8, 1, 16, 16), sampler=sampler, steps=steps,
                             generator=torch.Generator().manual_seed(3), device=device).cpu()
    gap = (out["cpu"] - out["cuda"]).abs()
    assert torch.isfinite(out["cuda"]).all()
    assert gap.max().item() < 1e-3, f"{sampler}: max |cpu - cuda| = {gap.max().item():.2e}"


def test_bf16_autocast_sampling_on_cuda_stays_close_to_fp32_on_cpu():
    """bf16 keeps 8 bits of mantissa: the images move, but by a few grey levels on average, not in content."""
    model = perturbed_unet()
    diffusion = Diffusion(NoiseSchedule.cosine(1000))
    kwargs = dict(sampler="ddim", steps=20, generator=None)
    ref = sample(model, diffusion, (8, 1, 16, 16), **{**kwargs, "generator": torch.Generator().manual_seed(3)})
    bf16 = sample(model.to("cuda"), diffusion, (8, 1, 16, 16), device="cuda", autocast_dtype=torch.bfloat16,
                  **{**kwargs, "generator": torch.Generator().manual_seed(3)}).cpu()
    gap = (ref - bf16).abs()
    assert gap.mean().item() < 0.03, f"mean |fp32 cpu - bf16 cuda| = {gap.mean().item():.4f}"
    assert torch.corrcoef(torch.stack([ref.flatten(), bf16.flatten()]))[0, 1] > 0.99


def test_unet_forward_and_gradients_match_the_cpu():
    """One training forward/backward of the UNet (GroupNorm+FiLM, attention through SDPA, channels_last) in fp32:
    outputs and every parameter's gradient agree with the CPU's (fused-norm autograd there, stock ops here)."""
    cpu_model = perturbed_unet(num_classes=3)
    gpu_model = perturbed_unet(num_classes=3).cuda()
    x, t, y = torch.randn(4, 1, 16, 16), torch.tensor([1, 300, 600, 999]), torch.tensor([0, 1, 2, -1])
    outs = []
    for model, dev in ((cpu_model, "cpu"), (gpu_model, "cuda")):
        out = model(x.to(dev), t.to(dev), labels=y.to(dev))
        out.square().mean().backward()
        outs.append(out.detach().cpu())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for (name, p_cpu), p_gpu in zip(cpu_model.named_parameters(), gpu_model.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-3, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_training_on_cuda_takes_the_gpu_paths(tmp_path):
    """precision auto -> bf16, fused AdamW, cuDNN autotuning, the noise generator on the GPU; then ``ddpmkit sample``
    and the Pipeline on CUDA give the same images from the same seed."""
    config = tiny_config(6, precision="auto", device="cuda")
    trainer = Trainer(config, tmp_path / "run", data=tiny_data(), progress=False)
    assert trainer.precision == "bf16" and trainer.amp_dtype == torch.bfloat16
    assert trainer.optimizer.defaults.get("fused") is True
    assert torch.backends.cudnn.benchmark
    assert trainer.generator.device.type == "cuda"
    trainer.fit()
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())

    out = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "run"), "--num", "4", "--device", "cuda", "--out", str(out)]) == 0
    assert out.exists()
    pipe = Pipeline.from_run(tmp_path / "run", device="cuda")
    first, again = pipe.generate(4, seed=5), pipe.generate(4, seed=5)
    assert isinstance(first, np.ndarray) and first.dtype == np.uint8 and np.array_equal(first, again)


@pytest.mark.parametrize("sampler,guidance", [("ddim", None), ("ddpm", 3.0), ("dpm++2m", 2.0)])
def test_cuda_graph_sampling_gives_the_eager_images(sampler, guidance):
    """Replaying the UNet from a CUDA graph runs the same kernels on the same inputs: the images of eager sampling,
    with labels and classifier-free guidance (a doubled batch inside the graph) and bf16 autocast."""
    model = perturbed_unet(num_classes=3).cuda()
    diffusion = Diffusion(NoiseSchedule.cosine(1000))
    labels = {"labels": torch.tensor([0, 1, 2, 0, 1, 2])} if guidance else None
    out = {}
    for graph in (False, True):
        out[graph] = sample(model, diffusion, (6, 1, 16, 16), sampler=sampler, steps=12, model_kwargs=labels,
                            guidance=guidance, generator=torch.Generator().manual_seed(4), device="cuda",
                            autocast_dtype=torch.bfloat16, cuda_graph=graph).cpu()
    torch.testing.assert_close(out[True], out[False], rtol=1e-4, atol=1e-4)
