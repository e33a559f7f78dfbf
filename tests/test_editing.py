"""Editing against closed forms and reference algorithms: SDEdit's marginal and its correlation with the input on
Gaussian data, RePaint's path against diffusers' scheduler and its conditional on correlated Gaussian data, DDIM
inversion's round trip and the exact probability-flow map, and the edges (strength 0 and 1, the kept pixels)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import ddpmkit as dk
from ddpmkit.editing import img2img, inpaint, interpolate, invert, reconstruct, repaint_path, slerp
from ddpmkit.errors import DdpmkitError
from ddpmkit.pipeline import Pipeline
from ddpmkit.request import SampleRequest
from ddpmkit.sampling import sample

MU, SIGMA = 0.3, 0.5  # scalar Gaussian data N(μ, σ²)


def gaussian_oracle(diffusion, mean: torch.Tensor, cov: torch.Tensor):
    """E[ε | x_t] for data x_0 ~ N(m, Σ) over the last dimension: √(1-ᾱ) (ᾱΣ + (1-ᾱ)I)⁻¹ (x_t - √ᾱ m)."""
    ac = diffusion.schedule.alphas_cumprod.double()
    eye = torch.eye(len(mean), dtype=torch.float64)

    def fn(x, t):
        a = float(ac[int(t[0])])  # one timestep per call in every loop here
        assert bool((t == t[0]).all())
        flat = x.reshape(-1, len(mean)) - math.sqrt(a) * mean
        out = math.sqrt(1 - a) * torch.linalg.solve(a * cov + (1 - a) * eye, flat.T).T
        return out.reshape(x.shape)

    return fn


def scalar_oracle(diffusion):
    return gaussian_oracle(diffusion, torch.tensor([MU], dtype=torch.float64),
                           torch.tensor([[SIGMA**2]], dtype=torch.float64))


def scalar_data(n: int, seed: int = 0) -> torch.Tensor:
    return MU + SIGMA * torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny_pipeline():
    config = dataclasses.replace(dk.UNetConfig.named("mnist"), num_classes=10, base_channels=16, channel_mults=(1, 2),
                                 attention_resolutions=(), norm_groups=8)
    torch.manual_seed(0)
    diffusion = dk.Diffusion(dk.NoiseSchedule.cosine(1000), prediction="v")
    return Pipeline(dk.UNet(config), diffusion, torch.device("cpu"))


def digit(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28, 1), dtype=np.uint8)


# ----- SDEdit ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "unipc"])
def test_img2img_strength_one_is_sampling_and_zero_the_input(tiny_pipeline, sampler):
    pipe = tiny_pipeline
    x0 = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2 - 1
    kwargs = dict(sampler=sampler, steps=8, model_kwargs={"labels": torch.tensor([1, 2, 3])})
    drawn = sample(pipe.model, pipe.diffusion, x0.shape, generator=torch.Generator().manual_seed(7), **kwargs)
    edited = img2img(pipe.model, pipe.diffusion, x0, 1.0, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(drawn, edited)
    assert torch.equal(img2img(pipe.model, pipe.diffusion, x0, 0.0, **kwargs), x0)
    # ⌊strength·K⌋ steps: 0.1 of 8 steps is none
    assert torch.equal(img2img(pipe.model, pipe.diffusion, x0, 0.1, **kwargs), x0)


def test_img2img_on_gaussian_data_keeps_the_marginal_and_the_closed_form_correlation():
    """From x_t ~ q(x_t | x_0), ancestral sampling with the exact ε draws x̂_0 ~ p(x_0 | x_t): the data marginal
    again, with Cov(x̂_0, x_0) = Cov(E[x_0 | x_t], x_0) = ᾱσ⁴/(ᾱσ² + 1 - ᾱ), so corr = ᾱσ²/(ᾱσ² + 1 - ᾱ)."""
    d = dk.Diffusion(dk.NoiseSchedule.cosine(1000))
    x0 = scalar_data(20_000)
    for strength in (0.3, 0.6):
        out = img2img(scalar_oracle(d), d, x0, strength, sampler="ddpm", steps=200, clip_denoised=False,
                      generator=torch.Generator().manual_seed(1))
        ts = dk.timestep_spacing(1000, 200, "linspace")
        a = float(d.schedule.alphas_cumprod[int(ts[len(ts) - int(strength * 200)])])
        corr = np.corrcoef(out.flatten().numpy(), x0.flatten().numpy())[0, 1]
        assert corr == pytest.approx(a * SIGMA**2 / (a * SIGMA**2 + 1 - a), abs=0.02)
        assert out.mean().item() == pytest.approx(MU, abs=4 * SIGMA / math.sqrt(20_000))
        assert out.std().item() == pytest.approx(SIGMA, rel=0.03)


# ----- RePaint --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps,jump,resample", [(50, 10, 10), (25, 5, 4), (20, 10, 1), (12, 5, 3)])
def test_repaint_path_is_diffusers_schedule(steps, jump, resample):
    """diffusers' RePaintScheduler lists the index each move is read at; x sits one below it after every move."""
    scheduler_module = pytest.importorskip("diffusers.schedulers.scheduling_repaint",
                                           reason="the reference needs diffusers (pip install -e '.[bench]')")
    scheduler = scheduler_module.RePaintScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps, jump_length=jump, jump_n_sample=resample)
    reference = [steps - 1] + [int(v) // (1000 // steps) - 1 for v in scheduler.timesteps]
    path = repaint_path(steps, jump, resample)
    assert path == reference
    assert path[0] == steps - 1 and path[-1] == -1 and all(abs(a - b) == 1 for a, b in zip(path, path[1:]))


@pytest.mark.parametrize("sampler,resample", [("ddpm", 1), ("ddpm", 3), ("ddim", 2), ("dpm++2m", 1), ("unipc", 1)])
def test_inpaint_keeps_the_known_pixels_exactly(tiny_pipeline, sampler, resample):
    pipe = tiny_pipeline
    x0 = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    mask = torch.zeros(28, 28)
    mask[14:] = 1
    steps = []
    out = inpaint(pipe.model, pipe.diffusion, x0, mask, sampler=sampler, steps=10, jump_length=3, resample=resample,
                  generator=torch.Generator().manual_seed(0), callback=steps.append,
                  model_kwargs={"labels": torch.tensor([4, 5])})
    assert torch.equal(out[..., :14, :], x0[..., :14, :])
    assert not torch.equal(out[..., 14:, :], x0[..., 14:, :])
    assert len(steps) == sum(1 for a, b in zip(repaint_path(10, 3, resample), repaint_path(10, 3, resample)[1:])
                             if b < a)


def _conditional_fit(inpainted: torch.Tensor, known: torch.Tensor) -> tuple[float, float]:
    """Slope and residual variance of the repainted pixel regressed on the known one."""
    x1, x2 = known.flatten(), inpainted.flatten()
    slope = float(((x1 - x1.mean()) * (x2 - x2.mean())).mean() / x1.var())
    return slope, float((x2 - slope * x1).var())


def test_repaint_resampling_reaches_the_true_conditional_where_replacement_does_not():
    """Two correlated pixels, x ~ N(0, [[1, ρ], [ρ, 1]]), the second repainted: the exact answer is
    x₂ | x₁ ~ N(ρ x₁, 1 - ρ²). Plain replacement never lets the generated pixel see the known one's noise-free value
    and lands near half the slope (measured 0.49-0.50 at 50 and 250 steps); RePaint's resampling harmonises them
    (measured 0.71 at r = 5, 0.74 at r = 10)."""
    rho = 0.8
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    d = dk.Diffusion(dk.NoiseSchedule.cosine(1000))
    oracle = gaussian_oracle(d, torch.zeros(2, dtype=torch.float64), cov)
    x = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).sample((10_000,))
    x = x.reshape(-1, 1, 1, 2)
    mask = torch.tensor([[0.0, 1.0]])
    fits = {}
    for resample, steps, jump in ((1, 100, 10), (10, 25, 5)):
        out = inpaint(oracle, d, x, mask, sampler="ddpm", steps=steps, jump_length=jump, resample=resample,
                      clip_denoised=False, generator=torch.Generator().manual_seed(1))
        assert torch.equal(out[..., 0], x[..., 0])
        fits[resample] = _conditional_fit(out[..., 1], x[..., 0])
    assert fits[1][0] == pytest.approx(0.5, abs=0.05)
    assert fits[10][0] == pytest.approx(rho, abs=0.08)
    assert abs(fits[10][1] - (1 - rho**2)) < abs(fits[1][1] - (1 - rho**2))


