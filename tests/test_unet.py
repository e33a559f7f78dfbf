"""Tests of the noise-prediction UNet (ddpmkit.models)."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ddpmkit.errors import DdpmkitError
from ddpmkit.models import UNet, UNetConfig
from ddpmkit.models.layers import AttentionBlock, ResBlock, timestep_embedding
from ddpmkit.models.norm import group_norm_film_act
from ddpmkit.models.sizes import list_unet_sizes


def _small(image_size: int, mults: tuple[int, ...], **kw) -> UNetConfig:
    d = dict(image_size=image_size, base_channels=8, channel_mults=mults, num_res_blocks=1, norm_groups=4,
             num_heads=2)
    d.update(kw)
    return UNetConfig(**d)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add N(0, 0.05^2) noise (fixed seed) to every parameter: the zero-initialised layers (conv_out, each
    ResBlock's conv2, attention to_out) become random, so the output depends on every input and is not all zero.
    The noise is drawn on the CPU (the same on every device) and moved to each parameter's device."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=g) * 0.05).to(p.device))
    return model


def _assert_responsive(model: UNet, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None):
    """The output is non-zero and changes with the input ``x``, with ``t`` and (if given) with the labels."""
    y = model(x, t, labels)
    assert y.abs().amax() > 1e-3, "output is (almost) all zero"
    noise = torch.randn(x.shape, dtype=x.dtype).to(x.device)  # drawn on the CPU: the same on every device
    assert not torch.allclose(model(x + 0.5 * noise, t, labels), y, atol=1e-4), "ignores x"
    assert not torch.allclose(model(x, 999 - t, labels), y, atol=1e-4), "ignores t"
    if labels is not None:
        assert not torch.allclose(model(x, t, (labels + 1) % model.config.num_classes), y, atol=1e-4), "ignores labels"
    return y


def _count(cfg: UNetConfig) -> int:
    with torch.device("meta"):  # no memory, no init time
        return sum(p.numel() for p in UNet(cfg).parameters())


# ---------------------------------------------------------------- shapes and sizes

@pytest.mark.parametrize(
    "size, mults",
    [(28, (1, 2, 4)), (28, (1, 2, 2, 2)), (30, (1, 2, 4)), (48, (1, 2, 2, 2)), (32, (1, 2, 2, 2)),
     (64, (1, 2, 4, 8)), (27, (1, 2))],
)
def test_output_shape_for_every_size(size, mults, device):
    attn = (UNetConfig(image_size=size, channel_mults=mults, base_channels=8, norm_groups=4)
            .level_resolutions()[-1],)
    model = _randomize(UNet(_small(size, mults, in_channels=3, attention_resolutions=attn))).to(device).eval()
    y = _assert_responsive(model, torch.randn(2, 3, size, size).to(device), torch.tensor([0, 999]).to(device))
    assert y.shape == (2, 3, size, size)


@pytest.mark.parametrize("height, width", [(27, 30), (33, 26), (30, 32)])
def test_non_square_and_padding_crop_region(height, width, device):
    """A size not divisible by 2**(levels-1) = 8 is zero-padded centred (the extra pixel of an odd padding at the
    bottom/right) and cropped back: the output is the matching window of the network's output on the explicitly
    padded input. A crop or padding off by one pixel in either axis fails this."""
    model = _randomize(UNet(_small(28, (1, 2, 2, 2), attention_resolutions=(7,)))).to(device).eval()
    x, t = torch.randn(2, 1, height, width).to(device), torch.tensor([5, 600]).to(device)
    pad_h, pad_w = -height % 8, -width % 8
    top, left = pad_h // 2, pad_w // 2
    with torch.no_grad():
        y = model(x, t)
        full = model(F.pad(x, (left, pad_w - left, top, pad_h - top)), t)
    assert full.shape[2:] == (height + pad_h, width + pad_w) and y.shape == x.shape
    torch.testing.assert_close(y, full[:, :, top : top + height, left : left + width], rtol=1e-5, atol=1e-6)
    for dy, dx in ((1, 0), (0, 1)):  # the check itself tells a one-pixel shift (along each padded axis)
        if (pad_h if dy else pad_w) > 0:
            assert not torch.allclose(y, full[:, :, top + dy : top + dy + height, left + dx : left + dx + width])


def test_learn_sigma_and_out_channels(device):
    t = torch.tensor([1, 500]).to(device)
    model = _randomize(UNet(_small(16, (1, 2), in_channels=3, learn_sigma=True))).to(device).eval()
    y = _assert_responsive(model, torch.randn(2, 3, 16, 16).to(device), t)
    assert y.shape == (2, 6, 16, 16)
    assert not torch.allclose(y[:, :3], y[:, 3:])  # prediction and variance channels are separate outputs
    model = _randomize(UNet(_small(16, (1, 2), in_channels=3, out_channels=1, learn_sigma=True))).to(device).eval()
    assert _assert_responsive(model, torch.randn(2, 3, 16, 16).to(device), t).shape == (2, 2, 16, 16)


def test_zero_initialised_output(device):
    model = UNet(_small(16, (1, 2), attention_resolutions=(8,))).to(device)
    assert torch.count_nonzero(model(torch.randn(2, 1, 16, 16).to(device), torch.tensor([3, 4]).to(device))) == 0
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

def test_named_sizes_are_listed_and_load():
    assert {"tiny", "mnist", "cifar10", "pokemon64"} <= set(list_unet_sizes())
    for name in list_unet_sizes():
        assert isinstance(UNetConfig.named(name), UNetConfig)


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


def _forward_backward(name: str, device: torch.device):
    """As initialised (zero output layer), the gradient reaches conv_out, so training can start; with random
    weights, every parameter gets a finite non-zero gradient (none is disconnected)."""
    cfg = UNetConfig.named(name)
    torch.manual_seed(0)
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size).to(device)
    t = torch.tensor([10]).to(device)
    model = UNet(cfg).to(device)
    y = model(x, t)
    (y - x).square().mean().backward()
    assert y.shape == x.shape
    assert model.conv_out.weight.grad.abs().sum() > 0
    model = _randomize(UNet(cfg)).to(device)
    y = model(x, t)
    (y - x).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        # softmax(q.(k + b)) = softmax(q.k): the key bias has no effect and (numerically almost) no gradient
        if not pname.endswith("to_k.bias"):
            assert p.grad.abs().amax() > 0, pname


@pytest.mark.parametrize("name", ["tiny", "mnist"])
def test_forward_backward_small_named(name, device):
    _forward_backward(name, device)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "pokemon64"])
def test_forward_backward_large_named(name, device):
    _forward_backward(name, device)


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


def test_output_depends_on_t_and_labels(device):
    model = _randomize(UNet(_small(16, (1, 2), num_classes=3, attention_resolutions=(8,)))).to(device).eval()
    x = torch.randn(2, 1, 16, 16).to(device)

    def on(*values):
        return torch.tensor(values).to(device)

    y = model(x, on(10, 10), on(0, 0))
    assert not torch.allclose(y, model(x, on(500, 500), on(0, 0)), atol=1e-4)
    assert not torch.allclose(y, model(x, on(10.5, 10.5), on(0, 0)), atol=1e-6)
    assert not torch.allclose(y, model(x, on(10, 10), on(1, 2)), atol=1e-4)
    # labels=None is the null class (index num_classes) for every sample
    null = model(x, on(10, 10), on(3, 3))
    torch.testing.assert_close(model(x, on(10, 10)), null)
    # and so is -1 (ddpmkit.sampling.NULL_LABEL, what guidance passes without knowing num_classes)
    torch.testing.assert_close(model(x, on(10, 10), on(-1, -1)), null)
    # a scalar t broadcasts over the batch; it stays a CPU tensor here, which the UNet moves to x's device
    torch.testing.assert_close(model(x, torch.tensor(10), on(0, 0)), y)


def test_labels_on_unconditional_model_rejected():
    model = UNet(_small(16, (1, 2)))
    with pytest.raises(DdpmkitError, match="num_classes"):
        model(torch.randn(1, 1, 16, 16), torch.tensor([1]), torch.tensor([0]))


def test_class_dropout_replaces_labels_in_training_only(device):
    model = _randomize(UNet(_small(16, (1, 2), num_classes=3, class_dropout_prob=1.0))).to(device)
    x, t, lab = torch.randn(2, 1, 16, 16).to(device), torch.tensor([7, 7]).to(device), torch.tensor([0, 1]).to(device)
    model.train()
    torch.testing.assert_close(model(x, t, lab), model(x, t))  # every label dropped to null
    model.eval()
    assert not torch.allclose(model(x, t, lab), model(x, t))


def test_additive_time_conditioning_runs_and_depends_on_t(device):
    model = _randomize(UNet(_small(16, (1, 2), time_conditioning="additive"))).to(device).eval()
    x = torch.randn(1, 1, 16, 16).to(device)
    assert not torch.allclose(model(x, torch.tensor([1]).to(device)), model(x, torch.tensor([900]).to(device)),
                              atol=1e-4)


# ---------------------------------------------------------------- layers against independent references

@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_act_matches_torch_reference(channels_last, device):
    """On the CPU the training path is the hand-written autograd function, elsewhere the stock-op composition."""
    torch.manual_seed(0)
    B, C, G = 2, 8, 4
    x = torch.randn(B, C, 5, 6) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device)  # keeps the memory format
    w, b = torch.randn(C).to(device), torch.randn(C).to(device)
    s, sh = torch.randn(B, C).to(device), torch.randn(B, C).to(device)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    w1, w2 = w.clone().requires_grad_(), w.clone().requires_grad_()
    y1 = group_norm_film_act(x1, G, w1, b, s, sh, act=True)
    ref = F.silu(F.group_norm(x2, G, w2, b, eps=1e-5) * (1 + s[:, :, None, None]) + sh[:, :, None, None])
    torch.testing.assert_close(y1, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref.cpu()).to(device)  # drawn on the CPU, in ref's memory format
    (y1 * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-4, rtol=1e-4)
    assert y1.is_contiguous(memory_format=torch.channels_last) == channels_last


def _manual_attention(blk: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """x + to_out(concat_i softmax(q_i k_i^T / sqrt(d)) v_i), head i on channels [i d, (i + 1) d), by einsum."""
    B, C, H, W = x.shape
    heads, d = blk.num_heads, C // blk.num_heads
    u = F.group_norm(x, blk.norm.num_groups, blk.norm.weight, blk.norm.bias).flatten(2).transpose(1, 2)  # (B, HW, C)
    q, k, v = blk.to_q(u), blk.to_k(u), blk.to_v(u)
    q, k, v = (z.reshape(B, -1, heads, d) for z in (q, k, v))  # (B, L, heads, d)
    attn = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhij,bjhd->bihd", attn, v).reshape(B, H * W, C)
    return x + blk.to_out(out).transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_block_matches_manual_softmax(channels_last, device):
    torch.manual_seed(0)
    blk = AttentionBlock(8, num_heads=2, groups=4)
    assert not blk.to_out.weight.any() and not blk.to_out.bias.any()  # zero-initialised: starts as the identity
    torch.nn.init.normal_(blk.to_out.weight, std=0.1)
    blk.to(device)
    x = torch.randn(2, 8, 3, 4).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(blk(x), _manual_attention(blk, x), atol=1e-5, rtol=1e-5)


def test_attention_projections_are_separate_named_linears():
    blk = AttentionBlock(8, num_heads=2, groups=4)
    for name in ("to_q", "to_k", "to_v", "to_out"):
        layer = getattr(blk, name)
        assert isinstance(layer, torch.nn.Linear) and (layer.in_features, layer.out_features) == (8, 8)
    assert {k for k in blk.state_dict() if k.startswith("to_")} == {
        f"{n}.{w}" for n in ("to_q", "to_k", "to_v", "to_out") for w in ("weight", "bias")}
    model = UNet(_small(16, (1, 2), attention_resolutions=(8,)))
    assert "mid.1.to_q.weight" in model.state_dict() and "down.2.1.to_v.bias" in model.state_dict()


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_takes_the_fused_sdpa_kernel(channels_last, device):
    """Speed guard: q, k, v reach SDPA with stride 1 on the head dimension, so a fused kernel runs, forward and
    backward: on the CPU its flash kernel (float32); on CUDA the flash or memory-efficient kernel under bf16 autocast,
    as training runs there. With only those backends allowed, inputs they cannot take raise "No available kernel".
    Head width d = 8: CUDA's memory-efficient kernel needs d % 8 == 0 in bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type == "cpu":
        backends, precision = [SDPBackend.FLASH_ATTENTION], contextlib.nullcontext()
    elif device.type == "cuda":
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        precision = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        pytest.skip(f"no fused SDPA kernel is checked on {device.type}")
    blk = AttentionBlock(16, num_heads=2, groups=4).to(device)
    x = torch.randn(2, 16, 4, 4).to(device).requires_grad_()
    with sdpa_kernel(backends), precision:
        blk(x.to(memory_format=torch.channels_last) if channels_last else x).sum().backward()
    assert blk.to_q.weight.grad is not None and x.grad is not None


