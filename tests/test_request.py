"""SampleRequest: checked once, filled in from the run it is resolved against, and passed along unchanged; RunInfo:
the one reader and writer of a checkpoint's metadata."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ddpmkit import Diffusion, NoiseSchedule, RunInfo, SampleRequest, UNetConfig
from ddpmkit.config import RunConfig
from ddpmkit.errors import DdpmkitError
from ddpmkit.models import UNet
from ddpmkit.pipeline import Pipeline


def info(num_classes: int | None = None, **train) -> RunInfo:
    config = RunConfig.from_dict({"train": {"sample_sampler": "ddpm", "sample_steps": 20, "sample_spacing": "linspace",
                                            **train}})
    return RunInfo(UNetConfig.named("tiny", num_classes=num_classes), Diffusion(NoiseSchedule.cosine(50)),
                   config=config, class_names=tuple(str(k) for k in range(num_classes or 0)))


def test_what_the_caller_leaves_out_comes_from_the_run_then_the_sampler():
    request = SampleRequest(num=4).resolve(info())
    assert (request.sampler, request.steps, request.spacing, request.eta) == ("ddpm", 20, "linspace", 0.0)
    assert request.resolved and request.labels is None and request.guidance is None
    assert request.clip_denoised is True  # the diffusion's own setting (clip_denoised defaults on)
    # another sampler gets its own defaults, not the run's steps or spacing; T = 50 caps nothing here
    other = SampleRequest(num=4, sampler="ddim").resolve(info())
    assert (other.steps, other.spacing) == (50, "trailing")
    # the caller's choice wins over the run's
    mine = SampleRequest(num=4, steps=7, spacing="trailing", clip_denoised=False).resolve(info())
    assert (mine.sampler, mine.steps, mine.spacing, mine.clip_denoised) == ("ddpm", 7, "trailing", False)
    # η means nothing to DPM-Solver++: the resolved request says so
    assert SampleRequest(num=1, sampler="dpm++2m", eta=0.5).resolve(info()).eta == 0.0
    assert mine.resolve(info(sample_steps=3)) is mine  # resolved once: a second resolve changes nothing


def test_a_conditional_run_gets_balanced_labels_and_its_recommended_guidance():
    cond = info(num_classes=3, sample_guidance=2.5)
    request = SampleRequest(num=7).resolve(cond)
    assert request.labels == (0, 1, 2, 0, 1, 2, 0) and request.guidance == 2.5
    one = SampleRequest(num=3, labels=[2], guidance=0).resolve(cond)
    assert one.labels == (2, 2, 2) and one.guidance == 0.0
    kwargs = one.model_kwargs()
    assert torch.equal(kwargs["labels"], torch.tensor([2, 2, 2]))
    assert SampleRequest(num=2, labels=torch.tensor([1, 0])).labels == (1, 0)
    assert "guidance 2.5" in request.describe() and "ddpm, 20 steps, linspace spacing" in request.describe()


@pytest.mark.parametrize("fields, message", [
    ({"num": 0}, "--num and --batch-size must be at least 1"),
    ({"batch_size": 0}, "--num and --batch-size must be at least 1"),
    ({"guidance": -1.0}, "--guidance must be a finite number >= 0"),
    ({"guidance": math.nan}, "--guidance must be a finite number >= 0"),
    ({"guidance": math.inf}, "--guidance must be a finite number >= 0"),
    ({"eta": 1.5}, "eta must be in [0, 1]"),
    ({"labels": [1.5]}, "labels must be whole numbers"),
])
def test_a_request_is_checked_when_it_is_made(fields, message):
    with pytest.raises(DdpmkitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SampleRequest(**fields)


@pytest.mark.parametrize("fields, run, message", [
    ({"steps": 51}, info(), "steps must be between 1 and 50"),
    ({"sampler": "euler"}, info(), "unknown sampler 'euler'"),
    ({"spacing": "uniform"}, info(), "unknown timestep spacing 'uniform'"),
    ({"labels": [1]}, info(), "unconditional run: labels need a class-conditional model"),
    ({"guidance": 3.0}, info(), "unconditional run: --guidance needs a class-conditional model"),
    ({"labels": [3]}, info(num_classes=3), "labels must be 1 or 4 values in 0..2"),
    ({"labels": [0, 1]}, info(num_classes=3), "labels must be 1 or 4 values in 0..2"),
])
def test_a_request_is_checked_against_the_run(fields, run, message):
    with pytest.raises(DdpmkitError, match=message):
        SampleRequest(num=4, **fields).resolve(run)


def test_only_a_resolved_request_is_sampled_and_the_pipeline_does_not_change_it():
    with pytest.raises(ValueError, match="resolve the request"):
        _ = SampleRequest(num=2).settings
    run = info()
    torch.manual_seed(0)
    pipe = Pipeline(UNet(run.unet), run.diffusion, torch.device("cpu"), info=run)
    request = pipe.resolve(SampleRequest(num=3, steps=4, seed=5, batch_size=2))
    images = pipe.generate(request, return_tensor=True)
    # the same images from the keyword form, and from a request the pipeline resolves itself
    assert torch.equal(images, pipe.generate(3, steps=4, seed=5, batch_size=2, return_tensor=True))
    assert torch.equal(images, pipe.generate(dataclasses.replace(request, resolved=False), return_tensor=True))
    seen = []
    pipe.generate(request, callback=seen.append)
    assert len(seen) == 2 * request.steps  # two batches of the run's sampler at the request's steps


def test_run_info_round_trips_through_state_json_fields():
    run = info(num_classes=3)
    run = dataclasses.replace(run, step=12, lora={"rank": 4, "alpha": 4.0, "targets": ["attn"]})
    state = run.to_state()
    assert set(state) == {"step", "unet", "diffusion", "data", "versions", "config", "lora"}
    back = RunInfo.from_state(state)
    assert back.unet == run.unet and back.diffusion.to_dict() == run.diffusion.to_dict()
    assert (back.step, back.class_names, back.lora, back.num_classes) == (12, ("0", "1", "2"), run.lora, 3)
    assert back.config.to_dict() == run.config.to_dict() and back.sampler == ("ddpm", 20, "linspace")
    assert back.versions["ddpmkit"] == run.versions["ddpmkit"]
    with pytest.raises(DdpmkitError, match="lacks 'unet'; it is not a complete ddpmkit checkpoint"):
        RunInfo.from_state({"diffusion": state["diffusion"]})
    with pytest.raises(DdpmkitError, match="does not say which data set"):
        _ = dataclasses.replace(back, config=None).trained_on
