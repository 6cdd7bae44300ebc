import pytest
import torch
from torch import nn

from cnnviz import data, models, parts, train


@pytest.fixture(scope="module")
def scenes() -> parts.Scenes:
    return parts.generate(3000, seed=7)


# What each class is made of, from the examples and our additions (the parts each class draws).
EXPECTED_PARTS = {
    "face": {"head", "eye", "mouth"},
    "robot": {"head", "eye", "mouth", "antenna"},
    "snowman": {"body", "head", "eye"},
    "house": {"wall", "roof", "window", "door"},
    "car": {"body", "window", "wheel"},
    "bus": {"body", "window", "wheel"},
    "flower": {"petal", "centre", "stem"},
    "tree": {"crown", "trunk"},
    "balloon": {"body", "stem"},
    "fish": {"body", "tail", "eye"},
}


def test_shapes_dtypes_and_concept_list():
    s = parts.generate(10, seed=1)
    assert s.images.shape == (10, 3, 64, 64) and s.images.dtype == torch.uint8
    assert s.labels.shape == (10,) and s.labels.dtype == torch.int64
    assert s.concepts.shape == (10, 4, 64, 64) and s.concepts.dtype == torch.uint8
    assert 8 <= len(parts.CLASS_NAMES) <= 10 and len(s) == 10
    assert {c.category for c in parts.CONCEPTS} == set(parts.CATEGORIES)
    for category in parts.CATEGORIES:  # each category's values are 1, 2, … in list order
        values = [c.value for c in parts.CONCEPTS if c.category == category]
        assert values == list(range(1, len(values) + 1))
    assert parts.concept("wheel") == parts.Concept("wheel", "part", parts.PART_NAMES.index("wheel") + 1)
    with pytest.raises(KeyError):
        parts.concept("banana")
    empty = parts.generate(0)
    assert empty.images.shape == (0, 3, 64, 64) and empty.concepts.shape == (0, 4, 64, 64)
    with pytest.raises(ValueError, match="n >= 0"):
        parts.generate(-1)


