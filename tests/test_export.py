"""Runs exported as diffusers pipelines, and diffusers UNet2DModels imported as runs: the same network, checked
against diffusers' own code (a test extra; nothing is downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpmkit import Diffusion, NoiseSchedule, RunInfo
from ddpmkit.checkpoint import save_checkpoint
from ddpmkit.cli import main
from ddpmkit.config import RunConfig
from ddpmkit.errors import DdpmkitError
from ddpmkit.export.diffusers import (
    export_run,
    to_diffusers_state_dict,
    unet2d_config,
    unet_config_from,
)
from ddpmkit.models import UNet, UNetConfig
from ddpmkit.pipeline import Pipeline
from ddpmkit.run import RunFolder

diffusers = pytest.importorskip("diffusers", reason="these tests compare with diffusers (pip install -e '.[bench]')")

CONFIGS = {
    "gray, 3 levels, attention at 7 and in the middle, scale-shift, labels": dict(
        image_size=28, in_channels=1, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(7,), num_heads=2, norm_groups=8, num_classes=10),
    "rgb, 4 levels, DDPM layout (additive t, one head, sin-cos sinusoid, freq shift 1)": dict(
        image_size=32, in_channels=3, base_channels=16, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(16,), num_heads=1, norm_groups=8, time_conditioning="additive",
        time_embedding_order="sin_cos", time_freq_shift=1, dropout=0.1),
    "rgb, 2 levels, no attention anywhere": dict(
        image_size=16, in_channels=3, base_channels=8, channel_mults=(1, 3), num_res_blocks=1,
        attention_resolutions=(), mid_attention=False, norm_groups=4),
    "gray, 3 levels, head width 8 at two widths (diffusers' head layout)": dict(
        image_size=16, in_channels=1, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
        attention_resolutions=(8, 4), head_channels=8, norm_groups=8, time_conditioning="additive"),
}


def randomised(config: UNetConfig, seed: int = 0) -> UNet:
    """A UNet with every parameter random (the zero-initialised output convs too), so the outputs mean something."""
    torch.manual_seed(seed)
    model = UNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.ndim > 1 else 0.05)
    return model


def diffusers_unet(config: UNetConfig, state: dict) -> torch.nn.Module:
    spec = {k: v for k, v in unet2d_config(config).items() if not k.startswith(("_", "ddpmkit"))}
    theirs = diffusers.UNet2DModel(**spec).eval()
    theirs.load_state_dict(to_diffusers_state_dict(state, config))  # strict: every name and shape must match
    return theirs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_unet_computes_what_ours_does(name):
    config = UNetConfig(**CONFIGS[name])
    ours = randomised(config)
    theirs = diffusers_unet(config, ours.state_dict())
    size = config.image_size
    x = torch.randn(3, config.in_channels, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 417, 999])
    kwargs, their_kwargs = {}, {}
    if config.num_classes:
        labels = torch.tensor([0, 9, 3])
        kwargs, their_kwargs = {"labels": labels}, {"class_labels": labels}
    with torch.no_grad():
        a = ours(x, t, **kwargs)
        b = theirs(x, t, **their_kwargs).sample
    assert a.abs().mean() > 0.01  # a real output, not zeros (atol is 1e-5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if config.num_classes:  # our null label (-1) is their index num_classes
        with torch.no_grad():
            torch.testing.assert_close(ours(x, t, labels=torch.full((3,), -1)),
                                       theirs(x, t, class_labels=torch.full((3,), 10)).sample, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_config_maps_back_to_the_same_unet(name):
    config = UNetConfig(**CONFIGS[name])
    back = unet_config_from(unet2d_config(config))
    assert UNet(back).state_dict().keys() == UNet(config).state_dict().keys()
    assert unet2d_config(back) == unet2d_config(config)  # the diffusers description round-trips exactly


@pytest.mark.parametrize("change, message", [
    (dict(num_classes=10, conditioning="cross_attention", cross_attention_resolutions=(7,)), "cross-attention"),
    (dict(learn_sigma=True), "learned variance"),
    (dict(channel_mults=(2, 2, 4)), "start above 1"),
    (dict(image_size=30, attention_resolutions=(8,)), "does not halve"),
    (dict(attention_resolutions=(28, 7), num_heads=4), "heads of different widths"),
])
def test_what_diffusers_cannot_express_is_refused(change, message):
    base = dict(CONFIGS["gray, 3 levels, attention at 7 and in the middle, scale-shift, labels"])
    base.update(change)
    with pytest.raises(DdpmkitError, match=message):
        unet2d_config(UNetConfig(**base))


def make_run(tmp_path, config: UNetConfig, diffusion: Diffusion, spacing: str = "trailing"):
    """A run folder with one checkpoint of a randomised UNet (what training would write)."""
    model = randomised(config)
    run_config = RunConfig.from_dict({"train": {"steps": 1, "sample_sampler": "ddim", "sample_steps": 50,
                                                "sample_spacing": spacing}})
    info = RunInfo(config, diffusion, step=3, config=run_config, data_name="mnist")
    run = RunFolder(tmp_path / "run")
    save_checkpoint(run.checkpoint_dir(3), {"ema": model.state_dict(), "model": model.state_dict()}, info.to_state())
    return run.path, model


def test_ddim_through_diffusers_pipeline_equals_ddpmkit_sample(tmp_path):
    """DDIMPipeline on the exported folder and `ddpmkit sample` draw the same images from the same seed."""
    config = UNetConfig(**CONFIGS["rgb, 2 levels, no attention anywhere"])
    with torch.no_grad():
        diffusion = Diffusion(NoiseSchedule.cosine(1000), prediction="v", clip_denoised=False)
        run, _ = make_run(tmp_path, config, diffusion)
    out = export_run(run, tmp_path / "pipe")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    ddpm = diffusers.DDPMPipeline.from_pretrained(out)  # loads with no code of ours
    assert ddpm.scheduler.config.prediction_type == "v_prediction" and not ddpm.scheduler.config.clip_sample
    np.testing.assert_allclose(ddpm.scheduler.betas.numpy(), diffusion.schedule.betas.numpy(), rtol=1e-6)
    ddim = diffusers.DDIMPipeline(unet=ddpm.unet, scheduler=ddpm.scheduler)
    theirs = ddim(batch_size=4, generator=torch.Generator().manual_seed(0), eta=0.0, num_inference_steps=50,
                  output_type="np").images  # float (N, H, W, C) in [0, 1]
    pipe = Pipeline.from_run(run, device="cpu", precision="fp32")
    ours = pipe.generate(4, sampler="ddim", steps=50, spacing="trailing", seed=0, return_tensor=True)
    ours = ((ours + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - 0.5).mean() > 0.05  # images, not a constant
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # float32 arithmetic in another order (measured: 5e-7)


def test_import_then_export_round_trips_bit_for_bit(tmp_path):
    config = UNetConfig(**CONFIGS["rgb, 4 levels, DDPM layout (additive t, one head, sin-cos sinusoid, freq shift 1)"])
    spec = {k: v for k, v in unet2d_config(config).items() if not k.startswith(("_", "ddpmkit"))}
    torch.manual_seed(3)
    theirs = diffusers.UNet2DModel(**spec)
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    imported = ["import-diffusers", str(tmp_path / "theirs"), "--out", str(tmp_path / "run"), "--data", "cifar10:x"]
    assert main(imported) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
    from safetensors.torch import load_file

    before = load_file(tmp_path / "theirs" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "again" / "unet" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    config_before = json.loads((tmp_path / "theirs" / "config.json").read_text())
    config_after = json.loads((tmp_path / "again" / "unet" / "config.json").read_text())
    ignore = ("_diffusers_version", "_name_or_path")
    assert {k: v for k, v in config_before.items() if k not in ignore} == \
        {k: v for k, v in config_after.items() if k not in ignore}
    # the imported run samples, and computes what diffusers' model computes
    pipe = Pipeline.from_run(tmp_path / "run", device="cpu", precision="fp32")
    assert pipe.info.trained_on == "cifar10:x" and pipe.diffusion.schedule.kind == "linear"  # DDPM's default
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 900])
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(x, t), theirs.eval()(x, t).sample, atol=1e-5, rtol=1e-5)
    assert pipe.generate(2, steps=3).shape == (2, 32, 32, 3)


def test_import_refuses_pickles_and_what_our_unet_lacks(tmp_path, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really")
    assert main(["import-diffusers", str(folder), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "a pickle, which ddpmkit never loads" in err and "safe_serialization=True" in err and err.count("\n") == 1
    with pytest.raises(DdpmkitError, match="block types"):
        unet_config_from({"down_block_types": ["CrossAttnDownBlock2D"], "up_block_types": ["UpBlock2D"],
                          "block_out_channels": [32]})
    with pytest.raises(DdpmkitError, match="time_embedding_type='fourier' has no ddpmkit equivalent"):
        unet_config_from({"time_embedding_type": "fourier", "block_out_channels": [32]})
    with pytest.raises(DdpmkitError, match="without a null class"):
        unet_config_from({**unet2d_config(UNetConfig(**CONFIGS["rgb, 2 levels, no attention anywhere"])),
                          "num_class_embeds": 10})
    assert not (tmp_path / "r").exists()


def test_export_refuses_before_writing(tmp_path, capsys):
    config = UNetConfig(**{**CONFIGS["rgb, 2 levels, no attention anywhere"], "learn_sigma": True})
    run, _ = make_run(tmp_path, config, Diffusion(NoiseSchedule.cosine(100), variance="learned_range"))
    assert main(["export", str(run), "--out", str(tmp_path / "pipe")]) == 2
    assert "learned variance" in capsys.readouterr().err
    assert not (tmp_path / "pipe").exists()


@pytest.mark.parametrize("diffusion", [
    Diffusion(NoiseSchedule.cosine(1000), prediction="v", clip_denoised=False),
    Diffusion(NoiseSchedule.linear(1000)),
    Diffusion(NoiseSchedule.linear(500, 1e-4, 0.04), prediction="x0", variance="fixed_large"),
    Diffusion(NoiseSchedule.sigmoid(200), prediction="eps"),
    Diffusion(NoiseSchedule.cosine(1000).rescale_zero_terminal_snr(), prediction="v"),
], ids=["cosine-v", "linear", "linear-x0-large", "sigmoid", "cosine-zero-snr-v"])
def test_the_noise_process_round_trips_through_the_scheduler_config(diffusion):
    from ddpmkit.export.diffusers import diffusion_from, scheduler_config

    config = json.loads(json.dumps(scheduler_config(diffusion)))  # as written to disk
    assert diffusion_from(config).to_dict() == diffusion.to_dict()
    scheduler = diffusers.DDPMScheduler.from_config(config)  # diffusers reads the same β_t and settings
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), diffusion.schedule.alphas_cumprod.numpy(),
                               rtol=1e-5, atol=1e-7)
    assert scheduler.config.prediction_type == {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[
        diffusion.prediction.value] and scheduler.config.clip_sample == diffusion.clip_denoised
