"""A preset can name the timestep spacing of its sampler (train.sample_spacing): the training grids, Pipeline.generate,
`ddpmkit sample` and `ddpmkit eval` use it for that sampler whenever the caller names no spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require_cached
from PIL import Image

from ddpmkit import Diffusion, NoiseSchedule, RunInfo, UNetConfig
from ddpmkit.cli import main
from ddpmkit.config import RunConfig
from ddpmkit.pipeline import Pipeline
from ddpmkit.request import SampleRequest
from ddpmkit.viz import to_uint8

TRAIN = ["train", "--preset", "tiny", "--data", "digits", "--no-progress", "--device", "cpu", "--steps", "2"]


@pytest.fixture(scope="module")
def linspace_run(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")
    run = tmp_path_factory.mktemp("spacing") / "run"
    assert main([*TRAIN, "--out", str(run), "--set", "train.sample_spacing=linspace"]) == 0
    return run


def info(train: dict | None) -> RunInfo:
    config = None if train is None else RunConfig.from_dict({"train": train})
    return RunInfo(UNetConfig.named("tiny"), Diffusion(NoiseSchedule.cosine(100)), config=config)


def test_run_info_reads_the_grids_sampler_from_the_config():
    assert info({"sample_sampler": "ddpm", "sample_steps": 50, "sample_spacing": "linspace"}).sampler == \
        ("ddpm", 50, "linspace")
    assert info({"sample_sampler": "ddim", "sample_steps": 10}).sampler == ("ddim", 10, None)
    assert info(None).sampler == ("ddim", None, None)  # a checkpoint without a config: DDIM's own defaults


def settings(pipe: Pipeline, sampler: str | None = None, steps: int | None = None, spacing: str | None = None):
    return pipe.resolve(SampleRequest(num=1, sampler=sampler, steps=steps, spacing=spacing)).settings


def test_the_pipeline_samples_the_runs_sampler_with_its_spacing(linspace_run):
    pipe = Pipeline.from_run(linspace_run, device="cpu", precision="fp32")
    assert settings(pipe, "ddim").spacing == "linspace"
    assert settings(pipe, "ddim", spacing="trailing").spacing == "trailing"  # the caller's choice wins
    assert settings(pipe, "dpm++2m").spacing == "trailing"  # another sampler keeps its own default
    assert settings(pipe, "dpm++2m").steps == 20
    assert settings(pipe).steps == 10 == settings(pipe, "ddim").steps  # the tiny grids: DDIM-10
    assert settings(pipe, "ddim", 7).steps == 7
    default = pipe.generate(4, steps=5, return_tensor=True)
    assert torch.equal(default, pipe.generate(4, steps=5, spacing="linspace", return_tensor=True))
    # linspace(0, 999, 5) = 0, 250, 500, 749, 999 against trailing's 999, 799, 599, 399, 199: other images
    assert not torch.equal(default, pipe.generate(4, steps=5, spacing="trailing", return_tensor=True))


def test_sample_uses_the_runs_spacing_and_says_so(linspace_run, tmp_path, capsys):
    pipe = Pipeline.from_run(linspace_run, device="cpu", precision="fp32")
    expected = to_uint8(pipe.generate(2, steps=5, spacing="linspace", return_tensor=True))
    assert main(["sample", str(linspace_run), "--num", "2", "--steps", "5", "--out", str(tmp_path / "grid.png"),
                 "--individual", str(tmp_path / "each"), "--device", "cpu", "--precision", "fp32"]) == 0
    assert "ddim, 5 steps, linspace spacing" in capsys.readouterr().out
    first = np.asarray(Image.open(tmp_path / "each" / "00000.png"))
    assert np.array_equal(first, expected[0, :, :, 0])


def test_eval_labels_the_runs_spacing_beside_an_explicit_one(linspace_run):
    from ddpmkit.eval import evaluate_run
    from ddpmkit.eval.classifier import classifier_is_cached

    require_cached(classifier_is_cached(), "MNIST-classifier weights", "ddpmkit eval fetch")
    result = evaluate_run(linspace_run, samplers=("ddim", "ddim:trailing", "dpm++2m"), steps=(4,), num=4, ref_num=8,
                          metrics=("classes",), device="cpu", precision="fp32", progress=False,
                          out=linspace_run.parent / "eval")
    assert [r["sampler"] for r in result.rows] == ["ddim:linspace", "ddim:trailing", "dpm++2m"]


def test_training_grids_use_the_spacing(tmp_path, monkeypatch):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")
    import ddpmkit.training.trainer as trainer

    seen = []
    real_sample = trainer.sample

    def recording_sample(*args, **kwargs):
        seen.append((kwargs.get("sampler"), kwargs.get("spacing")))
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(trainer, "sample", recording_sample)
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--set", "train.sample_spacing=linspace",
                 "--set", "train.sample_every=1", "--set", "train.num_samples=2", "--set", "train.sample_steps=3"]) == 0
    assert seen and set(seen) == {("ddim", "linspace")}


def test_a_bad_spacing_fails_before_training(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--set", "train.sample_spacing=bogus"]) == 2
    err = capsys.readouterr().err
    assert "train.sample_sampler/sample_steps/sample_spacing" in err and "unknown timestep spacing 'bogus'" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
