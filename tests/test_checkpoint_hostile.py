"""Hostile checkpoints: whatever a file holds, loading gives a usable model or one CheckpointError, nothing else.

Files are written in the real format: a real small checkpoint's payload with fields replaced, removed or added
(wrong types, bools, huge and negative numbers, nan/inf, text with markup and control characters, nested junk,
tensors of any shape and type), and real checkpoint bytes truncated or with bytes flipped.
"""

import copy
import io
import math
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from cnnviz import checkpoint, data, images, models
from cnnviz.models import ConvBlock, ModelSpec
from cnnviz.train import History

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _base() -> checkpoint.Checkpoint:
    spec = ModelSpec(1, 28, 10, [ConvBlock(4, batchnorm=True, dropout=0.1)], hidden=8)
    model = models.build(spec, seed=0).eval()
    history = History(steps=[dict(step=s, epoch=s / 3, loss=2.0 / s, acc=0.1 * s, lr=0.01) for s in (1, 2, 3)],
                      epochs=[dict(epoch=1.0, step=3, val_loss=0.7, val_acc=0.8, seconds=1.5)],
                      status="finished", seconds=1.5, images_per_s=900.0)
    frames = [(0, torch.zeros(4, 1, 3, 3)), (3, model.conv1.weight.detach().clone())]
    return checkpoint.Checkpoint(model, spec, data.info("mnist"), history,
                                 {"test_accuracy": 0.8, "per_class": [0.8] * 10}, frames)


RAW = checkpoint.to_bytes(_base())
PAYLOAD = torch.load(io.BytesIO(RAW), weights_only=True)
for _key in ("class_names", "mean", "std"):  # lists, so that items can be replaced
    PAYLOAD["dataset"][_key] = list(PAYLOAD["dataset"][_key])


def _paths(node, prefix=()) -> list[tuple]:
    """Every place in the payload a value sits, containers included."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += _paths(v, prefix + (i,))
    return out


PATHS = _paths(PAYLOAD)


def _own_base() -> checkpoint.Checkpoint:
    """A model of a user's own images: a dataset no registry knows, so each of its fields is checked on its own."""
    info = data.DatasetInfo("yours-00ff00ff00ff", "My pets", ("cats", "dogs", "mice"), 3, 20, (0.5, 0.4, 0.3),
                            (0.2, 0.2, 0.2), description="30 of your own images in 3 classes.", epochs=50,
                            resize="crop")
    spec = ModelSpec(3, 20, 3, [ConvBlock(4)], hidden=8)
    return checkpoint.Checkpoint(models.build(spec, seed=0).eval(), spec, info, History(status="finished"),
                                 {"test_accuracy": 0.5, "per_class": [0.5] * 3})


OWN_PAYLOAD = torch.load(io.BytesIO(checkpoint.to_bytes(_own_base())), weights_only=True)
for _key in ("class_names", "mean", "std"):
    OWN_PAYLOAD["dataset"][_key] = list(OWN_PAYLOAD["dataset"][_key])
OWN_PATHS = _paths(OWN_PAYLOAD["dataset"], ("dataset",)) + [("spec", "in_channels"), ("spec", "image_size"),
                                                             ("spec", "num_classes")]

HOSTILE_TEXT = ["", " ", "99.9", "**bold** [x](http://e.vil) ![i](http://e.vil/i.png)", "<script>alert(1)</script>",
                ":red[x] :material/home:", "$\\frac{1}{0}$", "a\x00b", "\x1b[2J", "line\nbreak", "\u202eevil",
                "x" * 5000, "relu", "max", "mnist", "shapes", "finished", "1e309"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.integers(-2 ** 70, 2 ** 70), st.floats(),
    st.sampled_from([float("nan"), float("inf"), -0.0, 1e-300, 2.0 ** 64, 4097, 2_000_000]),
    st.text(max_size=60), st.sampled_from(HOSTILE_TEXT), st.binary(max_size=8),
)
tensors = st.builds(
    lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
    st.lists(st.integers(0, 5), max_size=4).map(tuple),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool,
                     torch.complex64]),
    st.sampled_from([0.0, 1.0, -1.0, 1e30, float("nan"), float("inf")]),
) | st.just(torch.zeros(1).expand(10 ** 12))  # a 4-byte view that claims 10¹² values
junk = st.recursive(scalars | tensors, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) |
                    st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3), max_leaves=6)


