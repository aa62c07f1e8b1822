"""VirtualBox VDI.

A VDI header names no files (a differencing image finds its parent by UUID),
so it is inspected for its virtual size and for the variants qemu cannot
open. Reference: qemu 7.2 block/vdi.c (vdi_open).
"""

from __future__ import annotations

from storagectl.inspector.base import FormatInspector, Location, truncated, unpack
from storagectl.inspector.checks import Check
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.report import Findings

# VDI header, little-endian:
#
#   off  size  field
#     0    64  text banner "<<< Oracle VM VirtualBox Disk Image >>>\n"
#    64     4  signature 0xbeda107f
#    68     4  version (0x00010001 = 1.1)
#    72     4  header_size
#    76     4  image_type (1 dynamic, 2 static, 3 undo, 4 differencing)
#    80     4  image_flags
#    84   256  description
#   340     4  offset_bmap
#   344     4  offset_data
#   348    16  legacy geometry (cylinders, heads, sectors, sector_size)
#   364     4  unused
#   368     8  disk_size: virtual size in bytes
#   376     4  block_size
#   380     4  block_extra
#   384     4  blocks_in_image
#   388     4  blocks_allocated
#   392    16  uuid_image
#   408    16  uuid_last_snap
#   424    16  uuid_link
#   440    16  uuid_parent
VDI_SIGNATURE = (0xBEDA107F).to_bytes(4, "little")
VDI_HEADER = 456
VDI_VERSION_1_1 = 0x00010001
VDI_DYNAMIC, VDI_STATIC = 1, 2


class VdiInspector(FormatInspector):
    """VirtualBox VDI."""

    name = "vdi"

    def locate(self, reader: BoundedReader) -> Location | None:
        return Location.START if reader.head[64:68] == VDI_SIGNATURE else None

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        hdr = reader.read(0, VDI_HEADER)
        if len(hdr) < VDI_HEADER:
            truncated(found, "VDI header", VDI_HEADER, len(hdr))
            return
        version, _size, image_type = unpack("<III", hdr, 68) or (0, 0, 0)
        (found.virtual_size,) = unpack("<Q", hdr, 368) or (None,)
        if version != VDI_VERSION_1_1:
            found.fail(
                Check.VDI_VERSION, f"VDI version {version >> 16}.{version & 0xFFFF} is not 1.1"
            )
        link, parent = hdr[424:440], hdr[440:456]
        if image_type not in (VDI_DYNAMIC, VDI_STATIC) or any(link) or any(parent):
            found.fail(
                Check.VDI_DIFFERENCING,
                "the VDI image is a differencing or linked image, which qemu cannot open",
            )
