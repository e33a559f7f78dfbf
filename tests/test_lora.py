"""LoRA: adapters start as the base, merge/unmerge, only adapters train, the base is untouched, resume is exact,
the adapter is small, and an adapter is refused on another base."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from test_training import tiny_config, tiny_data

from ddpmkit.checkpoint import load_checkpoint
from ddpmkit.errors import DdpmkitError
from ddpmkit.lora import (
    apply_adapter,
    find_targets,
    inject,
    lora_layers,
    lora_state_dict,
    merge,
    model_fingerprint,
    set_scale,
    unmerge,
)
from ddpmkit.lora.adapter import ADAPTER_JSON, ADAPTER_WEIGHTS, load_adapter
from ddpmkit.lora.layers import LoRAConv2d
from ddpmkit.lora.merged_run import merge_run
from ddpmkit.models import UNet, UNetConfig
from ddpmkit.pipeline import Pipeline
from ddpmkit.run import RunFolder
from ddpmkit.training import LoRABase, Trainer

ALL = "attn,conv,mlp"


def random_unet(seed: int = 0, device: torch.device | str = "cpu", **overrides) -> UNet:
    """A tiny UNet with every weight random (the zero-initialised output layers would hide any difference), drawn
    on the CPU and then moved to ``device``: the same weights on every device."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig.named("tiny", **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.to(device).eval()


