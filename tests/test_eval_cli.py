"""`ddpmkit eval` and `evaluate_run` end to end on a tiny run: the steps-versus-quality table, JSON and plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_cached
from test_eval import _frechet_by_eigh

from ddpmkit.cli import main
from ddpmkit.errors import DdpmkitError

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("evalrun") / "run"
    assert main(["train", "--preset", "tiny", "--data", "digits", "--no-progress", "--device", "cpu", "--out", str(run),
                 "--steps", "4", "--set", "train.sample_every=100"]) == 0
    return run


def _samples(run, num: int, sampler: str, steps: int) -> np.ndarray:
    """The images evaluate_run scores for one setting (seed 0), generated here without the sweep code."""
    from ddpmkit.pipeline import Pipeline

    pipe = Pipeline.from_run(run, device="cpu", precision="fp32")
    assert pipe.num_classes is None  # the tiny preset is unconditional: no labels to pass
    return pipe.generate(num, sampler=sampler, steps=steps, seed=0)


def _digits(start: int, stop: int) -> np.ndarray:
    """Real images as the reference sees them: digits (no test split -> train), resized to the run's 16 px."""
    from ddpmkit.data import load_dataset

    return load_dataset("digits", "train", image_size=16, progress=False).images[start:stop]


@pytest.mark.slow
def test_eval_sweep_writes_table_json_and_plot(tiny_run, capsys):
    from ddpmkit.eval import InceptionFeatures, MnistClassifier, fid_from_features, gaussian_stats
    from ddpmkit.eval.classifier import classifier_is_cached
    from ddpmkit.eval.inception import inception_is_cached

    require_cached(inception_is_cached() and classifier_is_cached(), "Inception and MNIST-classifier weights",
                   "ddpmkit eval fetch")
    code = main(["eval", str(tiny_run), "--num", "4", "--ref-num", "8", "--sampler", "ddim,dpm++2m",
                 "--steps", "2,3", "--metrics", "fid,kid,cfid,classes", "--device", "cpu", "--precision", "fp32"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "| ddim" in out and "| dpm++2m" in out
    assert "| sampler | steps | NFE | seconds | images/s | FID |" in out
    report = tiny_run / "eval"
    rows = json.loads((report / "sweep.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 2), ("ddim", 3), ("dpm++2m", 2), ("dpm++2m", 3)]
    for row in rows:
        assert row["num"] == 4 and row["ref_n"] == 8 and row["nfe"] == row["steps"]
        assert row["ref"] == "digits:train"  # no test split: the train images are the reference
        assert row["images_per_s"] == pytest.approx(row["num"] / row["seconds"])
        assert sum(row["class_counts"]) == 4
    assert (report / "sweep.md").exists() and (report / "sweep.png").exists()

    # The FID in the table is the FID of the setting's images against the first 8 reference images, recomputed
    # here from scratch by another route (eigendecompositions; one 2048-d FID costs seconds on 1 thread, so one
    # Inception row is checked; the classifier rows all are).
    inception, classifier = InceptionFeatures(), MnistClassifier()
    images, real = _samples(tiny_run, 4, "ddim", 2), _digits(0, 8)
    stats = gaussian_stats(inception(images, progress=False)) + gaussian_stats(inception(real, progress=False))
    assert rows[0]["fid"] == pytest.approx(_frechet_by_eigh(*stats), rel=1e-6)
    reference = classifier(real, progress=False)
    for row in rows:
        images = _samples(tiny_run, 4, row["sampler"], row["steps"])
        assert row["cfid"] == pytest.approx(fid_from_features(classifier(images, progress=False), reference),
                                            rel=1e-6)
    # A 4-step model draws noise: real digits not in the reference score far better on the same scale.
    assert fid_from_features(classifier(_digits(8, 12), progress=False), reference) < rows[0]["cfid"] / 3


def test_evaluate_run_writes_into_the_run_folder(tiny_run):
    from ddpmkit.eval import MnistClassifier, evaluate_run, fid_from_features
    from ddpmkit.eval.classifier import classifier_is_cached

    require_cached(classifier_is_cached(), "MNIST-classifier weights", "ddpmkit eval fetch")
    checkpoint = sorted((tiny_run / "checkpoints").iterdir())[-1]
    result = evaluate_run(checkpoint, samplers=("ddim",), steps=(2,), num=6, ref_num=8,
                          metrics=("cfid", "classes"), device="cpu", precision="fp32", progress=False)
    assert result.paths["json"] == tiny_run / "eval" / "sweep.json"  # a checkpoint's run folder, not beside it
    assert json.loads(result.paths["json"].read_text()) == json.loads(json.dumps(result.rows))
    (row,) = result.rows
    assert (row["sampler"], row["steps"], row["nfe"], row["num"], row["cfid_ref_n"]) == ("ddim", 2, 2, 6, 8)
    assert "fid" not in row and "kid_mean" not in row  # only the metrics asked for
    classifier = MnistClassifier()
    expected = fid_from_features(classifier(_samples(tiny_run, 6, "ddim", 2), progress=False),
                                 classifier(_digits(0, 8), progress=False))
    assert row["cfid"] == pytest.approx(expected, rel=1e-6)
    assert sum(row["class_counts"]) == 6 and row["class_entropy"] == pytest.approx(
        -sum(p * np.log(p) for p in row["class_shares"] if p > 0), abs=1e-5)
    assert "| ddim | 2 | 2 |" in result.markdown

    elsewhere = evaluate_run(tiny_run, samplers=("ddim",), steps=(2,), num=6, ref_num=8, metrics=("classes",),
                             device="cpu", out=tiny_run.parent / "elsewhere", progress=False)
    assert elsewhere.paths["markdown"] == tiny_run.parent / "elsewhere" / "sweep.md"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"samplers": ("euler",)}, "unknown sampler"),
    ({"steps": (2, 500)}, "the model's T"),
    ({"steps": (0,)}, "between 1 and"),
    ({"eta": 1.5}, "eta must be in"),
    ({"metrics": ("fid", "is")}, "unknown metrics"),
    ({"ref_split": "val"}, "unknown reference split"),
    ({"num": 1}, "at least 2"),
])
def test_evaluate_run_checks_arguments_before_loading_anything(tiny_run, monkeypatch, kwargs, message):
    from ddpmkit.eval import evaluate_run, reference
    from ddpmkit.pipeline import Pipeline

    def loaded(*args, **kw):
        raise AssertionError("weights or reference statistics were loaded before the arguments were checked")

    monkeypatch.setattr(Pipeline, "from_run", loaded)
    monkeypatch.setattr(reference, "reference_stats", loaded)
    with pytest.raises(DdpmkitError, match=message):
        evaluate_run(tiny_run, **{"steps": (2,), "device": "cpu", "progress": False, **kwargs})


