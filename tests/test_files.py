"""read_capped: the bytes of a path, bytes or binary file, never more than the cap."""

from __future__ import annotations

import io

import pytest

from cnnviz import files


def test_reads_bytes_paths_and_files(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abcdef")
    assert files.read_capped(b"abc", 3) == b"abc"
    assert files.read_capped(path, 6) == b"abcdef" and files.read_capped(str(path), 6) == b"abcdef"
    assert files.read_capped(io.BytesIO(b"xyz"), 10) == b"xyz"


def test_refuses_more_than_the_cap_with_the_size_when_known(tmp_path):
    with pytest.raises(files.TooBig) as e:
        files.read_capped(b"abcd", 3)
    assert e.value.size == 4
    buf = io.BytesIO(b"0123456789")
    buf.seek(2)
    with pytest.raises(files.TooBig) as e:
        files.read_capped(buf, 5)
    assert e.value.size == 8  # what is left from the current position

    class Pipe(io.RawIOBase):  # no size up front: refused after reading one byte past the cap
        def readable(self):
            return True

        def read(self, n=-1):
            return b"z" * n

        def seekable(self):
            return False

        def tell(self):
            raise OSError("not seekable")

    with pytest.raises(files.TooBig) as e:
        files.read_capped(Pipe(), 5)
    assert e.value.size is None


def test_wrong_kinds_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.read_capped(tmp_path / "missing", 5)
    with pytest.raises(TypeError, match="got a int"):
        files.read_capped(12, 5)
    with pytest.raises(TypeError, match="as text"):
        files.read_capped(io.StringIO("text"), 5)
