"""Tests for cnnviz.figures: every builder on tiny real tensors, checked through the artists it draws."""

import io
import subprocess
import sys
import time

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from matplotlib import colormaps
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from torch import nn

from cnnviz import charts, data, figures, probe
from cnnviz.train import History


def labels_by_index(ax) -> dict[int, tuple[float, float]]:
    """{i: (x, y)} of the "#i" texts of a mosaic."""
    return {int(t.get_text()[1:]): t.get_position() for t in ax.texts if t.get_text().startswith("#")}


def tile(array: np.ndarray, position: tuple[float, float], h: int, w: int) -> np.ndarray:
    """The h × w tile whose label sits at ``position``: labels stand on the tile's one-pixel frame, left-aligned."""
    x, y = position
    col, row = round(x + 0.5), round(y + 0.5 + figures.PAD_PX)
    return np.asarray(array)[row: row + h, col: col + w]


def pool_pair(x: torch.Tensor, module: nn.Module) -> probe.PoolPair:
    (pair,) = probe.pooling_pairs(probe.run(nn.Sequential(module), x))
    return pair


# filter_grid and filter_image

def test_filter_grid_rgb_keeps_colour_and_shows_zero_as_grey():
    weights = torch.zeros(3, 3, 2, 2)
    weights[1, 0, 0, 0] = 2.0  # filter 1: one strongly positive red weight
    weights[2] = -1.0  # filter 2: negative everywhere
    fig = figures.filter_grid(weights, title="conv1")
    ax = fig.axes[0]
    pixels = np.asarray(ax.images[0].get_array())
    assert pixels.ndim == 3 and pixels.shape[2] == 3  # RGB, not a colour map
    labels = labels_by_index(ax)
    assert sorted(labels) == [0, 1, 2]
    np.testing.assert_allclose(tile(pixels, labels[0], 2, 2), 0.5)
    red_corner = tile(pixels, labels[1], 1, 1)[0, 0]
    np.testing.assert_allclose(red_corner, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(tile(pixels, labels[2], 2, 2), 0.0)
    assert "grey = weight 0" in ax.get_title()
    assert len(fig.axes) == 1  # no colour bar for colours


def test_filter_grid_other_layers_use_a_diverging_scale_centred_on_zero():
    weights = torch.zeros(2, 4, 3, 3)
    weights[0, :, 1, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5 in the centre
    weights[1, 0, 0, 0] = -4.0  # mean -1 in a corner
    fig = figures.filter_grid(weights)
    ax = fig.axes[0]
    image = ax.images[0]
    assert image.get_cmap().name.startswith("RdBu_r")
    assert image.get_clim() == (-2.5, 2.5)
    assert image.colorbar.ax.get_ylabel() == "weight"
    labels = labels_by_index(ax)
    centre = tile(image.get_array(), labels[0], 12, 12)  # 3×3 kernels are drawn 4× enlarged
    assert centre[4:8, 4:8] == pytest.approx(np.full((4, 4), 2.5))
    assert tile(image.get_array(), labels[1], 1, 1)[0, 0] == pytest.approx(-1.0)
    assert "averaged over its 4 input channels" in ax.get_title()
    with pytest.raises(ValueError, match="3 input channels"):
        figures.filter_grid(weights, rgb=True)


def test_filter_grid_rgb_false_shows_first_layer_filters_as_means():
    fig = figures.filter_grid(torch.randn(4, 3, 3, 3), rgb=False)
    assert np.asarray(fig.axes[0].images[0].get_array()).ndim == 2


def test_filter_image_writes_every_weight_in_its_cell():
    weight = torch.tensor([[0.5, -0.25, 0.0], [0.125, 1.0, -1.0], [0.0001, -0.0001, 0.3]])
    fig = figures.filter_image(weight)
    (ax,) = [a for a in fig.axes if a.images and a.get_label() != "<colorbar>"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells[(0, 0)] == "0.50" and cells[(0, 1)] == "-0.25" and cells[(1, 2)] == "-1.00"
    assert cells[(2, 1)] == "0.00"  # never "-0.00"
    assert len(cells) == 9
    assert ax.images[0].get_clim() == (-1.0, 1.0)
    assert any(a.get_ylabel() == "weight" for a in fig.axes)
    small = figures.filter_image(torch.tensor([[0.05, -0.005], [0.0004, -0.0004]]))
    assert sorted(t.get_text() for t in small.axes[0].texts) == ["-0.005", "0.000", "0.000", "0.050"]


def test_filter_image_shows_each_input_channel_up_to_eight_and_big_kernels_without_numbers():
    fig = figures.filter_image(torch.randn(16, 3, 3))
    panels = [a for a in fig.axes if a.images and a.get_title().startswith("input channel")]
    assert len(panels) == 8 and all(len(a.texts) == 9 for a in panels)
    assert "first 8 shown" in fig.get_suptitle()
    big = figures.filter_image(torch.randn(1, 11, 11))
    assert not any(a.texts for a in big.axes)


# pooling

def test_pooling_pair_marks_exactly_the_max_pool_winners():
    x = torch.tensor([[1.0, 5.0, 2.0, 0.0],
                      [3.0, 4.0, 9.0, 1.0],
                      [0.0, 0.0, -1.0, -2.0],
                      [7.0, 0.0, -3.0, -4.0]]).reshape(1, 1, 4, 4)
    fig = figures.pooling_pair(pool_pair(x, nn.MaxPool2d(2)), 0)
    ax_in, ax_out = fig.axes[:2]
    (markers,) = [c for c in ax_in.collections if isinstance(c, PathCollection)]
    winners = {(int(col), int(row)) for col, row in markers.get_offsets()}
    assert len(markers.get_offsets()) == 4  # one per output cell
    assert winners == {(1, 0), (2, 1), (0, 3), (2, 2)}  # (x, y) of 5, 9, 7 and -1
    assert ax_in.images[0].get_clim() == ax_out.images[0].get_clim()
    assert "4×4 → 2×2: 4× fewer values" in fig.get_suptitle()


def test_pooling_pair_winners_hold_the_output_values_for_a_random_map():
    torch.manual_seed(0)
    pair = pool_pair(torch.randn(1, 3, 8, 8), nn.MaxPool2d(2))
    fig = figures.pooling_pair(pair, 2, title="pool1")
    ax_in = fig.axes[0]
    (markers,) = [c for c in ax_in.collections if isinstance(c, PathCollection)]
    offsets = np.asarray(markers.get_offsets()).astype(int)
    assert len(offsets) == 16
    values = sorted(float(pair.input[2, row, col]) for col, row in offsets)
    assert values == pytest.approx(sorted(pair.output[2].flatten().tolist()))
    assert fig.get_suptitle().startswith("pool1")


def test_average_pooling_has_no_winners_and_channel_is_checked():
    pair = pool_pair(torch.randn(1, 2, 6, 6), nn.AvgPool2d(3))
    fig = figures.pooling_pair(pair, 1)
    assert not any(isinstance(c, PathCollection) for c in fig.axes[0].collections)
    assert "average" in fig.axes[1].get_title()
    assert "6×6 → 2×2: 9× fewer values" in fig.get_suptitle()
    with pytest.raises(ValueError, match="channel"):
        figures.pooling_pair(pair, 2)


def test_pooling_pairs_grid_draws_one_row_per_channel():
    pair = pool_pair(torch.randn(1, 4, 8, 8), nn.MaxPool2d(2))
    fig = figures.pooling_pairs_grid(pair, [0, 3])
    image_axes = [a for a in fig.axes if a.images]
    assert len(image_axes) == 4
    assert image_axes[2].get_title().startswith("#3 input")


# overlays and images

def test_overlay_image_with_alpha_0_is_the_image_and_with_alpha_1_the_coloured_heatmap():
    torch.manual_seed(0)
    image, heat = torch.rand(3, 5, 6), torch.rand(5, 6)
    plain = np.asarray(figures.overlay_image(image, heat, alpha=0.0))
    assert plain.shape == (5, 6, 3)
    np.testing.assert_array_equal(plain, np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    coloured = np.asarray(figures.overlay_image(image, heat, alpha=1.0, cmap="viridis"))
    expected = np.rint(colormaps["viridis"](heat.numpy())[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(coloured, expected)
    half = np.asarray(figures.overlay_image(image, heat, alpha=0.5, cmap="viridis")).astype(int)
    assert np.abs(half - (plain.astype(int) + coloured.astype(int)) / 2).max() <= 1


def test_overlay_image_keeps_grey_images_grey_and_the_image_resolution():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L")
    out = figures.overlay_image(grey, torch.ones(2, 2), alpha=0.0)
    assert out.mode == "RGB" and out.size == (8, 8)
    pixels = np.asarray(out)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[..., 0], np.asarray(grey))
    tensor_grey = figures.overlay_image(torch.full((1, 4, 4), 0.5), torch.zeros(4, 4), alpha=0.0)
    assert np.asarray(tensor_grey).tolist() == [[[128] * 3] * 4] * 4
    # A coarse heatmap is stretched over the whole image: a hot left half stays on the left.
    heat = torch.tensor([[1.0, 0.0]])
    left_right = np.asarray(figures.overlay_image(grey, heat.expand(2, 2), alpha=1.0, cmap="gray"))
    assert left_right[:, 0].min() > left_right[:, -1].max()
    with pytest.raises(ValueError, match="alpha"):
        figures.overlay_image(grey, heat, alpha=1.5)


def test_overlay_figure_shows_the_blend_and_an_importance_colour_bar():
    image, heat = torch.rand(3, 4, 4), torch.rand(4, 4)
    fig = figures.overlay(image, heat, alpha=0.3, title="Grad-CAM: cat")
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()),
                                  np.asarray(figures.overlay_image(image, heat, 0.3)))
    assert any(a.get_ylabel() == "importance (0 = none, 1 = most)" for a in fig.axes)
    assert ax.get_title() == "Grad-CAM: cat"


def test_image_strip_titles_each_step_and_shows_grey_on_a_fixed_scale():
    faint = Image.new("L", (3, 3), 40)
    colour = Image.new("RGB", (30, 20), (200, 10, 10))
    fig = figures.image_strip([("Original (30×20)", colour), ("Greyscale", faint)])
    axes = [a for a in fig.axes if a.images]
    assert [a.get_title() for a in axes] == ["Original (30×20)", "Greyscale"]
    grey = axes[1].images[0]
    assert grey.get_clim() == (0, 255) and grey.get_interpolation() == "nearest"
    assert not axes[0].get_xticks().size and not axes[0].get_yticks().size


def test_sample_grid_puts_each_label_under_its_image():
    x = torch.randint(0, 256, (3, 1, 4, 5), dtype=torch.uint8)
    fig = figures.sample_grid(x, ["true: 3\npred: 8", "true: 1\npred: 7", "a"], cols=2, title="Mistakes")
    ax = fig.axes[0]
    pixels = np.asarray(ax.images[0].get_array())
    assert pixels.ndim == 3  # grey shown as grey RGB, not through a colour map
    for i, text in enumerate(ax.texts):
        cx, top = text.get_position()  # centred under the tile: its bottom edge
        col, row = round(cx + 0.5 - 5 / 2), round(top + 0.5 - 4)
        np.testing.assert_array_equal(pixels[row: row + 4, col: col + 5, 0], x[i, 0].numpy())
    assert [t.get_text() for t in ax.texts] == ["true: 3\npred: 8", "true: 1\npred: 7", "a"]
    assert ax.get_title() == "Mistakes"
    with pytest.raises(ValueError, match="uint8"):
        figures.sample_grid(x.float(), ["a"] * 3)
    with pytest.raises(ValueError, match="one label per image"):
        figures.sample_grid(x, ["a"])


def test_input_image_undoes_the_normalisation():
    info = data.info("cifar10")
    x = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    image = figures.input_image(data.normalize(x, info), info)
    assert image.shape == (3, 4, 4)
    torch.testing.assert_close(image, x[0].float() / 255)


@pytest.mark.parametrize("channels, width", [(3, 0.8), (100, 1.0)])
def test_channel_bars_draw_each_channels_mean_over_its_max_and_mark_the_chosen_one(channels, width):
    torch.manual_seed(channels)
    mean = torch.randn(channels)  # a layer before its ReLU has negative means
    peak = mean.abs() + 1
    fig = figures.channel_bars(mean, peak, highlight=1, title="conv1")
    (ax,) = fig.axes
    steps = {p.get_label(): p.get_data() for p in ax.patches}
    assert list(steps) == ["max", "mean"]  # the max behind, the mean in front
    for label, values in (("max", peak), ("mean", mean)):
        data = steps[label]
        # Bar i spans i ± width/2 at its height, with a gap of height 0 before the next bar.
        np.testing.assert_allclose(data.values[::2], values.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(data.values[1::2], 0)
        np.testing.assert_allclose(data.edges[::2], np.arange(channels) - width / 2)
        np.testing.assert_allclose(data.edges[1::2], np.arange(channels) + width / 2)
        assert data.baseline == 0
    (line,) = ax.lines
    assert line.get_xdata()[0] == 1 and line.get_color() == "red"
    assert ax.get_ylim()[0] <= float(mean.min()) and ax.get_xlim() == (-0.5, channels - 0.5)
    assert figures.to_png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="highlight"):
        figures.channel_bars(mean, peak, highlight=channels)
    with pytest.raises(ValueError, match="one shape"):
        figures.channel_bars(mean, peak[:-1])


def test_topk_bars_lists_the_most_probable_first_in_percent():
    probs = torch.tensor([0.05, 0.6, 0.1, 0.25])
    fig = figures.topk_bars(probs, ["0", "1", "2", "3"], k=3)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "3", "2"]
    assert ax.yaxis_inverted()  # the most probable on top
    assert [p.get_width() for p in ax.patches] == pytest.approx([60.0, 25.0, 10.0])
    assert [t.get_text() for t in ax.texts] == ["60.0 %", "25.0 %", "10.0 %"]
    assert ax.get_xlim() == (0, 100)
    assert len(figures.topk_bars(probs, list("abcd"), k=10).axes[0].patches) == 4
    assert figures.to_png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="class names"):
        figures.topk_bars(probs, ["a"])
    with pytest.raises(ValueError, match="k >= 1"):
        figures.topk_bars(probs, list("abcd"), k=0)


def test_to_png_gives_bytes_pil_can_open_and_refuses_plotly():
    png = figures.to_png(figures.filter_grid(torch.rand(2, 1, 3, 3)))
    assert png.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > 100
    with pytest.raises(TypeError, match="matplotlib"):
        figures.to_png(go.Figure())


# plotly charts

def test_confusion_matrix_writes_counts_and_says_them_in_the_hover():
    confusion = torch.tensor([[12, 1], [0, 7]])
    fig = charts.confusion_matrix(confusion, ["circle", "ring"])
    (heat,) = fig.data
    assert [list(row) for row in heat.z] == [[12, 1], [0, 7]]
    assert heat.text[0][0] == "true: circle, predicted: circle, 12 images"
    assert heat.text[0][1] == "true: circle, predicted: ring, 1 image"
    assert heat.text[1][0] == "true: ring, predicted: circle, 0 images"
    assert heat.texttemplate == "%{z}"
    assert fig.layout.yaxis.title.text == "true class" and fig.layout.xaxis.title.text == "predicted class"
    with pytest.raises(ValueError, match=r"\(K, K\)"):
        charts.confusion_matrix(torch.zeros(2, 3), ["a", "b"])


def test_per_class_bars_show_percent_correct():
    fig = charts.per_class_bars([1.0, 0.5, 0.0], ["circle", "ring", "square"])
    (bar,) = fig.data
    assert list(bar.x) == ["circle", "ring", "square"] and list(bar.y) == [100.0, 50.0, 0.0]
    assert list(bar.text) == ["100 %", "50 %", "0 %"]


def test_training_curves_handle_an_empty_history():
    for empty in (History(), {}, History().to_dict()):
        fig = charts.training_curves(empty)
        assert isinstance(fig, go.Figure)
        assert all(len(trace.x) == 0 for trace in fig.data)
        assert fig.layout.annotations[-1].text == "No training steps yet"


def test_training_curves_plot_steps_smoothed_and_validation_per_epoch():
    steps = [dict(step=i, epoch=i / 10, loss=2.0 if i % 2 else 1.0, acc=0.5, lr=0.01) for i in range(1, 21)]
    epochs = [dict(epoch=1.0, step=10, val_loss=1.4, val_acc=0.6, seconds=1.0),
              dict(epoch=2.0, step=20, val_loss=1.2, val_acc=0.7, seconds=2.0)]
    fig = charts.training_curves(History(steps=steps, epochs=epochs))
    assert fig.layout.uirevision is not None
    by_name = {}
    for trace in fig.data:
        by_name.setdefault(trace.name, []).append(trace)
    assert set(by_name) == {"training (each batch)", "training (smoothed)", "validation (held-out training images)"}
    raw_loss, raw_acc = by_name["training (each batch)"]
    assert list(raw_loss.x) == list(range(1, 21)) and list(raw_acc.y) == [50.0] * 20  # accuracy in %
    smooth_loss = by_name["training (smoothed)"][0]
    assert smooth_loss.y[0] == pytest.approx(2.0)  # bias-corrected: starts at the first value, not near 0
    assert 1.2 < smooth_loss.y[-1] < 1.8  # between the alternating values
    val_loss, val_acc = by_name["validation (held-out training images)"]
    assert list(val_loss.x) == [10, 20] and list(val_acc.y) == pytest.approx([60.0, 70.0])
    assert sum(trace.showlegend is not False for trace in fig.data) == 3  # one legend entry per kind of line
    assert not fig.layout.annotations or all(a.text != "No training steps yet" for a in fig.layout.annotations)
    unsmoothed = charts.training_curves({"steps": steps, "epochs": []}, smoothing=0.0)
    assert list(unsmoothed.data[1].y) == [s["loss"] for s in steps]


def test_the_module_imports_neither_streamlit_nor_pyplot():
    code = ("import sys, cnnviz.figures; "
            "assert 'streamlit' not in sys.modules and 'matplotlib.pyplot' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_map_image_stretches_min_to_max():
    from matplotlib import colormaps

    m = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    img = np.asarray(figures.map_image(m))
    assert img.shape == (2, 2, 3)
    lo = np.rint(np.array(colormaps["viridis"](0.0)[:3]) * 255)
    hi = np.rint(np.array(colormaps["viridis"](1.0)[:3]) * 255)
    assert (img[0, 0] == lo).all() and (img[1, 1] == hi).all()
    flat = np.asarray(figures.map_image(torch.ones(3, 3)))
    assert (flat == flat[0, 0]).all()  # a constant map: one colour, no NaN


def test_web_image_enlarges_small_images_by_a_whole_factor_and_shrinks_photos():
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    big = Image.open(io.BytesIO(figures.web_image(small)))
    assert big.format == "PNG" and big.size == (160, 160)  # 32 × 5: the first whole factor reaching 160
    # Each pixel became a crisp 5×5 square of exactly its colour (no blurring, lossless).
    assert np.array_equal(np.asarray(big.convert("RGB"))[::5, ::5], np.asarray(small))
    grey = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L")
    assert Image.open(io.BytesIO(figures.web_image(grey))).size == (168, 168)  # 28 × 6
    photo = Image.new("RGB", (4000, 3000), (200, 30, 10))
    assert Image.open(io.BytesIO(figures.web_image(photo))).size == (240, 180)
    # A sliver is neither blown up past MAX_ENLARGED nor shrunk to nothing.
    for size in [(900, 3), (3, 900), (1, 1), (200, 2)]:
        shown = Image.open(io.BytesIO(figures.web_image(Image.new("RGB", size)))).size
        assert min(shown) >= 1 and max(shown) <= max(240, figures.MAX_ENLARGED), (size, shown)
    assert Image.open(io.BytesIO(figures.web_image(Image.new("RGBA", (8, 8))))).mode == "RGB"


def test_fixed_layout_figures_keep_their_size_and_draw_once():
    import io

    import torch
    from PIL import Image

    top = figures.topk_bars(torch.tensor([0.7, 0.2, 0.1]), ["a", "b", "a much longer class name than the others"])
    assert getattr(top, figures.FIXED)
    png = Image.open(io.BytesIO(figures.to_png(top, dpi=100)))
    assert png.size == tuple(round(v * 100) for v in top.get_size_inches())  # no tight crop: exactly its size
    # The longest name (cut to NAME_CHARS letters) fits left of the bars.
    labels = [t.get_text() for t in top.axes[0].get_yticklabels()]
    assert max(len(label) for label in labels) == figures.NAME_CHARS and labels[-1].endswith("…")
    renderer = top.canvas.get_renderer()
    assert min(t.get_window_extent(renderer).x0 for t in top.axes[0].get_yticklabels()) >= 0
