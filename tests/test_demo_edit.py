"""The demo's Edit tab without a browser: sketches and painted layers as model inputs, img2img and inpainting jobs,
and their one-line errors (the page itself is driven in test_demo.py)."""

from __future__ import annotations

import numpy as np
import pytest
import test_demo

from ddpmkit.demo.canvas import dark_background, enlarge, mask_from_layers, sketch_to_image
from ddpmkit.demo.core import NO_CLASS, SOURCES, EditResult, Preview
from ddpmkit.errors import DdpmkitError

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")

runs, plain, cond = test_demo.runs, test_demo.plain, test_demo.cond  # its fixtures: two tiny runs, random weights


def _sketch(side: int = 280) -> dict:
    """What gr.Sketchpad hands over: a transparent RGBA canvas with a black vertical bar drawn on it."""
    canvas = np.zeros((side, side, 4), np.uint8)
    canvas[side // 4: 3 * side // 4, side // 2 - side // 20: side // 2 + side // 20] = (0, 0, 0, 255)
    return {"background": None, "layers": [canvas], "composite": canvas}


def _painted(rows: slice, side: int = 288) -> dict:
    """An image editor's value with the brush layer painted over ``rows`` of the canvas."""
    layer = np.zeros((side, side, 4), np.uint8)
    layer[rows] = (255, 0, 255, 255)
    return {"background": np.full((side, side, 3), 128, np.uint8), "layers": [layer], "composite": None}


def test_a_sketch_is_resized_greyed_and_inverted_to_the_runs_look():
    image = sketch_to_image(_sketch(), 16, 1, dark=True)
    assert image.shape == (16, 16, 1) and image.dtype == np.uint8
    assert image[0, 0, 0] == 0 and image[8, :, 0].max() > 150  # black strokes on white became light on black
    assert np.array_equal(sketch_to_image(_sketch(), 16, 1, dark=False), 255 - image)  # a light run: as drawn
    rgb = sketch_to_image(_sketch(), 16, 3, dark=True)
    assert rgb.shape == (16, 16, 3) and np.array_equal(rgb[..., 0], image[..., 0])
    white_on_black = np.zeros((280, 280, 3), np.uint8)
    white_on_black[70:210, 126:154] = 255  # an uploaded MNIST-like picture is already the run's way round
    assert np.array_equal(sketch_to_image(white_on_black, 16, 1, dark=True), image)


def test_which_way_round_comes_from_the_run_data(plain):
    digits = plain.data().images
    assert dark_background(digits) and plain.dark_background()  # the digits (like MNIST) are light on dark
    assert not dark_background(255 - digits[:8])
    assert plain.sketch_input(_sketch())[8, :, 0].max() > 150


def test_the_painted_layer_is_the_mask():
    mask = mask_from_layers(_painted(slice(0, 144)), 16)
    assert mask.shape == (16, 16) and mask.dtype == np.uint8
    assert mask[:8].all() and not mask[8:].any()  # half a canvas pixel block counts; the background does not
    thin = mask_from_layers(_painted(slice(0, 4)), 16)  # under half of one 18-pixel row of blocks: kept
    assert not thin.any()
    assert np.array_equal(enlarge(np.zeros((16, 16, 1), np.uint8)).shape, (272, 272, 3))


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: m.check_img2img({"background": None, "layers": [], "composite": None}, 0.5, "ddim", 4, 0, 0, 1),
     "Sketch: the canvas is empty"),
    (lambda m: m.check_img2img(np.full((280, 280, 3), 255, np.uint8), 0.5, "ddim", 4, 0, 0, 1),
     "Sketch: nothing is drawn"),
    (lambda m: m.check_img2img(np.zeros((280, 200, 3), np.uint8), 0.5, "ddim", 4, 0, 0, 1),
     "Sketch: the canvas is 200×280"),
    (lambda m: m.check_img2img(_sketch(), 1.5, "ddim", 4, 0, 0, 1), "Strength: must be between 0 and 1, got 1.5"),
    (lambda m: m.check_img2img(_sketch(), "x", "ddim", 4, 0, 0, 1), "Strength: must be a number"),
    (lambda m: m.check_img2img(_sketch(), 0.5, "ddim", 0, 0, 0, 1), "Steps: must be a whole number"),
    (lambda m: m.check_inpaint(None, _painted(slice(0, 144)), 1, 10, "ddim", 4, 0, 0, 1),
     "Source image: none loaded"),
    (lambda m: m.check_inpaint(np.zeros((16, 16, 1), np.uint8), _painted(slice(0, 0)), 1, 10, "ddim", 4, 0, 0, 1),
     "Mask: nothing is painted"),
    (lambda m: m.check_inpaint(np.zeros((16, 16, 1), np.uint8), {"layers": []}, 1, 10, "ddim", 4, 0, 0, 1),
     "Mask: nothing is painted"),
    (lambda m: m.check_inpaint(np.zeros((16, 16, 1), np.uint8), _painted(slice(None)), 1, 10, "ddim", 4, 0, 0, 1),
     "Mask: it covers the whole image"),
    (lambda m: m.check_inpaint(np.zeros((20, 20, 1), np.uint8), _painted(slice(0, 9)), 1, 10, "ddim", 4, 0, 0, 1),
     "Source image is 20×20 but the run draws 16×16"),
    (lambda m: m.check_inpaint(np.zeros((16, 16, 1), np.uint8), _painted(slice(0, 144)), 2, 10, "dpm++2m", 4, 0,
                               0, 1), "Resample: RePaint's jumps need a one-step sampler"),
    (lambda m: m.check_inpaint(np.zeros((16, 16, 1), np.uint8), _painted(slice(0, 144)), 0, 10, "ddim", 4, 0, 0, 1),
     "Resample: must be a whole number from 1 to 10"),
    (lambda m: m.source_image(SOURCES[0], 0, None), "Image #: the Generate tab has no images yet"),
    (lambda m: m.source_image(SOURCES[2], 10**6), "Image #: must be a whole number from 0 to"),
])
def test_edit_errors_are_one_line_naming_the_field(plain, call, message):
    with pytest.raises(DdpmkitError) as refused:
        call(plain)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_img2img_from_a_sketch_is_the_pipelines_with_the_input_beside_it(cond):
    job = cond.check_img2img(_sketch(), 0.6, "ddim", 10, 0.0, 3, 4, NO_CLASS)
    assert job.request.guidance == 0.0  # no class: the unconditional model
    assert np.array_equal(job.image, cond.sketch_input(_sketch()))
    items = [item for item in cond.stream(job, preview_seconds=0, update_seconds=0) if item is not None]
    result = items[-1]
    assert isinstance(result, EditResult) and all(isinstance(p, Preview) for p in items[:-1])
    assert items[0].step == 1 and items[0].num_steps == 6  # strength 0.6 of 10 steps
    assert np.array_equal(result.images, cond.pipe.img2img(job.image, 0.6, job.request))
    assert result.nfe == 6 and result.input.size == cond.picture(job.image).size and result.mask is None
    assert result.summary.startswith("img2img at strength 0.6: 4 images in") and "unconditional" in result.summary
    assert np.array_equal(cond.edit(cond.check_img2img(_sketch(), 0.0, "ddim", 10, 0, 3, 2)).images,
                          np.stack([job.image] * 2))  # strength 0: the input itself
    classed = cond.check_img2img(_sketch(), 0.6, "ddim", 10, 0.0, 3, 2, "7", 2.0)
    assert classed.request.labels == (7, 7) and " · class 7 · " in cond.edit(classed).summary


