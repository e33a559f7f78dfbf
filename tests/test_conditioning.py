"""Conditioning: the cross-attention block against a direct computation, label tokens and the label embedding in
the UNet, label dropout, guidance on real UNets, the per-class grid and the guidance sweep of ``ddpmkit eval``."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.errors import DdpmkitError
from ddpmkit.models import UNet, UNetConfig
from ddpmkit.models.layers import CrossAttention, CrossAttentionBlock
from ddpmkit.pipeline import Pipeline
from ddpmkit.request import SampleRequest
from ddpmkit.sampling import NULL_LABEL, SAMPLERS


def _randomise(module: torch.nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """Zero-initialised output layers make a fresh block the identity: random weights make every check bite.
    Drawn on the CPU and copied to each parameter's device: the same weights on every device."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def test_cross_attention_equals_a_direct_computation_per_head(device):
    attn = CrossAttention(query_dim=8, context_dim=6, num_heads=2).to(device)
    _randomise(attn)
    u, c = torch.randn(3, 5, 8).to(device), torch.randn(3, 4, 6).to(device)
    q, k, v = u @ attn.to_q.weight.T, c @ attn.to_k.weight.T, c @ attn.to_v.weight.T
    heads = []
    for i in range(2):  # head i: channels [4i, 4i + 4)
        qi, ki, vi = (m[..., 4 * i:4 * i + 4] for m in (q, k, v))
        heads.append(torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(4), dim=-1) @ vi)
    expected = torch.cat(heads, dim=-1) @ attn.to_out.weight.T + attn.to_out.bias
    assert torch.allclose(attn(u, c), expected, atol=1e-5)


def test_cross_attention_block_starts_as_the_identity_and_takes_any_context_length(device):
    block = CrossAttentionBlock(channels=8, context_dim=6, num_heads=2, groups=4).to(device)
    x = torch.randn(2, 8, 5, 5).to(device)
    assert torch.equal(block(x, torch.randn(2, 3, 6).to(device)), x)  # proj_out starts at zero
    assert torch.equal(block(x, None), x)  # no context: nothing to attend to
    _randomise(block)
    outs = [block(x, torch.randn(2, length, 6).to(device)) for length in (1, 3, 17)]
    assert all(out.shape == x.shape for out in outs)
    assert not torch.allclose(outs[1], outs[2])
    # the Transformer pattern: x + proj_out(h + Attn(LN1 h) + FF(LN2 (h + Attn(LN1 h)))), h = proj_in(GN x) tokens
    context = torch.randn(2, 3, 6).to(device)
    tokens = block.proj_in(torch.nn.functional.group_norm(x, 4, block.norm.weight, block.norm.bias)
                           .flatten(2).transpose(1, 2))
    tokens = tokens + block.attn(block.norm1(tokens), context)
    tokens = tokens + block.ff(block.norm2(tokens))
    expected = x + block.proj_out(tokens).transpose(1, 2).reshape(x.shape)
    assert torch.allclose(block(x, context), expected, atol=1e-5)


def test_one_context_token_makes_attention_blind_to_the_query_which_is_why_labels_get_several(device):
    attn = CrossAttention(8, 6, 2).to(device)
    _randomise(attn)
    one = torch.randn(1, 1, 6).to(device)
    out = attn(torch.randn(1, 5, 8).to(device), one)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)  # every query gets the same vector
    four = torch.randn(1, 4, 6).to(device)
    out = attn(torch.randn(1, 5, 8).to(device), four)
    assert not torch.allclose(out, out[:, :1].expand_as(out), atol=1e-3)


def _unet(device: torch.device | str = "cpu", **kw) -> UNet:
    config = UNetConfig.named("tiny", num_classes=3, **kw)
    model = UNet(config).to(device).eval()
    _randomise(model, std=0.2)
    return model


