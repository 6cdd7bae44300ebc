"""Your own images as a dataset: a folder of class folders, a zip of one, or classes made in the browser.

``cats/1.jpg, cats/2.png, dogs/1.jpg, …`` becomes a :class:`cnnviz.data.Loaded`: uint8 images ``(N, C, S, S)`` in
memory like the built-in datasets, a stratified held-out test split, and the files that could not be used with the
reason for each. A zip whose class folders sit inside one top folder (``photos/cats/…``, what zipping a folder gives)
reads the same as the folder.

Everything here comes from outside (an upload, a folder anyone may have filled), so nothing is trusted: a zip is
refused for its declared sizes, its compression ratio and its number of entries before a byte of it is decompressed,
and the bytes actually read are capped as they are read, since headers can lie. Paths that climb out of the folder,
absolute paths and symlinks refuse the whole dataset; nothing is ever written to disk. Every image goes through
:func:`cnnviz.images.load`, so each of its checks holds; a file that fails them is skipped with its reason and does
not stop the others. Hidden files (``.DS_Store``, ``__MACOSX/``, ``._x.jpg``) are ignored silently.

Use it through :func:`cnnviz.data.from_folder` and :func:`cnnviz.data.from_images`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import struct
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torchvision.transforms.v2 import functional as TF

from cnnviz import checkpoint, files, images, models, text, train
from cnnviz.data import DatasetError, DatasetInfo, Loaded, Skipped, Split, holdout

log = logging.getLogger(__name__)

MB = 1024 * 1024
MIN_PER_CLASS = 5  # usable images a class needs: one or two to test on, the rest to learn from
MAX_IMAGES = 5_000  # files in class folders
MAX_BYTES = 200 * MB  # of all images together, uncompressed; also the largest zip file
MAX_ENTRIES = 20_000  # files and folders in a zip or folder, hidden ones included: a Mac zip doubles every file
# The zip's table of contents, read whole before any check of ours can run on its entries: 20,000 entries with paths
# of ~200 characters. A lying entry count cannot make us parse more than this.
MAX_DIRECTORY = MAX_ENTRIES * 256
# Photos barely compress (JPEG, PNG and WebP already are); deflate at most shrinks 1,032-fold. An entry of more than
# RATIO_FROM bytes that claims to shrink more than MAX_RATIO-fold is a zip bomb, not an image: refused at once, with
# words that say so. (The size limits and the capped reads are what bound the memory, whatever the ratio.)
MAX_RATIO = 200
RATIO_FROM = MB
MAX_SIZE = 64  # largest side: the tiny preset fits up to 79 px, and 5,000 colour images of 64 px take 61 MB
MAX_CLASSES = models.NUM_CLASSES[1]
MIN_TEST_PER_CLASS = 2  # fewer test images than this make a class's test accuracy 0 % or 100 % by chance
PRESET = "photos"  # the preset for photos; models.check accepts it for every size up to MAX_SIZE and class count
# How photos of any shape become squares: the middle square, as torchvision's evaluation and Teachable Machine do.
# Stretching ("squash") turns a wide photo's square into a tall rectangle, so the shape of a thing stops telling its
# class (`make bench`'s own-data section measures both on the same photos, model and steps).
RESIZE = "crop"
DEFAULT_TITLE = "Your images"
IGNORED = ("__MACOSX", "Thumbs.db", "desktop.ini")  # left by Macs and Windows beside names starting with "."

# How far from its end a zip's end record may sit (it carries a comment of up to 64 KiB), as zipfile searches.
_END_SEARCH = 22 + 0xFFFF
_SYMLINK = 0o120000  # the file type bits of a symlink in a zip entry's Unix mode (external_attr >> 16)
_WORKERS = min(4, os.cpu_count() or 1)  # Pillow decodes and resizes without holding the GIL
_CHUNK = 64  # files read ahead of the decoders: bounds the bytes held at once

NOT_A_ZIP = "This file is not a zip file, or it is damaged. Give a folder of class folders or a .zip of one."


@dataclass(frozen=True)
class _File:
    """A file found in a class folder: its path inside the source, its declared size and how to read it."""

    path: tuple[str, ...]  # parts, as found in the folder or the zip
    size: int
    read: Callable[[int], bytes]  # the bytes, or files.TooBig past a limit
    problem: str = ""  # known unusable before reading (encrypted, too big, not a regular file)

    @property
    def name(self) -> str:
        return "/".join(self.path)


def load_source(source: str | os.PathLike | bytes, *, size: int, channels: int, resize: str, seed: int,
                test_fraction: float, title: str | None) -> Loaded:
    """A folder of class folders, a ``.zip`` path or a zip's bytes → :class:`Loaded`; see ``data.from_folder``."""
    _check_arguments(size, channels, resize, test_fraction)
    with _files(source) as (found, name):
        classes, skipped = _classify(found)
        return _build(classes, skipped, size=size, channels=channels, resize=resize, seed=seed,
                      test_fraction=test_fraction, title=title or name)


