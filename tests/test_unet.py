"""Tests of the noise-prediction UNet (ddpmkit.models)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ddpmkit.errors import DdpmkitError
from ddpmkit.models import UNet, UNetConfig
from ddpmkit.models.layers import AttentionBlock, timestep_embedding
from ddpmkit.models.norm import group_norm_film_act


def _small(image_size: int, mults: tuple[int, ...], **kw) -> UNetConfig:
    d = dict(image_size=image_size, base_channels=8, channel_mults=mults, num_res_blocks=1, norm_groups=4,
             num_heads=2)
    d.update(kw)
    return UNetConfig(**d)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers random weights so the output depends on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _count(cfg: UNetConfig) -> int:
    with torch.device("meta"):  # no memory, no init time
        return sum(p.numel() for p in UNet(cfg).parameters())


# ---------------------------------------------------------------- shapes and sizes

@pytest.mark.parametrize(
    "size, mults",
    [(28, (1, 2, 4)), (28, (1, 2, 2, 2)), (30, (1, 2, 4)), (48, (1, 2, 2, 2)), (32, (1, 2, 2, 2)),
     (64, (1, 2, 4, 8)), (27, (1, 2))],
)
def test_output_shape_for_every_size(size, mults):
    attn = (UNetConfig(image_size=size, channel_mults=mults, base_channels=8, norm_groups=4)
            .level_resolutions()[-1],)
    model = UNet(_small(size, mults, in_channels=3, attention_resolutions=attn))
    x = torch.randn(2, 3, size, size)
    y = model(x, torch.tensor([0, 999]))
    assert y.shape == (2, 3, size, size)


def test_non_square_and_padding_crop_region():
    model = _randomize(UNet(_small(28, (1, 2, 4))))
    y = model(torch.randn(1, 1, 30, 26), torch.tensor([5]))
    assert y.shape == (1, 1, 30, 26)


def test_learn_sigma_and_out_channels():
    assert UNet(_small(16, (1, 2), in_channels=3, learn_sigma=True))(
        torch.randn(1, 3, 16, 16), torch.tensor([1])).shape == (1, 6, 16, 16)
    assert UNet(_small(16, (1, 2), in_channels=3, out_channels=1, learn_sigma=True))(
        torch.randn(1, 3, 16, 16), torch.tensor([1])).shape == (1, 2, 16, 16)


def test_zero_initialised_output():
    model = UNet(_small(16, (1, 2), attention_resolutions=(8,)))
    assert torch.count_nonzero(model(torch.randn(2, 1, 16, 16), torch.tensor([3, 4]))) == 0
    assert not model.conv_out.weight.any() and not model.down[0][0].conv2.weight.any()


def test_level_structure_matches_ddpm():
    cfg = UNetConfig.named("cifar10")
    model = UNet(cfg)
    # encoder: 4 levels x 2 ResBlocks + 3 downsamples; decoder: 4 levels x (2 + 1) ResBlocks
    assert len(model.down) == 4 * 2 + 3
    assert len(model.up) == 4 * 3
    n_attn = sum(isinstance(m, AttentionBlock) for m in model.modules())
    assert n_attn == 2 + 3 + 1  # 16x16 level in encoder and decoder, plus the middle block


# ---------------------------------------------------------------- named sizes

def test_parameter_counts_of_named_sizes():
    # tiny and mnist pinned exactly (architecture regressions show up here)
    assert _count(UNetConfig.named("tiny")) == 48401
    assert _count(UNetConfig.named("mnist")) == 1742881
    # DDPM paper, Ho et al. 2020 appendix B: 35.7M for CIFAR-10
    assert abs(_count(UNetConfig.named("cifar10")) / 35.7e6 - 1) < 0.03
    # 64/128/256/512, attention at 16x16: about 58M
    assert abs(_count(UNetConfig.named("pokemon64")) / 58e6 - 1) < 0.05


def test_named_unknown_and_overrides():
    with pytest.raises(DdpmkitError, match="pokemon64"):
        UNetConfig.named("imagenet")
    cfg = UNetConfig.named("mnist", num_classes=10)
    assert cfg.num_classes == 10 and cfg.base_channels == UNetConfig.named("mnist").base_channels
    with pytest.raises(DdpmkitError, match="bogus"):
        UNetConfig.named("mnist", bogus=1)


def _forward_backward(name: str):
    cfg = UNetConfig.named(name)
    model = UNet(cfg)
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    y = model(x, torch.tensor([10]))
    loss = (y - x).square().mean()
    loss.backward()
    assert y.shape == x.shape
    assert model.conv_out.weight.grad.abs().sum() > 0  # gradient reaches the last layer
    assert model.time_mlp[0].weight.grad is not None


@pytest.mark.parametrize("name", ["tiny", "mnist"])
def test_forward_backward_small_named(name):
    _forward_backward(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "pokemon64"])
def test_forward_backward_large_named(name):
    _forward_backward(name)


# ---------------------------------------------------------------- conditioning

def test_time_embedding_is_sinusoidal():
    dim = 10
    t = torch.tensor([0.0, 1.0, 37.5, 999.0])
    emb = timestep_embedding(t, dim)
    half = dim // 2
    for b, tv in enumerate(t.tolist()):
        for i in range(half):
            f = 10000 ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.cos(tv * f), abs=1e-5)
            assert emb[b, half + i].item() == pytest.approx(math.sin(tv * f), abs=1e-5)
    assert timestep_embedding(t, 7).shape == (4, 7) and (timestep_embedding(t, 7)[:, -1] == 0).all()


def test_output_depends_on_t_and_labels():
    model = _randomize(UNet(_small(16, (1, 2), num_classes=3, attention_resolutions=(8,)))).eval()
    x = torch.randn(2, 1, 16, 16)
    y = model(x, torch.tensor([10, 10]), torch.tensor([0, 0]))
    assert not torch.allclose(y, model(x, torch.tensor([500, 500]), torch.tensor([0, 0])), atol=1e-4)
    assert not torch.allclose(y, model(x, torch.tensor([10.5, 10.5]), torch.tensor([0, 0])), atol=1e-6)
    assert not torch.allclose(y, model(x, torch.tensor([10, 10]), torch.tensor([1, 2])), atol=1e-4)
    # labels=None is the null class (index num_classes) for every sample
    null = model(x, torch.tensor([10, 10]), torch.tensor([3, 3]))
    torch.testing.assert_close(model(x, torch.tensor([10, 10])), null)
    # a scalar t broadcasts over the batch
    torch.testing.assert_close(model(x, torch.tensor(10), torch.tensor([0, 0])), y)


def test_labels_on_unconditional_model_rejected():
    model = UNet(_small(16, (1, 2)))
    with pytest.raises(DdpmkitError, match="num_classes"):
        model(torch.randn(1, 1, 16, 16), torch.tensor([1]), torch.tensor([0]))


def test_class_dropout_replaces_labels_in_training_only():
    model = _randomize(UNet(_small(16, (1, 2), num_classes=3, class_dropout_prob=1.0)))
    x, t, lab = torch.randn(2, 1, 16, 16), torch.tensor([7, 7]), torch.tensor([0, 1])
    model.train()
    torch.testing.assert_close(model(x, t, lab), model(x, t))  # every label dropped to null
    model.eval()
    assert not torch.allclose(model(x, t, lab), model(x, t))


def test_additive_time_conditioning_runs_and_depends_on_t():
    model = _randomize(UNet(_small(16, (1, 2), time_conditioning="additive"))).eval()
    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(model(x, torch.tensor([1])), model(x, torch.tensor([900])), atol=1e-4)


# ---------------------------------------------------------------- layers against independent references

@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_act_matches_torch_reference(channels_last):
    torch.manual_seed(0)
    B, C, G = 2, 8, 4
    x = torch.randn(B, C, 5, 6) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C), torch.randn(C)
    s, sh = torch.randn(B, C), torch.randn(B, C)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    w1, w2 = w.clone().requires_grad_(), w.clone().requires_grad_()
    y1 = group_norm_film_act(x1, G, w1, b, s, sh, act=True)
    ref = F.silu(F.group_norm(x2, G, w2, b, eps=1e-5) * (1 + s[:, :, None, None]) + sh[:, :, None, None])
    torch.testing.assert_close(y1, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    (y1 * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-4, rtol=1e-4)
    assert y1.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_attention_block_matches_manual_softmax():
    torch.manual_seed(0)
    blk = AttentionBlock(8, num_heads=2, groups=4)
    torch.nn.init.normal_(blk.proj.weight, std=0.1)
    x = torch.randn(2, 8, 3, 4)
    h = blk.qkv(F.group_norm(x, 4, blk.norm.weight, blk.norm.bias)).reshape(2, 3, 2, 4, 12)
    q, k, v = h[:, 0], h[:, 1], h[:, 2]  # (B, heads, d, HW)
    attn = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(4), dim=-1)
    out = torch.einsum("bhij,bhdj->bhdi", attn, v).reshape(2, 8, 3, 4)
    torch.testing.assert_close(blk(x), x + blk.proj(out), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- config and weights round trips

def test_config_round_trip_and_unknown_key():
    cfg = UNetConfig.named("cifar10", num_classes=10, learn_sigma=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["channel_mults"] == [1, 2, 2, 2]
    assert UNetConfig.from_dict(d) == cfg
    with pytest.raises(DdpmkitError, match="colour"):
        UNetConfig.from_dict({**d, "colour": 1})


def test_config_validation_messages():
    with pytest.raises(DdpmkitError, match="norm_groups"):
        UNetConfig(base_channels=12, norm_groups=8)
    with pytest.raises(DdpmkitError, match="match no level"):
        UNetConfig(image_size=28, channel_mults=(1, 2, 4), attention_resolutions=(8,))
    with pytest.raises(DdpmkitError, match="time_conditioning"):
        UNetConfig(time_conditioning="film")


def test_safetensors_round_trip_identical_output(tmp_path):
    cfg = _small(16, (1, 2), num_classes=3, attention_resolutions=(8,))
    model = _randomize(UNet(cfg)).eval()
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    loaded = UNet(UNetConfig.from_dict(json.loads((tmp_path / "c.json").read_text())))
    loaded.load_state_dict(load_file(tmp_path / "m.safetensors"))
    loaded.eval()
    x, t, lab = torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), torch.tensor([0, 2])
    assert torch.equal(model(x, t, lab), loaded(x, t, lab))


# ---------------------------------------------------------------- precision and determinism

def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = _randomize(UNet(_small(16, (1, 2), attention_resolutions=(8,)))).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([20, 600])
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x, t)
    assert y.dtype == torch.bfloat16
    rel = (y.float() - ref).norm() / ref.norm()
    assert rel < 0.03, rel


def test_eval_mode_is_deterministic_and_dropout_active_in_train():
    model = _randomize(UNet(_small(16, (1, 2), dropout=0.5)))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 4])
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))
