"""A minimal ISO 9660 writer for sandbox config drives.

Nova builds ``disk.config`` with ``genisoimage -o disk.config -ldots -allow-lowercase
-allow-multidot -l -publisher "OpenStack Compute <version>" -quiet -J -r -V config-2
<tmpdir>``. The sandbox only needs a valid ISO 9660 volume labelled ``config-2`` holding
``openstack/latest/meta_data.json`` (``blkid`` reports ``TYPE="iso9660"
LABEL="config-2"``), so it writes one itself instead of depending on genisoimage:
no Joliet or Rock Ridge, level-2 names (upper case, ``;1`` versions).

Layout (2048-byte sectors)::

    0-15   system area (zeros)
    16     primary volume descriptor   ("\\x01CD001\\x01")
    17     volume descriptor set terminator ("\\xffCD001\\x01")
    18     L path table (little endian)
    19     M path table (big endian)
    20..   one sector per directory, then the files' data
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

SECTOR = 2048
_FIRST_FREE = 20


def _both16(value: int) -> bytes:
    return struct.pack("<H", value) + struct.pack(">H", value)


def _both32(value: int) -> bytes:
    return struct.pack("<I", value) + struct.pack(">I", value)


def _text(value: str, size: int) -> bytes:
    return value.encode("ascii")[:size].ljust(size, b" ")


def _dir_date(stamp: int) -> bytes:
    t = time.gmtime(stamp)
    return bytes([t.tm_year - 1900, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0])


def _vol_date(stamp: int | None) -> bytes:
    if stamp is None:
        return b"0" * 16 + b"\x00"
    return time.strftime("%Y%m%d%H%M%S00", time.gmtime(stamp)).encode("ascii") + b"\x00"


def _iso_name(name: str, is_dir: bool) -> bytes:
    cleaned = "".join(c if c.isalnum() or c in "_." else "_" for c in name.upper())
    if is_dir:
        return cleaned.replace(".", "_")[:31].encode("ascii")
    stem, dot, ext = cleaned.rpartition(".")
    if not dot:
        stem, ext = cleaned, ""
    stem = stem.replace(".", "_")
    return f"{stem[: 30 - len(ext)]}.{ext};1".encode("ascii")


@dataclass
class _Dir:
    name: bytes
    parent: _Dir | None
    dirs: dict[str, _Dir] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    sector: int = 0
    number: int = 0  # path table number, 1-based


def _record(ident: bytes, sector: int, size: int, is_dir: bool, stamp: int) -> bytes:
    length = 33 + len(ident) + (1 - len(ident) % 2)
    rec = (
        bytes([length, 0])
        + _both32(sector)
        + _both32(size)
        + _dir_date(stamp)
        + bytes([2 if is_dir else 0, 0, 0])
        + _both16(1)
        + bytes([len(ident)])
        + ident
    )
    return rec.ljust(length, b"\x00")


def build_iso(files: dict[str, bytes], *, label: str, publisher: str, stamp: int) -> bytes:
    """Return the bytes of an ISO 9660 image holding ``files`` ({"a/b/c.json": data}).

    >>> iso = build_iso({"openstack/latest/meta_data.json": b"{}"}, label="config-2",
    ...                 publisher="OpenStack Compute", stamp=0)
    >>> iso[0x8001:0x8006], iso[0x8028:0x8030]
    (b'CD001', b'config-2')
    """
    root = _Dir(name=b"\x00", parent=None)
    for path, data in sorted(files.items()):
        *parts, leaf = path.strip("/").split("/")
        node = root
        for part in parts:
            node = node.dirs.setdefault(part, _Dir(name=_iso_name(part, True), parent=node))
        node.files[leaf] = data

    # Breadth-first, children sorted by identifier: the order path tables require.
    order = [root]
    for node in order:
        order.extend(sorted(node.dirs.values(), key=lambda d: d.name))
    next_sector = _FIRST_FREE
    for number, node in enumerate(order, start=1):
        node.number = number
        node.sector = next_sector
        next_sector += 1
    file_sectors: dict[int, list[tuple[bytes, int, bytes]]] = {}
    for node in order:
        entries = []
        for leaf, data in sorted(node.files.items(), key=lambda kv: _iso_name(kv[0], False)):
            entries.append((_iso_name(leaf, False), next_sector, data))
            next_sector += max(1, -(-len(data) // SECTOR))
        file_sectors[id(node)] = entries
    total = next_sector

    image = bytearray(total * SECTOR)
    for node in order:
        parent = node.parent or node
        body = _record(b"\x00", node.sector, SECTOR, True, stamp)
        body += _record(b"\x01", parent.sector, SECTOR, True, stamp)
        for child in sorted(node.dirs.values(), key=lambda d: d.name):
            body += _record(child.name, child.sector, SECTOR, True, stamp)
        for ident, sector, data in file_sectors[id(node)]:
            body += _record(ident, sector, len(data), False, stamp)
            image[sector * SECTOR : sector * SECTOR + len(data)] = data
        if len(body) > SECTOR:
            raise ValueError("directory too large for this minimal ISO writer")
        image[node.sector * SECTOR : node.sector * SECTOR + len(body)] = body

    ltable = mtable = b""
    for node in order:
        ident = node.name
        pad = b"\x00" * (len(ident) % 2)
        parent_no = (node.parent or node).number
        ltable += bytes([len(ident), 0]) + struct.pack("<IH", node.sector, parent_no) + ident + pad
        mtable += bytes([len(ident), 0]) + struct.pack(">IH", node.sector, parent_no) + ident + pad
    image[18 * SECTOR : 18 * SECTOR + len(ltable)] = ltable
    image[19 * SECTOR : 19 * SECTOR + len(mtable)] = mtable

    pvd = (
        b"\x01CD001\x01\x00"
        + _text("LINUX", 32)
        + _text(label, 32)
        + bytes(8)
        + _both32(total)
        + bytes(32)
        + _both16(1)
        + _both16(1)
        + _both16(SECTOR)
        + _both32(len(ltable))
        + struct.pack("<I", 18)
        + bytes(4)
        + struct.pack(">I", 19)
        + bytes(4)
        + _record(b"\x00", root.sector, SECTOR, True, stamp)
        + _text("", 128)
        + _text(publisher, 128)
        + _text("", 128)
        + _text("GENISOIMAGE ISO 9660/HFS FILESYSTEM CREATOR", 128)
        + _text("", 37 * 3)
        + _vol_date(stamp)
        + _vol_date(stamp)
        + _vol_date(None)
        + _vol_date(stamp)
        + b"\x01\x00"
    )
    image[16 * SECTOR : 16 * SECTOR + len(pvd)] = pvd
    image[17 * SECTOR : 17 * SECTOR + 7] = b"\xffCD001\x01"
    return bytes(image)
