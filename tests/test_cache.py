"""The server-wide caches: sizes in bytes, eviction by bytes, expiry, one computation per key, and the bound that
64 twelve-megapixel uploads must stay under."""

import io
import dataclasses
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz import checkpoint, images
from cnnviz.ui import cache
from cnnviz.ui.cache import BytesCache, nbytes


def floats(n: int) -> torch.Tensor:
    """A float32 tensor of ``n`` elements: ``4 n`` bytes."""
    return torch.arange(n, dtype=torch.float32)


# --- nbytes: known answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj, expected", [
    (torch.zeros(10, 3), 120),
    (torch.zeros(7, dtype=torch.uint8), 7),
    (torch.zeros(2, 5, dtype=torch.float64), 80),
    (np.zeros((4, 5), np.uint8), 20),
    (np.zeros(3, np.int64), 24),
    (Image.new("L", (10, 10)), 100),
    (Image.new("I;16", (10, 10)), 200),
    (Image.new("RGB", (10, 10)), 400),  # Pillow keeps RGB in 4 bytes a pixel
    (Image.new("F", (3, 2)), 24),
])
def test_nbytes_of_buffers(obj, expected):
    assert nbytes(obj) == expected


def test_nbytes_of_byte_strings_counts_their_content():
    assert nbytes(b"x" * 1000) == sys.getsizeof(b"") + 1000
    assert nbytes(b"x" * 2000) - nbytes(b"x" * 1000) == 1000


def test_nbytes_counts_a_view_at_its_own_size():
    t = torch.zeros(100, 10)
    assert nbytes(t[0]) == 40 and nbytes(t[:, :2]) == 800


@dataclasses.dataclass
class Holder:
    a: torch.Tensor
    b: object


def test_nbytes_walks_dataclasses_dicts_lists_and_tuples():
    t, arr, im = floats(100), np.zeros(50, np.uint8), Image.new("L", (8, 8))
    value = Holder(t, {"arr": arr, "list": [im, (b"abc",)]})
    inner = value.b
    expected = (400 + 50 + 64 + sys.getsizeof(b"abc") + sys.getsizeof(value) + sys.getsizeof(inner)
                + sys.getsizeof("arr") + sys.getsizeof("list") + sys.getsizeof(inner["list"])
                + sys.getsizeof(inner["list"][1]))
    assert nbytes(value) == expected


def test_nbytes_counts_a_shared_object_once():
    t = floats(1000)
    inner = (t,)
    outer = [t, t, inner]
    assert nbytes(outer) == 4000 + sys.getsizeof(outer) + sys.getsizeof(inner)


# --- BytesCache -------------------------------------------------------------------------------------------------


def test_evicts_the_least_recently_used_by_bytes():
    c = BytesCache(max_bytes=1000)
    make = {k: (lambda k=k: floats(100)) for k in "abcd"}  # 400 bytes each: two fit, three do not
    a = c.get_or_compute("a", make["a"])
    c.get_or_compute("b", make["b"])
    assert c.currsize == 800 and len(c) == 2
    assert c.get_or_compute("a", lambda: pytest.fail("a is cached")) is a  # a is now the most recently used
    c.get_or_compute("c", make["c"])
    assert c.currsize == 800 and c.currsize <= c.max_bytes
    calls = []
    c.get_or_compute("b", lambda: calls.append("b") or floats(100))  # b was evicted: computed again
    assert calls == ["b"]


def test_a_value_larger_than_the_budget_is_returned_but_not_kept():
    c = BytesCache(max_bytes=1000)
    big = c.get_or_compute("big", lambda: floats(1000))
    assert big.shape == (1000,) and len(c) == 0 and c.currsize == 0


def test_entries_expire_after_the_ttl():
    now = [0.0]
    c = BytesCache(max_bytes=10_000, ttl=60, timer=lambda: now[0])
    calls = []

    def compute():
        calls.append(now[0])
        return floats(10)

    c.get_or_compute("k", compute)
    now[0] = 59.0
    c.get_or_compute("k", compute)
    assert calls == [0.0]
    now[0] = 61.0
    c.get_or_compute("k", compute)
    assert calls == [0.0, 61.0]
    assert c.currsize == 40  # the expired entry's bytes were given back


