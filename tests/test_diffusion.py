"""Forward process, conversions, posterior and training loss against their formulas.

Tests that take ``device`` run on DDPMKIT_TEST_DEVICE (cpu by default): inputs are drawn on the CPU, as before, and
moved, so every device computes on the same numbers. The schedule stays on the CPU (float64), so the formulas the
tests compare with index it with CPU timesteps.
"""

import math

import pytest
import torch

from ddpmkit.diffusion import Diffusion, dynamic_thresholding
from ddpmkit.errors import DdpmkitError
from ddpmkit.schedule import NoiseSchedule


def make(prediction="eps", **kw):
    return Diffusion(NoiseSchedule.cosine(1000), prediction=prediction, **kw)


def test_q_sample_closed_form_and_broadcast(device):
    d = make()
    x0 = torch.randn(3, 2, 5, 4)
    noise = torch.randn_like(x0)
    x0, noise = x0.to(device), noise.to(device)
    t = torch.tensor([0, 500, 999])
    x_t = d.q_sample(x0, t.to(device), noise)
    assert x_t.device.type == device.type
    ac = d.schedule.alphas_cumprod
    for i in range(3):
        expected = math.sqrt(ac[t[i]]) * x0[i] + math.sqrt(1 - ac[t[i]]) * noise[i]
        assert torch.allclose(x_t[i], expected.float(), atol=1e-6)


@pytest.mark.parametrize("t", [10, 300, 900])
def test_forward_marginal_statistics(t, device):
    d = Diffusion(NoiseSchedule.linear(1000))
    n = 200_000
    x0 = torch.full((n, 1), 0.7, device=device)
    # the noise q_sample would draw itself (randn_like), drawn on the CPU so that every device sees the same numbers
    noise = torch.randn(n, 1).to(device)
    x_t = d.q_sample(x0, torch.full((n,), t, device=device), noise)
    assert d.q_sample(x0[:2], torch.full((2,), t, device=device)).device == x0.device  # its own draw: x0's device
    ac = d.schedule.alphas_cumprod[t].item()
    se_mean = math.sqrt((1 - ac) / n)
    assert abs(x_t.mean().item() - math.sqrt(ac) * 0.7) < 5 * se_mean
    assert x_t.var().item() == pytest.approx(1 - ac, rel=0.02)
    mean, var = d.q_mean_variance(x0[:2], torch.full((2,), t, device=device))
    assert torch.allclose(mean, torch.full_like(mean, math.sqrt(ac) * 0.7))
    assert torch.allclose(var, torch.full_like(var, 1 - ac))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_target_conversion_round_trips(prediction, device):
    d = make(prediction)
    x0 = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.randint(0, 1000, (8,))
    x0, eps, t, t_cpu = x0.to(device), eps.to(device), t.to(device), t
    x_t = d.q_sample(x0, t, eps)
    target = d.target(x0, eps, t)
    x0_hat, eps_hat = d.predict_x0_eps(target, x_t, t)
    # x_0 from ε divides by √ᾱ_t, which is tiny near t = T: compare relative to that amplification
    assert torch.allclose(eps_hat, eps, atol=1e-6)
    assert torch.allclose(x0_hat, x0, atol=1e-6 / d.schedule.sqrt_alphas_cumprod[t_cpu].min().item())
    v = d.v_from_x0_eps(x0, eps, t)
    assert torch.allclose(d.x0_from_v(x_t, t, v), x0, atol=1e-6)
    assert torch.allclose(d.eps_from_v(x_t, t, v), eps, atol=1e-6)
    assert torch.allclose(d.eps_from_x0(x_t, t, x0), eps, atol=1e-6)


def test_v_target_definition(device):
    d = make("v")
    x0, eps = torch.ones(1, 1, 1, 1, device=device), torch.full((1, 1, 1, 1), 2.0, device=device)
    t = torch.tensor([400], device=device)
    a = d.schedule.alphas_cumprod[400].item()
    assert d.target(x0, eps, t).item() == pytest.approx(math.sqrt(a) * 2 - math.sqrt(1 - a), rel=1e-6)