def load_classes(classes: Mapping[str, Sequence[tuple[str, bytes]]], *, size: int, channels: int, resize: str,
                 seed: int, test_fraction: float, title: str) -> Loaded:
    """Classes made in the browser (class name → ``(file name, bytes)`` pairs) → :class:`Loaded`."""
    _check_arguments(size, channels, resize, test_fraction)
    if not isinstance(classes, Mapping):
        raise TypeError(f"expected a mapping of class names to lists of (file name, bytes), got {text.brief(classes)}")
    grouped: dict[str, list[_File]] = {}
    for cls, pairs in classes.items():
        if type(cls) is not str:
            raise DatasetError(f"A class name must be text, got {text.brief(cls)}.")
        found = grouped.setdefault(cls, [])
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
                    and isinstance(pair[1], (bytes, bytearray, memoryview))):
                raise TypeError(f"expected (file name, bytes) pairs in class {cls!r}, got {text.brief(pair)}")
            name, data = pair
            if not _hidden(name):
                found.append(_File((cls, name), len(data), _reader(bytes(data))))
    return _build(grouped, [], size=size, channels=channels, resize=resize, seed=seed, test_fraction=test_fraction,
                  title=title)


def _check_arguments(size: int, channels: int, resize: str, test_fraction: float) -> None:
    if type(size) is not int or not models.IMAGE_SIZES[0] <= size <= MAX_SIZE:
        raise ValueError(f"size must be a whole number of pixels from {models.IMAGE_SIZES[0]} to {MAX_SIZE}, "
                         f"got {text.brief(size)}")
    if type(channels) is not int or channels not in models.IN_CHANNELS:
        raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {text.brief(channels)}")
    if resize not in images.RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {', '.join(images.RESIZE_POLICIES)}, got {text.brief(resize)}")
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction <= 0.5):
        raise ValueError(f"test_fraction must be above 0 and at most 0.5, got {text.brief(test_fraction)}")


# --- the files of a source -----------------------------------------------------------------------------------------

