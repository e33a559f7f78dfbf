"""A conditional preset can recommend a classifier-free guidance scale (train.sample_guidance): the training grids,
Pipeline.generate, `ddpmkit sample` and `ddpmkit eval` use it whenever the caller names no guidance."""

from __future__ import annotations

import pytest
import torch
from conftest import require_cached

from ddpmkit import Diffusion, NoiseSchedule, RunInfo, UNetConfig
from ddpmkit.cli import main
from ddpmkit.config import RunConfig
from ddpmkit.pipeline import Pipeline

TRAIN = ["train", "--preset", "tiny", "--data", "digits", "--no-progress", "--device", "cpu", "--steps", "2",
         "--set", "model.class_conditional=true"]


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")
    run = tmp_path_factory.mktemp("guidance") / "run"
    assert main([*TRAIN, "--out", str(run), "--set", "train.sample_guidance=2.5"]) == 0
    return run


def test_run_info_reads_the_recommended_guidance():
    def info(config: RunConfig | None) -> RunInfo:
        return RunInfo(UNetConfig.named("tiny"), Diffusion(NoiseSchedule.cosine(100)), config=config)

    assert info(RunConfig.from_dict({"train": {"sample_guidance": 1.5}})).guidance == 1.5
    assert info(RunConfig.from_dict({"train": {}})).guidance == 1.0
    assert info(None).guidance == 1.0  # a checkpoint without a config: no guidance


def test_the_pipeline_guides_as_the_run_recommends(guided_run):
    pipe = Pipeline.from_run(guided_run, device="cpu", precision="fp32")
    default = pipe.generate(4, steps=3, return_tensor=True)
    assert torch.equal(default, pipe.generate(4, steps=3, guidance=2.5, return_tensor=True))
    # the caller's scale wins, and w = 1 (no guidance) gives other images
    assert not torch.equal(default, pipe.generate(4, steps=3, guidance=1.0, return_tensor=True))
    assert torch.equal(pipe.generate(4, steps=3, labels=[3], return_tensor=True),
                       pipe.generate(4, steps=3, labels=[3], guidance=2.5, return_tensor=True))


def test_sample_says_which_guidance(guided_run, tmp_path, capsys):
    args = ["sample", str(guided_run), "--num", "2", "--steps", "3", "--out", str(tmp_path / "grid.png"),
            "--device", "cpu", "--precision", "fp32"]
    assert main(args) == 0
    assert "ddim, 3 steps, trailing spacing, guidance 2.5)" in capsys.readouterr().out
    assert main([*args, "--guidance", "1"]) == 0
    assert "guidance 1)" in capsys.readouterr().out


def test_eval_rows_name_the_runs_guidance(guided_run):
    from ddpmkit.eval import evaluate_run
    from ddpmkit.eval.classifier import classifier_is_cached

    require_cached(classifier_is_cached(), "MNIST-classifier weights", "ddpmkit eval fetch")
    kwargs = dict(samplers=("ddim",), steps=(3,), num=4, ref_num=8, metrics=("classes",), device="cpu",
                  precision="fp32", progress=False, out=guided_run.parent / "eval")
    assert [r["guidance"] for r in evaluate_run(guided_run, **kwargs).rows] == [2.5]
    assert [r["guidance"] for r in evaluate_run(guided_run, guidance=(1.0,), **kwargs).rows] == [1.0]


def test_training_grids_use_the_guidance(tmp_path, monkeypatch):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")
    import ddpmkit.training.trainer as trainer

    seen = []
    real_sample = trainer.sample

    def recording_sample(*args, **kwargs):
        seen.append(kwargs.get("guidance"))
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(trainer, "sample", recording_sample)
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--set", "train.sample_guidance=1.5",
                 "--set", "train.sample_every=1", "--set", "train.num_samples=2", "--set", "train.sample_steps=3"]) == 0
    assert seen and set(seen) == {1.5}


@pytest.mark.parametrize("overrides, message", [
    (["train.sample_guidance=-1"], "train.sample_guidance must be a finite number >= 0"),
    (["train.sample_guidance=2", "model.class_conditional=false"], "set model.class_conditional=true"),
])
def test_a_bad_guidance_fails_before_training(tmp_path, capsys, overrides, message):
    sets = [arg for o in overrides for arg in ("--set", o)]
    assert main([*TRAIN, "--out", str(tmp_path / "run"), *sets]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