@pytest.mark.parametrize("conditioning", ["embedding", "cross_attention", "both"])
def test_each_conditioning_uses_the_labels_and_the_null_class(conditioning, device):
    kw = {} if conditioning == "embedding" else {"cross_attention_resolutions": [8]}
    model = _unet(device, conditioning=conditioning, **kw)
    assert (model.label_emb is not None) == (conditioning != "cross_attention")
    assert (model.label_tokens is not None) == (conditioning != "embedding")
    x, t = torch.randn(3, 1, 16, 16).to(device), torch.tensor([5, 50, 500]).to(device)
    with torch.no_grad():
        by_label = [model(x, t, torch.full((3,), k, device=device)) for k in range(3)]
        assert not torch.allclose(by_label[0], by_label[1]) and not torch.allclose(by_label[1], by_label[2])
        null = torch.full((3,), NULL_LABEL, device=device)
        assert torch.equal(model(x, t, null), model(x, t, None))  # -1 is the null class


def test_cross_attention_placement_parameters_and_state_dict_names():
    plain = UNet(UNetConfig.named("tiny", num_classes=3))
    cross = UNet(UNetConfig.named("tiny", num_classes=3, conditioning="cross_attention",
                                  cross_attention_resolutions=[8]))
    blocks = [name for name, m in cross.named_modules() if isinstance(m, CrossAttentionBlock)]
    # tiny: levels 16 and 8; the 8x8 level has 1 encoder and 2 decoder blocks, and the middle block is at 8x8 too
    assert len(blocks) == 4 and any(name.startswith("mid.") for name in blocks)
    names = cross.state_dict()
    assert "label_tokens.embedding.weight" in names and "label_emb.embedding.weight" not in names
    assert cross.label_tokens.embedding.weight.shape == (4, 4 * 32)  # 3 classes + null, 4 tokens of 4*base
    assert sum(p.numel() for p in cross.parameters()) > sum(p.numel() for p in plain.parameters())


def test_any_context_plugs_in_after_the_label_tokens(device):
    model = _unet(device, conditioning="cross_attention", cross_attention_resolutions=[8], context_dim=12)
    x, t, labels = (v.to(device) for v in (torch.randn(2, 1, 16, 16), torch.tensor([3, 300]), torch.tensor([0, 2])))
    with torch.no_grad():
        text = torch.randn(2, 7, 12).to(device)  # e.g. text-encoder tokens
        out = model(x, t, labels, context=text)
        assert out.shape == x.shape and not torch.allclose(out, model(x, t, labels))
        with pytest.raises(DdpmkitError, match=r"context must have shape \(2, L, 12\)"):
            model(x, t, labels, context=torch.randn(2, 7, 5).to(device))
    # an unconditional UNet with cross-attention takes contexts alone
    free = UNet(UNetConfig.named("tiny", cross_attention_resolutions=[8], context_dim=12)).to(device).eval()
    _randomise(free)
    with torch.no_grad():
        assert not torch.allclose(free(x, t, context=text), free(x, t, context=torch.randn(2, 7, 12).to(device)))
    with pytest.raises(DdpmkitError, match="without cross-attention"):
        UNet(UNetConfig.named("tiny")).to(device)(x, t, context=text)


def test_config_errors_name_the_fix():
    with pytest.raises(DdpmkitError, match="needs cross_attention_resolutions, e.g. \\[8\\]"):
        UNetConfig.named("tiny", num_classes=3, conditioning="cross_attention")
    with pytest.raises(DdpmkitError, match="conditioning='words' is unknown"):
        UNetConfig.named("tiny", num_classes=3, conditioning="words")
    with pytest.raises(DdpmkitError, match=r"attention resolutions \[5\] match no level"):
        UNetConfig.named("tiny", cross_attention_resolutions=[5])


