"""VMware VMDK: the binary sparse extent ("KDMV", "COWD") and the text descriptor.

A VMDK descriptor is text that can name any file on the host as an extent or
parent, and qemu opens what it names (CVE-2015-5162-style and the 2024
qcow2/vmdk data-file attacks). So the only VMDKs we accept are the
self-contained ones: ``monolithicSparse`` and ``streamOptimized``, whose data
lives in the file itself.

References: VMware "Virtual Disk Format 5.0"; qemu 7.2 block/vmdk.c
(vmdk_probe, vmdk_open, vmdk_open_vmdk4, vmdk_parse_extents, vmdk_parent_open).
"""

from __future__ import annotations

import os
import re

from storagectl.inspector.base import (
    FormatInspector,
    Location,
    decode_name,
    read_header,
    unpack,
)
from storagectl.inspector.checks import Check
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.report import Findings

# VMDK4 hosted sparse extent header, little-endian and packed:
#
#   off  size  field
#     0     4  magic "KDMV"
#     4     4  version (1..3)
#     8     4  flags
#    12     8  capacity (sectors)
#    20     8  grainSize (sectors)
#    28     8  descriptorOffset (sectors; 1 = 0x200 in practice)
#    36     8  descriptorSize (sectors)
#    44     4  numGTEsPerGT
#    48     8  rgdOffset
#    56     8  gdOffset (0xffffffffffffffff: "at end", the footer rules)
#    64     8  overHead
#    72     1  uncleanShutdown
#    73     4  line-end check characters "\n", " ", "\r", "\n"
#    77     2  compressAlgorithm (1 = deflate: streamOptimized)
#
# A stream-optimised file with gdOffset "at end" keeps, in its last 1536
# bytes: a footer marker (u64 val, u32 size = 0, u32 type = 3), a copy of the
# header (magic first) that takes precedence, and an end-of-stream marker
# (all zero).
#
# The older VMware ESX sparse extent ("COWD", vmfsSparse) has the virtual size
# as a u32 sector count at offset 12.
KDMV = b"KDMV"
COWD = b"COWD"
GD_AT_END = 0xFFFFFFFFFFFFFFFF
MARKER_FOOTER = 3
SECTOR = 512
#: qemu reads a descriptor up to its first NUL, capped at this many bytes.
DESC_MAX = (1 << 20) - 1
#: qemu reads the embedded descriptor of a sparse file from sector 1 for its
#: parent link, whatever descriptorOffset says; anything else is suspicious.
DESC_SECTOR = 1

ALLOWED_CREATE_TYPES = ("monolithicSparse", "streamOptimized")

# qemu's text-descriptor probe: comment lines and space-only lines, then
# "version=1|2|3" on a line of its own. Possessive quantifiers keep a hostile
# head from making the regex backtrack.
_DESCRIPTOR_PROBE = re.compile(rb"(?:#[^\n]*+\n| ++\r?\n)*+version=[123]\r?\n")
_DESCRIPTOR_BANNER = b"# Disk DescriptorFile"

# Descriptor lines are matched with whole-text regexes rather than a Python
# loop per line: a hostile descriptor may hold a million lines, and each
# pattern below is linear in the text.
_SP = rb"[ \t\r\f\v]"  # whitespace that stays on one line
_EXTENT_BODY = (
    rb"(?:RW|RDONLY|NOACCESS)" + _SP + rb"+(\d{1,19})" + _SP + rb"+([A-Za-z]+)"
    rb"(?:" + _SP + rb'+"([^"\n]*)"(?:' + _SP + rb"+\d+)?)?" + _SP + rb"*$"
)
_FIELD_START = rb"[A-Za-z][A-Za-z0-9_.]*" + _SP + rb"*="
# An extent line: ACCESS SECTORS TYPE ["FILENAME" [OFFSET]].
_EXTENT_LINE = re.compile(rb"(?im)^" + _SP + rb"*" + _EXTENT_BODY)
# The first line that is not blank, a comment, a ddb.* line, a field or an
# extent.
_UNKNOWN_LINE = re.compile(
    rb"(?im)^" + _SP + rb"*+(?!#|ddb\.|" + _FIELD_START + rb"|" + _EXTENT_BODY + rb")\S"
)
# What qemu's sscanf accepts as an extent, with the whitespace run before it
# (group 1; see qemu_extents): the run starts after a non-space character or
# at the start of the text and may span blank lines.
_QEMU_EXTENT = re.compile(
    rb"(?:(?<=\S)|\A)(\s*?)(?m:^)" + _SP + rb'*RW\s+([+-]?\d+)\s+(\S{1,10})\s+"([^\n\r"]{1,511})'
)
_QEMU_EXTENT_TYPES = (b"FLAT", b"SPARSE", b"VMFS", b"VMFSSPARSE", b"SESPARSE")