# ---------------------------------------------------------------- time-embedding projections

def test_each_res_block_owns_its_emb_proj():
    """Every ResBlock projects the shared silu(embedding) with its own ``emb_proj``, called once per forward;
    changing one block's projection changes that block's conditioning only."""
    cfg = _small(16, (1, 2), attention_resolutions=(8,), num_classes=3)
    model = _randomize(UNet(cfg)).eval()
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, ResBlock)}
    assert len(blocks) == 2 + 2 + 2 * 2  # encoder, middle, decoder (num_res_blocks + 1 a level)
    for name, blk in blocks.items():
        assert (blk.emb_proj.in_features, blk.emb_proj.out_features) == (4 * cfg.base_channels, 2 * blk.out_ch)
        assert f"{name}.emb_proj.weight" in model.state_dict()
    assert len({id(b.emb_proj.weight) for b in blocks.values()}) == len(blocks)

    seen: dict[str, list] = {name: [] for name in blocks}
    for name, blk in blocks.items():
        blk.emb_proj.register_forward_hook(lambda m, i, o, name=name: seen[name].append((i[0], o)))
    x, t, labels = torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        y = model(x, t, labels)
        # the input of every projection is silu(time_mlp(sinusoid(t)) + label embedding), SiLU'd once
        emb = F.silu(model.time_mlp(timestep_embedding(t, cfg.base_channels)) + model.label_emb.embedding(labels))
    assert all(len(calls) == 1 for calls in seen.values())
    for calls in seen.values():
        torch.testing.assert_close(calls[0][0], emb)
    before = {name: calls[0][1] for name, calls in seen.items()}

    changed = "mid.0"
    with torch.no_grad():
        blocks[changed].emb_proj.weight.add_(0.5)
        for calls in seen.values():
            calls.clear()
        y2 = model(x, t, labels)
    for name, calls in seen.items():
        assert torch.equal(calls[0][1], before[name]) == (name != changed), name
    assert not torch.allclose(y, y2, atol=1e-4)  # and the block uses it


