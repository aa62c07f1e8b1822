"""Bounded, positional reads of a disk's bytes.

Every byte an inspector looks at comes through :class:`BoundedReader`, which

* never reads at or past the end of the source, whatever offset a header
  names (header fields are guest-writable and must not steer our I/O);
* never reads more than ``MAX_READ`` bytes in total from one source;
* reads the first ``HEAD_SIZE`` bytes and the last ``TAIL_SIZE`` bytes once,
  and serves every later request inside them from memory.

A *source* is anything with a ``size`` attribute and a ``pread(length, offset)``
method (the argument order of :func:`os.pread`). Tests wrap a source to prove
the two bounds above.
"""

from __future__ import annotations

import os
from typing import Protocol

#: Upper bound on the bytes read from one file. The largest legitimate need is
#: the first qcow2 cluster (cluster_bits <= 21, so 2 MiB): qemu requires the
#: header extensions and the backing file name to lie inside it. Everything
#: else is far smaller - the first 64 KiB (one read), the 1.5 KiB tail (VHD
#: footer, stream-optimised VMDK footer), a VMDK descriptor (qemu caps it at
#: 1 MiB - 1), the VHDX region and metadata tables (64 KiB each). 4 MiB covers
#: the worst legitimate case with room to spare; an image needing more is
#: malformed or hostile and is reported, not followed.
MAX_READ = 4 * 1024 * 1024

#: First read: covers every signature (the ISO 9660 volume descriptors start
#: at 32 KiB) and the whole header of every format with qemu's default
#: cluster size.
HEAD_SIZE = 64 * 1024

#: Second read: a VHD footer is the last 512 bytes; a stream-optimised VMDK
#: keeps its footer marker, footer and end-of-stream marker in the last 1536.
TAIL_SIZE = 1536


class Source(Protocol):
    """Random access to a disk's bytes."""

    size: int

    def pread(self, length: int, offset: int) -> bytes:
        """Return up to ``length`` bytes starting at ``offset``."""
        ...


class BytesSource:
    """An in-memory source; ``size`` may exceed ``len(data)`` (a file's head only)."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.data = bytes(data)
        self.size = len(self.data) if size is None else size

    def pread(self, length: int, offset: int) -> bytes:
        return self.data[offset : offset + length]


class FileSource:
    """An open file descriptor; the caller owns (and closes) it."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def pread(self, length: int, offset: int) -> bytes:
        chunks: list[bytes] = []
        while length > 0:
            # pread may legally return fewer bytes than asked (signals, some
            # block drivers); loop until we have them all or hit end of file.
            chunk = os.pread(self.fd, length, offset)
            if not chunk:
                break
            chunks.append(chunk)
            length -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)


class BoundedReader:
    """Clamped, budgeted and cached reads over a :class:`Source`."""

    def __init__(self, source: Source, path: str = "<bytes>", budget: int = MAX_READ) -> None:
        self.source = source
        #: The file's name, for messages and to recognise self-references.
        self.path = path
        self.size = max(0, int(source.size))
        self.budget = budget
        self.used = 0
        #: Set when a request was cut short because the budget ran out.
        self.exhausted = False
        self.head = b""
        self._tail_offset = self.size
        self.tail = b""
        self._cache: list[tuple[int, bytes]] = []
        self._loaded = False

    def load(self) -> None:
        """Read the head and tail regions (at most two preads)."""
        if self._loaded:
            return
        self._loaded = True
        self.head = self._pread(0, min(HEAD_SIZE, self.size))
        tail_start = max(len(self.head), self.size - TAIL_SIZE)
        if tail_start < self.size:
            tail = self._pread(tail_start, self.size - tail_start)
            self._cache.append((tail_start, tail))
        # The tail as the last <= TAIL_SIZE bytes of the file, whichever read
        # they came from.
        self._tail_offset = max(0, self.size - TAIL_SIZE)
        self.tail = self.read(self._tail_offset, self.size - self._tail_offset)

    def read(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset``; short at end of file or budget."""
        if offset < 0 or length <= 0 or offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        end = offset + length
        if end <= len(self.head):
            return self.head[offset:end]
        for start, chunk in self._cache:
            if start <= offset and end <= start + len(chunk):
                return chunk[offset - start : end - start]
        data = self._pread(offset, length)
        self._cache.append((offset, data))
        return data

    def read_until(self, offset: int, limit: int, stop: bytes = b"\x00") -> bytes:
        """Read from ``offset`` up to (not including) ``stop``, at most ``limit`` bytes.

        Reads in ``HEAD_SIZE`` steps so that a short NUL-terminated text (a
        VMDK descriptor) costs one small read, not ``limit`` bytes.
        """
        parts: list[bytes] = []
        got = 0
        while got < limit:
            chunk = self.read(offset + got, min(HEAD_SIZE, limit - got))
            if not chunk:
                break
            cut = chunk.find(stop)
            if cut >= 0:
                parts.append(chunk[:cut])
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _pread(self, offset: int, length: int) -> bytes:
        allowed = min(length, self.budget - self.used)
        if allowed < length:
            self.exhausted = True
        if allowed <= 0:
            return b""
        data = self.source.pread(allowed, offset)
        self.used += len(data)
        return data
