import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz import shapes


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return shapes.generate(5000, seed=7)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(shapes.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(shapes.STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def test_shapes_and_dtypes():
    x, y, masks = shapes.generate(10, seed=1, size=48)
    assert x.shape == (10, 3, 48, 48) and x.dtype == torch.uint8
    assert y.shape == (10,) and y.dtype == torch.int64
    assert masks.shape == (10, 48, 48) and masks.dtype == torch.bool
    assert len(shapes.CLASS_NAMES) >= 8 and shapes.DEFAULT_SIZE == 32


def test_empty_and_invalid_requests():
    x, y, masks = shapes.generate(0)
    assert x.shape == (0, 3, 32, 32) and y.shape == (0,) and masks.shape == (0, 32, 32)
    with pytest.raises(ValueError, match="n >= 0"):
        shapes.generate(-1)
    with pytest.raises(ValueError, match="size >= 16"):
        shapes.generate(4, size=8)


def test_same_seed_same_tensors_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    first, second = shapes.generate(300, seed=3), shapes.generate(300, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    other = shapes.generate(300, seed=4)
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


def test_classes_balanced(batch):
    _, y, _ = batch
    counts = torch.bincount(y, minlength=len(shapes.CLASS_NAMES))
    assert len(counts) == len(shapes.CLASS_NAMES)
    assert counts.max() - counts.min() <= 1  # labels cycle through the classes before shuffling
    assert y[:16].unique().numel() > 4  # …and are shuffled, not in runs


def test_masks_hold_whole_object_inside_image(batch):
    _, _, masks = batch
    area = masks.sum((1, 2))
    assert area.min() >= 30  # even the smallest stripes cover more than a few pixels
    border = masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
    assert border.float().mean() < 0.01


def test_mask_areas_match_the_shapes_geometry(batch):
    # Area of each shape's region (its outline filled in) in units of radius², from its definition; only ratios to
    # the circle are compared, so the random radius cancels out.
    expected = {
        "circle": math.pi * 0.9**2,
        "square": 1.4**2,
        "triangle": 3 * math.sqrt(3) / 4,
        "cross": 2 * 1.9 * 0.6 - 0.6**2,
        "star": 10 * 0.5 * 0.45 * math.sin(math.pi / 5),
        "ring": math.pi * 0.92**2,  # the hole is part of the ring's region
        "horizontal stripes": 1.1 * 1.7,  # the box the three bars fill, gaps included
        "vertical stripes": 1.1 * 1.7,
    }
    _, y, masks = batch
    area = masks.sum((1, 2)).float()
    circle = area[y == 0].mean()
    for label, name in enumerate(shapes.CLASS_NAMES):
        ratio = area[y == label].mean() / circle
        assert ratio == pytest.approx(expected[name] / expected["circle"], rel=0.05), name


def test_object_stands_out_from_its_surroundings(batch):
    x, y, masks = batch
    # Solid shapes only: a ring's or stripes' region also holds the background in its hole and gaps.
    solid = torch.tensor([shapes.CLASS_NAMES[int(c)] not in ("ring", "horizontal stripes", "vertical stripes")
                          for c in y])
    x, masks = x[solid], masks[solid]
    image, mask = x.float() / 255, masks[:, None].float()
    around = F.max_pool2d(mask, 5, stride=1, padding=2) - mask  # a 2-pixel band just outside the object
    inside = (image * mask).sum((2, 3)) / mask.sum((2, 3))
    outside = (image * around).sum((2, 3)) / around.sum((2, 3))
    brightness = torch.tensor([0.299, 0.587, 0.114])
    assert ((inside - outside) @ brightness).abs().min() > 0.15


def test_size_scales_the_objects():
    area_32 = shapes.generate(1000, seed=2)[2].sum((1, 2)).float().mean()
    area_64 = shapes.generate(1000, seed=2, size=64)[2].sum((1, 2)).float().mean()
    assert area_64 / area_32 == pytest.approx(4, rel=0.05)


def test_mean_and_std_constants_match_the_data(batch):
    pixels = batch[0].float() / 255
    assert pixels.mean((0, 2, 3)).tolist() == pytest.approx(shapes.MEAN, abs=0.02)
    assert pixels.std((0, 2, 3)).tolist() == pytest.approx(shapes.STD, abs=0.02)


def test_linear_model_fails(batch):
    # Position, size, angle, colour and polarity all vary, so no single pixel template fits a class.
    x, y, _ = batch
    pixels = _normalise(x).flatten(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        linear = nn.Linear(pixels.shape[1], len(shapes.CLASS_NAMES))
    optimiser = torch.optim.Adam(linear.parameters(), lr=1e-3)
    for _ in range(200):
        optimiser.zero_grad()
        F.cross_entropy(linear(pixels[:4000]), y[:4000]).backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = (linear(pixels[4000:]).argmax(1) == y[4000:]).float().mean()
    assert accuracy < 0.5  # chance is 1/8


@pytest.mark.slow
def test_small_cnn_learns_it():
    x, y, _ = shapes.generate(9000, seed=11)
    x = _normalise(x)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
            nn.Flatten(), nn.Linear(64, len(shapes.CLASS_NAMES)),
        )
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(2):
        for batch_idx in torch.randperm(8000, generator=order).split(64):
            optimiser.zero_grad()
            F.cross_entropy(net(x[batch_idx]), y[batch_idx]).backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = (net(x[8000:]).argmax(1) == y[8000:]).float().mean()
    assert accuracy > 0.9