def _old_layout(model: UNet) -> dict[str, torch.Tensor]:
    """The model's weights in the layout before ResBlocks owned their projections and attention had to_q/k/v:
    one shared ``emb_proj = Sequential(SiLU, Linear)`` over the concatenated block projections, concatenated in
    ``self.modules()`` order of the ResBlocks, and 1x1 convs ``qkv`` (channels [q | k | v]) and ``proj``."""
    sd = dict(model.state_dict())
    weights, biases = [], []
    for name, m in model.named_modules():
        if isinstance(m, ResBlock):
            weights.append(sd.pop(f"{name}.emb_proj.weight"))
            biases.append(sd.pop(f"{name}.emb_proj.bias"))
        elif isinstance(m, AttentionBlock):
            parts = [(sd.pop(f"{name}.{p}.weight"), sd.pop(f"{name}.{p}.bias")) for p in ("to_q", "to_k", "to_v")]
            sd[f"{name}.qkv.weight"] = torch.cat([w for w, _ in parts])[:, :, None, None]
            sd[f"{name}.qkv.bias"] = torch.cat([b for _, b in parts])
            sd[f"{name}.proj.weight"] = sd.pop(f"{name}.to_out.weight")[:, :, None, None]
            sd[f"{name}.proj.bias"] = sd.pop(f"{name}.to_out.bias")
    sd["emb_proj.1.weight"], sd["emb_proj.1.bias"] = torch.cat(weights), torch.cat(biases)
    return sd