def inputs(batch: int = 3, size: int = 16, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(batch, 1, size, size, generator=g), torch.randint(0, 100, (batch,), generator=g)
    return x.to(device), t.to(device)


def randomize_adapters(model: torch.nn.Module, std: float = 0.05) -> None:
    """N(0, std²) adapter weights, drawn on the CPU (global seed) and copied to the adapters' device."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for weight in (layer.lora_A, layer.lora_B):
                weight.copy_(torch.empty(weight.shape, dtype=weight.dtype).normal_(0, std))


def base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}


# ----- the layers ---------------------------------------------------------------------------------------------

def assert_same(out: torch.Tensor, before: torch.Tensor) -> None:
    """Bitwise on the CPU. On CUDA a wrapped layer may run another kernel than the plain one (cuDNN and cuBLAS
    choose by layout and alignment), which moved outputs by fp32 rounding (~1e-7, seen on an H200)."""
    if out.device.type == "cpu":
        assert torch.equal(out, before)
    else:
        torch.testing.assert_close(out, before, rtol=1e-5, atol=1e-6)


def test_fresh_adapters_equal_the_base_exactly_and_scale_zero_is_the_base(device):
    model = random_unet(device=device)
    x, t = inputs(device=device)
    with torch.no_grad():
        before = model(x, t)
    names = inject(model, 4, 4.0, ALL)
    kinds = {type(m).__name__ for m in lora_layers(model).values()}
    assert kinds == {"LoRALinear", "LoRAConv2d"} and len(names) == len(lora_layers(model))
    assert all(torch.count_nonzero(m.lora_A) > 0 and torch.count_nonzero(m.lora_B) == 0
               for m in lora_layers(model).values())  # A initialised like the layer, B at zero
    with torch.no_grad():
        assert_same(model(x, t), before)
        randomize_adapters(model)
        adapted = model(x, t)
        set_scale(model, 0.0)
        assert_same(model(x, t), before)
    assert (adapted - before).abs().max() > 1e-3  # the adapters do act when they are not zero


def test_targets_cover_attention_convs_and_time_mlps():
    model = random_unet()
    names = lambda targets: {name for name, _ in find_targets(model, targets)}
    attn = names("attn")
    assert attn and all(name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "to_out") for name in attn)
    assert len(attn) == 4 * sum(1 for m in model.modules() if type(m).__name__ == "AttentionBlock")
    convs = names("conv")
    every_conv = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs == every_conv - {"conv_in", "conv_out"}
    assert any(".skip" in n for n in convs) and any("conv1" in n for n in convs)
    mlp = names("mlp")
    assert {"time_mlp.0", "time_mlp.2"} <= mlp and all(n.startswith("time_mlp") or n.endswith("emb_proj") for n in mlp)


def test_cross_attention_projections_are_attn_targets(device):
    """Cross-attention blocks name their projections to_q/to_k/to_v/to_out too; k and v read the context."""
    model = random_unet(device=device, num_classes=3, conditioning="cross_attention", cross_attention_resolutions=[8])
    cross = [m for m in model.modules() if type(m).__name__ == "CrossAttentionBlock"]
    assert cross
    x, t = inputs(device=device)
    labels = torch.tensor([0, 2, 1]).to(device)
    with torch.no_grad():
        before = model(x, t, labels)
    names = inject(model, 4, 4.0, "attn")
    context_width = model.config.resolved_context_dim
    adapted_k = [lora_layers(model)[n] for n in names if n.endswith("to_k")]
    assert any(layer.in_features == context_width != layer.out_features for layer in adapted_k)
    assert len(names) == 4 * (len(cross) + sum(1 for m in model.modules() if type(m).__name__ == "AttentionBlock"))
    with torch.no_grad():
        assert_same(model(x, t, labels), before)
        randomize_adapters(model)
        assert not torch.equal(model(x, t, labels), before)


def test_merge_and_unmerge_match_in_fp32(device):
    model = random_unet(device=device)
    x, t = inputs(device=device)
    base = base_state(model)
    inject(model, 4, 8.0, ALL)
    randomize_adapters(model)
    set_scale(model, 0.7)
    with torch.no_grad():
        unmerged = model(x, t)
        merge(model)
        merged = model(x, t)
        for name, w in base_state(model).items():  # merging changed every adapted weight
            if name.rsplit(".", 1)[0] in lora_layers(model) and name.endswith("weight"):
                assert not torch.equal(w, base[name]), name
        unmerge(model)
        restored = model(x, t)
    diff = (merged - unmerged).abs().max().item()
    print(f"merged vs unmerged: max |diff| {diff:.2e}")
    assert diff < 1e-5
    worst = max((w - base[name]).abs().max().item() for name, w in base_state(model).items())
    assert worst < 1e-6, worst
    assert (restored - unmerged).abs().max() < 1e-5


def test_only_adapter_parameters_get_gradients(device):
    model = random_unet(device=device).train()
    inject(model, 4, 4.0, ALL)
    randomize_adapters(model)
    x, t = inputs(device=device)
    model(x, t).square().mean().backward()
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_bad_ranks_targets_and_convs_are_refused():
    with pytest.raises(DdpmkitError, match="rank must be a positive integer"):
        inject(random_unet(), 0, 1.0, "attn")
    with pytest.raises(DdpmkitError, match="rank must be a positive integer"):
        inject(random_unet(), -2, 1.0, "attn")
    # tiny: attention at 8 px, 16 channels; the time MLP's first Linear is 8 -> 32
    with pytest.raises(DdpmkitError, match=r"rank 17 is above the width of .*to_q \(Linear 16→16: at most rank 16"):
        inject(random_unet(), 17, 1.0, "attn")
    with pytest.raises(DdpmkitError, match=r"rank 9 is above the width of time_mlp.0 \(Linear 8→32"):
        inject(random_unet(), 9, 1.0, "mlp")
    with pytest.raises(DdpmkitError, match="unknown LoRA target 'ffn'; valid targets are attn, conv, mlp"):
        inject(random_unet(), 4, 1.0, "attn,ffn")
    model = random_unet()
    inject(model, 2, 1.0, "attn")
    with pytest.raises(DdpmkitError, match="already has LoRA adapters"):
        inject(model, 2, 1.0, "conv")
    with pytest.raises(DdpmkitError, match="dilation 1, groups 1"):
        LoRAConv2d(torch.nn.Conv2d(8, 8, 3, groups=2), 2, 2.0)


def test_adapter_is_a_small_fraction_of_the_base():
    """The exported file against the base's weights file, for the mnist UNet at rank 8."""
    ratios = {}
    for targets in ("attn", "attn,conv"):
        model = UNet(UNetConfig.named("mnist"))
        base_bytes = len(save({k: v.contiguous() for k, v in model.state_dict().items()}))
        inject(model, 8, 8.0, targets)
        ratios[targets] = len(save(lora_state_dict(model))) / base_bytes
    print("adapter / base file size, mnist UNet, rank 8: " + ", ".join(f"{k} {v:.2%}" for k, v in ratios.items()))
    assert ratios["attn"] < 0.02 and ratios["attn,conv"] < 0.15


# ----- training with the Trainer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A tiny base run (2 steps on synthetic 8x8 data): its checkpoint folder."""
    run = tmp_path_factory.mktemp("lora") / "base"
    Trainer(tiny_config(2, checkpoint_every=2), run, data=tiny_data(), progress=False).fit()
    return RunFolder(run).latest_checkpoint()


def lora_config(base: Path, steps: int, targets: str = ALL, **train):
    config = tiny_config(steps, **train)
    config.override([f"lora.base={base}", "lora.rank=4", "lora.alpha=4", f"lora.targets=[{targets}]"])
    return config


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_lora_training_leaves_the_base_bitwise_unchanged(base_run, tmp_path):
    files_before = file_bytes(base_run)
    tensors, state = load_checkpoint(base_run, names=("ema",))
    base_model = UNet(UNetConfig.from_dict(state["unet"]))
    base_model.load_state_dict(tensors["ema"])
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 50, (4,))

    trainer = Trainer(lora_config(base_run, 6, lr=1e-2), tmp_path / "lora", data=tiny_data(), progress=False)
    with torch.no_grad():
        assert torch.equal(trainer.model.eval()(x, t), base_model.eval()(x, t))  # starts exactly as the base
    start = {k: v.clone() for k, v in lora_state_dict(trainer.model).items()}
    trainer.fit()
    for model in (trainer.model, trainer.ema.model):
        for name, value in base_state(model).items():
            assert torch.equal(value, tensors["ema"][name]), name
    assert any(not torch.equal(v, start[k]) for k, v in lora_state_dict(trainer.model).items())
    assert file_bytes(base_run) == files_before
    # the optimizer holds only the adapters; the checkpoint says what the run adapts
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in trainer.model.named_parameters() if ".lora_" in n}
    assert len(trainer.ema._ema_params) == len(optimized)  # the EMA averages the adapters only
    _, state = load_checkpoint(RunFolder(tmp_path / "lora").latest_checkpoint())
    assert state["lora"]["rank"] == 4 and state["lora"]["base_fingerprint"] == trainer.lora.fingerprint

    # the adapter: the EMA's adapter weights only, a fraction of the base's file
    info, adapter = load_adapter(tmp_path / "lora")
    assert (info.rank, info.alpha, info.targets, info.step) == (4, 4.0, ALL.split(","), 6)
    assert info.base_fingerprint == model_fingerprint(base_model)
    ema_adapter = lora_state_dict(trainer.ema.model)
    assert adapter.keys() == ema_adapter.keys() and all(torch.equal(adapter[k], ema_adapter[k]) for k in adapter)
    ratio = (tmp_path / "lora" / ADAPTER_WEIGHTS).stat().st_size / (base_run / "ema.safetensors").stat().st_size
    print(f"tiny UNet, rank 4, {ALL}: adapter is {ratio:.1%} of the base's weights file")
    assert ratio < 1.0