def test_same_seed_same_scenes_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    first, second = parts.generate(300, seed=3), parts.generate(300, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in ((first.images, second.images), (first.labels, second.labels), (first.concepts, second.concepts)):
        assert torch.equal(a, b)
    other = parts.generate(300, seed=4)
    assert not torch.equal(first.images, other.images) and not torch.equal(first.labels, other.labels)


def test_classes_balanced_and_shuffled(scenes):
    counts = torch.bincount(scenes.labels, minlength=len(parts.CLASS_NAMES))
    assert counts.max() - counts.min() <= 1
    assert scenes.labels[:20].unique().numel() > 5


def test_colour_masks_hold_pixels_of_that_colour(scenes):
    # Each surface's colour is its named colour ± JITTER, plus pixel noise of ± NOISE: nothing else.
    tolerance = parts.JITTER + parts.NOISE * 255 + 1
    rgb = torch.tensor([c for _, c in parts._PALETTE], dtype=torch.float32)  # (colours, 3)
    colour = scenes.concepts[:1000, 0].long()  # (N, H, W), values 1…
    assert colour.min() >= 1  # every pixel has a colour
    expected = rgb[colour - 1].permute(0, 3, 1, 2)  # (N, 3, H, W)
    assert (scenes.images[:1000].float() - expected).abs().max() <= tolerance


def test_each_plain_part_is_one_colour_and_objects_are_their_parts(scenes):
    colour, texture, part, obj = (scenes.concepts[:, k].long() for k in range(4))
    assert torch.equal(obj > 0, part > 0)  # an object is the union of its parts
    assert torch.equal(obj.amax((1, 2)), scenes.labels + 1)  # …of its own class only
    # Within one image, a part's untextured pixels all have one colour (a part is one painted surface).
    plain = (part > 0) & (texture == 0)
    key = (torch.arange(len(part))[:, None, None] * 32 + part)[plain]
    lo = torch.full((len(part) * 32,), 99).scatter_reduce(0, key, colour[plain], "amin")
    hi = torch.zeros(len(part) * 32, dtype=torch.long).scatter_reduce(0, key, colour[plain], "amax")
    used = key.unique()
    assert len(used) > 2 * len(part)
    assert torch.equal(lo[used], hi[used])


def test_each_class_is_made_of_its_parts(scenes):
    part = scenes.concepts[:, 2].long()
    for label, name in enumerate(parts.CLASS_NAMES):
        found = part[scenes.labels == label].unique().tolist()
        assert {parts.PART_NAMES[v - 1] for v in found if v} == EXPECTED_PARTS[name], name
    shared = [p for p in parts.PART_NAMES if sum(p in ps for ps in EXPECTED_PARTS.values()) > 1]
    assert {"head", "eye", "mouth", "window", "body", "wheel", "stem"} <= set(shared)


def test_textures_show_two_colours_and_signatures_are_worn(scenes):
    colour, texture, part = (scenes.concepts[:, k] for k in (0, 1, 2))
    for t, name in enumerate(parts.TEXTURE_NAMES, start=1):
        here = texture[:300] == t
        assert here.any(), name
        big = here.sum((1, 2)) >= 150  # a patch not hidden behind the object
        image = big.nonzero()[0, 0]
        assert colour[image][here[image]].unique().numel() >= 2, name
    for name, texture_name in parts.SIGNATURE.items():
        mine = scenes.labels == parts.CLASS_NAMES.index(name)
        worn = ((texture == parts.TEXTURE_NAMES.index(texture_name) + 1) & (part > 0)).flatten(1).any(1)
        assert 0.35 < worn[mine].float().mean() < 0.65, name  # SIGNATURE_RATE of them
    others = ~torch.isin(scenes.labels, torch.tensor([parts.CLASS_NAMES.index(n) for n in parts.SIGNATURE]))
    assert not ((texture > 0) & (part > 0))[others].any()


def test_texture_patterns_have_their_geometry():
    def pattern(name: str) -> torch.Tensor:
        texture = torch.full((4, 64, 64), parts.TEXTURE_NAMES.index(name) + 1, dtype=torch.uint8)
        return parts._patterns(texture, texture[:, :1, 0].expand(-1, 16), torch.Generator().manual_seed(0))

    rows = pattern("horizontal stripes")
    assert torch.equal(rows, rows[:, :, :1].expand_as(rows))  # each row one colour
    assert (rows[:, 1:, 0] != rows[:, :-1, 0]).sum(1).min() >= 64 // 4  # …changing every 2–3.5 pixels
    cols = pattern("vertical stripes")
    assert torch.equal(cols, cols[:, :1, :].expand_as(cols))
    checks = pattern("checks")  # x-stripes XOR y-stripes: any two rows differ by a whole row pattern
    assert torch.equal(checks[:, :, :] ^ checks[:, :1, :], (checks[:, :, :1] ^ checks[:, :1, :1]).expand_as(checks))
    for name in parts.TEXTURE_NAMES:  # both colours in good measure
        share = pattern(name).float().mean().item()
        assert 0.1 < share < 0.9, name


def test_every_concept_is_small_and_present(scenes):
    pixels = scenes.concepts[:, 0].numel()
    counts = [torch.bincount(scenes.concepts[:, k].flatten().long(), minlength=256) for k in range(4)]
    for c in parts.CONCEPTS:
        share = counts[parts.CATEGORIES.index(c.category)][c.value].item() / pixels
        assert 0.0003 < share < 0.05, (c.name, share)


def test_parts_is_a_built_in_dataset():
    info = data.info("parts")
    assert (info.channels, info.size, info.class_names, info.preset) == (3, 64, parts.CLASS_NAMES, "parts")
    test = data.load("parts", train=False)
    assert len(test) == data.PARTS_TEST and test.x.dtype == torch.uint8
    dissected = parts.cached(data.PARTS_TEST, 1)  # the test stream of seed 0: the images dissection uses
    assert torch.equal(test.x, dissected.images) and torch.equal(test.masks, dissected.objects)
    assert parts.cached(data.PARTS_TEST, 1) is dissected


def test_mean_and_std_are_the_datasets(scenes):
    x = scenes.images.float() / 255  # MEAN and STD were measured on 20,000 scenes of seed 0
    assert torch.allclose(x.mean((0, 2, 3)), torch.tensor(parts.MEAN), atol=0.01)
    assert torch.allclose(x.std((0, 2, 3)), torch.tensor(parts.STD), atol=0.01)


@pytest.fixture(scope="module")
def small_splits() -> tuple[data.Split, data.Split]:
    info = data.info("parts")
    tr, te = parts.generate(3000, seed=100), parts.generate(600, seed=101)
    return data.Split(info, tr.images, tr.labels), data.Split(info, te.images, te.labels)


def _accuracy(model: nn.Module, splits: tuple[data.Split, data.Split], monkeypatch) -> float:
    """Test accuracy after the same 150 steps of 64 images for every model (no early stop at chance)."""
    monkeypatch.setattr(train, "STUCK_AFTER", 10**9)
    tr, te = splits
    train.fit(model, tr, train.TrainConfig(batch_size=parts.BATCH_SIZE, lr=parts.LR, min_steps=150, max_steps=150))
    return train.evaluate(model, te).accuracy


@pytest.mark.slow
def test_classes_need_a_hierarchy_of_features(small_splits, monkeypatch):
    # Chance is 10 %. Pixels alone (a linear model) and one layer of local detectors (colours, edges, textures:
    # one conv layer of 5×5 filters, then an average over the image) cannot tell the classes apart; four layers,
    # which see parts and then whole objects, can, already after 150 steps.
    linear = _accuracy(nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 10)), small_splits, monkeypatch)
    one = models.ModelSpec(3, 64, 10, [models.ConvBlock(32, kernel=5, padding=2, stride=2, batchnorm=True)],
                           global_pool=True)
    one_layer = _accuracy(models.build(one, seed=0), small_splits, monkeypatch)
    default = _accuracy(models.build(parts.model_spec(), seed=0), small_splits, monkeypatch)
    assert linear < 0.2
    assert one_layer < 0.2
    assert default > 0.25 and default > one_layer + 0.15