@contextmanager
def _files(source: str | os.PathLike | bytes) -> Iterator[tuple[list[_File], str | None]]:
    """The files of a folder or zip (open while the context lasts) and the source's own name (None for bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > MAX_BYTES:
            raise DatasetError(_zip_too_big(len(source)))
        with _zip(io.BytesIO(source)) as found:
            yield found, None
        return
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a folder, a zip file's path or its bytes, got {text.brief(source)}")
    path = Path(source)
    if path.is_dir():
        yield _folder(path), path.resolve().name
    elif path.is_file():
        if path.stat().st_size > MAX_BYTES:
            raise DatasetError(_zip_too_big(path.stat().st_size))
        try:
            f = open(path, "rb")
        except OSError as e:
            raise DatasetError(f"Could not open {path}: {e.strerror or e}.") from None
        with f, _zip(f) as found:
            yield found, path.stem
    else:
        raise DatasetError(f"There is no folder or zip file at {path}.")


def _zip_too_big(n: int) -> str:
    return f"The zip file is {n / MB:.1f} MB; the limit for a dataset is {MAX_BYTES // MB} MB."


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED


def _reader(data: bytes) -> Callable[[int], bytes]:
    return lambda limit: files.read_capped(data, limit)


def _folder(root: Path) -> list[_File]:
    """Every file under ``root``, hidden ones left out; refuses symlinks and more than :data:`MAX_ENTRIES` entries."""
    found: list[_File] = []
    seen = 0
    stack: list[tuple[str, tuple[str, ...]]] = [(os.fspath(root), ())]
    while stack:
        folder, parts = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise DatasetError(f"Could not read the folder {'/'.join(parts) or root}: {e.strerror or e}.") from None
        seen += len(entries)
        if seen > MAX_ENTRIES:
            raise DatasetError(_too_many_entries(f"more than {MAX_ENTRIES:,}"))
        for entry in entries:
            path = parts + (entry.name,)
            if _hidden(entry.name):
                continue
            if entry.is_symlink():
                # A link may point anywhere on the machine (/etc/passwd): a dataset is only what is in its folder.
                raise DatasetError(f"The folder holds a link to elsewhere ({'/'.join(path)}); datasets may not hold "
                                   f"links. Copy the images themselves into the folder.")
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, path))
            elif entry.is_file(follow_symlinks=False):
                found.append(_File(path, entry.stat(follow_symlinks=False).st_size,
                                   lambda limit, at=entry.path: files.read_capped(at, limit)))
            else:  # a pipe, socket or device: reading it could block forever
                found.append(_File(path, 0, _reader(b""), "It is not a regular file."))
    return found


def _too_many_entries(n: str) -> str:
    return (f"The dataset holds {n} files and folders; the limit is {MAX_ENTRIES:,}. Use at most {MAX_IMAGES:,} "
            f"images.")


@contextmanager
def _zip(f: BinaryIO) -> Iterator[list[_File]]:
    """The files of the zip in ``f``, checked for a bomb, traversal and links before anything is decompressed."""
    count, directory = _declared_directory(f)
    if count > MAX_ENTRIES:
        raise DatasetError(_too_many_entries(f"{count:,}"))
    if directory > MAX_DIRECTORY:
        raise DatasetError(f"The zip's list of contents is {directory / MB:.1f} MB, more than {MAX_ENTRIES:,} "
                           f"entries need; the limit is {MAX_DIRECTORY / MB:.1f} MB.")
    try:
        z = zipfile.ZipFile(f)
    except Exception:  # noqa: BLE001  (zipfile fails on foreign bytes in many ways: BadZipFile, struct, EOF…)
        raise DatasetError(NOT_A_ZIP) from None
    with z:
        infos = z.infolist()
        if len(infos) > MAX_ENTRIES:
            raise DatasetError(_too_many_entries(f"{len(infos):,}"))
        yield [file for info in infos if (file := _zip_file(z, info)) is not None]


def _declared_directory(f: BinaryIO) -> tuple[int, int]:
    """``(entries, bytes)`` of the table of contents the zip's end record declares, read as zipfile finds it: the
    record at the very end, else the last one in the final 64 KiB (after a comment). Raises for no record at all."""
    end = f.seek(0, io.SEEK_END)
    start = max(0, end - _END_SEARCH)
    f.seek(start)
    tail = f.read()
    at = len(tail) - 22 if tail[-22:-18] == b"PK\x05\x06" else tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise DatasetError(NOT_A_ZIP)
    count, directory = struct.unpack("<10xHL6x", tail[at:at + 22])
    if count == 0xFFFF or directory == 0xFFFFFFFF:
        # A ZIP64 archive keeps the true figures in a record just before a locator that sits just before this one.
        locator = start + at - 20
        if locator >= 56:
            f.seek(locator - 56)
            record = f.read(76)
            if record[:4] == b"PK\x06\x06" and record[56:60] == b"PK\x06\x07":
                count, directory = struct.unpack("<32xQQ", record[:48])
    return count, directory


_DRIVE = re.compile(r"[A-Za-z]:")


def _zip_file(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> _File | None:
    """One entry as a :class:`_File`; None for folders and hidden files. Refuses the zip for escaping paths, links
    and bomb-like entries."""
    name = info.filename
    # Zips made on Windows sometimes separate with backslashes; read them as folders, as unzip tools do.
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts:
        raise DatasetError(f"The zip holds a path that leads out of its folder ({text.brief(name)}); it may be "
                           f"malicious and is not read.")
    if name.endswith(("/", "\\")) or not parts or any(_hidden(p) for p in parts):  # (is_dir fails on "")
        return None
    if (info.external_attr >> 16) & 0o170000 == _SYMLINK:
        raise DatasetError(f"The zip holds a link to elsewhere ({text.brief(name)}); datasets may not hold links.")
    if info.file_size > RATIO_FROM and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise DatasetError(f"The zip entry {text.brief(name)} claims to expand from {info.compress_size:,} bytes to "
                           f"{info.file_size:,}: a zip bomb, not an image. The zip is not read.")
    problem = ""
    if info.flag_bits & 0x1:
        problem = "It is encrypted (the zip has a password)."
    elif info.file_size > images.MAX_BYTES:
        problem = _file_too_big(info.file_size)

    def read(limit: int) -> bytes:
        # zipfile stops at the declared size, which may lie; reading one byte past the limit is our own cap. (Not
        # files.read_capped: seeking to a member's end to learn its size would decompress all of it.)
        with z.open(info) as member:
            data = member.read(limit + 1)
        if len(data) > limit:
            raise files.TooBig(None)
        return data

    return _File(parts, info.file_size, read, problem)


def _file_too_big(n: int) -> str:
    return f"The file is {n / MB:.1f} MB; the limit for one image is {images.MAX_BYTES / MB:g} MB."


# --- files → classes -----------------------------------------------------------------------------------------------

def _classify(found: list[_File]) -> tuple[dict[str, list[_File]], list[Skipped]]:
    """Files grouped by class folder (the first folder of each path); files outside a class folder are skipped."""
    tops = {f.path[0] for f in found}
    # Zipping a folder puts everything inside one top folder; its class folders are one level down.
    if len(tops) == 1 and all(len(f.path) >= 2 for f in found) and any(len(f.path) >= 3 for f in found):
        inner = [(f.path[1:], f) for f in found]
    else:
        inner = [(f.path, f) for f in found]
    classes: dict[str, list[_File]] = {}
    skipped: list[Skipped] = []
    for parts, f in sorted(inner, key=lambda pf: pf[1].path):
        if len(parts) == 1:
            skipped.append(Skipped(f.name, "It is not inside a class folder (put each image in its class's folder)."))
        else:
            classes.setdefault(parts[0], []).append(f)
    return classes, skipped


def _class_name(raw: str) -> str:
    """A folder name as a class name: NFC (macOS writes é as e + accent), outer spaces removed; refused when it is
    empty, longer than checkpoint.MAX_CLASS_NAME or holds characters that cannot be shown (line breaks, controls)."""
    name = unicodedata.normalize("NFC", raw).strip()
    if not name or len(name) > checkpoint.MAX_CLASS_NAME or not name.isprintable():
        raise DatasetError(f"The class name {text.brief(raw)} cannot be used: a class name must be 1 to "
                           f"{checkpoint.MAX_CLASS_NAME} characters of printable text (no line breaks or control "
                           f"characters). Rename it.")
    return name


def _class_names(raw: list[str]) -> dict[str, str]:
    """Folder name → class name, refusing two folders whose names differ only in case, accents' encoding or spaces."""
    names = {r: _class_name(r) for r in raw}
    by_key: dict[str, str] = {}
    for r, n in names.items():
        key = n.casefold()
        if key in by_key:
            raise DatasetError(f"Two class folders have the same name: {text.brief(by_key[key])} and "
                               f"{text.brief(r)}. Merge them or rename one.")
        by_key[key] = r
    return names