def _mutate(payload: dict, path: tuple, op: str, value) -> None:
    """Replace, delete or add beside the value at ``path``; a path an earlier mutation removed is left alone."""
    parent = payload
    for key in path[:-1]:
        try:
            parent = parent[key]
        except (KeyError, IndexError, TypeError):
            return
    if not isinstance(parent, (dict, list)) or path[-1] not in (parent if isinstance(parent, dict) else
                                                               range(len(parent))):
        return
    if op == "replace":
        parent[path[-1]] = value
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent["unknown_" + str(path[-1])] = value
    else:
        parent.append(value)


def _saved(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _load_or_refuse(raw: bytes) -> checkpoint.Checkpoint | None:
    """The loaded checkpoint, checked usable, or None when it was refused with a CheckpointError."""
    try:
        ck = checkpoint.load(raw)
    except checkpoint.CheckpointError as e:
        message = str(e)
        assert message and "\n" not in message and len(message) < 400, message
        return None
    _assert_usable(ck)
    return ck


def _assert_usable(ck: checkpoint.Checkpoint) -> None:
    """What every page relies on: a model that runs, metrics that are fractions, names that are text."""
    spec, info = ck.spec, ck.info
    assert ck.model.training is False and ck.metrics_from_file is True
    with torch.no_grad():
        out = ck.model(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size))
    assert out.shape == (2, spec.num_classes) and torch.isfinite(out).all()
    assert set(ck.metrics) <= {"test_accuracy", "per_class"}
    for a in [ck.metrics.get("test_accuracy", 0.5), *ck.metrics.get("per_class", [])]:
        assert type(a) is float and 0 <= a <= 1
    assert len(ck.metrics.get("per_class", [0.5] * spec.num_classes)) == spec.num_classes
    assert len(info.class_names) == spec.num_classes == len(set(info.class_names))
    assert all(type(n) is str and n.isprintable() and 0 < len(n) <= checkpoint.MAX_CLASS_NAME for n in info.class_names)
    assert all(type(t) is str and t.isprintable() for t in (info.title, info.description, ck.history.reason))
    assert len(info.mean) == len(info.std) == spec.in_channels and all(s >= checkpoint.MIN_STD for s in info.std)
    assert all(math.isfinite(x) for x in (*info.mean, *info.std, ck.history.seconds, ck.history.images_per_s))
    assert ck.history.status in checkpoint.STATUSES
    assert info.name in data.DATASETS or data.is_own(info.name)
    assert info.resize in images.RESIZE_POLICIES and (info.channels, info.size) == (spec.in_channels, spec.image_size)
    for row in [*ck.history.steps, *ck.history.epochs]:
        assert type(row["step"]) is int and all(math.isfinite(v) for v in row.values())
    steps = [s for s, _ in ck.filter_frames]
    assert steps == sorted(set(steps))
    assert all(w.shape == ck.model.conv1.weight.shape and w.dtype == torch.float32 for _, w in ck.filter_frames)


def test_the_base_checkpoint_loads():
    ck = _load_or_refuse(RAW)
    assert ck is not None and len(ck.filter_frames) == 2 and ck.metrics["test_accuracy"] == 0.8


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["replace", "replace", "delete", "add"]), junk),
                min_size=1, max_size=3))
def test_mutated_fields_load_or_are_refused(mutations):
    payload = copy.deepcopy(PAYLOAD)
    for path, op, value in mutations:
        _mutate(payload, path, op, value)
    _load_or_refuse(_saved(payload))


def test_the_own_base_checkpoint_loads():
    ck = _load_or_refuse(_saved(OWN_PAYLOAD))
    assert ck is not None and ck.info == _own_base().info


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(OWN_PATHS), st.sampled_from(["replace", "replace", "delete", "add"]),
                          junk | st.sampled_from(["squash", "crop", "pad", "yours-0123456789ab", 1, 3, 28, 256])),
                min_size=1, max_size=3))
def test_mutated_fields_of_an_own_dataset_load_or_are_refused(mutations):
    payload = copy.deepcopy(OWN_PAYLOAD)
    for path, op, value in mutations:
        _mutate(payload, path, op, value)
    _load_or_refuse(_saved(payload))


@SETTINGS
@given(st.one_of(st.from_regex(r"yours-[0-9a-f]{12}", fullmatch=True), st.text(max_size=20).map("yours-".__add__),
                 st.sampled_from([*data.DATASETS, "yours", "yours-", "YOURS-0123456789ab"]), st.text(max_size=20),
                 scalars))
