"""Reading a trace file: :func:`load_trace`, and the lazy per-layer arrays of a loaded trace.

A trace is a zip of ``.npy`` members (what ``np.savez_compressed`` writes). :class:`TraceFile` opens it,
bounds every member from the zip directory before reading anything (compression method, sizes a
member's compressed bytes can back, the metadata members' size limits: a zip bomb or a forged size is
refused unread), reads each member's ``.npy`` header with numpy's own readers
(``np.lib.format.read_magic``, ``read_array_header_1_0`` / ``_2_0``) and requires the member to be exactly
that header and its data. Arrays are read on request (never pickled data), after their header is read
again and found unchanged, in chunks straight into the array, and each read goes on to the member's end,
where ``zipfile`` checks the CRC. :func:`load_trace` runs the checks of :mod:`trace_format.validate` on the
headers and, by default, reads every member's data once to verify it.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import threading
import tokenize
import weakref
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from trace_format.errors import TraceError, Where
from trace_format.model import Trace
from trace_format.validate import ArraySource, build_trace, check

__all__ = ["DEFLATE_MAX_RATIO", "LARGE_ARRAYS", "TOP_MEMBER_LIMIT", "TraceArrays", "TraceFile", "load_trace"]

# The arrays of a loaded trace that are read from the file on every access and never kept (activations,
# gates, weights: a layer's working set); every other array (per-channel vectors, scalars) is kept once read.
LARGE_ARRAYS = frozenset({"inputs", "gates", "weights"})
# Largest uncompressed size of the metadata members (bytes of the whole .npy member): they are read whole
# before anything else is checked.
TOP_MEMBER_LIMIT = {"format": 1 << 16, "version": 1 << 16, "meta": 1 << 26}
# Deflate never expands data more than 1032-fold (one 258-byte match per two bits at best).
DEFLATE_MAX_RATIO = 1032

# What zipfile, zlib and numpy raise on a damaged zip or member (OSError is "cannot read the file").
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, KeyError, RuntimeError, NotImplementedError, ValueError)
_CHUNK = 1 << 16


@contextlib.contextmanager
def _refusing_damage(where: Where, key: str | None = None) -> Iterator[None]:
    """What the file, zipfile, zlib or numpy raise while reading, as the :class:`TraceError` naming the
    file and (``key``) the member: "cannot read the file" for an OSError, else "corrupt or truncated"."""
    prefix = "" if key is None else f"key {key!r}: "
    try:
        yield
    except TraceError:  # a ValueError too: already the message
        raise
    except OSError as exc:
        where.fail(f"{prefix}cannot read the file ({exc.strerror or exc})")
    except _DAMAGE as exc:
        where.fail(f"{prefix}corrupt or truncated file ({type(exc).__name__}: {exc})")


def _open_zip(fh: Any, where: Where) -> zipfile.ZipFile:
    """The zip of an open file, refusing what ``np.load`` would not read as a ``.npz``."""
    with _refusing_damage(where):
        head = fh.read(len(np.lib.format.MAGIC_PREFIX))
        if not head:
            where.fail("corrupt or truncated file (EOFError: no data in the file)")
        if head.startswith(np.lib.format.MAGIC_PREFIX):
            where.fail("a single .npy array, not a trace (.npz)")
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # np.load's test for a zip
            where.fail(f"not a trace file (not a zip of .npy arrays: it starts with {head!r})")
        fh.seek(0)
        return zipfile.ZipFile(fh)


def _open_regular_file(path: str | os.PathLike, where: Where) -> Any:
    """The file at ``path``, open for reading; anything but a regular file (a FIFO, which would block
    until a writer comes, a device such as /dev/zero, a directory) is refused without reading it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        where.fail(f"cannot read the file ({exc.strerror or exc})")
    except ValueError as exc:  # a NUL in the path
        where.fail(f"cannot read the file ({exc})")
    if not stat.S_ISREG(st.st_mode):
        where.fail(f"cannot read the file (not a regular file: {_file_kind(st.st_mode)})")
    try:
        # O_NONBLOCK: should the path become a FIFO after the stat, opening it does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        where.fail(f"cannot read the file ({exc.strerror or exc})")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            where.fail(f"cannot read the file (not a regular file: {_file_kind(st.st_mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "another kind of file")


def _close_handles(zf: zipfile.ZipFile, fh: Any) -> None:
    zf.close()
    fh.close()