def test_label_dropout_is_one_draw_shared_by_the_embedding_and_the_tokens(device):
    model = _unet(device, conditioning="both", cross_attention_resolutions=[8], class_dropout_prob=1.0)
    x, t, labels = (v.to(device) for v in (torch.randn(4, 1, 16, 16), torch.full((4,), 100),
                                           torch.tensor([0, 1, 2, 0])))

    def draw(seed: int) -> torch.Tensor:
        """The model's single dropout draw after ``torch.manual_seed(seed)``: uniform on the labels' device."""
        torch.manual_seed(seed)
        return torch.rand(4, device=device) < 0.5

    model.train()
    with torch.no_grad():
        dropped = model(x, t, labels)
        model.eval()
        assert torch.allclose(dropped, model(x, t, None), atol=1e-6)  # p = 1: every label is the null class
        model.train()
        model.label_emb.dropout_prob = model.label_tokens.dropout_prob = 0.5
        # the first seed whose draw drops some labels and keeps others (0 on the CPU; each device has its own RNG)
        seed = next(s for s in range(100) if 0 < draw(s).sum() < 4)
        torch.manual_seed(seed)
        mixed = model(x, t, labels)
        mask = draw(seed)  # the same single draw the model makes
        model.eval()
        expected = model(x, t, torch.where(mask, torch.full_like(labels, NULL_LABEL), labels))
    assert 0 < mask.sum() < 4 and torch.allclose(mixed, expected, atol=1e-6)
    assert UNetConfig().class_dropout_prob == 0.1  # the classifier-free guidance default


def test_guidance_on_a_cross_attention_unet(tmp_path, device):
    from ddpmkit.diffusion import Diffusion
    from ddpmkit.sampling import sample
    from ddpmkit.schedule import NoiseSchedule

    model = _unet(device, conditioning="cross_attention", cross_attention_resolutions=[8])
    d = Diffusion(NoiseSchedule.cosine(100), prediction="v")
    labels = torch.tensor([0, 1, 2])  # on the CPU, as callers pass them: sample moves the condition to the model

    def run(**kw):
        with torch.no_grad():
            return sample(model, d, (3, 1, 16, 16), steps=4, sampler="dpm++2m",
                          generator=torch.Generator().manual_seed(0), **kw)

    cond = run(model_kwargs={"labels": labels})
    null = run(model_kwargs={"labels": torch.full((3,), NULL_LABEL)})
    assert torch.equal(run(model_kwargs={"labels": labels}, guidance=1.0), cond)
    assert torch.equal(run(model_kwargs={"labels": labels}, guidance=0.0), null)  # w = 0: the null pass alone
    guided = run(model_kwargs={"labels": labels}, guidance=3.0)
    assert not torch.allclose(guided, cond, atol=1e-3)


# ----- the command line -------------------------------------------------------------------------------------

TINY = ["--preset", "tiny", "--data", "digits", "--no-progress", "--device", "cpu", "--steps", "2"]


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("cond")
    assert main(["train", *TINY, "--out", str(root / "cross"), "--set", "model.class_conditional=true",
                 "--set", "model.overrides.conditioning=cross_attention",
                 "--set", "model.overrides.cross_attention_resolutions=[8]"]) == 0
    return root / "cross"


def _cli(args):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def test_per_class_grid_has_one_labelled_row_per_class(cond_run, tmp_path):
    pipe = Pipeline.from_run(cond_run, device="cpu")
    assert pipe.model.config.conditioning == "cross_attention" and pipe.num_classes == 10
    code, out, err = _cli(["sample", str(cond_run), "--per-class", "3", "--steps", "2", "--guidance", "2",
                           "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each")])
    assert code == 0, err
    assert "30 images" in out and len(list((tmp_path / "each").iterdir())) == 30
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    plain = np.asarray(pipe.generate(30, sampler="ddim", steps=2, seed=0, batch_size=256, guidance=2.0,
                                     labels=[k for k in range(10) for _ in range(3)]))
    unlabelled = np.asarray(_grid(plain, nrow=3))
    assert grid.shape[0] == unlabelled.shape[0] and grid.shape[1] > unlabelled.shape[1]  # a label margin
    margin = grid.shape[1] - unlabelled.shape[1]
    assert np.array_equal(grid[:, margin:], unlabelled)  # the images are exactly those of the labels, row by row
    assert grid[:, :margin].max() == 255  # the row labels are written in the margin