def test_concurrent_callers_of_one_key_compute_it_once():
    c = BytesCache(max_bytes=10_000)
    calls = []
    start = threading.Barrier(8)
    results = []

    def compute():
        calls.append(1)
        time.sleep(0.2)  # long enough that every thread arrives while it runs
        return floats(10)

    def student():
        start.wait()
        results.append(c.get_or_compute("same image", compute))

    threads = [threading.Thread(target=student) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(results) == 8
    assert all(r is results[0] for r in results)


def test_a_slow_computation_does_not_block_other_keys():
    c = BytesCache(max_bytes=10_000)
    release = threading.Event()
    slow = threading.Thread(target=c.get_or_compute, args=("slow", lambda: release.wait(10) and floats(1)))
    slow.start()
    try:
        start = time.perf_counter()
        assert c.get_or_compute("fast", lambda: floats(2)).shape == (2,)
        assert time.perf_counter() - start < 1
    finally:
        release.set()
        slow.join(10)
    assert c.get_or_compute("slow", lambda: pytest.fail("slow is cached")).shape == (1,)


def test_a_failed_computation_is_not_stored_and_a_waiter_computes_its_own():
    c = BytesCache(max_bytes=10_000)
    entered = threading.Event()
    proceed = threading.Event()
    errors = []

    def failing():
        entered.set()
        proceed.wait(10)
        raise images.ImageError("damaged")

    def owner():
        try:
            c.get_or_compute("k", failing)
        except images.ImageError as e:
            errors.append(str(e))

    first = threading.Thread(target=owner)
    first.start()
    entered.wait(10)
    waiter_result = []
    waiter = threading.Thread(target=lambda: waiter_result.append(c.get_or_compute("k", lambda: floats(3))))
    waiter.start()
    time.sleep(0.1)  # the waiter is now waiting on the owner's computation
    proceed.set()
    first.join(10)
    waiter.join(10)
    assert errors == ["damaged"]
    assert waiter_result[0].shape == (3,) and len(c) == 1


def test_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CNNVIZ_CACHE_MB", "64")
    assert cache.total_budget() == 64 * 1024 * 1024
    monkeypatch.delenv("CNNVIZ_CACHE_MB")
    assert cache.total_budget() == cache.DEFAULT_MB * 1024 * 1024
    for bad in ("lots", "-5", "0", "nan", "inf"):
        monkeypatch.setenv("CNNVIZ_CACHE_MB", bad)
        with pytest.raises(ValueError, match="CNNVIZ_CACHE_MB"):
            cache.total_budget()


def test_the_shares_split_the_total():
    assert sum(cache.SHARES.values()) == pytest.approx(1)
    budgets = {name: getattr(cache, name).cache.max_bytes for name in cache.SHARES}
    assert sum(budgets.values()) <= cache.total_budget()


# --- the page-facing caches -------------------------------------------------------------------------------------


def test_keys_leave_out_underscored_arguments_and_hash_bytes():
    calls = []

    @cache.cached("cam")
    def f(_model, model_id: str, data: bytes) -> torch.Tensor:
        calls.append(model_id)
        return floats(4)

    first = f(object(), "m1", b"photo" * 1000)
    assert f(object(), "m1", b"photo" * 1000) is first  # another model object, same id and bytes: a hit
    f(object(), "m2", b"photo" * 1000)
    f(object(), "m1", b"other")
    assert calls == ["m1", "m2", "m1"]
    keys = list(f.cache._cache.keys())
    assert all(len(repr(k)) < 200 for k in keys)  # the key holds a digest, never the upload


@pytest.mark.slow
def test_64_inspections_of_12_megapixel_photos_stay_under_the_budget(monkeypatch):
    ck = checkpoint.load(Path(__file__).parent.parent / "assets" / "shapes_model.pt")
    photo = Image.new("RGB", (4000, 3000), (200, 90, 30))  # 12 megapixels: 48 MB as Pillow holds it
    photo.paste((30, 90, 200), (2000, 0, 4000, 3000))
    # Decoding is images.load's job (tested in test_images); here each upload is the same decoded photo.
    monkeypatch.setattr(cache.images, "load", lambda raw: photo)
    store = cache.inspection.cache
    store.clear()
    try:
        sizes = []
        for i in range(64):  # 64 different uploads: each its own key
            ins = cache.inspection(ck.model, "shipped", ck.info, f"upload {i}".encode(), "squash", None)
            sizes.append(nbytes(ins))
            assert store.currsize <= store.max_bytes
        assert ins.prepared.steps[0].title == "Original (4000×3000)"
        assert ins.prepared.steps[0].image.size == (512, 384)
        assert max(sizes) < 4 * 1024 * 1024  # not 48 MB: the photo is kept only as large as it is shown
        assert store.currsize <= cache.total_budget() * cache.SHARES["inspection"]
        # What is left is the most recent uploads, exactly: older ones were dropped to make room.
        assert store.currsize == sum(sizes[64 - len(store):])
    finally:
        store.clear()


def test_web_images_are_encoded_once_per_key():
    from PIL import Image

    made = []

    def make():
        made.append(1)
        return [Image.new("RGB", (8, 8), (200, 10, 10)), Image.new("L", (400, 300))]

    first = cache.web_images(("test-web-images-once",), make)
    again = cache.web_images(("test-web-images-once",), make)
    assert first is again and made == [1] and len(first) == 2
    assert Image.open(io.BytesIO(first[0])).size == (160, 160)  # the 8×8 picture, each pixel a 20×20 square
    assert Image.open(io.BytesIO(first[1])).size == (240, 180)