def test_any_dataset_name_loads_only_as_a_built_in_or_an_own_dataset(name):
    payload = copy.deepcopy(OWN_PAYLOAD)
    payload["dataset"]["name"] = name
    ck = _load_or_refuse(_saved(payload))
    assert (ck is not None) == data.is_own(name)  # a built-in name: this model does not fit that dataset


spec_numbers = st.one_of(st.integers(-2, 12), st.sampled_from([0, 255, 256, 257, 4096, 4097, 10 ** 6]),
                         st.floats(-1, 2), st.booleans())


@SETTINGS
@given(st.dictionaries(st.sampled_from(["in_channels", "image_size", "num_classes", "hidden", "head_dropout",
                                        "global_pool"]), spec_numbers, min_size=1),
       st.dictionaries(st.sampled_from(["channels", "kernel", "padding", "stride", "pool_size", "dropout",
                                        "batchnorm"]), spec_numbers),
       st.sampled_from(["relu", "gelu", "tanh", "none", "max", "avg", "RELU", ""]))
def test_mutated_specs_load_or_are_refused(top, block, word):
    payload = copy.deepcopy(PAYLOAD)
    payload["spec"].update(top)
    payload["spec"]["blocks"][0].update(block, activation=word)
    _load_or_refuse(_saved(payload))


@SETTINGS
@given(st.lists(st.text(max_size=50) | st.sampled_from(HOSTILE_TEXT), min_size=10, max_size=10))
def test_any_class_names_load_as_printable_text_or_are_refused(names):
    payload = copy.deepcopy(PAYLOAD)
    payload["dataset"]["class_names"] = names
    ck = _load_or_refuse(_saved(payload))
    if ck is not None:
        assert ck.class_names == tuple(names)  # kept exactly as written, never rewritten


@SETTINGS
@given(st.sampled_from(sorted(k for k, v in PAYLOAD["state_dict"].items() if v.is_floating_point())),
       st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e20, 3e38]))
def test_weights_with_any_values_load_or_are_refused(key, value):
    payload = copy.deepcopy(PAYLOAD)
    payload["state_dict"][key].fill_(value)
    _load_or_refuse(_saved(payload))


@SETTINGS
@given(st.integers(0, len(RAW) - 1))
def test_truncated_files_are_refused(n):
    assert _load_or_refuse(RAW[:n]) is None


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(RAW) - 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_files_with_flipped_bytes_load_or_are_refused(flips):
    raw = bytearray(RAW)
    for i, x in flips:
        raw[i] ^= x
    _load_or_refuse(bytes(raw))


@SETTINGS
@given(st.integers(0, len(RAW)), st.binary(min_size=1, max_size=64))
def test_files_with_inserted_bytes_load_or_are_refused(i, extra):
    _load_or_refuse(RAW[:i] + extra + RAW[i:])


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-memory reset")
def test_a_huge_spec_is_refused_within_bounded_memory():
    payload = copy.deepcopy(PAYLOAD)
    # 55 channels → global pooling → 2,000,000 hidden units: 110 M weights, 440 MB if it were ever built.
    payload["spec"].update(hidden=2_000_000, global_pool=True)
    payload["spec"]["blocks"][0]["channels"] = 55
    raw = _saved(payload)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset this process's peak resident memory to its current size
    before = _peak_rss_mb()
    with pytest.raises(checkpoint.CheckpointError, match="'hidden' must be a whole number from 0 to 4096"):
        checkpoint.load(raw)
    assert _peak_rss_mb() - before < 50


def test_a_stream_without_a_size_is_read_no_further_than_the_limit():
    class Pipe(io.RawIOBase):  # no seek: the size is known only by reading
        given = 0

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), 1 << 20)
            b[:n] = bytes(n)
            Pipe.given += n
            return n

    with pytest.raises(checkpoint.CheckpointError, match="larger than the limit of 20 MB"):
        checkpoint.load(io.BufferedReader(Pipe()))
    assert Pipe.given <= checkpoint.MAX_BYTES + (1 << 20) + io.DEFAULT_BUFFER_SIZE


def test_random_junk_bytes_are_refused():
    rng = random.Random(0)
    for n in (1, 10, 1000, 100_000):
        assert _load_or_refuse(bytes(rng.randrange(256) for _ in range(n))) is None