def looks_like_descriptor(head: bytes) -> bool:
    """True if the bytes start like a VMDK text descriptor (qemu would probe it as one)."""
    return head.startswith(_DESCRIPTOR_BANNER) or _DESCRIPTOR_PROBE.match(head) is not None


def quoted_value(text: bytes, key: bytes) -> bytes | None:
    """Value of ``key="..."`` found the way qemu finds it: first occurrence anywhere.

    qemu uses strstr() on the whole descriptor (comments included) and skips
    two characters after the key, so we must see exactly what it sees.
    """
    pos = text.find(key)
    if pos < 0:
        return None
    start = pos + len(key) + 2
    end = text.find(b'"', start)
    if start > len(text) or end < 0:
        return None
    return text[start:end]


class VmdkInspector(FormatInspector):
    """VMDK sparse extents and text descriptors."""

    name = "vmdk"

    def locate(self, reader: BoundedReader) -> Location | None:
        head = reader.head
        if head[:4] in (KDMV, COWD) or looks_like_descriptor(head):
            return Location.START
        return None

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        magic = reader.head[:4]
        if magic == COWD:
            self._cowd(reader, found)
        elif magic == KDMV:
            self._sparse(reader, found)
        else:
            text = reader.read_until(0, DESC_MAX)
            self._descriptor(text, found, self_contained=False, own_name=_own_name(reader))

    @staticmethod
    def _cowd(reader: BoundedReader, found: Findings) -> None:
        fields = unpack("<4sIII", reader.read(0, 16))
        if fields is not None:
            found.virtual_size = fields[3] * SECTOR
        found.fail(
            Check.VMDK_CREATE_TYPE,
            "the file is a VMware ESX 'COWD' sparse extent (vmfsSparse); only "
            "monolithicSparse and streamOptimized are allowed",
        )

    def _sparse(self, reader: BoundedReader, found: Findings) -> None:
        fields = read_header(reader, found, "VMDK sparse header", "<4sIIQQQQIQQQB4sH")
        if fields is None:
            return
        version, capacity, desc_sector, gd_offset = fields[1], fields[3], fields[5], fields[9]
        if gd_offset == GD_AT_END:
            footer = self._footer(reader, found, fields)
            if footer is not None:
                version, capacity = footer[1], footer[3]
        found.virtual_size = capacity * SECTOR
        if not 1 <= version <= 3:
            found.fail(Check.VMDK_VERSION, f"VMDK sparse version {version} is not 1, 2 or 3")

        if desc_sector == 0:
            found.fail(Check.VMDK_DESCRIPTOR, "the sparse header has no embedded descriptor")
            return
        if desc_sector != DESC_SECTOR:
            found.fail(
                Check.VMDK_DESCRIPTOR,
                f"the embedded descriptor is at sector {desc_sector}, not sector "
                f"{DESC_SECTOR} where qemu looks for the parent link",
            )
        text = reader.read_until(desc_sector * SECTOR, DESC_MAX)
        # qemu treats a sparse header with capacity 0 as a wrapper around a
        # descriptor *file*: it opens every extent the descriptor names.
        self_contained = capacity != 0
        if not self_contained:
            found.fail(
                Check.VMDK_CREATE_TYPE,
                "the sparse header has capacity 0, so qemu reads its descriptor as a "
                "descriptor file and opens the extents it names",
            )
        self._descriptor(text, found, self_contained=self_contained, own_name=_own_name(reader))

    @staticmethod
    def _footer(
        reader: BoundedReader, found: Findings, header: tuple[int, ...]
    ) -> tuple[int, ...] | None:
        tail = reader.read(reader.size - 3 * SECTOR, 3 * SECTOR) if reader.size >= 1536 else b""
        marker = unpack("<QII", tail)
        footer = unpack("<4sIIQQQQIQQQB4sH", tail, SECTOR)
        eos = unpack("<QII", tail, 2 * SECTOR)
        valid = (
            marker is not None
            and footer is not None
            and eos is not None
            and footer[0] == KDMV
            and marker[1] == 0
            and marker[2] == MARKER_FOOTER
            and eos == (0, 0, 0)
        )
        if not valid:
            found.fail(
                Check.VMDK_FOOTER,
                "the header defers to a footer at the end of the file, but there is no "
                "valid footer there",
            )
            return None
        if footer is not None and footer[5:7] != header[5:7]:
            found.fail(
                Check.VMDK_FOOTER,
                "the footer places the descriptor somewhere other than the header does",
            )
        return footer

    @staticmethod
    def _descriptor(text: bytes, found: Findings, *, self_contained: bool, own_name: str) -> None:
        create_type = quoted_value(text, b"createType")
        if create_type is None:
            found.fail(Check.VMDK_CREATE_TYPE, "the descriptor has no createType")
        elif create_type.decode("latin-1") not in ALLOWED_CREATE_TYPES:
            found.fail(
                Check.VMDK_CREATE_TYPE,
                f"createType {decode_name(create_type)!r} is not monolithicSparse or "
                "streamOptimized",
            )
        parent = quoted_value(text, b"parentFileNameHint")
        if parent is not None:
            found.backing_file = decode_name(parent)
            found.fail(
                Check.VMDK_BACKING_FILE,
                f"the descriptor names a parent {found.backing_file!r}; qemu would open it",
            )

        unknown = _UNKNOWN_LINE.search(text)
        if unknown is not None:
            # Refuse what we do not understand rather than guess how qemu (or
            # VMware) would read it.
            number = text.count(b"\n", 0, unknown.start()) + 1
            found.fail(
                Check.VMDK_DESCRIPTOR,
                f"descriptor line {number} is neither a field, an extent nor a comment",
            )
        extents: list[tuple[int, bytes, bytes | None]] = [
            (int(match.group(1)), match.group(2).upper(), match.group(3))
            for match in _EXTENT_LINE.finditer(text)
        ]
        by_qemu = qemu_extents(text)
        seen_by_qemu = [(sectors, kind, name) for sectors, kind, name, _ in by_qemu]
        opened = [sectors * times for sectors, _, _, times in by_qemu]

        if not extents and not seen_by_qemu:
            found.fail(Check.VMDK_DESCRIPTOR, "the descriptor lists no extents")
        elif not self_contained:
            listed = [sectors for sectors, _, _ in extents]
            found.virtual_size = sum(opened or listed) * SECTOR

        outside: dict[str, None] = {}  # ordered set
        for _sectors, kind, name in extents + seen_by_qemu:
            if name is None:
                continue  # ZERO extents name no file
            if _is_self(
                name, kind, self_contained=self_contained, own_name=own_name, count=len(extents)
            ):
                continue
            outside[decode_name(name)] = None
        if outside:
            names = [repr(name) for name in list(outside)[:3]]
            if len(outside) > 3:
                names.append(f"{len(outside) - 3} more")
            found.fail(
                Check.VMDK_EXTENT_OUTSIDE,
                f"the descriptor names extent file(s) {', '.join(names)}; qemu would open them",
            )


