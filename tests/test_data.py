import os
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnviz import data


def _write_idx(path, array: np.ndarray) -> None:
    """Write an IDX file (the format of the MNIST files): magic, dims, then raw ubyte data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root, folder="MNIST", n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist_from_files_in_torchvision_layout(tmp_path):
    _write_mnist(tmp_path)
    tr = data.load("mnist", train=True, data_dir=tmp_path)
    te = data.load("mnist", train=False, data_dir=tmp_path)
    assert tr.x.shape == (12, 1, 28, 28) and tr.x.dtype == torch.uint8
    assert tr.y.tolist() == [i % 10 for i in range(12)]
    assert len(te) == 5
    assert tr.info.class_names[3] == "3"


def test_fashion_mnist_from_files(tmp_path):
    _write_mnist(tmp_path, "FashionMNIST")
    tr = data.load("fashion-mnist", train=True, data_dir=tmp_path)
    assert tr.x.shape == (12, 1, 28, 28) and tr.info.class_names[9] == "Ankle boot"


def test_cifar10_from_files_in_torchvision_layout(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar  # noqa: F401  (the module whose checksum check we relax)

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": list(data.CIFAR10_CLASSES)}))
    # The real files are checked against their published MD5 sums; ours are tiny stand-ins in the same format.
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    tr = data.load("cifar10", train=True, data_dir=tmp_path)
    assert tr.x.shape == (15, 3, 32, 32) and tr.y[:3].tolist() == [1, 2, 3]
    first = np.frombuffer(pickle.loads((base / "data_batch_1").read_bytes())["data"][0], np.uint8)
    assert torch.equal(tr.x[0], torch.from_numpy(first.reshape(3, 32, 32).copy()))


def test_missing_dataset_offline_gives_one_clear_sentence(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def no_network(self, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd.MNIST, "download", no_network)
    with pytest.raises(data.DatasetError) as err:
        data.load("mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert "MNIST/raw/train-images-idx3-ubyte" in msg and str(tmp_path) in msg and "\n" not in msg


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNVIZ_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path


def test_unknown_dataset_lists_choices():
    with pytest.raises(KeyError, match="shapes"):
        data.info("imagenet")


def test_shapes_split_in_memory_with_masks():
    te = data.load("shapes", train=False)
    assert te.x.shape == (data.SHAPES_TEST, 3, 32, 32) and te.masks.shape == (data.SHAPES_TEST, 32, 32)
    sub = te.subset(10, seed=1)
    assert len(sub) == 10 and sub.masks.shape == (10, 32, 32)


def test_normalize_known_values_and_inverse():
    info = data.info("mnist")
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    z = data.normalize(x, info)
    assert torch.allclose(z, torch.full_like(z, (1 - 0.1307) / 0.3081))
    assert torch.allclose(data.denormalize(z, info), torch.ones_like(z))



def _labelled(y: list[int], k: int) -> data.Split:
    """A split of ``len(y)`` tiny images, each carrying its own index (see :func:`_ids`), with labels ``y``."""
    n = len(y)
    i = torch.arange(n)
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = (i // 256).to(torch.uint8), (i % 256).to(torch.uint8)
    masks = torch.zeros(n, 2, 2, dtype=torch.bool)
    masks[:, 0, 0] = i % 2 == 1
    ds_info = data.DatasetInfo("t", "t", tuple(str(c) for c in range(k)), 1, 2, (0.5,), (0.5,))
    return data.Split(ds_info, x, torch.tensor(y, dtype=torch.int64), masks)


def _ids(split: data.Split) -> list[int]:
    """The original index of every image of a part of a :func:`_labelled` split."""
    return (split.x[:, 0, 0, 0].long() * 256 + split.x[:, 0, 0, 1].long()).tolist()


def test_holdout_known_sizes_disjoint_and_stratified():
    # 200 images: 150 of class 0, 50 of class 1. A stratified holdout of 40 keeps the 3 : 1 share: 30 and 10.
    split = _labelled([0] * 150 + [1] * 50, 2)
    tr, val = data.holdout(split, 100, 40, seed=3)
    assert (len(tr), len(val)) == (100, 40)
    assert torch.bincount(val.y).tolist() == [30, 10] and torch.bincount(tr.y).tolist() == [75, 25]
    assert len(set(_ids(tr))) == 100 and not set(_ids(tr)) & set(_ids(val))
    # Every image keeps its own label and mask.
    for part in (tr, val):
        ids = torch.tensor(_ids(part))
        assert torch.equal(part.y, split.y[ids]) and torch.equal(part.masks, split.masks[ids])


def test_holdout_everything_not_held_out_and_deterministic():
    split = _labelled([c % 3 for c in range(300)], 3)
    tr, val = data.holdout(split, None, 50, seed=7)
    assert len(tr) == 250 and len(val) == 50
    assert sorted(_ids(tr) + _ids(val)) == list(range(300))  # together: the whole split, each image once
    again_tr, again_val = data.holdout(split, None, 50, seed=7)
    assert _ids(again_val) == _ids(val) and _ids(again_tr) == _ids(tr)
    assert set(_ids(data.holdout(split, None, 50, seed=8)[1])) != set(_ids(val))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=400), st.data())
def test_holdout_any_labels_keeps_class_shares(labels, draw):
    split = _labelled(labels, 5)
    n = len(labels)
    n_val = draw.draw(st.integers(1, n - 1), label="n_val")
    n_train = draw.draw(st.none() | st.integers(1, n - n_val), label="n_train")
    tr, val = data.holdout(split, n_train, n_val, seed=draw.draw(st.integers(0, 2**31), label="seed"))
    assert len(val) == n_val and len(tr) == (n_train or n - n_val)
    assert not set(_ids(tr)) & set(_ids(val)) and len(set(_ids(tr))) == len(tr)
    counts = torch.bincount(split.y, minlength=5).double()
    share = n_val * counts / n  # what each class would hold in a perfectly stratified holdout
    assert (torch.bincount(val.y, minlength=5).double() - share).abs().max() <= 1.5


def test_holdout_refuses_impossible_sizes():
    split = _labelled([0, 1] * 5, 2)
    for n_train, n_val in ((None, 0), (None, 10), (5, 6), (0, 3)):
        with pytest.raises(ValueError, match="images"):
            data.holdout(split, n_train, n_val, seed=0)


def test_own_dataset_names_are_yours_and_twelve_hex_digits():
    assert data.is_own("yours-0123456789ab") and not data.is_own("yours-0123456789AB")
    assert not any(data.is_own(n) for n in ("yours-", "yours-0123456789abc", "mnist", None, 7, "yours-../x"))
    assert data.DatasetInfo("x", "x", ("a", "b"), 1, 8, (0.5,), (0.2,)).resize == "squash"