# --- classes → a dataset -------------------------------------------------------------------------------------------

def _build(classes: Mapping[str, list[_File]], skipped: list[Skipped], *, size: int, channels: int, resize: str,
           seed: int, test_fraction: float, title: str | None) -> Loaded:
    """Decode, check and split the files of each class into a :class:`Loaded` dataset."""
    started = time.perf_counter()
    names = _class_names(list(classes))
    if len(names) < 2:
        found = f"one class folder ({text.brief(next(iter(names.values())))})" if names else "no class folders"
        raise DatasetError(f"Found {found}; a classifier needs at least 2 classes. Put the images of each class in a "
                           f"folder of its own (cats/…, dogs/…).")
    if len(names) > MAX_CLASSES:
        raise DatasetError(f"Found {len(names):,} class folders; the limit is {MAX_CLASSES:,}.")
    candidates = sum(len(v) for v in classes.values())
    if candidates > MAX_IMAGES:
        raise DatasetError(f"The dataset holds {candidates:,} files in class folders; the limit is {MAX_IMAGES:,}.")
    declared = sum(f.size for v in classes.values() for f in v)
    if declared > MAX_BYTES:
        raise DatasetError(f"The images take {declared / MB:.0f} MB; the limit for a dataset is {MAX_BYTES // MB} MB.")
    order = sorted(classes, key=lambda r: names[r])  # torchvision's ImageFolder sorts class folders by name
    for r in order:
        _enough(names[r], len(classes[r]), 0)

    files_in_order = [(label, f) for label, r in enumerate(order) for f in classes[r]]
    xs, ys, unusable = _decode_all(files_in_order, size, channels, resize)
    for label, r in enumerate(order):
        _enough(names[r], ys.count(label), sum(1 for lab, _ in unusable if lab == label))

    x = torch.stack(xs)  # (N, C, S, S) uint8
    y = torch.tensor(ys, dtype=torch.int64)
    class_names = tuple(names[r] for r in order)
    # holdout needs only the classes; the real info (mean, std, name) is made from the parts it returns.
    shape = DatasetInfo("yours", "", class_names, channels, size, (0.0,) * channels, (1.0,) * channels)
    n_test = max(1, round(len(y) * test_fraction))
    train_part, test_part = holdout(Split(shape, x, y), None, n_test, seed)
    info = _info(train_part, test_part, class_names, size, channels, resize, title)
    warnings = _warnings(test_part.y, class_names)
    log.info("loaded %d images of %d classes (%d skipped) in %.1f s", len(y), len(class_names), len(skipped),
             time.perf_counter() - started)
    return Loaded(Split(info, train_part.x, train_part.y), Split(info, test_part.x, test_part.y),
                  skipped + [s for _, s in unusable], warnings)


