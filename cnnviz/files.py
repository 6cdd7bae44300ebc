"""Reading a file from outside (bytes, a path or an open binary file) without reading past a size cap."""

from __future__ import annotations

import io
import os


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
