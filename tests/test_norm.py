"""The fused GroupNorm + FiLM + SiLU autograd function against PyTorch's own ops, in both memory formats.

``group_norm_film_act`` runs the hand-written autograd function for training on the CPU only and the stock-op
composition elsewhere, so the tests of the function itself call it directly (:func:`fused`): they test it on any
device (ATen's ``native_group_norm``, which it calls, exists on CUDA). The tests through ``group_norm_film_act`` and
the UNet test whichever path the device takes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddpmkit.models import UNet, UNetConfig
from ddpmkit.models.norm import _GroupNormFiLMAct, group_norm_film_act, group_norm_film_act_composed

LAYOUTS = ["nchw", "channels_last"]


def reference(x, groups, weight, bias, scale, shift, act, eps=1e-5):
    """Textbook composition: GroupNorm with its affine, then FiLM, then SiLU."""
    y = F.group_norm(x, groups, weight, bias, eps)
    if scale is not None:
        y = y * (1 + scale[:, :, None, None])
    if shift is not None:
        y = y + shift[:, :, None, None]
    return F.silu(y) if act else y


def fused(x, groups, weight, bias, scale=None, shift=None, act=True, eps=1e-5):
    """The hand-written autograd function itself, on any device (``group_norm_film_act`` uses it on the CPU)."""
    if x.device.type == "cuda" and not x.is_contiguous():
        pytest.skip("ATen's CUDA GroupNorm kernel takes NCHW only (RuntimeError on channels_last, seen with torch "
                    "2.11 on an H200): the hand-written function is the CPU's, CUDA uses the stock ops")
    return _GroupNormFiLMAct.apply(x, weight, bias, scale, shift, groups, eps, act)


def make_inputs(layout: str, film: bool, dtype=torch.float64, shape=(3, 8, 5, 4), seed: int = 0, device="cpu"):
    """Drawn on the CPU (the same values on every device), then moved to ``device`` in the given layout."""
    g = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 1  # non-zero mean: exercises the centring
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x = x.to(device)  # keeps the memory format
    if layout == "channels_last":
        assert x.stride(1) == 1
    weight = torch.randn(C, generator=g, dtype=dtype)
    bias = torch.randn(C, generator=g, dtype=dtype)
    scale = torch.randn(B, C, generator=g, dtype=dtype) if film else None
    shift = torch.randn(B, C, generator=g, dtype=dtype) if film else None
    tensors = [x] + [t.to(device) if t is not None else None for t in (weight, bias, scale, shift)]
    return [t.requires_grad_() if t is not None else None for t in tensors]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("film", [True, False])
def test_gradcheck_float64(layout, act, film, device):
    """The hand-written backward is the exact derivative (finite differences, float64)."""
    x, weight, bias, scale, shift = make_inputs(layout, film, device=device)
    inputs = (x, weight, bias) + ((scale, shift) if film else ())

    def fn(*args):
        s, sh = (args[3], args[4]) if film else (None, None)
        return fused(args[0], 4, args[1], args[2], s, sh, act=act)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("film", [True, False])
def test_matches_reference_forward_and_every_gradient(layout, act, film, device):
    """Output and all five input gradients equal the textbook composition's in float32."""
    ours = make_inputs(layout, film, dtype=torch.float32, shape=(4, 64, 6, 7), device=device)
    ref = [t.detach().clone().requires_grad_() if t is not None else None for t in ours]
    y = fused(ours[0], 32, *ours[1:], act=act)
    y_ref = reference(ref[0], 32, *ref[1:], act=act)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device)
    y.backward(g)
    y_ref.backward(g)
    for name, a, b in zip(["x", "weight", "bias", "scale", "shift"], ours, ref):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("film", [True, False])
