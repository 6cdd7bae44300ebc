"""Reading a file from outside (bytes, a path or an open binary file) without reading past a size cap, and reading
a PyTorch file from outside without unpickling code or expanding compressed records."""

from __future__ import annotations

import io
import logging
import os
import zipfile

log = logging.getLogger(__name__)


class TooBig(ValueError):
    """More bytes than the cap; ``size`` is the whole size when it was known up front, else None."""

    def __init__(self, size: int | None):
        super().__init__(f"{size} bytes" if size is not None else "more bytes than the cap")
        self.size = size


def read_capped(source: object, limit: int) -> bytes:
    """The bytes of ``source``, refusing more than ``limit`` without reading them all into memory.

    Raises :class:`TooBig`, ``OSError`` (opening or reading) and ``TypeError`` (not bytes, a path or a binary file).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > limit:
            raise TooBig(len(source))
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return read_capped(f, limit)
    if not callable(getattr(source, "read", None)):
        raise TypeError(f"expected a path, bytes or a binary file, got a {type(source).__name__}")
    try:
        here = source.tell()
        left = source.seek(0, io.SEEK_END) - here
        source.seek(here)
    except (AttributeError, OSError, ValueError):  # a pipe or socket: no size up front
        left = None
    if left is not None and left > limit:
        raise TooBig(left)
    try:
        data = source.read(limit + 1)
    except ValueError as e:  # a closed file
        raise OSError(str(e)) from None
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("the file was opened as text, not as bytes")
    if len(data) > limit:
        raise TooBig(None)
    return bytes(data)


class NotPlainTorch(ValueError):
    """Bytes that are not a plain PyTorch file. ``reason``: ``"unreadable"`` (not a zip, or torch.load refused it),
    ``"records"`` (more records than allowed; ``records`` says how many) or ``"compressed"`` (a record compressed or
    misdescribed, which torch.save never does)."""

    def __init__(self, reason: str, records: int = 0):
        super().__init__(reason)
        self.reason, self.records = reason, records


def load_torch(raw: bytes, max_records: int) -> object:
    """What ``torch.load(weights_only=True)`` reads from ``raw`` (tensors on the CPU), once its zip records are known
    to be plain: at most ``max_records`` of them, none compressed, their sizes adding up to no more than the file.
    Raises :class:`NotPlainTorch` and nothing else."""
    import torch

    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            records = z.infolist()
    except Exception:  # noqa: BLE001  (zipfile fails on foreign bytes in many ways: BadZipFile, struct, EOF…)
        raise NotPlainTorch("unreadable") from None
    if len(records) > max_records:
        raise NotPlainTorch("records", len(records))
    # torch.save stores every record as it is; a compressed one could expand a thousandfold in memory.
    if any(r.compress_type != zipfile.ZIP_STORED or r.file_size != r.compress_size for r in records) or \
            sum(r.file_size for r in records) > len(raw):
        raise NotPlainTorch("compressed")
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch.load fails on foreign bytes in many ways: pickle, zip, EOF…)
        log.info("torch.load refused a file: %s", (str(e) or repr(e)).splitlines()[0][:300])
        raise NotPlainTorch("unreadable") from None
