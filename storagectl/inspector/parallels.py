"""Parallels / Virtuozzo ploop images.

The header names no files; it is inspected for its virtual size and version.
References: qemu 7.2 block/parallels.c (parallels_open), docs/interop/parallels.txt.
"""

from __future__ import annotations

from storagectl.inspector.base import FormatInspector, read_header
from storagectl.inspector.checks import Check
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.report import Findings

# Parallels (ploop) image header, little-endian:
#
#   off  size  field
#     0    16  magic "WithoutFreeSpace" (old) or "WithouFreSpacExt" (new)
#    16     4  version (2)
#    20     4  heads
#    24     4  cylinders
#    28     4  tracks: cluster size in sectors
#    32     4  bat_entries
#    36     8  nb_sectors: virtual size in sectors (old magic: low 32 bits)
#    44     4  inuse (0x746F6E59: not closed cleanly)
#    48     4  data_off
#    52     4  flags
#    56     8  ext_off: format extension cluster (dirty bitmaps)
PARALLELS_MAGICS = (b"WithoutFreeSpace", b"WithouFreSpacExt")
PARALLELS_VERSION = 2


class ParallelsInspector(FormatInspector):
    """Parallels / Virtuozzo ploop images."""

    name = "parallels"
    magics = PARALLELS_MAGICS

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        fields = read_header(reader, found, "Parallels header", "<16sIIIIIQIIIQ")
        if fields is None:
            return
        magic, version, sectors = fields[0], fields[1], fields[6]
        if magic == PARALLELS_MAGICS[0]:
            sectors &= 0xFFFFFFFF  # qemu ignores the high half for old images
        found.virtual_size = sectors * 512
        if version != PARALLELS_VERSION:
            found.fail(Check.PARALLELS_VERSION, f"Parallels header version {version} is not 2")