def _enough(name: str, n: int, unusable: int) -> None:
    if n < MIN_PER_CLASS:
        why = f" ({unusable} could not be used: see the skipped files)" if unusable else ""
        raise DatasetError(f"The class {text.brief(name)} has {n} usable image{'s' * (n != 1)}{why}; each class "
                           f"needs at least {MIN_PER_CLASS}.")


def _decode_all(found: list[tuple[int, _File]], size: int, channels: int, resize: str
                ) -> tuple[list[torch.Tensor], list[int], list[tuple[int, Skipped]]]:
    """The images of ``(label, file)`` pairs as uint8 ``(C, S, S)`` tensors with their labels, in order, and the
    files that could not be used with their labels. Refuses the dataset once more than :data:`MAX_BYTES` are read."""
    xs: list[torch.Tensor] = []
    ys: list[int] = []
    unusable: list[tuple[int, Skipped]] = []
    total = 0
    with ThreadPoolExecutor(_WORKERS) as pool:
        for start in range(0, len(found), _CHUNK):
            chunk = found[start:start + _CHUNK]
            raw = []
            for _, f in chunk:  # read here, one by one, so that the running total stops the reading at once
                raw.append(_read(f))
                total += len(raw[-1]) if isinstance(raw[-1], bytes) else 0
                if total > MAX_BYTES:
                    # The sizes declared up front passed: a zip's headers lied, or files grew while being read.
                    raise DatasetError(f"The images take more than {MAX_BYTES // MB} MB, the limit for a dataset.")
            for (label, f), result in zip(chunk, pool.map(lambda r: _decode(r, size, channels, resize), raw)):
                if isinstance(result, str):
                    unusable.append((label, Skipped(f.name, result)))
                else:
                    xs.append(result)
                    ys.append(label)
    return xs, ys, unusable


