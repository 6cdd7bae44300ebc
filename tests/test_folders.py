"""Your own images as a dataset (cnnviz.folders through data.from_folder / data.from_images).

Folders and zips are built here from generated PNG, JPEG and WebP images. Hostile zips are written byte by byte
(:func:`_raw_zip`) so that they can lie: sizes, entry counts, link bits, names zipfile itself would never write.
"""

from __future__ import annotations

import io
import os
import struct
import time
import unicodedata
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from cnnviz import checkpoint, data, folders, models

MB = 1024 * 1024


# --- images, folders and zips --------------------------------------------------------------------------------------

def _image(fmt: str, colour, size=(40, 30), mode="RGB", **save) -> bytes:
    """A solid image in a format: resizing keeps it solid, so its pixels are known after loading."""
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, fmt, **save)
    return buf.getvalue()


def _png(colour=(10, 20, 30), size=(40, 30)) -> bytes:
    return _image("PNG", colour, size)


def _pixel(raw: bytes) -> tuple[int, ...]:
    """The colour an image file decodes to, read by Pillow alone (the hand-computed answer)."""
    return Image.open(io.BytesIO(raw)).convert("RGB").getpixel((0, 0))


def _three_classes() -> dict[str, bytes]:
    """apple: 8 PNGs, banana: 12 lossless WebPs, cherry: 6 grey JPEGs; every image its own colour and odd size."""
    files = {}
    for i in range(8):
        files[f"apple/a{i}.png"] = _png((i * 10, 50, 200), (30 + i * 7, 20 + i * 3))
    for i in range(12):
        files[f"banana/b{i}.webp"] = _image("WEBP", (200, i * 10, 0), (25 + i, 61 - i), lossless=True)
    for i in range(6):
        files[f"cherry/c{i}.jpg"] = _image("JPEG", 60 + i * 20, (33, 33 + i * 11), mode="L", quality=95)
    return files


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, raw in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
    return root


def _zip(files: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, raw in files.items():
            z.writestr(name, raw)
    return buf.getvalue()


def _two_classes(n: int = 5) -> dict[str, bytes]:
    return {**{f"cats/{i}.png": _png((i, 0, 0)) for i in range(n)},
            **{f"dogs/{i}.png": _png((0, i, 0)) for i in range(n)}}


def _raw_zip(entries: list[dict], *, count: int | None = None, zip64: bool | None = None) -> bytes:
    """A zip written byte by byte. Each entry: ``name`` (str or bytes), ``data`` (as stored), and optionally
    ``method`` (0 stored, 8 deflated), ``size`` and ``csize`` (the declared sizes, uncompressed and compressed),
    ``crc``, ``attr`` (external_attr) and ``flags``; ``count`` is the entry count the end record declares."""
    body, directory = bytearray(), bytearray()
    for e in entries:
        name = e["name"] if isinstance(e["name"], bytes) else e["name"].encode("utf-8")
        raw = e["data"]
        # 0x800: the name is UTF-8; a name given as bytes is left to be read as code page 437, as old zips are.
        method, flags = e.get("method", 0), e.get("flags", 0) | (0x800 * isinstance(e["name"], str))
        crc = e.get("crc", zlib.crc32(raw))
        size = e.get("size", len(raw))
        fixed = (20, flags, method, 0, 0x21, crc, e.get("csize", len(raw)), size, len(name))
        offset = len(body)
        body += struct.pack("<4s5H3LHH", b"PK\x03\x04", *fixed, 0) + name + raw
        directory += struct.pack("<4sH5H3L5HLL", b"PK\x01\x02", 0x031E, *fixed, 0, 0, 0, 0,
                                 e.get("attr", 0o100644 << 16), offset) + name
    n = len(entries) if count is None else count
    end = b""
    if zip64 or (zip64 is None and n >= 0xFFFF):
        at = len(body) + len(directory)
        end = (struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 0x031E, 45, 0, 0, n, n, len(directory), len(body))
               + struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1))
        n = 0xFFFF
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(directory), len(body), 0)
    return bytes(body + directory + end)


