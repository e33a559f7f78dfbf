"""Every preset resolves, type-checks, and builds its model and diffusion for data of its shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddpmkit.config import RunConfig
from ddpmkit.data import ImageArray
from ddpmkit.errors import DdpmkitError
from ddpmkit.models import UNetConfig
from ddpmkit.models.sizes import list_unet_sizes, load_unet_size
from ddpmkit.presets import list_presets, load_preset
from ddpmkit.training import build_diffusion, build_unet_config

SHAPES = {"mnist": (28, 1), "fashion-mnist": (28, 1), "pokemon": (64, 3), "emoji": (64, 3), "digits": (8, 1)}


def fake_data(name: str, image_size: int | None) -> ImageArray:
    key = name.split(":")[0]
    size, channels = (32, 3) if key == "cifar10" else SHAPES[key]
    size = image_size or size
    classes = [str(k) for k in range(10)] if key in ("mnist", "fashion-mnist", "cifar10", "emoji") else []
    return ImageArray(np.zeros((4, size, size, channels), np.uint8), np.arange(4) % max(1, len(classes)), classes, name)


@pytest.mark.parametrize("name", list_presets())
def test_preset_builds(name):
    config = load_preset(name)
    again = RunConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    data = fake_data(config.data.name, config.data.image_size)
    unet = build_unet_config(config, data)
    diffusion = build_diffusion(config)
    assert unet.image_size == data.image_size and unet.in_channels == data.channels
    assert (config.train.steps is None) != (config.train.epochs is None)
    assert diffusion.num_steps == config.diffusion.num_steps
    assert (unet.num_classes is not None) == config.model.class_conditional


def test_paper_presets_follow_their_recipes():
    cifar = load_preset("cifar10")
    assert (cifar.train.lr, cifar.train.warmup_steps, cifar.train.batch_size, cifar.train.ema_decay) == \
        (2e-4, 5000, 128, 0.9999)
    assert build_unet_config(cifar, fake_data("cifar10:x", None)).dropout == 0.1
    poke = load_preset("pokemon64")
    assert (poke.train.lr, poke.train.warmup_steps, poke.train.batch_size, poke.train.grad_clip,
            poke.train.ema_decay, poke.train.sample_every_epochs) == (2e-4, 200, 128, 1.0, 0.9999, 100)
    unet = build_unet_config(poke, fake_data("pokemon", None))
    assert unet.base_channels * unet.channel_mults[-1] == 512 and unet.num_heads == 4


def test_unknown_model_override_is_a_clear_error():
    with pytest.raises(DdpmkitError, match="unknown config key 'model.not_a_field'"):
        load_preset("mnist").override(["model.not_a_field=3"])
    with pytest.raises(DdpmkitError, match="model.base_channels expects an integer"):
        RunConfig.from_dict({"model": {"overrides": {"base_channels": "wide"}}})


# ----- UNet sizes: YAML files in models/unet_sizes/

def test_unet_sizes_listed_beside_run_presets():
    assert {"tiny", "mnist", "cifar10", "pokemon64"} <= set(list_unet_sizes())
    assert not set(list_unet_sizes()) & {"unet", "__init__"} and "unet" not in list_presets()
    assert load_unet_size("cifar10")["time_conditioning"] == "additive"
    assert UNetConfig.named("tiny") == UNetConfig.from_dict(load_unet_size("tiny"))
    with pytest.raises(DdpmkitError, match=r"unknown UNet size 'imagenet'; choose one of .*'pokemon64'"):
        load_unet_size("imagenet")


@pytest.mark.parametrize("name", list_presets())
def test_run_presets_name_a_listed_unet_size(name):
    assert load_preset(name).model.size in list_unet_sizes()


def test_package_data_ships_every_preset_file():
    """pyproject's package-data globs cover every YAML file under presets/ (a wheel would lack the others)."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    package = root / "src" / "ddpmkit"
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ddpmkit"]
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    assert set((package / "presets").rglob("*.yaml")) <= shipped



def test_the_default_job_is_issue_9s_labelled_recipe():
    """mnist: labels, plain v-loss (no min-SNR), GroupNorm with 8 groups, x̂0 unclipped, 2,600 x 32 (its comments)."""
    config = load_preset("mnist")
    unet = build_unet_config(config, fake_data("mnist", None))
    assert unet.num_classes == 10 and unet.norm_groups == 8 and unet.num_res_blocks == 1
    diffusion = build_diffusion(config)
    assert diffusion.min_snr_gamma is None and diffusion.prediction == "v" and diffusion.clip_denoised is False
    assert (config.train.steps, config.train.batch_size, config.train.warmup_steps) == (2600, 32, 100)
    assert config.train.steps * config.train.batch_size == 83_200  # issue 9's budget: the same training images
    # its recommended sampler (grids, `ddpmkit sample`, Pipeline.generate): ancestral DDPM over 50 linspace steps
    assert (config.train.sample_sampler, config.train.sample_steps, config.train.sample_spacing) == ("ddpm", 50, None)
    assert load_preset("mnist-uncond").model.class_conditional is False