def test_lora_resume_is_bitwise_exact(base_run, tmp_path):
    data, n = tiny_data(), 4
    config = lora_config(base_run, 2 * n, checkpoint_every=n, lr=1e-2)
    straight = Trainer(config, tmp_path / "a", data=data, progress=False)
    straight.fit()
    first = Trainer(config, tmp_path / "b", data=data, progress=False)
    first.fit(until=n)
    torch.manual_seed(12345)
    resumed = Trainer(config, tmp_path / "b", resume=tmp_path / "b", data=data, progress=False)
    assert resumed.step == n
    resumed.fit()
    for a, b in ((straight.model, resumed.model), (straight.ema.model, resumed.ema.model)):
        sa, sb = lora_state_dict(a), lora_state_dict(b)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (tmp_path / "a" / ADAPTER_WEIGHTS).read_bytes() == (tmp_path / "b" / ADAPTER_WEIGHTS).read_bytes()
    # the weights did train
    assert any(v.abs().sum() > 0 for k, v in lora_state_dict(straight.model).items() if k.endswith("lora_B"))


def test_resume_refuses_another_base(base_run, tmp_path):
    config = lora_config(base_run, 2, checkpoint_every=2)
    Trainer(config, tmp_path / "a", data=tiny_data(), progress=False).fit()
    other = tmp_path / "other"
    Trainer(tiny_config(1, checkpoint_every=1, seed=3), other, data=tiny_data(), progress=False).fit()
    config.lora.base = str(RunFolder(other).latest_checkpoint())
    with pytest.raises(DdpmkitError, match=r"adapts base sha256:\w{12} but .* is sha256:\w{12}"):
        Trainer(config, tmp_path / "a", resume=tmp_path / "a", data=tiny_data(), progress=False)


def test_the_adapter_export_is_a_hook_and_a_lora_checkpoint_resumes_only_as_one(base_run, tmp_path):
    """With every periodic hook replaced and an early stop, the adapter is still exported when fit returns; the
    checkpoint's RunInfo names the base; without lora.base the run refuses to resume a LoRA checkpoint."""
    config = lora_config(base_run, 4, checkpoint_every=2)
    trainer = Trainer(config, tmp_path / "a", data=tiny_data(), progress=False, hooks=[])
    trainer.fit(until=1)
    info, _ = load_adapter(tmp_path / "a")
    assert info.step == 1 and not RunFolder(tmp_path / "a").has_checkpoints()
    trainer.save_checkpoint()  # a checkpoint brings the adapter of its step along
    assert RunFolder(tmp_path / "a").info().lora["base_fingerprint"] == LoRABase.load(base_run).fingerprint
    config.lora.base = None
    with pytest.raises(DdpmkitError, match="is from a LoRA run"):
        Trainer(config, tmp_path / "a", resume=tmp_path / "a", data=tiny_data(), progress=False)