def test_sample_without_labels_draws_every_class_in_turn(cond_run, tmp_path):
    """No --labels on a conditional run: labels 0..9 in turn, class k in column k (not the null label alone)."""
    pipe = Pipeline.from_run(cond_run, device="cpu")
    code, out, err = _cli(["sample", str(cond_run), "--num", "20", "--steps", "2", "--out", str(tmp_path / "g.png")])
    assert code == 0, err
    assert "class-balanced labels 0..9" in out
    balanced = pipe.generate(20, sampler="ddim", steps=2, seed=0, labels=[i % 10 for i in range(20)])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), _grid(balanced, nrow=10))
    null = pipe.generate(20, sampler="ddim", steps=2, seed=0, labels=[i % 10 for i in range(20)], guidance=0.0)
    as_float = dict(sampler="ddim", steps=2, seed=0, labels=[i % 10 for i in range(20)], return_tensor=True)
    assert not torch.equal(pipe.generate(20, **as_float), pipe.generate(20, guidance=0.0, **as_float))
    code, out, err = _cli(["sample", str(cond_run), "--num", "20", "--steps", "2", "--guidance", "0",
                           "--out", str(tmp_path / "free.png")])
    assert code == 0, err  # guidance 0 (the unconditional model) no longer needs labels to be named
    assert np.array_equal(np.asarray(Image.open(tmp_path / "free.png")), _grid(null, nrow=10))


def _grid(images, nrow):
    from ddpmkit.viz import grid_image

    return grid_image(images, nrow=nrow)


@pytest.mark.parametrize("args, message", [
    (["--per-class", "0"], "--per-class must be at least 1"),
    (["--per-class", "2", "--labels", "1"], "drop --labels"),
    (["--guidance", "-1", "--labels", "1"], "--guidance must be a finite number >= 0"),
    (["--labels", "10"], "labels must be 1 or 64 values in 0..9"),
])
def test_conditional_sampling_refuses_bad_input_in_one_line(cond_run, tmp_path, args, message):
    code, out, err = _cli(["sample", str(cond_run), *args, "--out", str(tmp_path / "g.png")])
    assert code == 2 and message in err and err.count("\n") == 1 and out == ""
    assert not (tmp_path / "g.png").exists()


def test_eval_sweeps_guidance_with_the_accuracy_of_the_requested_label(cond_run, tmp_path, monkeypatch):
    """The sweep's rows carry the guidance scale; accuracy is measured against the labels that were requested."""
    from ddpmkit.eval import classifier, sweep
    from ddpmkit.eval import evaluate as evaluate_module

    seen = []

    def fake_score(images, references, metrics, *, labels=None, **kw):
        seen.append(labels.copy())
        return {"num": len(images), "class_accuracy": float(np.mean(labels == 0))}

    monkeypatch.setattr(sweep, "score_images", fake_score)
    monkeypatch.setattr(classifier, "MnistClassifier", lambda *a, **k: object())  # no weights needed
    asked = []
    original = Pipeline.generate

    def spy(self, request, **kw):
        asked.append(request.guidance)  # evaluate_run passes one resolved SampleRequest per row
        return original(self, request, **kw)

    monkeypatch.setattr(Pipeline, "generate", spy)
    result = evaluate_module.evaluate_run(cond_run, samplers=["dpm++2m"], steps=[2], num=20, guidance=[0, 1, 3],
                                          metrics=["classes"], out=tmp_path / "eval", progress=False, device="cpu")
    assert [r["guidance"] for r in result.rows] == [0, 1, 3] and asked == [0, 1, 3]  # reaches the sampler
    assert all(np.array_equal(labels, np.arange(20) % 10) for labels in seen)  # class-balanced requests
    assert "| steps | guidance | NFE |" in result.markdown
    rows = json.loads((tmp_path / "eval" / "sweep.json").read_text())
    assert [r["guidance"] for r in rows] == [0, 1, 3] and (tmp_path / "eval" / "sweep.png").exists()


def test_eval_refuses_guidance_on_an_unconditional_run_and_negative_scales(cond_run, tmp_path):
    code, _, err = _cli(["eval", str(cond_run), "--guidance", "1,-2", "--num", "4", "--out", str(tmp_path / "e")])
    assert code == 2 and "--guidance must be a finite number >= 0" in err
    plain = tmp_path / "plain"
    assert main(["train", *TINY, "--out", str(plain)]) == 0
    code, _, err = _cli(["eval", str(plain), "--guidance", "2", "--num", "4", "--out", str(tmp_path / "e")])
    assert code == 2 and "unconditional run: --guidance needs a class-conditional model" in err
    assert not (tmp_path / "e").exists()


