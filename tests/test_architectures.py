"""VGG's stacked kernels counted, and Inception's branches measured by object size, on models with known answers."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnnviz import architectures as arch
from cnnviz import data, models


def _vgg_stack(n: int, c: int = 8) -> nn.Sequential:
    layers = []
    for i in range(1, n + 1):
        layers += [(f"conv{i}", nn.Conv2d(3 if i == 1 else c, c, 3, padding=1)), (f"relu{i}", nn.ReLU())]
    return nn.Sequential(OrderedDict(layers + [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                                               ("fc", nn.Linear(c, 2))]))


def test_n_stacked_3x3_convolutions_see_2n_plus_1_pixels_with_fewer_weights():
    rows = arch.receptive_growth(_vgg_stack(4), 16)
    assert [r.layer for r in rows] == ["conv1", "conv2", "conv3", "conv4"]
    assert [r.field for r in rows] == [3, 5, 7, 9] == [arch.stacked_field(n) for n in (1, 2, 3, 4)]
    assert [r.convs for r in rows] == [1, 2, 3, 4] and [r.activations for r in rows] == [0, 1, 2, 3]
    assert [r.weights for r in rows] == [3 * 8 * 9, 3 * 8 * 9 + 576, 3 * 8 * 9 + 2 * 576, 3 * 8 * 9 + 3 * 576]
    assert rows[2].single_weights == 7 * 7 * 3 * 8  # one 7×7 conv from the image's 3 channels to 8
    # VGG's count with C channels in and out: three 3×3 hold 27 C², one 7×7 holds 49 C².
    assert (rows[2].stack_weights_same, rows[2].single_weights_same) == (27 * 64, 49 * 64)
    assert all(r.stack_weights_same < r.single_weights_same for r in rows[1:])
    assert arch.stacked_field(2, kernel=5) == 9


def test_a_spec_with_pooling_counts_its_jumps():
    spec = models.ModelSpec(in_channels=1, image_size=16, num_classes=2,
                            blocks=[models.ConvBlock(4, pool="max"), models.ConvBlock(4, pool="none"),
                                    models.ConvBlock(4, kernel=5, padding=2, pool="none")])
    rows = arch.receptive_growth(spec)
    # conv1 sees 3; the 2×2 pool makes it 4 with a jump of 2; conv2 adds 2 × 2; the 5×5 conv3 adds 4 × 2.
    assert [(r.field, r.jump, r.kernel) for r in rows] == [(3, 1, 3), (8, 2, 3), (16, 2, 5)]
    assert rows[2].stack_weights_same == (9 + 9 + 25) * 16
    with pytest.raises(ValueError, match="input size"):
        arch.receptive_growth(_vgg_stack(2))
    with pytest.raises(ValueError, match="n >= 1"):
        arch.stacked_field(0)


class _Abs(nn.Module):
    def forward(self, x):
        return x.abs()


class _Concat(nn.Module):
    def forward(self, parts):
        return torch.cat(parts, 1)


class _SizeBlock(nn.Module):
    """Two branches with known answers on a white square of side s on black: ``area`` (the image itself) averages
    s² / HW, ``edges`` (|Laplacian|) 8 s / HW: the area grows faster with size than the outline does."""

    def __init__(self) -> None:
        super().__init__()
        self.area = nn.Identity()
        self.edges = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), _Abs())
        with torch.no_grad():
            self.edges[0].weight.copy_(torch.tensor([[[[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]]]))
        self.concat = _Concat()

    def forward(self, x):
        return self.concat([self.area(x), self.edges(x)])


def _squares(sides: list[int], size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(len(sides), 1, size, size)
    for i, s in enumerate(sides):
        x[i, 0, 2: 2 + s, 2 + i % 2: 2 + i % 2 + s] = 1.0  # away from the border: the outline is whole
    return x, x[:, 0] > 0


def test_which_branch_fires_for_which_size_on_a_block_with_known_answers():
    model = nn.Sequential(OrderedDict(inc1=_SizeBlock(), gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                      fc=nn.Linear(2, 2)))
    sides = [2, 3, 4, 6, 8]
    x, masks = _squares(sides)
    names, acts = arch.branch_activations(model, "inc1", x)
    assert names == ["inc1.area", "inc1.edges"]  # the concatenation does not read the block's input
    assert acts[:, 0].tolist() == pytest.approx([s * s / 144 for s in sides])
    assert acts[:, 1].tolist() == pytest.approx([8 * s / 144 for s in sides])
    sizes = arch.object_sizes(masks)
    assert sizes.tolist() == pytest.approx(sides)

    table = arch.branch_table("inc1", names, acts, sizes, bins=[0, 3.5, 5, 9])
    assert table.counts == [2, 1, 2]
    assert table.mean[0] == pytest.approx([(4 + 9) / 2 / 144, 8 * 2.5 / 144])
    area_all, edges_all = sum(s * s for s in sides) / 5 / 144, 8 * sum(sides) / 5 / 144
    assert table.relative[2] == pytest.approx([(36 + 64) / 2 / 144 / area_all, 8 * 7 / 144 / edges_all])
    assert table.strongest == ["inc1.edges", "inc1.edges", "inc1.area"]
    rows = table.rows()
    assert rows[0]["object size (px)"] == "0.0–3.5" and rows[2]["fires most"] == "inc1.area"
    assert rows[1]["images"] == 1 and rows[1]["inc1.area"] == pytest.approx(table.relative[1][0])

    equal = arch.branch_table("inc1", names, acts, sizes, bins=2)
    assert sum(equal.counts) == 5 and equal.edges[0] == 2 and equal.edges[-1] == 8

    named, _ = arch.branch_activations(model, "inc1", x, branches=["edges"])
    assert named == ["inc1.edges"]
    with pytest.raises(ValueError, match="no branch named 'nope'"):
        arch.branch_activations(model, "inc1", x, branches=["nope"])
    with pytest.raises(ValueError, match="reads the block's input"):
        arch.branch_activations(model, "fc", x)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_sized_shapes_grow_their_objects_and_feed_the_table():
    split = arch.sized_shapes(60, size=32, zooms=(1.0, 1.5), seed=0)
    assert split.x.shape == (60, 3, 32, 32) and split.x.dtype == torch.uint8 and split.masks.shape == (60, 32, 32)
    sizes = arch.object_sizes(split.masks)
    assert sizes[30:].mean() > 1.3 * sizes[:30].mean()  # objects drawn 1.5× as large
    assert (split.masks.flatten(1).sum(1) > 0).all()  # every object is in its window
    assert split.info.size == 32 and split.info.name == "shapes"

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(inc1=_SizeBlock(), conv=nn.Conv2d(2, 2, 3), gap=nn.AdaptiveAvgPool2d(1),
                                      flatten=nn.Flatten(), fc=nn.Linear(2, 8)))
    model.inc1.edges[0] = nn.Conv2d(3, 1, 3, padding=1)
    model.conv = nn.Conv2d(4, 2, 3)
    table = arch.branch_response(model, "inc1", split, bins=3)
    assert table.branches == ["inc1.area", "inc1.edges"] and sum(table.counts) == 60 and len(table.mean) == 3
    assert table.edges == sorted(table.edges)
    with pytest.raises(ValueError, match="masks"):
        arch.branch_response(model, "inc1", data.Split(split.info, split.x, split.y), bins=3)