def test_posterior_mean_matches_bayes_formula(device):
    d = make()
    s = d.schedule
    x0, x_t = torch.randn(4, 1, 3, 3, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    x0, x_t = x0.to(device), x_t.to(device)
    t = torch.tensor([1, 10, 500, 999])
    mean, var, logvar = d.q_posterior(x0, x_t, t.to(device))
    for i, ti in enumerate(t.tolist()):
        a_prev, b = s.alphas_cumprod[ti - 1], s.betas[ti]
        # product of Gaussians: q(x_t|x_{t-1}) q(x_{t-1}|x_0)
        precision = (1 - b) / b + 1 / (1 - a_prev)
        expected_mean = ((1 - b).sqrt() / b * x_t[i] + a_prev.sqrt() / (1 - a_prev) * x0[i]) / precision
        assert torch.allclose(mean[i], expected_mean, atol=1e-10)
        assert var[i].item() == pytest.approx((1 / precision).item(), rel=1e-10)
        assert logvar[i].item() == pytest.approx(math.log((1 / precision).item()), rel=1e-10)


def test_reverse_variance_choices(device):
    small, large = make(variance="fixed_small"), make(variance="fixed_large")
    x = torch.zeros(2, 1, 2, 2, device=device)
    t = torch.tensor([5, 700])
    s = small.schedule
    out_s = small.p_mean_variance(torch.zeros_like(x), x, t.to(device))
    out_l = large.p_mean_variance(torch.zeros_like(x), x, t.to(device))
    assert out_s.variance.flatten().tolist() == pytest.approx(s.posterior_variance[t].tolist(), rel=1e-6)
    assert out_l.variance.flatten().tolist() == pytest.approx(s.betas[t].tolist(), rel=1e-6)


def test_clipping_and_dynamic_threshold(device):
    d = make("x0")
    x_t = torch.zeros(2, 1, 4, 4, device=device)
    pred = torch.linspace(-3, 3, 32).reshape(2, 1, 4, 4).to(device)
    t = torch.tensor([100, 100], device=device)
    clipped = d.p_mean_variance(pred, x_t, t, clip_denoised=True).x0
    assert clipped.min() == -1 and clipped.max() == 1
    raw = d.p_mean_variance(pred, x_t, t, clip_denoised=False).x0
    assert torch.equal(raw, pred)
    thr = dynamic_thresholding(pred, 0.995)
    assert thr.abs().max() <= 1.0 + 1e-6
    small = torch.full((1, 1, 2, 2), 0.5, device=device)
    assert torch.equal(dynamic_thresholding(small), small)  # s = max(1, q) leaves in-range samples alone
    # ε̂ is recomputed from the clipped x̂_0, keeping the pair consistent
    out = d.p_mean_variance(pred, x_t, t, clip_denoised=True)
    assert torch.allclose(d.x0_from_eps(x_t, t, out.eps), out.x0, atol=1e-5)


class Oracle(torch.nn.Module):
    """Returns the exact target so the loss is zero."""

    def __init__(self, d, x0, eps):
        super().__init__()
        self.d, self.x0, self.eps = d, x0, eps

    def forward(self, x_t, t):
        return self.d.target(self.x0, self.eps, t)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_for_perfect_prediction_and_mse_otherwise(prediction, device):
    d = make(prediction)
    x0, eps = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    x0, eps = x0.to(device), eps.to(device)
    t = torch.tensor([1, 50, 500, 999], device=device)
    terms = d.training_losses(Oracle(d, x0, eps), x0, t=t, noise=eps)
    assert terms.loss.item() == pytest.approx(0.0, abs=1e-10)
    zero_model = lambda x_t, t_: torch.zeros_like(x_t)
    terms = d.training_losses(zero_model, x0, t=t, noise=eps)
    expected = d.target(x0, eps, t).pow(2).flatten(1).mean(1)
    assert torch.allclose(terms.per_sample, expected, atol=1e-6)
    d1 = make(prediction, loss_type="l1")
    terms1 = d1.training_losses(zero_model, x0, t=t, noise=eps)
    assert torch.allclose(terms1.per_sample, d.target(x0, eps, t).abs().flatten(1).mean(1), atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weights_are_the_same_x0_space_weight(prediction, device):
    """min-SNR-γ: the weight in x_0 space is min(SNR, γ) whatever the target (Hang et al. 2023)."""
    d = make(prediction, min_snr_gamma=5.0)
    t = torch.tensor([0, 100, 400, 700, 999])
    w = d.loss_weights(t.to(device))
    assert w.device.type == device.type
    w = w.cpu().double()
    snr = d.schedule.snr[t]
    # ||ε̂ - ε||² = SNR ||x̂_0 - x_0||² and ||v̂ - v||² = (SNR + 1) ||x̂_0 - x_0||²
    factor = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[prediction]
    assert torch.allclose(w * factor, snr.clamp(max=5.0), rtol=1e-5)
    assert torch.equal(make(prediction).loss_weights(t.to(device)), torch.ones(5, device=device))


def test_loss_uniform_timesteps_and_generator_reproducible(device):
    """CPU generators with data on the device: t and ε are drawn on the CPU and moved."""
    d = Diffusion(NoiseSchedule.linear(10))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    model = lambda x_t, t_: x_t * 0.5
    x0 = torch.randn(5000, 1).to(device)
    a = d.training_losses(model, x0, generator=g1)
    b = d.training_losses(model, x0, generator=g2)
    assert a.t.device.type == device.type and a.loss.device.type == device.type
    assert torch.equal(a.t, b.t) and a.loss == b.loss
    counts = torch.bincount(a.t, minlength=10).float()
    assert counts.min() > 400 and counts.max() < 600


def test_learned_variance_output_is_split():
    d = make()
    out = torch.randn(2, 6, 4, 4)
    assert torch.equal(d.split_output(out, 3), out[:, :3])
    with pytest.raises(DdpmkitError, match="channels"):
        d.split_output(torch.randn(2, 5, 4, 4), 3)


def test_bad_config():
    with pytest.raises(DdpmkitError, match="prediction"):
        make("score")
    with pytest.raises(DdpmkitError, match="zero-terminal-SNR"):
        Diffusion(NoiseSchedule.linear(100).rescale_zero_terminal_snr(), prediction="eps")
    d = Diffusion.from_dict(make("v", min_snr_gamma=5.0).to_dict())
    assert d.prediction.value == "v" and d.min_snr_gamma == 5.0


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_no_float64_tensor_is_moved_to_an_accelerator(monkeypatch, prediction):
    """MPS has no float64: the float64 schedule must be cast before it leaves the CPU. PyTorch's "meta" device
    stands in for the accelerator; any float64 tensor sent to a non-CPU device fails the test."""
    original_to = torch.Tensor.to

    def guarded_to(self, *args, **kwargs):
        out = original_to(self, *args, **kwargs)
        if out.device.type != "cpu" and out.dtype == torch.float64:
            raise AssertionError("a float64 tensor was moved to a non-CPU device")
        return out

    diffusion = Diffusion(NoiseSchedule.cosine(100), prediction=prediction, min_snr_gamma=5.0)
    x0 = torch.empty(4, 1, 8, 8, device="meta")
    t = torch.zeros(4, dtype=torch.long, device="meta")
    monkeypatch.setattr(torch.Tensor, "to", guarded_to)
    terms = diffusion.training_losses(lambda x, tt: torch.zeros_like(x), x0, t=t, noise=torch.empty_like(x0))
    assert terms.loss.device.type == "meta"
    out = diffusion.p_mean_variance(torch.zeros_like(x0), x0, t)
    assert out.mean.device.type == "meta" and out.variance.dtype == torch.float32
    with pytest.raises(AssertionError, match="float64"):  # and the guard does catch such a move
        torch.ones(2, dtype=torch.float64).to("meta")