@pytest.mark.parametrize("time_conditioning", ["scale_shift", "additive"])
def test_old_layout_state_dict_loads_identically(time_conditioning):
    cfg = _small(16, (1, 2), attention_resolutions=(8,), num_classes=3, time_conditioning=time_conditioning)
    model = _randomize(UNet(cfg)).eval()
    old = _old_layout(model)
    assert "emb_proj.1.weight" in old and "mid.1.qkv.weight" in old and "mid.0.emb_proj.weight" not in old
    loaded = UNet(cfg)
    result = loaded.load_state_dict(old)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    assert "emb_proj.1.weight" in old  # the caller's dict is not modified
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x, t, labels = torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), torch.tensor([0, 2])
    assert torch.equal(loaded.eval()(x, t, labels), model(x, t, labels))
    # under a parent module (prefixed keys) too
    parent = torch.nn.ModuleDict({"net": UNet(cfg)})
    parent.load_state_dict({f"net.{k}": v for k, v in old.items()})
    assert torch.equal(parent["net"].eval()(x, t, labels), model(x, t, labels))


def test_old_layout_of_another_config_is_a_clear_error():
    old = _old_layout(UNet(_small(16, (1, 2), attention_resolutions=(8,))))
    with pytest.raises(DdpmkitError, match="another configuration"):
        UNet(_small(16, (1, 2), attention_resolutions=(8,), time_conditioning="additive")).load_state_dict(old)


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

def test_bf16_autocast_close_to_fp32(device):
    torch.manual_seed(0)
    model = _randomize(UNet(_small(16, (1, 2), attention_resolutions=(8,)))).to(device).eval()
    x, t = torch.randn(2, 1, 16, 16).to(device), torch.tensor([20, 600]).to(device)
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = model(x, t)
    assert y.dtype == torch.bfloat16
    rel = (y.float() - ref).norm() / ref.norm()
    assert rel < 0.03, rel


def test_eval_mode_is_deterministic_and_dropout_active_in_train(device):
    model = _randomize(UNet(_small(16, (1, 2), dropout=0.5))).to(device)
    x, t = torch.randn(2, 1, 16, 16).to(device), torch.tensor([3, 4]).to(device)
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))