def _read(f: _File) -> bytes | str:
    """The file's bytes, or the reason it cannot be used."""
    if f.problem:
        return f.problem
    try:
        return f.read(images.MAX_BYTES)
    except files.TooBig as e:
        return _file_too_big(e.size) if e.size is not None else (
            f"The file is larger than the limit of {images.MAX_BYTES / MB:g} MB for one image.")
    except Exception as e:  # noqa: BLE001  (a damaged entry fails as BadZipFile, zlib.error, EOFError, OSError, …)
        log.debug("could not read %s", f.name, exc_info=True)
        return f"It could not be read ({type(e).__name__}): the file looks damaged."


def _decode(raw: bytes | str, size: int, channels: int, resize: str) -> torch.Tensor | str:
    """The image in ``raw`` as uint8 ``(C, S, S)``, made as :func:`cnnviz.images.prepare` makes a model's input; or
    the reason it cannot be used."""
    if isinstance(raw, str):
        return raw
    try:
        image = images.load(raw)
    except images.ImageError as e:
        return str(e)
    if image.size != (size, size):
        image = images.to_square(image, size, resize)
    return TF.pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))


def _warnings(y_test: torch.Tensor, class_names: tuple[str, ...]) -> list[str]:
    counts = torch.bincount(y_test, minlength=len(class_names)).tolist()
    return [f"Only {n} test image{'s' * (n != 1)} of {text.brief(name)}: its test accuracy will mean little. Add "
            f"images to this class." for name, n in zip(class_names, counts) if n < MIN_TEST_PER_CLASS]


def _info(train_part: Split, test_part: Split, class_names: tuple[str, ...], size: int, channels: int, resize: str,
          title: str | None) -> DatasetInfo:
    n = len(train_part) + len(test_part)
    mean, std = _mean_std(train_part.x)
    return DatasetInfo(
        f"yours-{_digest(train_part, test_part, class_names)}", _title(title), class_names, channels, size, mean, std,
        description=f"{n:,} of your own images in {len(class_names)} classes, resized to {size}×{size} ({resize}).",
        epochs=_epochs(len(train_part)), preset=PRESET, resize=resize,
    )


def _mean_std(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 ``(N, C, H, W)`` as fractions of 255, exact:
    from each channel's histogram of the 256 values, without a float copy of the images."""
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].flatten(), minlength=256).double()
        m = float((counts * values).sum() / counts.sum())
        var = float((counts * (values - m) ** 2).sum() / counts.sum())
        mean.append(m / 255)
        # A single-coloured channel has no spread; checkpoint.MIN_STD keeps normalised inputs finite.
        std.append(max(math.sqrt(var) / 255, checkpoint.MIN_STD))
    return tuple(mean), tuple(std)


def _digest(train_part: Split, test_part: Split, class_names: tuple[str, ...]) -> str:
    """12 hex digits that change with any image, label, class name or split: caches key on the dataset's name."""
    h = hashlib.blake2b(digest_size=6)
    h.update("\0".join(class_names).encode())
    for t in (train_part.x, train_part.y, test_part.x, test_part.y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _epochs(n_train: int) -> int:
    """Enough epochs for the default run to take train.TrainConfig's min_steps on its own (small sets need many
    passes), at most the 50 the Train page offers."""
    default = train.TrainConfig()
    per_epoch = math.ceil(n_train / default.batch_size)
    return max(1, min(50, math.ceil(default.min_steps / per_epoch)))


def _title(title: str | None) -> str:
    """Outside text as a title: control characters as spaces, at most checkpoint.MAX_TITLE characters."""
    clean = " ".join("".join(ch if ch.isprintable() else " " for ch in title or "").split())
    if len(clean) > checkpoint.MAX_TITLE:
        clean = clean[:checkpoint.MAX_TITLE - 1] + "…"
    return clean or DEFAULT_TITLE