class _Npy(NamedTuple):
    """A ``.npy`` member's header: what it holds and where its data starts in the uncompressed member."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_start: int

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)


def _read_npy_header(fp: Any, key: str, where: Where) -> _Npy:
    """Parse the ``.npy`` header at the start of an open member (numpy's public readers); read no data."""
    try:
        version = np.lib.format.read_magic(fp)
    except ValueError:
        where.fail(f"key {key!r}: a zip member that is not a .npy array")
    if version not in ((1, 0), (2, 0)):
        where.fail(f"key {key!r}: .npy format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = read(fp)
    except (ValueError, SyntaxError, TypeError, tokenize.TokenError) as exc:  # numpy tokenizes the header
        where.fail(f"key {key!r}: not a readable array (bad .npy header: {exc})")
    if dtype.hasobject:
        where.fail(
            f"key {key!r}: an object array (pickled Python objects), refused: traces are read with "
            "allow_pickle=False"
        )
    return _Npy(dtype, tuple(shape), bool(fortran_order), fp.tell())


def _read_array(fp: Any, npy: _Npy) -> np.ndarray:
    """The array after the header just read (and found as recorded at load), read in 64 KiB chunks
    straight into it, then on to the member's end, where zipfile checks the CRC.

    Not ``np.lib.format.read_array``: on a zip member it reads 256 KiB chunks into growing ``bytes`` and
    copies each into the array, a transient peak of about three times a 400 KB array (1.24 MB measured
    on the shipped ResNet-18 trace's largest ``inputs``) where this holds the array and one chunk; a
    network run reads every layer's ``inputs`` and ``weights`` anew (tests/test_trace.py bounds it).
    """
    nbytes = npy.nbytes
    if nbytes == 0:
        return np.empty(npy.shape, npy.dtype, order="F" if npy.fortran_order else "C")
    raw = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(raw)
    done = 0
    while done < nbytes:
        chunk = fp.read(min(_CHUNK, nbytes - done))
        if not chunk:
            raise EOFError(f"the member ends after {done} of its {nbytes} bytes of array data")
        view[done : done + len(chunk)] = chunk
        done += len(chunk)
    while fp.read(_CHUNK):  # on to the member's end, where zipfile checks the CRC
        pass
    arr = raw.view(npy.dtype)
    return arr.reshape(npy.shape[::-1]).transpose() if npy.fortran_order else arr.reshape(npy.shape)


class TraceFile(ArraySource):
    """An open trace file: every member's ``.npy`` header, read at open; arrays read on request.

    Reads hold a lock (several threads may read layers). Arrays outside :data:`LARGE_ARRAYS` are kept
    once read; large ones are read again on every request. The file closes with :meth:`close` or when
    nothing refers to this object any more.
    """

    def __init__(self, path: str | os.PathLike, source: str):
        self.source = source
        self.closed = False
        self._lock = threading.Lock()
        self._members: dict[str, tuple[zipfile.ZipInfo, _Npy]] = {}
        self._kept: dict[str, np.ndarray] = {}
        where = Where(source)
        fh = _open_regular_file(path, where)
        zf = None
        try:
            self._size = os.fstat(fh.fileno()).st_size
            zf = _open_zip(fh, where)
            for info in zf.infolist():
                self._add_member(zf, info, where)
        except BaseException:
            if zf is not None:
                zf.close()
            fh.close()
            raise
        self._zip = zf
        self._finalizer = weakref.finalize(self, _close_handles, zf, fh)

    def _add_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: Where) -> None:
        """Check one member's sizes and ``.npy`` header (no array data is read) and record it."""
        name = info.filename
        key = name[:-4] if name.endswith(".npy") else name  # the key np.load gives it
        if key in self._members:
            where.fail(f"key {key!r}: stored twice in the zip")
        # Sizes from the zip's directory, before anything is read: a member is read into one buffer of
        # its size, so a claim its compressed data cannot back (a zip bomb, a forged size) is refused here.
        methods = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
        if info.compress_type not in methods:
            where.fail(
                f"key {key!r}: zip compression method {info.compress_type}, expected stored (0) or deflated "
                "(8), as numpy writes"
            )
        if info.compress_size > self._size:
            where.fail(
                f"key {key!r}: corrupt or truncated file (the zip says the member takes {info.compress_size} "
                f"bytes, the file has {self._size})"
            )
        most = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO)
        if info.file_size > most:
            where.fail(
                f"key {key!r}: corrupt file (the zip says the member holds {info.file_size} bytes, more "
                f"than its {info.compress_size} {methods[info.compress_type]} bytes can give)"
            )
        limit = TOP_MEMBER_LIMIT.get(key)
        if limit is not None and info.file_size > limit:
            where.fail(
                f"key {key!r}: {info.file_size} bytes, more than the {limit} a trace's {key!r} may take"
            )
        with _refusing_damage(where, key), zf.open(info) as fp:
            npy = _read_npy_header(fp, key, where)
        want = npy.data_start + npy.nbytes
        if info.file_size != want:  # np.save writes exactly the header and the data, nothing after
            what = "truncated file" if info.file_size < want else "file (bytes after the array's data)"
            where.fail(
                f"key {key!r}: corrupt or {what}: the member holds {info.file_size} bytes, its .npy header "
                f"says {want} ({npy.data_start} of header, {npy.nbytes} of data)"
            )
        self._members[key] = (info, npy)

    def keys(self) -> Iterable[str]:
        return self._members.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def header(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        npy = self._members[key][1]
        return npy.dtype, npy.shape

    def value(self, key: str, where: Where) -> np.ndarray:
        """The array of ``key``, read from the file (or kept from an earlier read of a small array)."""
        info, npy = self._members[key]
        keep = key.rpartition("/")[2] not in LARGE_ARRAYS
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                return kept
            if self.closed:
                where.fail(f"key {key!r}: the trace file is closed (Trace.close), its arrays cannot be read")
            try:
                with _refusing_damage(where, key), self._zip.open(info) as fp:
                    now = _read_npy_header(fp, key, where)
                    if now != npy:  # the array is sized from the header: only the checked one is read
                        where.fail(f"key {key!r}: its .npy header changed since the file was loaded")
                    arr = _read_array(fp, npy)
            except MemoryError:
                where.fail(f"key {key!r}: not enough memory to read its {npy.nbytes} bytes")
            if keep:
                self._kept[key] = arr
        return arr

    def verify(self, where: Where) -> None:
        """Read every member's data to its end, where zipfile checks the CRC; keep nothing."""
        with self._lock:
            for key, (info, _) in self._members.items():
                with _refusing_damage(where, key), self._zip.open(info) as fp:
                    while fp.read(_CHUNK):
                        pass

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._finalizer()


class TraceArrays(Mapping[str, np.ndarray]):
    """The arrays of one layer of a loaded trace (array name -> array), read from the open file on access.

    Every access of a large array (``inputs``, ``gates``, ``weights``) reads it from the file anew and
    nothing keeps it; the small ones (per-channel vectors, scalars) are kept once read. ``header(name)``
    and ``nbytes`` come from the ``.npy`` headers without reading data. A member found damaged only now
    raises :class:`TraceError` naming the file, the layer and the key.
    """

    def __init__(self, file: TraceFile, layer: str, keys: Mapping[str, str]):
        self._file = file
        self._where = Where(file.source, layer)
        self._keys = dict(keys)  # array name -> key in the file

    def __getitem__(self, name: str) -> np.ndarray:
        return self._file.value(self._keys[name], self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def header(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """``(dtype, shape)`` of an array, from its ``.npy`` header."""
        return self._file.header(self._keys[name])

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays once read (from the headers: nothing is read)."""
        return sum(dtype.itemsize * math.prod(shape) for dtype, shape in map(self.header, self._keys))

    def __repr__(self) -> str:
        return f"<TraceArrays of layer {self._where.layer!r} in {self._file.source}: {', '.join(self._keys)}>"


def load_trace(path: str | os.PathLike, verify_data: bool = True) -> Trace:
    """Open and validate a trace file; the layers' arrays are read from it on access (:class:`TraceArrays`).

    The checks read the ``.npy`` headers of all members and the values of the small arrays they look at
    (``format``, ``version``, ``meta``, scales, thresholds); no pickled data is ever read. With
    ``verify_data`` (the default) every member's data is also read once to its end, so damaged data (a bad
    CRC, a broken compressed stream) is refused here rather than when a layer is used (about 0.1 s per
    10 MB). The file stays open while the trace or one of its layers lives (or until ``Trace.close()``).
    """
    source = str(path)
    file = TraceFile(path, source)
    try:
        checked = check(file, Where(source))
        if verify_data:
            file.verify(Where(source))
    except BaseException:
        file.close()
        raise
    named = {name: TraceArrays(file, name, keys) for name, keys in checked.keys.items()}
    return build_trace(checked, named, source, file)
