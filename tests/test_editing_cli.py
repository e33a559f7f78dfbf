"""``ddpmkit inpaint``, ``img2img`` and ``interpolate`` end to end on a tiny run, and every bad input: one line on
stderr, exit status 2, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import main

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")

FAST = ["--preset", "tiny", "--data", "digits", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit") / "run"
    assert main(["train", *FAST, "--out", str(folder), "--steps", "4", "--set", "train.sample_every=4"]) == 0
    return folder


@pytest.fixture(scope="module")
def size(run):
    from ddpmkit.run import RunFolder

    return RunFolder.locate(run)[0].info().unet.image_size


def png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_inpaint_writes_input_mask_and_results_with_the_kept_pixels(run, size, tmp_path):
    out = tmp_path / "inpaint.png"
    assert main(["inpaint", str(run), "--image", "digits:train:3", "--mask", "lower-half", "--num", "3",
                 "--steps", "5", "--resample", "2", "--jump-length", "2", "--out", str(out), "--device", "cpu"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[1] > grid.shape[0] * 4  # one row: input, mask, three results


def test_img2img_and_interpolate_write_their_grids(run, tmp_path, size):
    image = png(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8))
    assert main(["img2img", str(run), "--image", image, "--strength", "0.5", "--num", "2", "--steps", "4",
                 "--out", str(tmp_path / "i.png"), "--device", "cpu"]) == 0
    assert main(["interpolate", str(run), "--image", image, "--image", "digits:train:5", "--num", "4",
                 "--steps", "4", "--out", str(tmp_path / "w.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "i.png").exists() and (tmp_path / "w.png").exists()


def bad_inputs(tmp_path, size):
    grey = png(tmp_path / "grey.png", np.zeros((size, size), np.uint8))
    small = png(tmp_path / "small.png", np.zeros((size // 2, size // 2), np.uint8))
    colour = png(tmp_path / "colour.png", np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    soft = png(tmp_path / "soft.png", np.full((size, size), 128, np.uint8))
    empty = png(tmp_path / "empty.png", np.zeros((size, size), np.uint8))
    full = png(tmp_path / "full.png", np.full((size, size), 255, np.uint8))
    return [
        (["img2img", "--image", grey, "--strength", "1.2"], "--strength must be in [0, 1]"),
        (["img2img", "--image", small, "--strength", "0.5"], f"but the run draws {size}×{size}"),
        (["img2img", "--image", colour, "--strength", "0.5"], "is in colour but the run draws grey images"),
        (["img2img", "--image", "digits:train:99999", "--strength", "0.5"], "digits train has"),
        (["img2img", "--image", str(tmp_path / "none.png"), "--strength", "0.5"], "no such file"),
        (["inpaint", "--image", grey, "--mask", small], "draw the mask at the image's size"),
        (["inpaint", "--image", grey, "--mask", soft], "not binary"),
        (["inpaint", "--image", grey, "--mask", empty], "the mask is empty"),
        (["inpaint", "--image", grey, "--mask", full], "covers the whole image"),
        (["inpaint", "--image", grey, "--mask", "top"], "no such file; give a PNG (or a region: lower-half"),
        (["inpaint", "--image", grey, "--mask", "center", "--sampler", "unipc", "--resample", "3"],
         "needs a one-step sampler"),
        (["interpolate", "--image", grey], "give --image twice"),
        (["interpolate", "--image", grey, "--image", grey, "--num", "1"], "--num must be at least 2"),
    ]


def test_bad_edit_input_is_one_line_and_writes_nothing(run, tmp_path, size, capsys):
    for argv, message in bad_inputs(tmp_path, size):
        out = tmp_path / "never.png"
        code = main([argv[0], str(run), *argv[1:], "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1 and err.startswith("ddpmkit: error: "), err
        assert message in err, (argv, err)
        assert not out.exists()


def test_edits_take_a_lora_adapter(run, tmp_path):
    """``--lora`` reaches the edit: the same inpainting (seed, steps) with and without an adapter differs."""
    adapter = tmp_path / "adapter"
    assert main(["lora", str(run), "--out", str(adapter), "--steps", "8", "--rank", "2", "--lr", "0.05",
                 "--targets", "attn,conv", "--no-progress", "--device", "cpu"]) == 0
    grids = []
    for extra in ([], ["--lora", str(adapter)]):
        out = tmp_path / f"inpaint{len(extra)}.png"
        assert main(["inpaint", str(run), "--image", "digits:train:3", "--mask", "lower-half", "--num", "2",
                     "--steps", "4", "--out", str(out), "--device", "cpu", *extra]) == 0
        grids.append(np.asarray(Image.open(out)))
    assert not np.array_equal(grids[0], grids[1])