def _zeros_deflated(n_mb: int) -> bytes:
    """A raw deflate stream of ``n_mb`` MiB of zeros, made without ever holding (or compressing) them all: after a
    full flush each MiB compresses to the same bytes, so one block is repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MB)) + c.flush(zlib.Z_FULL_FLUSH)
    return block * n_mb + c.flush(zlib.Z_FINISH)


def _stored(files: dict[str, bytes]) -> list[dict]:
    return [dict(name=k, data=v) for k, v in files.items()]


def _refused(source, *words: str, **kwargs) -> str:
    with pytest.raises(data.DatasetError) as e:
        data.from_folder(source, **kwargs)
    message = str(e.value)
    assert "\n" not in message and len(message) < 400, message
    for w in words:
        assert w in message, message
    return message


# --- known answers -------------------------------------------------------------------------------------------------

def test_a_folder_of_class_folders_loads_with_known_answers(tmp_path):
    files = _three_classes()
    loaded = data.from_folder(_write(tmp_path / "fruit", files), test_fraction=0.25)
    info = loaded.info
    assert info.class_names == ("apple", "banana", "cherry")
    assert info.name.startswith("yours-") and data.is_own(info.name) and info.title == "fruit"
    assert (info.channels, info.size, info.invert, info.resize) == (3, 32, False, "crop")
    assert "26 of your own images in 3 classes" in info.description
    assert loaded.skipped == [] and loaded.train.info is info and loaded.test.info is info
    x = torch.cat([loaded.train.x, loaded.test.x])
    y = torch.cat([loaded.train.y, loaded.test.y])
    assert x.dtype == torch.uint8 and x.shape == (26, 3, 32, 32) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [8, 12, 6]
    # Every image is one colour, and together they are exactly the files' colours, each under its own class.
    assert bool((x == x[:, :, :1, :1]).all())
    got = sorted((int(label), tuple(img[:, 0, 0].tolist())) for img, label in zip(x, y))
    want = sorted((("apple", "banana", "cherry").index(name.split("/")[0]), _pixel(raw)) for name, raw in files.items())
    assert got == want
    # Mean and std per channel, of the training images only, by hand: each image is one colour of equal area.
    colours = loaded.train.x[:, :, 0, 0].double() / 255  # (N, 3)
    assert info.mean == pytest.approx(colours.mean(0).tolist(), abs=1e-12)
    assert info.std == pytest.approx(colours.std(0, unbiased=False).tolist(), abs=1e-12)


def test_the_test_split_is_stratified_disjoint_and_the_same_for_a_seed(tmp_path):
    root = _write(tmp_path / "fruit", _three_classes())
    a = data.from_folder(root, seed=3, test_fraction=0.25)
    b = data.from_folder(root, seed=3, test_fraction=0.25)
    c = data.from_folder(root, seed=4, test_fraction=0.25)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y) and a.info == b.info
    assert not torch.equal(a.test.x, c.test.x) and a.info.name != c.info.name  # another split, another dataset
    for want, got in zip([8 * 0.25, 12 * 0.25, 6 * 0.25], torch.bincount(a.test.y, minlength=3).tolist()):
        assert abs(got - want) <= 1
    assert len(a.test) == round(26 * 0.25)
    train_colours = {tuple(v) for v in a.train.x[:, :, 0, 0].tolist()}
    test_colours = {tuple(v) for v in a.test.x[:, :, 0, 0].tolist()}
    assert not train_colours & test_colours and len(train_colours | test_colours) == 26


def test_a_class_too_small_to_test_gets_a_warning(tmp_path):
    files = {**{f"few/{i}.png": _png((i, 9, 9)) for i in range(5)},
             **{f"many/{i}.png": _png((9, i, 9)) for i in range(30)}}
    loaded = data.from_folder(_write(tmp_path / "d", files), test_fraction=0.2)
    per_class = torch.bincount(loaded.test.y, minlength=2).tolist()
    assert per_class[0] < folders.MIN_TEST_PER_CLASS <= per_class[1]
    assert len(loaded.warnings) == 1 and "'few'" in loaded.warnings[0]


def test_zip_path_zip_bytes_and_folder_give_the_same_dataset(tmp_path):
    files = _two_classes()
    folder = data.from_folder(_write(tmp_path / "pets", files))
    (tmp_path / "pets.zip").write_bytes(_zip(files))
    from_path = data.from_folder(tmp_path / "pets.zip")
    from_bytes = data.from_folder(_zip(files))
    assert folder.info == from_path.info and folder.info.name == from_bytes.info.name
    assert from_bytes.info.title == "Your images" and data.from_folder(_zip(files), title="Pets").info.title == "Pets"
    assert torch.equal(folder.train.x, from_bytes.train.x)


def test_a_zip_of_a_folder_reads_its_class_folders_one_level_down(tmp_path):
    files = {f"photos/{k}": v for k, v in _two_classes().items()}
    files["photos/notes.txt"] = b"my pets"
    loaded = data.from_folder(_zip(files))
    assert loaded.info.class_names == ("cats", "dogs") and len(loaded.train) + len(loaded.test) == 10
    assert [(s.name, "class folder" in s.reason) for s in loaded.skipped] == [("photos/notes.txt", True)]


def test_bad_files_are_skipped_with_their_reasons_and_the_rest_load(tmp_path):
    files = _two_classes(6)
    good = files["cats/0.png"]
    files.update({"cats/cut.png": good[: len(good) // 2], "cats/empty.jpg": b"", "dogs/notes.txt": b"dogs are good",
                  "readme.md": b"# my pets", "cats/huge.bmp": b"BM" + bytes(10)})
    loaded = data.from_folder(_write(tmp_path / "pets", files))
    reasons = {s.name: s.reason for s in loaded.skipped}
    assert set(reasons) == {"cats/cut.png", "cats/empty.jpg", "dogs/notes.txt", "readme.md", "cats/huge.bmp"}
    assert "damaged" in reasons["cats/cut.png"] and "empty" in reasons["cats/empty.jpg"]
    assert "not an image" in reasons["dogs/notes.txt"] and "class folder" in reasons["readme.md"]
    assert torch.bincount(torch.cat([loaded.train.y, loaded.test.y])).tolist() == [6, 6]


def test_hidden_files_are_ignored_silently():
    files = _two_classes()
    files.update({".DS_Store": b"\0\0\0\1Bud1", "cats/.DS_Store": b"junk", "cats/._0.png": b"\0\5\26\7 mac",
                  "__MACOSX/cats/._0.png": b"\0\5\26\7", "dogs/Thumbs.db": b"junk", ".git/config": b"[core]"})
    loaded = data.from_folder(_zip(files))
    assert loaded.skipped == [] and loaded.info.class_names == ("cats", "dogs")


def test_grey_smaller_and_other_resize_policies(tmp_path):
    files = {**{f"wide/{i}.png": _png((250, 250, 250), (60, 10)) for i in range(5)},
             **{f"tall/{i}.jpg": _image("JPEG", (250, 0, 0), (10, 60)) for i in range(5)}}
    root = _write(tmp_path / "d", files)
    for resize in ("squash", "crop", "pad"):
        loaded = data.from_folder(root, size=16, channels=1, resize=resize)
        assert loaded.train.x.shape[1:] == (1, 16, 16) and loaded.info.input_shape == (1, 16, 16)
        assert loaded.info.resize == resize and len(loaded.info.mean) == 1


def test_classes_made_in_the_browser():
    classes = {"dogs": [(f"d{i}.png", _png((0, i, 0))) for i in range(5)],
               "cats": [(f"c{i}.png", _png((i, 0, 0))) for i in range(5)] + [("broken.png", b"\x89PNG")]}
    loaded = data.from_images(classes, title="Pets\nfrom class")
    assert loaded.info.class_names == ("cats", "dogs") and loaded.info.title == "Pets from class"
    assert [s.name for s in loaded.skipped] == ["cats/broken.png"]
    with pytest.raises(data.DatasetError, match="at least 5"):
        data.from_images({"dogs": classes["dogs"], "cats": classes["cats"][:4]})


def test_defaults_suit_a_small_set():
    loaded = data.from_folder(_zip(_two_classes()))
    assert loaded.info.preset == folders.PRESET and 1 <= loaded.info.epochs <= 50
    assert folders._epochs(320) == 50 and folders._epochs(4_000) == 10 and folders._epochs(100_000) == 1


def test_the_preset_fits_every_size_channels_and_class_count():
    for size in range(models.IMAGE_SIZES[0], folders.MAX_SIZE + 1):
        for channels in (1, 3):
            for k in (2, folders.MAX_CLASSES):
                models.check(models.preset(folders.PRESET, channels, size, k))


@pytest.mark.parametrize("kwargs, words", [
    (dict(size=folders.MAX_SIZE + 1), "size"), (dict(size=4), "size"), (dict(size=32.0), "size"),
    (dict(channels=2), "channels"), (dict(channels=True), "channels"), (dict(resize="zoom"), "resize"),
    (dict(test_fraction=0), "test_fraction"), (dict(test_fraction=0.6), "test_fraction"),
])
def test_arguments_out_of_range_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        data.from_folder(b"", **kwargs)


def test_a_loaded_dataset_trains_into_a_checkpoint_that_loads(tmp_path):
    info = data.from_folder(_zip(_two_classes())).info
    spec = models.preset(info.preset, info.channels, info.size, info.num_classes)
    ck = checkpoint.Checkpoint(models.build(spec, seed=0).eval(), spec, info)
    assert checkpoint.load(checkpoint.save(ck, tmp_path / "m.pt")).info == info


# --- datasets that cannot be used ----------------------------------------------------------------------------------

def test_fewer_than_two_classes_are_refused():
    _refused(_zip({f"cats/{i}.png": _png() for i in range(6)}), "one class folder ('cats')", "at least 2")
    _refused(_zip({f"{i}.png": _png() for i in range(6)}), "no class folders")
    _refused(_zip({}), "no class folders")


def test_a_class_with_too_few_images_is_refused_by_name_and_count():
    files = _two_classes()
    del files["dogs/0.png"]
    _refused(_zip(files), "'dogs' has 4 usable images", f"at least {folders.MIN_PER_CLASS}")
    files["dogs/0.png"] = b"not an image"
    _refused(_zip(files), "'dogs' has 4 usable images (1 could not be used")


def test_too_many_images_or_bytes_are_refused(monkeypatch):
    raw = _zip(_two_classes(6))
    monkeypatch.setattr(folders, "MAX_IMAGES", 11)
    _refused(raw, "12 files in class folders", "limit is 11")
    monkeypatch.setattr(folders, "MAX_IMAGES", 5_000)
    monkeypatch.setattr(folders, "MAX_BYTES", 1000)
    _refused(raw, "limit for a dataset is 0 MB")


def test_class_names_must_be_short_printable_and_distinct(tmp_path):
    _refused(_zip({**_two_classes(), **{f"{'x' * 41}/{i}.png": _png() for i in range(5)}}), "1 to 40 characters")
    _refused(_zip({**_two_classes(), **{f"bad\nname/{i}.png": _png() for i in range(5)}}), "printable")
    _refused(_zip({**_two_classes(), **{f"Cats/{i}.png": _png() for i in range(5)}}), "same name", "'Cats'")
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    _refused(_zip({**{f"{nfd}/{i}.png": _png() for i in range(5)}, **{f"{nfc}/{i}.png": _png() for i in range(5)}}),
             "same name")
    loaded = data.from_folder(_zip({**_two_classes(), **{f" {nfd} /{i}.png": _png() for i in range(5)}}))
    assert loaded.info.class_names == ("café", "cats", "dogs")  # sorted as ImageFolder sorts: by code point


@pytest.mark.parametrize("raw", [b"", b"hello, I am a text file", _png(), bytes(range(256)) * 40,
                                 b"PK\x05\x06" + bytes(10)])
def test_bytes_that_are_not_a_zip_are_refused(raw):
    _refused(raw, "not a zip file")


def test_paths_that_are_not_a_folder_or_zip_are_refused(tmp_path):
    _refused(tmp_path / "nothing-here", "no folder or zip file")
    (tmp_path / "notes.txt").write_text("hello")
    _refused(tmp_path / "notes.txt", "not a zip file")


def test_links_in_a_folder_are_refused(tmp_path):
    root = _write(tmp_path / "pets", _two_classes())
    (root / "cats" / "passwd.png").symlink_to("/etc/passwd")
    _refused(root, "link", "cats/passwd.png")
    (root / "cats" / "passwd.png").unlink()
    (root / "birds").symlink_to(root / "cats")
    _refused(root, "link", "birds")


def test_a_folder_with_too_many_entries_is_refused_before_reading_them(tmp_path, monkeypatch):
    root = _write(tmp_path / "pets", _two_classes())
    monkeypatch.setattr(folders, "MAX_ENTRIES", 11)  # 2 class folders and 10 files: 12 entries
    _refused(root, "more than 11 files and folders")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_in_a_folder_is_skipped_unread(tmp_path):
    root = _write(tmp_path / "all" / "pets", _two_classes())  # the class folders one level down, as unzipped
    os.mkfifo(root / "cats" / "pipe.png")  # reading it would wait forever for a writer
    loaded = data.from_folder(tmp_path / "all")
    assert loaded.info.class_names == ("cats", "dogs") and loaded.info.title == "all"
    assert [(s.name, "not a regular file" in s.reason) for s in loaded.skipped] == [("pets/cats/pipe.png", True)]


# --- hostile zips --------------------------------------------------------------------------------------------------

def test_a_zip_bomb_is_refused_before_it_is_decompressed():
    bomb = _zeros_deflated(1024)  # 1 GiB of zeros in ~1 MB
    assert len(bomb) < 2 * MB
    raw = _raw_zip(_stored(_two_classes()) + [dict(name="cats/bomb.png", data=bomb, method=8, size=1 << 30)])
    start = time.perf_counter()
    _refused(raw, "zip bomb", "'cats/bomb.png'")
    assert time.perf_counter() - start < 1


def test_declared_sizes_over_the_limits_are_refused_before_reading():
    entries = _stored(_two_classes())
    # 150 MB declared for each of two entries, stored (ratio 1): honest-looking, but 300 MB in all.
    big = [dict(name=f"cats/big{i}.png", data=bytes(100), size=150 * MB, csize=150 * MB, crc=0) for i in range(2)]
    _refused(_raw_zip(entries + big), "take 300 MB", "limit for a dataset is 200 MB")
    one = [dict(name="cats/big.png", data=bytes(100), size=30 * MB, csize=30 * MB, crc=0)]  # over the image limit
    loaded = data.from_folder(_raw_zip(entries + one))
    assert [(s.name, "limit for one image is 20 MB" in s.reason) for s in loaded.skipped] == [("cats/big.png", True)]


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-memory reset")
def test_a_header_that_understates_its_size_reads_no_more_than_it_declares():
    # 1 GiB of zeros that claims to be 1,000 bytes: not a bomb by its header, so it is read, and the read stops.
    raw = _raw_zip(_stored(_two_classes()) + [dict(name="cats/liar.png", data=_zeros_deflated(1024), method=8,
                                                   size=1000, crc=0)])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset this process's peak resident memory to its current size
    before, start = _peak_rss_mb(), time.perf_counter()
    loaded = data.from_folder(raw)
    assert time.perf_counter() - start < 5 and _peak_rss_mb() - before < 100
    assert [s.name for s in loaded.skipped] == ["cats/liar.png"] and "damaged" in loaded.skipped[0].reason


def test_the_bytes_really_read_are_capped_whatever_was_declared(monkeypatch):
    # Files that declared 1 byte each (zip headers that lie, or files that grow while being read): the running total
    # of what is really read is capped on its own.
    files = _two_classes()
    classes: dict[str, list] = {}
    for name, raw in files.items():
        path = tuple(name.split("/"))
        classes.setdefault(path[0], []).append(folders._File(path, 1, lambda limit, raw=raw: raw))
    monkeypatch.setattr(folders, "MAX_BYTES", sum(map(len, files.values())) - 1)
    with pytest.raises(data.DatasetError, match="The images take more than"):
        folders._build(classes, [], size=8, channels=3, resize="squash", seed=0, test_fraction=0.2, title=None)


@pytest.mark.parametrize("name", ["../evil.png", "cats/../../evil.png", "/etc/evil.png", "\\evil.png",
                                  "C:/evil.png", "c:\\windows\\evil.png", "cats\\..\\..\\evil.png"])
def test_paths_that_lead_out_of_the_folder_are_refused(name):
    _refused(_raw_zip(_stored(_two_classes()) + [dict(name=name, data=_png())]), "leads out of its folder")


def test_a_symlink_entry_is_refused():
    link = dict(name="cats/passwd.png", data=b"/etc/passwd", attr=(0o120777 << 16))
    _refused(_raw_zip(_stored(_two_classes()) + [link]), "link", "'cats/passwd.png'")


def test_an_encrypted_entry_is_skipped():
    entries = _stored(_two_classes()) + [dict(name="cats/secret.png", data=bytes(40), flags=0x1)]
    loaded = data.from_folder(_raw_zip(entries))
    assert [(s.name, "encrypted" in s.reason) for s in loaded.skipped] == [("cats/secret.png", True)]


def test_a_hundred_thousand_tiny_files_are_refused_by_count_at_once():
    raw = _raw_zip([dict(name=f"cats/{i}.png", data=b"") for i in range(100_000)])
    start = time.perf_counter()
    _refused(raw, "100,000 files and folders", f"limit is {folders.MAX_ENTRIES:,}")
    assert time.perf_counter() - start < 0.5


def test_a_lying_entry_count_is_caught_by_the_size_of_the_list():
    raw = _raw_zip([dict(name=f"cats/{i:06}-{'x' * 40}.png", data=b"") for i in range(100_000)], count=10)
    start = time.perf_counter()
    _refused(raw, "list of contents")
    assert time.perf_counter() - start < 0.5


def test_a_zip64_archive_is_read():
    loaded = data.from_folder(_raw_zip(_stored(_two_classes()), zip64=True))
    assert loaded.info.class_names == ("cats", "dogs")


def test_a_zip_file_over_the_limit_is_refused_by_its_size(tmp_path, monkeypatch):
    path = tmp_path / "pets.zip"
    path.write_bytes(_zip(_two_classes()))
    monkeypatch.setattr(folders, "MAX_BYTES", 100)
    _refused(path, "limit for a dataset")
    _refused(path.read_bytes(), "limit for a dataset")


# --- whatever a zip holds: a dataset or one DatasetError -----------------------------------------------------------

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TINY = [_png((1, 2, 3), (3, 2)), _image("JPEG", (200, 9, 9), (9, 5)), _image("WEBP", (9, 9, 200), (5, 9)),
        _image("GIF", 7, (4, 4), mode="P")]
parts = st.one_of(st.sampled_from(["cats", "dogs", "Cats", "__MACOSX", ".hidden", "a\x00b", "é", "e\u0301",
                                   "\u202e", "x" * 50, " ", "\n", "~", "*", "PK\x05\x06"]),
                  st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))
escaping = st.sampled_from(["..", ".", "", "C:", "/", "\\"])
names = st.one_of(
    st.lists(parts, min_size=1, max_size=4).map("/".join),  # three of five names are plain paths
    st.lists(parts, min_size=1, max_size=4).map("/".join),
    st.lists(parts, min_size=1, max_size=4).map("/".join),
    st.lists(parts | escaping, min_size=1, max_size=4).map(lambda p: "/".join(p) if len(p) % 2 else "\\".join(p)),
    st.binary(max_size=12),
)
contents = st.one_of(st.sampled_from(TINY), st.binary(max_size=64),
                     st.builds(lambda raw, n: raw[:n], st.sampled_from(TINY), st.integers(0, 60)))
entries = st.fixed_dictionaries(
    dict(name=names, data=contents),
    optional=dict(method=st.sampled_from([0, 8, 12, 14, 99]), size=st.sampled_from([0, 1, 10, 1 << 20, 1 << 31]),
                  attr=st.sampled_from([0, 0o120777 << 16, 0o040755 << 16, 0o010644 << 16]),
                  flags=st.sampled_from([0, 1, 8, 0x800]), crc=st.integers(0, 2 ** 32 - 1)))


def _load_or_refuse(source) -> data.Loaded | None:
    try:
        loaded = data.from_folder(source, size=8)
    except data.DatasetError as e:
        assert str(e) and "\n" not in str(e) and len(str(e)) < 400, str(e)
        return None
    info = loaded.info
    assert len(info.class_names) >= 2 and len(set(info.class_names)) == len(info.class_names)
    assert all(n.isprintable() and 0 < len(n) <= checkpoint.MAX_CLASS_NAME for n in info.class_names)
    counts = torch.bincount(torch.cat([loaded.train.y, loaded.test.y]), minlength=len(info.class_names))
    assert bool((counts >= folders.MIN_PER_CLASS).all()) and loaded.train.x.dtype == torch.uint8
    assert all(isinstance(s.name, str) and s.reason for s in loaded.skipped)
    return loaded


@SETTINGS
@given(st.lists(entries, max_size=6), st.booleans())
def test_any_zip_entries_load_or_are_refused(extra, with_base):
    base = _stored({**_two_classes()}) if with_base else []
    _load_or_refuse(_raw_zip(base + extra))


@SETTINGS
@given(st.binary(max_size=300), st.integers(0, 2000))
def test_damaged_zip_bytes_load_or_are_refused(junk, at):
    raw = _zip(_two_classes())
    _load_or_refuse(raw[:at] + junk + raw[at + len(junk):])


@SETTINGS
@given(st.dictionaries(st.text(max_size=45) | st.sampled_from(["cats", "\x00", "..", "a/b"]),
                       st.lists(st.tuples(st.text(max_size=5), contents), max_size=7), max_size=3))
def test_any_classes_made_in_the_browser_load_or_are_refused(classes):
    try:
        data.from_images(classes, size=8)
    except data.DatasetError as e:
        assert str(e) and "\n" not in str(e)