def test_a_folder_of_class_sub_folders_trains_a_conditional_model(tmp_path):
    """Any labelled data can be made conditional with --set: for folder data, the sub-folders are the classes."""
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    code, out, err = _cli(["train", "--preset", "tiny", "--data", f"folder:{tmp_path / 'data'}", "--steps", "2",
                           "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"), "--batch-size", "4",
                           "--set", "model.class_conditional=true", "--set", "data.image_size=8"])
    assert code == 0, err
    pipe = Pipeline.from_run(tmp_path / "run", device="cpu")
    assert pipe.num_classes == 2 and pipe.class_names == ["cats", "dogs"]
    code, out, err = _cli(["sample", str(tmp_path / "run"), "--per-class", "2", "--steps", "2",
                           "--out", str(tmp_path / "grid.png")])
    assert code == 0 and "4 images" in out, err


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_works_with_every_sampler(sampler, device):
    """w = 1 is the conditional model and w = 0 the unconditional one, exactly, whatever the sampler."""
    from ddpmkit.diffusion import Diffusion
    from ddpmkit.sampling import sample
    from ddpmkit.schedule import NoiseSchedule

    d = Diffusion(NoiseSchedule.cosine(40), prediction="v")
    labels = torch.tensor([1, 3])

    def model(x, t, labels):
        shift = torch.where(labels == NULL_LABEL, 7, labels).float().reshape(-1, 1, 1, 1)
        return torch.tanh(x) * 0.5 + 0.1 * shift

    def run(**kw):
        return sample(model, d, (2, 1, 3, 3), sampler=sampler, steps=6, generator=torch.Generator().manual_seed(0),
                      device=device, **kw)

    cond, null = run(model_kwargs={"labels": labels}), run(model_kwargs={"labels": torch.full_like(labels, -1)})
    assert torch.equal(run(model_kwargs={"labels": labels}, guidance=1.0), cond)
    assert torch.equal(run(model_kwargs={"labels": labels}, guidance=0.0), null)
    strong = run(model_kwargs={"labels": labels}, guidance=4.0)
    assert not torch.allclose(strong, cond) and torch.isfinite(strong).all()


def test_a_checkpoint_from_before_cross_attention_resumes_and_takes_adapters(tmp_path):
    """Older state.json files lack the new UNet fields and trained conditional models without label dropout."""
    from ddpmkit.lora import model_fingerprint
    from ddpmkit.training.lora import LoRABase

    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")
    run = tmp_path / "old"
    assert main(["train", *TINY, "--out", str(run), "--set", "model.class_conditional=true",
                 "--set", "train.sample_every=2"]) == 0
    state_file = next((run / "checkpoints").iterdir()) / "state.json"
    state = json.loads(state_file.read_text())
    for key in ("conditioning", "cross_attention_resolutions", "context_dim", "label_tokens"):
        del state["unet"][key]
    state["unet"]["class_dropout_prob"] = 0.0  # the old default
    state_file.write_text(json.dumps(state))
    code, out, err = _cli(["train", "--resume", str(run), "--steps", "4", "--no-progress", "--device", "cpu"])
    assert code == 0, err
    resumed = json.loads((run / "checkpoints" / "step_0000004" / "state.json").read_text())
    assert resumed["unet"]["class_dropout_prob"] == 0.0  # it keeps training as it was trained
    # the fingerprint of the stored checkpoint equals that of the model it loads into
    base = LoRABase.load(state_file.parent)
    assert base.fingerprint == model_fingerprint(Pipeline.from_run(state_file.parent, device="cpu").model)


def test_pipeline_generate_without_labels_draws_every_class_in_turn(cond_run):
    """The Python API matches `ddpmkit sample`: no labels on a conditional run is 0..9 in turn, not the null class."""
    pipe = Pipeline.from_run(cond_run, device="cpu")
    as_float = dict(sampler="ddim", steps=2, seed=0, return_tensor=True)
    default = pipe.generate(12, **as_float)
    assert pipe.resolve(SampleRequest(num=12)).labels == (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1)
    assert torch.equal(default, pipe.generate(12, labels=[i % 10 for i in range(12)], **as_float))
    assert not torch.equal(default, pipe.generate(12, labels=[3] * 12, **as_float))
