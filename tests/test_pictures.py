"""Tests for cnnviz.pictures: the feature-map grid drawn straight into pixels, checked pixel by pixel."""

import io
import math

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from cnnviz import figures, pictures


def colour(cmap: str, index: int) -> np.ndarray:
    """Entry ``index`` of matplotlib's 256-entry table for ``cmap``, as 8-bit RGB."""
    return np.rint(np.asarray(colormaps[cmap](index / 255)[:3]) * 255).astype(np.uint8)


def blocks(picture: Image.Image, rgb: np.ndarray, *, least: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) bounding the columns and rows with at least ``least`` pixels of exactly ``rgb``: a tile's
    solid area, leaving out the few pixels of that colour in the colour bar."""
    mask = np.all(np.asarray(picture) == rgb, axis=2)
    cols = np.flatnonzero(mask.sum(axis=0) >= least)
    rows = np.flatnonzero(mask.sum(axis=1) >= least)
    assert cols.size and rows.size, f"no block of {rgb}"
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def test_each_map_is_a_labelled_tile_in_reading_order_on_one_shared_scale():
    maps = torch.arange(4.0)[:, None, None].expand(4, 5, 5)  # four constant maps: 0, 1, 2, 3
    picture = pictures.feature_grid(maps, cols=2, title="conv1")
    assert picture.mode == "RGB"
    # On one scale from 0 to 3, value v takes entry floor(v / 3 · 256) (at most 255) of viridis' table.
    target = round(min(1.2, 7.5 / 2) * pictures.DPI)
    side = 5 * (target // 5)  # enlarged by a whole factor: each value a crisp square
    boxes = [blocks(picture, colour("viridis", index), least=side // 2) for index in (0, 85, 170, 255)]
    for x0, y0, x1, y1 in boxes:
        assert (x1 - x0, y1 - y0) == (side, side)
    (a, b), (c, d) = boxes[:2], boxes[2:]
    assert a[1] == b[1] and a[2] < b[0]  # 0 and 1 side by side on the first row
    assert c[1] == d[1] and c[0] == a[0] and c[1] > a[3]  # 2 and 3 on the second, 2 under 0
    pixels = np.asarray(picture)
    for x0, y0, x1, _ in boxes:  # a dark "#n" label in the band above every tile
        band = pixels[y0 - pictures.BAND: y0, x0: x1]
        assert band.min() < 80
    # The colour bar, right of the grid, runs from the top of the scale (yellow) down to its bottom.
    bar_top = blocks(picture, colour("viridis", 255), least=1)
    assert bar_top[2] > b[2]


def test_a_map_of_known_values_is_coloured_value_by_value():
    values = torch.arange(16.0).reshape(4, 4)
    picture = pictures.feature_grid(values[None], cols=1)
    k = round(1.2 * pictures.DPI) // 4  # the enlargement of a 4×4 map in a grid of one column
    x0, y0, _, _ = blocks(picture, colour("viridis", 0), least=k // 2)
    pixels = np.asarray(picture)
    for i in range(4):
        for j in range(4):
            index = min(255, int(values[i, j] / 15 * 256))
            square = pixels[y0 + i * k: y0 + (i + 1) * k, x0 + j * k: x0 + (j + 1) * k]
            assert (square == colour("viridis", index)).all(), (i, j)


def test_each_map_on_its_own_scale_looks_the_same_whatever_its_range():
    ramp = torch.arange(16.0).reshape(4, 4)
    picture = pictures.feature_grid(torch.stack([ramp, 100 + 10 * ramp]), shared_scale=False, cols=2)
    k = round(min(1.2, 7.5 / 2) * pictures.DPI) // 4
    pixels = np.asarray(picture)
    x0, y0, x1, _ = blocks(picture, colour("viridis", 0), least=k // 2)  # both tiles' darkest corners
    assert x1 - x0 > 4 * k  # two tiles
    first = pixels[y0: y0 + 4 * k, x0: x0 + 4 * k]
    second_x = x0 + 4 * k + pictures.GAP
    np.testing.assert_array_equal(first, pixels[y0: y0 + 4 * k, second_x: second_x + 4 * k])
    assert (first[-1, -1] == colour("viridis", 255)).all()


def test_highlight_draws_a_red_box_around_the_chosen_channel_only():
    maps = torch.zeros(4, 5, 5)
    maps[2] = 1.0  # channel 2 is the only yellow tile
    picture = pictures.feature_grid(maps, highlight=2, cols=2, channels=[0, 1, 2, 3])
    x0, y0, x1, y1 = blocks(picture, colour("viridis", 255), least=20)
    red = np.all(np.asarray(picture) == pictures.HIGHLIGHT, axis=2)
    rows, cols = np.flatnonzero(red.any(axis=1)), np.flatnonzero(red.any(axis=0))
    # The box hugs the tile (its label, also red, is in the band above it); nothing red anywhere else.
    assert cols[0] == x0 - 3 and cols[-1] == x1 + 2 and rows[-1] == y1 + 2
    assert y0 - pictures.BAND <= rows[0] < y0
    with pytest.raises(ValueError, match="highlight"):
        pictures.feature_grid(maps, highlight=7)


def test_maps_larger_than_a_tile_are_averaged_down_by_a_whole_factor():
    half = torch.zeros(1, 300, 300)
    half[0, :, 150:] = 1.0
    picture = pictures.feature_grid(half)
    k = math.ceil(300 / round(1.2 * pictures.DPI))  # 3: each pixel of the tile is the mean of 3 × 3 values
    dark = blocks(picture, colour("viridis", 0), least=20)
    bright = blocks(picture, colour("viridis", 255), least=20)
    assert (dark[3] - dark[1], dark[2] - dark[0]) == (300 // k, 150 // k)
    assert bright[0] == dark[2] and bright[2] - bright[0] == 150 // k


def test_values_that_are_not_finite_are_white_and_the_rest_keep_their_scale():
    maps = torch.tensor([[[0.0, float("nan")], [float("inf"), 2.0]]])
    picture = pictures.feature_grid(maps)
    k = round(1.2 * pictures.DPI) // 2
    x0, y0, _, _ = blocks(picture, colour("viridis", 0), least=k // 2)
    pixels = np.asarray(picture)
    assert (pixels[y0 + k // 2, x0 + k + k // 2] == 255).all()  # NaN: white
    assert (pixels[y0 + k + k // 2, x0 + k // 2] == 255).all()  # inf: white
    assert (pixels[y0 + k + 1, x0 + k + 1] == colour("viridis", 255)).all()  # 2 is the top of a 0–2 scale


def test_the_colour_bar_ticks_are_round_values_inside_the_scale():
    ticks = pictures._ticks(0.0, 0.42, True)
    assert [text for _, text in ticks] == ["0", "0.1", "0.2", "0.3", "0.4"]
    assert [fraction for fraction, _ in ticks] == pytest.approx([v / 0.42 for v in (0, 0.1, 0.2, 0.3, 0.4)])
    assert pictures._ticks(0.0, 1.0, False) == [(0.0, "its min"), (1.0, "its max")]


def test_a_long_heading_is_cut_to_the_picture_and_png_bytes_open():
    picture = pictures.feature_grid(torch.rand(2, 3, 3), title="x" * 2000)
    assert picture.width <= pictures.MAX_WIDTH
    assert pictures._fit("x" * 2000, pictures._font(pictures.TITLE_PX), 500).endswith("…")
    with Image.open(io.BytesIO(figures.to_png(picture))) as png:
        assert png.format == "PNG" and png.size == picture.size


@pytest.mark.parametrize("bad", [torch.zeros(1, 4, 5, 5), torch.zeros(0, 3, 3), "maps"])
def test_anything_but_a_non_empty_stack_of_maps_is_refused(bad):
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        pictures.feature_grid(bad)


def test_channel_numbers_must_match_the_maps():
    with pytest.raises(ValueError, match="one channel number per tile"):
        pictures.feature_grid(torch.zeros(3, 2, 2), channels=[0, 1])