def qemu_extents(text: bytes) -> list[tuple[int, bytes, bytes, int]]:
    """The extents qemu's vmdk_parse_extents would open: (sectors, type, name, times).

    qemu runs ``sscanf("%10s %d %10s \"%511[^\n\r\"]\" %d")`` at the start of
    every line, and sscanf skips *any* whitespace, newlines included: a blank
    line followed by an extent line yields that extent twice (``times`` = 2;
    qemu-img info then reports twice the size), and an extent split over
    several lines is still seen. Only "RW" extents of a known type with a
    positive size count.
    """
    found: list[tuple[int, bytes, bytes, int]] = []
    for match in _QEMU_EXTENT.finditer(text):
        # Every line start inside the whitespace run before "RW" is a line
        # whose sscanf lands on this extent.
        times = match.group(1).count(b"\n") + (1 if match.start() == 0 else 0)
        sectors, kind, name = _sscanf_int64(match.group(2)), match.group(3), match.group(4)
        if sectors > 0 and kind in _QEMU_EXTENT_TYPES:
            found.append((sectors, kind, name, times))
    return found


def _sscanf_int64(digits: bytes) -> int:
    """Parse like sscanf's %"SCNd64": saturate instead of overflowing.

    (Python's int() would also refuse very long digit strings outright.)
    """
    negative = digits.startswith(b"-")
    digits = digits.lstrip(b"+-").lstrip(b"0") or b"0"
    if len(digits) > 19:
        return -(2**63) if negative else 2**63 - 1
    value = int(digits)
    value = -value if negative else value
    return max(-(2**63), min(value, 2**63 - 1))


def _own_name(reader: BoundedReader) -> str:
    # "<bytes>" (inspect_bytes) has no name: nothing can refer to it.
    return "" if reader.path.startswith("<") else os.path.basename(reader.path)


def _is_self(name: bytes, kind: bytes, *, self_contained: bool, own_name: str, count: int) -> bool:
    """Whether an extent line refers to the inspected file itself.

    In a self-contained sparse file qemu never opens the extent it lists - the
    extent *is* the file - so one SPARSE extent with a bare name is the file,
    whatever the name (files get renamed). In a descriptor file every extent
    is opened by name; only a bare name equal to the file's own counts.
    """
    if b"/" in name or b"\\" in name or name in (b"", b".", b".."):
        return False
    if self_contained:
        return count == 1 and kind == b"SPARSE"
    return bool(own_name) and name.decode("utf-8", errors="replace") == own_name