# ----- applying an adapter: Pipeline, merge, the fingerprint --------------------------------------------------

@pytest.fixture(scope="module")
def adapter_dir(base_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lora-adapter") / "lora"
    Trainer(lora_config(base_run, 3, lr=3e-2), run, data=tiny_data(), progress=False).fit()
    return run


def test_pipeline_applies_an_adapter_and_merge_writes_a_standalone_run(base_run, adapter_dir, tmp_path):
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([10, 40])
    run = lambda pipe: pipe.model(x, t)
    with torch.no_grad():
        base = run(Pipeline.from_run(base_run, device="cpu", precision="fp32"))
        adapted = run(Pipeline.from_run(base_run, device="cpu", precision="fp32", lora=adapter_dir))
        own = run(Pipeline.from_run(adapter_dir, device="cpu", precision="fp32"))  # the LoRA run's checkpoint
        zero = run(Pipeline.from_run(base_run, device="cpu", precision="fp32", lora=adapter_dir, lora_scale=0.0))
        merged_ckpt = merge_run(base_run, adapter_dir, tmp_path / "merged")
        merged = Pipeline.from_run(tmp_path / "merged", device="cpu", precision="fp32")
        assert not lora_layers(merged.model)
        out = run(merged)
    assert (adapted - base).abs().max() > 1e-6
    assert torch.equal(adapted, own) and torch.equal(zero, base)
    assert (out - adapted).abs().max() < 1e-5
    _, state = load_checkpoint(merged_ckpt)
    assert state["lora_merged"]["rank"] == 4 and (tmp_path / "merged" / "config.yaml").is_file()
    with pytest.raises(DdpmkitError, match="already holds a run"):
        merge_run(base_run, adapter_dir, tmp_path / "merged")


def test_an_adapter_for_another_base_is_refused_showing_both_fingerprints(adapter_dir, tmp_path):
    other = random_unet(seed=7, image_size=8)
    info, _ = load_adapter(adapter_dir)
    with pytest.raises(DdpmkitError) as caught:
        apply_adapter(other, adapter_dir)
    message = str(caught.value)
    assert f"sha256:{info.base_fingerprint[:12]}" in message and f"sha256:{model_fingerprint(other)[:12]}" in message
    assert "\n" not in message and not lora_layers(other)


def test_adapter_folders_without_json_or_safetensors_are_refused(adapter_dir, tmp_path):
    no_json = tmp_path / "no-json"
    no_json.mkdir()
    (no_json / ADAPTER_WEIGHTS).write_bytes((adapter_dir / ADAPTER_WEIGHTS).read_bytes())
    with pytest.raises(DdpmkitError, match="has no adapter.json"):
        load_adapter(no_json)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / ADAPTER_JSON).write_text((adapter_dir / ADAPTER_JSON).read_text())
    (pickled / "adapter.pt").write_bytes(pickle.dumps({"lora_A": [1.0]}))
    with pytest.raises(DdpmkitError, match=r"no adapter.safetensors \(found adapter.pt\).*never from pickle"):
        load_adapter(pickled)
    (pickled / ADAPTER_WEIGHTS).write_bytes(pickle.dumps({"lora_A": [1.0]}))  # a pickle posing as safetensors
    with pytest.raises(DdpmkitError, match="is not a safetensors file"):
        load_adapter(pickled)
    spec = json.loads((adapter_dir / ADAPTER_JSON).read_text())
    assert spec["layers"] == len(lora_state_dict_keys(adapter_dir)) // 2


def lora_state_dict_keys(folder: Path) -> list[str]:
    _, tensors = load_adapter(folder)
    return sorted(tensors)


def test_merge_stays_the_function_after_the_merge_command_is_loaded():
    """The module of ``ddpmkit lora merge`` once shared the name ``merge`` and, once imported, replaced the package's
    ``merge`` function with itself."""
    import ddpmkit.lora
    import ddpmkit.lora.cli
    import ddpmkit.lora.merged_run  # noqa: F401  (what the merge command imports)

    assert callable(ddpmkit.lora.merge) and ddpmkit.lora.merge.__module__ == "ddpmkit.lora.adapter"
