"""Grids, the [-1, 1] -> uint8 mapping, GIFs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.viz import make_grid, save_gif, save_grid, to_uint8


def test_to_uint8_mapping_and_layout():
    x = torch.tensor([-1.0, 1.0, 0.0, -3.0, 2.0, 0.5]).reshape(1, 1, 2, 3)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3, 1)
    # round((clamp(x) + 1) * 127.5): -1 -> 0, 1 -> 255, 0 -> 127.5 -> 128 (half to even), 0.5 -> 191.25
    assert out[0, :, :, 0].tolist() == [[0, 255, 128], [0, 255, 191]]
    rgb = torch.stack([torch.full((2, 2), -1.0), torch.zeros(2, 2), torch.ones(2, 2)])[None]
    assert to_uint8(rgb)[0, 1, 1].tolist() == [0, 128, 255]  # channels moved last


def test_to_uint8_takes_arrays_and_single_images_and_refuses_integers():
    x = torch.rand(2, 3, 4, 5) * 2.4 - 1.2
    expected = to_uint8(x)
    assert np.array_equal(to_uint8(x.numpy().astype(np.float64)), expected)  # arrays: the same float32 math
    read_only = x.numpy().copy()
    read_only.flags.writeable = False
    assert np.array_equal(to_uint8(read_only), expected)
    assert np.array_equal(to_uint8(x[1]), expected[1:])  # (C, H, W) -> (1, H, W, C)
    for integers in (torch.zeros(1, 1, 2, 2, dtype=torch.uint8), np.zeros((1, 1, 2, 2), np.int64)):
        with pytest.raises(ValueError, match="floats"):
            to_uint8(integers)


def test_make_grid_tile_positions():
    tiles = np.stack([np.full((3, 4, 1), 10 + 40 * i, dtype=np.uint8) for i in range(5)])
    grid = make_grid(tiles, nrow=3, padding=2)
    assert grid.shape == (2 + 2 * (3 + 2), 2 + 3 * (4 + 2), 1)
    for i in range(5):
        top, left = 2 + (i // 3) * 5, 2 + (i % 3) * 6
        assert (grid[top:top + 3, left:left + 4] == 10 + 40 * i).all()
        assert grid[top - 1, left, 0] == 0 and grid[top, left - 1, 0] == 0  # padding
    assert (grid[7:10, 14:18] == 0).all()  # the sixth slot stays empty
    assert make_grid(tiles).shape == (2 + 2 * 5, 2 + 3 * 6, 1)  # default nrow = ceil(sqrt(5)) = 3


def test_make_grid_from_tensor_matches_uint8():
    x = torch.rand(4, 3, 5, 5) * 2 - 1
    assert np.array_equal(make_grid(x, nrow=2), make_grid(to_uint8(x), nrow=2))


def test_save_grid_png_upscaled(tmp_path):
    tiles = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    path = save_grid(tiles, tmp_path / "sub" / "grid.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "L"
        read = np.asarray(img)
    grid = make_grid(tiles, nrow=2)[..., 0]
    assert np.array_equal(read, grid.repeat(3, 0).repeat(3, 1))  # 28 px -> 3x nearest neighbour
    rgb = save_grid(torch.zeros(2, 3, 64, 64), tmp_path / "rgb.png", scale=1)
    with Image.open(rgb) as img:
        assert img.mode == "RGB" and img.size == (2 + 2 * 66, 2 + 66)
    assert [p.name for p in (tmp_path).iterdir() if p.suffix == ".tmp"] == []


def test_save_gif_frames_and_durations(tmp_path):
    frames = [np.full((8, 8, 3), 30 * i, dtype=np.uint8) for i in range(6)]
    path = save_gif(frames, tmp_path / "anim.gif", duration_ms=80, final_hold_ms=1500, scale=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.size == (16, 16)
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
            assert abs(int(np.asarray(gif.convert("RGB"))[0, 0, 0]) - 30 * i) <= 2
    assert durations == [80] * 5 + [1500]
    with pytest.raises(ValueError):
        save_gif([], tmp_path / "empty.gif")