# ----- DDIM inversion -------------------------------------------------------------------------------------

def test_inversion_round_trip_error_shrinks_with_the_step_size():
    """On Gaussian data the error of reading ε̂ one step early is first order: halving the step halves it."""
    d = dk.Diffusion(dk.NoiseSchedule.cosine(1000))
    oracle = scalar_oracle(d)
    x0 = scalar_data(2_000, seed=3)
    errors = {}
    for steps in (25, 50, 100, 1000):
        latent = invert(oracle, d, x0, steps)
        errors[steps] = (reconstruct(oracle, d, latent, steps) - x0).pow(2).mean().sqrt().item()
    assert errors[1000] < 3e-3
    assert errors[100] < 0.02
    for coarse, fine in ((25, 50), (50, 100)):
        assert 1.6 < errors[coarse] / errors[fine] < 2.4


def test_inversion_follows_the_exact_probability_flow_map():
    """The probability-flow ODE maps Gaussian data affinely to noise at the last timestep:
    x_T = √ᾱ_T μ + √(ᾱ_T σ² + 1 - ᾱ_T) (x_0 - μ)/σ."""
    d = dk.Diffusion(dk.NoiseSchedule.cosine(1000))
    x0 = scalar_data(2_000, seed=4)
    latent = invert(scalar_oracle(d), d, x0, 1000)
    a = float(d.schedule.alphas_cumprod[-1])
    exact = math.sqrt(a) * MU + math.sqrt(a * SIGMA**2 + 1 - a) * (x0 - MU) / SIGMA
    assert (latent - exact).abs().max().item() < 0.01


