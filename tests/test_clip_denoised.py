"""Clipping x̂_0 during sampling is a setting of the diffusion, saved with the run and followed by every sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit import Diffusion, NoiseSchedule
from ddpmkit.cli import main
from ddpmkit.pipeline import Pipeline
from ddpmkit.presets import load_preset
from ddpmkit.sampling import SAMPLERS, sample
from ddpmkit.training import build_diffusion
from ddpmkit.viz import to_uint8


def out_of_range_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An ε-predictor whose x̂_0 = 1.5 x_t/√ᾱ_t overshoots [-1, 1] wherever |x_t| is large: clipping changes it."""
    return -0.5 * x


def test_the_setting_round_trips_respaces_and_defaults_to_clipping():
    d = Diffusion(NoiseSchedule.cosine(100), prediction="v", clip_denoised=False)
    assert d.to_dict()["clip_denoised"] is False
    assert Diffusion.from_dict(d.to_dict()).clip_denoised is False
    assert d.respace([0, 50, 99]).clip_denoised is False
    on = Diffusion(NoiseSchedule.cosine(100), prediction="v")
    assert on.clip_denoised and "clip_denoised" not in on.to_dict()  # earlier checkpoints' dicts: unchanged
    assert Diffusion.from_dict(on.to_dict()).clip_denoised


def test_p_mean_variance_follows_the_setting_unless_told():
    x_t = torch.full((1, 1, 2, 2), 3.0)
    t = torch.tensor([10])
    pred = torch.zeros_like(x_t)  # ε̂ = 0: x̂_0 = x_t / √ᾱ_t > 1
    off = Diffusion(NoiseSchedule.cosine(100), clip_denoised=False)
    on = Diffusion(NoiseSchedule.cosine(100))
    assert off.p_mean_variance(pred, x_t, t).x0.min() > 3.0
    assert on.p_mean_variance(pred, x_t, t).x0.max() == 1.0
    assert off.p_mean_variance(pred, x_t, t, clip_denoised=True).x0.max() == 1.0
    assert on.p_mean_variance(pred, x_t, t, clip_denoised=False).x0.min() > 3.0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_takes_its_default_from_the_diffusion(sampler):
    off = Diffusion(NoiseSchedule.cosine(100), clip_denoised=False)
    on = Diffusion(NoiseSchedule.cosine(100))

    def draw(diffusion, **kw):
        return sample(out_of_range_model, diffusion, (4, 1, 4, 4), sampler=sampler, steps=10,
                      generator=torch.Generator().manual_seed(0), **kw)

    assert torch.equal(draw(off), draw(on, clip_denoised=False))
    assert torch.equal(draw(on), draw(off, clip_denoised=True))
    assert not torch.allclose(draw(off), draw(on))


def test_the_mnist_preset_samples_without_clipping():
    config = load_preset("mnist")
    assert build_diffusion(config).clip_denoised is False
    assert build_diffusion(load_preset("tiny")).clip_denoised is True


def test_a_run_saves_the_setting_and_sample_and_eval_can_override_it(tmp_path):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", "digits", "--no-progress", "--device", "cpu", "--out",
                 str(run), "--steps", "2", "--set", "diffusion.clip_denoised=false"]) == 0
    state = json.loads(next((run / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["diffusion"]["clip_denoised"] is False
    pipe = Pipeline.from_run(run, device="cpu", precision="fp32")
    assert pipe.diffusion.clip_denoised is False
    default = pipe.generate(8, steps=5, return_tensor=True)
    assert torch.equal(default, pipe.generate(8, steps=5, return_tensor=True, clip_denoised=False))
    clipped = pipe.generate(8, steps=5, return_tensor=True, clip_denoised=True)
    assert not torch.equal(default, clipped)
    for flag, expected in (("--no-clip", default), ("--clip", clipped)):
        out = tmp_path / f"grid{flag}.png"
        assert main(["sample", str(run), "--num", "8", "--steps", "5", "--out", str(out), "--individual",
                     str(tmp_path / flag), "--device", "cpu", "--precision", "fp32", flag]) == 0
        first = np.asarray(Image.open(sorted((tmp_path / flag).glob("*.png"))[0]))
        assert np.array_equal(first, to_uint8(expected)[0, :, :, 0])
