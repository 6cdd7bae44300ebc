import os
import pickle
import struct

import numpy as np
import pytest
import torch

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