def test_inversion_refuses_a_zero_terminal_snr_schedule():
    d = dk.Diffusion(dk.NoiseSchedule.cosine(1000).rescale_zero_terminal_snr(), prediction="v")
    with pytest.raises(DdpmkitError, match="--spacing leading"):
        invert(lambda x, t: torch.zeros_like(x), d, torch.zeros(1, 1, 2, 2), 10, spacing="trailing")


def test_slerp_ends_on_its_endpoints_and_keeps_the_norm_between_orthogonal_vectors():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b, atol=1e-6)
    assert torch.allclose(path.flatten(1).norm(dim=1), torch.full((5,), 3.0))
    assert torch.allclose(path[2], torch.tensor([[3 / math.sqrt(2), 3 / math.sqrt(2)]]))


def test_interpolation_reproduces_its_endpoints_on_gaussian_data():
    d = dk.Diffusion(dk.NoiseSchedule.cosine(1000))
    a, b = scalar_data(2, seed=9).reshape(2, 1, 1, 1)
    frames = interpolate(scalar_oracle(d), d, a.expand(1, 2, 2), b.expand(1, 2, 2), 5, steps=200)
    assert frames.shape == (5, 1, 2, 2)
    assert (frames[0] - a).abs().max() < 0.02 and (frames[-1] - b).abs().max() < 0.02


# ----- the Pipeline's methods and their checks --------------------------------------------------------------

def test_pipeline_edits_match_generate_and_keep_the_input(tiny_pipeline):
    pipe = tiny_pipeline
    request = SampleRequest(num=3, sampler="ddpm", steps=6, seed=3, labels=(1, 2, 3))
    assert np.array_equal(pipe.img2img(digit(), 1.0, request), pipe.generate(request))
    assert np.array_equal(pipe.img2img(digit(), 0.0, request)[1], digit())
    mask = np.zeros((28, 28), np.uint8)
    mask[:, 20:] = 255
    out = pipe.inpaint(digit(), mask, request, jump_length=2, resample=2)
    assert out.shape == (3, 28, 28, 1) and all(np.array_equal(o[:, :20], digit()[:, :20]) for o in out)
    batch = np.stack([digit(1), digit(2)])
    assert pipe.img2img(batch, 0.0).shape == (2, 28, 28, 1)  # one result per image of a batch


def test_pipeline_edit_without_labels_is_unconditional(tiny_pipeline):
    request = tiny_pipeline.edit_request(SampleRequest(num=2), torch.zeros(1, 1, 28, 28))
    assert request.guidance == 0.0
    with pytest.raises(DdpmkitError, match="guidance needs a class"):
        tiny_pipeline.edit_request(SampleRequest(num=2, guidance=3.0), torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("call,message", [
    (lambda p: p.img2img(digit(), 1.5), "--strength must be in \\[0, 1\\]"),
    (lambda p: p.img2img(np.zeros((32, 32, 1), np.uint8), 0.5), "is 32×32 but the run draws 28×28"),
    (lambda p: p.img2img(np.zeros((28, 28, 3), np.uint8), 0.5), "is RGB \\(3 channels\\) but the run draws grey"),
    (lambda p: p.inpaint(digit(), np.zeros((14, 14), np.uint8)), "the mask is \\(14, 14\\)"),
    (lambda p: p.inpaint(digit(), np.full((28, 28), 128, np.uint8)), "not binary"),
    (lambda p: p.inpaint(digit(), np.zeros((28, 28), np.uint8)), "the mask is empty"),
    (lambda p: p.inpaint(digit(), np.ones((28, 28), np.uint8)), "covers the whole image"),
    (lambda p: p.inpaint(digit(), np.eye(28, dtype=np.uint8), SampleRequest(num=1, sampler="unipc"), resample=2),
     "needs a one-step sampler"),
    (lambda p: p.interpolate(digit(), digit(1), 1), "--num must be at least 2"),
])
def test_pipeline_edits_refuse_bad_input_in_one_line(tiny_pipeline, call, message):
    with pytest.raises(DdpmkitError, match=message) as info:
        call(tiny_pipeline)
    assert "\n" not in str(info.value)
