"""The contract every format inspector follows, and small parsing helpers.

One class per format. ``locate`` answers "does this format's signature appear,
and where" from the head/tail bytes only; ``inspect`` parses the header of a
file that *is declared* to be in this format (or, for a disk declared raw,
of a container header found at its start) and records what it claims and
which safety checks it fails. Inspectors hold no state: one instance serves
every call.
"""

from __future__ import annotations

import abc
import enum
import functools
import struct
from typing import ClassVar

from storagectl.inspector.checks import Check
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.report import Findings

#: Longest name (backing file, data file, extent) we copy into a report. qemu
#: itself refuses qcow2/qcow backing names over 1023 bytes.
MAX_NAME = 1023


class Location(enum.Enum):
    """Where a format's signature was found."""

    START = "start"  # at offset 0 (or a fixed offset near it): what probing looks at
    END = "end"  # a trailer only (fixed VHD footer)


class FormatInspector(abc.ABC):
    """Base class: one subclass per format, registered by ``name``."""

    #: The name used in reports and accepted as a declared format.
    name: ClassVar[str]
    #: Container formats have metadata that qemu interprets (and that can name
    #: other files); content formats (iso, gpt, mbr) are just what a raw disk
    #: holds and never count towards "multiple-formats".
    container: ClassVar[bool] = True
    #: The signatures (any one) the default :meth:`locate` looks for at offset 0; a
    #: format whose signature is found otherwise overrides ``locate``.
    magics: ClassVar[tuple[bytes, ...]] = ()

    def locate(self, reader: BoundedReader) -> Location | None:
        """Return where this format's signature is, or None; reads head/tail only."""
        return Location.START if reader.head.startswith(self.magics) else None

    @abc.abstractmethod
    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        """Parse the header (the signature is known to match) into ``found``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@functools.lru_cache(maxsize=64)
def _compiled(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


def unpack(fmt: str, data: bytes, offset: int = 0) -> tuple[int, ...] | None:
    """``struct.unpack_from`` that returns None instead of raising on short data."""
    layout = _compiled(fmt)
    if offset < 0 or len(data) < offset + layout.size:
        return None
    return layout.unpack_from(data, offset)


def read_header(
    reader: BoundedReader, found: Findings, what: str, fmt: str
) -> tuple[int, ...] | None:
    """The header at the start of the file, unpacked with ``fmt``; None, with the shared
    ``truncated-header`` failure recorded, when the file ends before it."""
    size = _compiled(fmt).size
    hdr = reader.read(0, size)
    fields = unpack(fmt, hdr)
    if fields is None:
        truncated(found, what, size, len(hdr))
    return fields


def decode_name(raw: bytes) -> str:
    """Turn a file name stored in a header into printable text for a report.

    Names are bytes in every format; undecodable bytes are escaped rather than
    dropped so that an operator sees exactly what the header says.
    """
    return raw[:MAX_NAME].decode("utf-8", errors="backslashreplace")


def truncated(found: Findings, what: str, need: int, got: int) -> None:
    """Record the shared ``truncated-header`` failure."""
    found.fail(
        Check.TRUNCATED_HEADER,
        f"the {what} needs {need} bytes but the file ends after {got}",
    )