@pytest.mark.parametrize("resample", [1, 2])
def test_inpainting_keeps_the_unpainted_pixels_exactly(cond, resample):
    source = cond.source_image(SOURCES[2], 3)  # a data set image at the run's size
    assert source.shape == (16, 16, 1)
    job = cond.check_inpaint(source, _painted(slice(0, 144)), resample, 3, "ddim", 6, 0.0, 0, 3, "4", 1.0)
    assert job.mask[:8].all() and not job.mask[8:].any()
    result = cond.edit(job)
    assert result.images.shape == (3, 16, 16, 1)
    assert np.array_equal(result.images[:, 8:], np.broadcast_to(source[8:], (3, 8, 16, 1)))  # kept exactly
    assert not np.array_equal(result.images[:, :8], np.broadcast_to(source[:8], (3, 8, 16, 1)))  # repainted
    assert np.array_equal(np.asarray(result.mask)[0], [255] * np.asarray(result.mask).shape[1])
    jumps = "plain replacement" if resample == 1 else "resample 2, jump length 3"
    assert result.summary.startswith(f"inpainting ({jumps}): 3 images in") and " · class 4 · " in result.summary


def test_the_inpaint_sources(cond):
    generated = cond.generate(cond.check("ddim", 2, 0, 5, 3, "1", 1.0)).images
    assert np.array_equal(cond.source_image(SOURCES[0], 2, generated), generated[2])
    fresh = cond.source_image(SOURCES[1], 7)
    assert fresh.shape == (16, 16, 1) and np.array_equal(fresh, cond.source_image(SOURCES[1], 7))
    value = cond.editor_value(fresh)
    assert value["layers"] == [] and value["background"].shape == (272, 272, 3)
    assert np.array_equal(value["background"][::17, ::17, :1], fresh)  # blown up pixel for pixel