def test_eval_bad_input(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--sampler", "euler"]) == 2
    assert "unknown sampler" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--steps", "5,x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["eval", str(tiny_run), "--steps", "500"]) == 2
    assert "the model's T" in capsys.readouterr().err


def test_data_command_through_main(capsys):
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ["mnist", "fashion-mnist", "pokemon", "emoji", "digits"]:
        assert name in listing
    assert main(["data", "show", "nope"]) == 2


def test_eval_nll_is_the_bound_of_the_runs_model_on_held_out_images(tiny_run, capsys):
    import math

    import torch

    from ddpmkit.eval.nll import evaluate_nll
    from ddpmkit.pipeline import Pipeline
    from ddpmkit.sampling import timestep_spacing

    result, paths = evaluate_nll(tiny_run, num=4, steps=5, batch_size=4, seed=3, device="cpu", progress=False)
    pipe = Pipeline.from_run(tiny_run, device="cpu", precision="fp32")
    process = pipe.diffusion.respace(timestep_spacing(pipe.diffusion.num_steps, 5, "linspace"))
    x0 = torch.from_numpy(_digits(0, 4)).permute(0, 3, 1, 2).double() / 127.5 - 1  # digits has no test split
    total, terms, prior = process.bits_per_dim(lambda x, t: pipe.model(x, t), x0.float(),
                                               torch.Generator().manual_seed(3))
    assert result.split == "train" and result.num == 4 and result.num_terms == 6  # 5 L_t and the prior
    assert result.bits_per_dim == pytest.approx(total.mean().item(), rel=1e-6)
    assert result.standard_error == pytest.approx(total.std().item() / math.sqrt(4), rel=1e-5)
    assert result.term_bits_per_dim == pytest.approx(terms.mean(0).tolist(), rel=1e-6)
    assert result.term_timesteps == process.timesteps.tolist() and result.term_timesteps[0] == 0
    # a 4-step model predicts ε ≈ 0, so x̂_0 = x_t/√ᾱ_t explodes near T: a huge, but finite, bound
    assert 0 < result.bits_per_dim < float("inf")
    saved = json.loads(paths["json"].read_text())
    assert saved["bits_per_dim"] == result.bits_per_dim and paths["plot"].stat().st_size > 0
    assert main(["eval", str(tiny_run), "--nll", "--num", "3", "--nll-steps", "3", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| digits:train | 3 | 4 |" in out and "bits/dim" in out
    saved = json.loads(paths["json"].read_text())
    process3 = pipe.diffusion.respace(timestep_spacing(pipe.diffusion.num_steps, 3, "linspace"))
    generator = torch.Generator().manual_seed(0)  # batches of 2 then 1, one generator in that order
    batches = [process3.bits_per_dim(lambda x, t: pipe.model(x, t), x0[a:b].float(), generator)[0]
               for a, b in ((0, 2), (2, 3))]
    assert saved["num"] == 3 and saved["bits_per_dim"] == pytest.approx(torch.cat(batches).mean().item(), rel=1e-6)


def test_eval_nll_arguments_are_checked(tiny_run):
    from ddpmkit.eval.nll import evaluate_nll

    with pytest.raises(DdpmkitError, match="--num must be at least 2"):
        evaluate_nll(tiny_run, num=1)
    with pytest.raises(DdpmkitError, match="--nll-steps must be between 2 and 100"):
        evaluate_nll(tiny_run, num=2, steps=1000, progress=False)
    with pytest.raises(DdpmkitError, match="fewer than --num"):
        evaluate_nll(tiny_run, num=10**6, steps=2, progress=False)


def test_sweep_samplers_can_name_their_timestep_spacing(tiny_run):
    from ddpmkit.eval import evaluate_run
    from ddpmkit.eval.classifier import classifier_is_cached
    from ddpmkit.pipeline import Pipeline

    require_cached(classifier_is_cached(), "MNIST-classifier weights", "ddpmkit eval fetch")
    result = evaluate_run(tiny_run, samplers=("dpm++2m:karras", "dpm++3m"), steps=(4,), num=4, ref_num=8,
                          metrics=("classes",), device="cpu", precision="fp32", progress=False,
                          out=tiny_run.parent / "spacing")
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in result.rows] == [("dpm++2m:karras", 4, 4), ("dpm++3m", 4, 4)]
    pipe = Pipeline.from_run(tiny_run, device="cpu", precision="fp32")
    karras = pipe.generate(4, sampler="dpm++2m", steps=4, spacing="karras", seed=0)
    trailing = pipe.generate(4, sampler="dpm++2m", steps=4, seed=0)
    assert not np.array_equal(karras, trailing)  # the spacing reaches the sampler
    with pytest.raises(DdpmkitError, match="unknown timestep spacing 'bogus'"):
        evaluate_run(tiny_run, samplers=("ddim:bogus",), steps=(4,), num=4, ref_num=8, metrics=("classes",))