def test_keeps_memory_format_and_no_grad_path_agrees(layout, film, device):
    """The inference path (stock ops, SiLU in place) gives the training path's output, in the input's layout."""
    x, weight, bias, scale, shift = make_inputs(layout, film, dtype=torch.float32, shape=(2, 32, 8, 8), device=device)
    y = group_norm_film_act(x, 8, weight, bias, scale, shift)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    with torch.no_grad():
        y_inference = group_norm_film_act(x, 8, weight, bias, scale, shift)
        y_ref = reference(x, 8, weight, bias, scale, shift, True)
    torch.testing.assert_close(y_inference, y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_inference, y_ref, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input_and_gradient_in_the_other_layout(device):
    """A strided input is handled, and a channels_last gradient for an NCHW output gives the same result."""
    x, weight, bias, scale, shift = make_inputs("nchw", True, dtype=torch.float64, shape=(2, 8, 6, 10), device=device)
    x_view = x[..., ::2]  # neither NCHW- nor NHWC-contiguous
    y = fused(x_view, 4, weight, bias, scale, shift)
    y_ref = reference(x_view, 4, weight, bias, scale, shift, True)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn(y.shape, dtype=torch.float64).to(device, memory_format=torch.channels_last)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(gx, gx_ref)


@pytest.mark.parametrize("film", [True, False])
def test_bf16_autocast_close_to_stock_ops(film):
    """Under CPU bf16 autocast the fused and the stock composition agree to bf16 precision.

    CPU only: elsewhere ``group_norm_film_act`` is the stock composition, so this would compare it with itself
    (and the hand-written function is not made for CUDA autocast: without FiLM it hands ATen's CUDA GroupNorm a bf16
    input with float32 weights, a mix that kernel does not take)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(4, 32, 8, 8).to(memory_format=torch.channels_last)
    _, weight, bias, scale, shift = make_inputs("channels_last", film, dtype=torch.float32, shape=(4, 32, 8, 8))
    results = []
    for fn in (group_norm_film_act, group_norm_film_act_composed):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(conv(x), 8, weight, bias, scale, shift)
        assert y.dtype == torch.bfloat16
        params = (conv.weight, weight, bias) + ((scale,) if film else ())
        grads = torch.autograd.grad(y.float().square().mean(), params)
        results.append((y.float(),) + grads)
    for a, b in zip(*results):
        assert ((a - b).norm() / b.norm()).item() < 2e-2


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("channels_last", [True, False])
def test_unet_runs_in_the_configured_memory_format(in_channels, channels_last, device):
    """Regression: a 1-channel input is both NCHW- and NHWC-contiguous, so ``contiguous(channels_last)`` is a
    no-op on it and the whole MNIST UNet used to run in NCHW despite ``channels_last=True``."""
    cfg = UNetConfig.named("tiny", in_channels=in_channels, channels_last=channels_last)
    model = UNet(cfg).to(device)
    seen = []
    model.down[0][0].conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].stride(1) == 1))
    model(torch.randn(2, in_channels, 16, 16).to(device), torch.tensor([3, 7]).to(device))
    assert seen == [channels_last]


def test_unet_gradients_equal_in_both_memory_formats(device):
    """Same weights, same input: NCHW and channels_last UNets give the same loss gradients.

    The tolerances cover the convolutions' different kernels in the two layouts (fp32, TF32 off on CUDA)."""
    torch.manual_seed(0)
    a = UNet(UNetConfig.named("tiny", channels_last=True))
    b = UNet(UNetConfig.named("tiny", channels_last=False))
    with torch.no_grad():  # zero-initialised output layers would make every upstream gradient zero
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # on the CPU: the same weights on every device
    b.load_state_dict(a.state_dict())
    a.to(device)
    b.to(device)
    x, t = torch.randn(3, 1, 16, 16).to(device), torch.tensor([1, 500, 999]).to(device)
    for m in (a, b):
        m(x, t).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_unet_bf16_autocast_gradients_close_to_fp32(device):
    """A training backward through the norm (the fused function on the CPU, the stock composition elsewhere) under
    bf16 autocast stays close to the fp32 gradients."""
    torch.manual_seed(0)
    model = UNet(UNetConfig.named("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # on the CPU: the same weights on every device
    model.to(device)
    x, t = torch.randn(4, 1, 16, 16).to(device), torch.tensor([1, 300, 600, 999]).to(device)
    model(x, t).square().mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(x, t)
    out.float().square().mean().backward()
    flat_ref = torch.cat([g.flatten() for g in ref.values()])
    flat = torch.cat([p.grad.flatten() for _, p in model.named_parameters()])
    assert ((flat - flat_ref).norm() / flat_ref.norm()).item() < 0.05


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("film", ["both", "scale", "shift", "none"])
def test_gpu_form_matches_reference_forward_gradients_and_layout(layout, act, film):
    """The few-launch form CUDA uses, run here on the CPU (its ops are device-agnostic): the textbook function,
    every gradient, and the input's memory format on the output."""
    from ddpmkit.models.norm import _group_norm_film_act_cuda

    ours = make_inputs(layout, film != "none", dtype=torch.float32, shape=(4, 64, 6, 7))
    if film == "scale":
        ours[4] = None
    if film == "shift":
        ours[3] = None
    ref = [t.detach().clone().requires_grad_() if t is not None else None for t in ours]
    y = _group_norm_film_act_cuda(ours[0], 32, *ours[1:], act=act, eps=1e-5)
    y_ref = reference(ref[0], 32, *ref[1:], act=act)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.backward(g)
    y_ref.backward(g)
    for name, a, b in zip(["x", "weight", "bias", "scale", "shift"], ours, ref):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
