"""Microsoft formats: VHD (qemu's "vpc") and VHDX.

References: Microsoft "Virtual Hard Disk Image Format Specification" (VHD),
[MS-VHDX] 2.2, and qemu 7.2 block/vpc.c (vpc_open) and block/vhdx.c.
"""

from __future__ import annotations

import uuid

from storagectl.inspector.base import (
    FormatInspector,
    Location,
    decode_name,
    truncated,
    unpack,
)
from storagectl.inspector.checks import Check
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.report import Findings

# VHD footer, big-endian, 512 bytes. Fixed disks have it only at the end of
# the file; dynamic and differencing disks also keep a copy at offset 0.
#
#   off  size  field
#     0     8  cookie "conectix"
#     8     4  features
#    12     4  file_format_version (0x00010000)
#    16     8  data_offset: dynamic header offset (all ones for fixed disks)
#    24     4  timestamp
#    28     4  creator_application ("vpc ", "qemu", "qem2", "win ", ...)
#    32     4  creator_version
#    36     4  creator_host_os
#    40     8  original_size
#    48     8  current_size
#    56     2  cylinders
#    58     1  heads
#    59     1  sectors_per_track
#    60     4  disk_type (2 fixed, 3 dynamic, 4 differencing)
#    64     4  checksum: ones' complement of the byte sum, this field as zero
#    68    16  unique_id
#    84     1  saved_state
#
# Dynamic disk header, big-endian, 1024 bytes at footer.data_offset:
#
#     0     8  cookie "cxsparse"
#     8     8  data_offset (unused)
#    16     8  table_offset (block allocation table)
#    24     4  header_version
#    28     4  max_table_entries
#    32     4  block_size
#    36     4  checksum
#    40    16  parent_unique_id
#    56     4  parent_timestamp
#    60     4  reserved
#    64   512  parent_unicode_name (UTF-16BE)
#   576   192  parent locator entries (8 x 24 bytes)
VHD_COOKIE = b"conectix"
VHD_FOOTER = 512
VHD_FOOTER_FORMAT = ">8sIIQI4sI4sQQHBBII"
VHD_DYNAMIC_COOKIE = b"cxsparse"
VHD_FIXED, VHD_DYNAMIC, VHD_DIFFERENCING = 2, 3, 4
# qemu sizes a VHD from its CHS geometry unless the creator is known to use
# current_size, or the geometry is the maximum (vpc_open).
VHD_CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\x00")
VHD_MAX_GEOMETRY = 65535 * 16 * 255


def vhd_checksum(footer: bytes) -> int:
    """The VHD footer checksum: ones' complement of the byte sum, checksum field as zero."""
    total = sum(footer[:64]) + sum(footer[68:VHD_FOOTER])
    return ~total & 0xFFFFFFFF


class VhdInspector(FormatInspector):
    """VHD fixed (footer at the end) and dynamic/differencing (footer copy at 0)."""

    name = "vhd"

    def locate(self, reader: BoundedReader) -> Location | None:
        if reader.head[:8] == VHD_COOKIE:
            return Location.START
        if reader.size >= VHD_FOOTER and reader.tail[-VHD_FOOTER:][:8] == VHD_COOKIE:
            return Location.END
        return None

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        # qemu looks at offset 0 first and treats what it finds there as a
        # dynamic disk; only without it does it read the footer at the end
        # and treat the file as fixed.
        at_start = reader.head[:8] == VHD_COOKIE
        footer = reader.head[:VHD_FOOTER] if at_start else reader.tail[-VHD_FOOTER:]
        fields = unpack(VHD_FOOTER_FORMAT, footer)
        if fields is None or len(footer) < VHD_FOOTER:
            truncated(found, "VHD footer", VHD_FOOTER, len(footer))
            return
        data_offset, creator = fields[3], fields[5]
        current_size, cylinders, heads, sectors = fields[9], fields[10], fields[11], fields[12]
        disk_type, checksum = fields[13], fields[14]

        total_sectors = cylinders * heads * sectors
        if creator in VHD_CURRENT_SIZE_CREATORS or total_sectors == VHD_MAX_GEOMETRY:
            total_sectors = current_size // 512
        found.virtual_size = total_sectors * 512

        if vhd_checksum(footer) != checksum:
            found.fail(Check.VHD_CHECKSUM, "the VHD footer checksum does not match its contents")
        if disk_type not in (VHD_FIXED, VHD_DYNAMIC, VHD_DIFFERENCING):
            found.fail(Check.VHD_DISK_TYPE, f"VHD disk type {disk_type} is not fixed/dynamic")
        if at_start:
            self._dynamic_header(reader, found, data_offset, disk_type)

    @staticmethod
    def _dynamic_header(
        reader: BoundedReader, found: Findings, offset: int, disk_type: int
    ) -> None:
        header = reader.read(offset, 1024)
        if header[:8] != VHD_DYNAMIC_COOKIE:
            found.fail(
                Check.VHD_DYNAMIC_HEADER,
                "the footer at offset 0 promises a dynamic disk header, but there is none",
            )
            return
        if disk_type == VHD_DIFFERENCING:
            name = header[64:576].decode("utf-16-be", errors="replace").split("\x00", 1)[0]
            found.backing_file = decode_name(name.encode("utf-8"))
            found.fail(
                Check.VHD_DIFFERENCING,
                f"the disk is a VHD differencing disk with parent {found.backing_file!r}",
            )


# VHDX, little-endian ([MS-VHDX] 2.2):
#
#   0x00000  file type identifier: "vhdxfile", then the creator (UTF-16)
#   0x10000  header 1, 0x20000 header 2
#   0x30000  region table 1 (0x40000: region table 2, a copy)
#            off 0 "regi", 4 checksum, 8 entry_count (<= 2047), 12 reserved,
#            16 + 32 * i: 16 GUID, 8 file_offset, 4 length, 4 required
#   metadata region (the region whose GUID is METADATA_REGION):
#            off 0 "metadata", 8 reserved, 10 entry_count (<= 2047), 12 reserved,
#            32 + 32 * i: 16 item GUID, 4 offset (from the region start),
#                         4 length, 4 flags, 4 reserved
#   items:   virtual disk size (u64); file parameters (u32 block_size,
#            u32 flags, bit 1 = has parent); parent locator (differencing)
VHDX_SIGNATURE = b"vhdxfile"
VHDX_REGION_TABLE = 0x30000
VHDX_MAX_ENTRIES = 2047
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
HAS_PARENT = 0x2


class VhdxInspector(FormatInspector):
    """VHDX: reads the region table, then the metadata table, then two items."""

    name = "vhdx"
    magics = (VHDX_SIGNATURE,)

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        table = reader.read(VHDX_REGION_TABLE, 16)
        fields = unpack("<4sIII", table)
        if fields is None or fields[0] != b"regi" or fields[2] > VHDX_MAX_ENTRIES:
            found.fail(Check.VHDX_REGION_TABLE, "the VHDX region table is missing or malformed")
            return
        entries = reader.read(VHDX_REGION_TABLE + 16, fields[2] * 32)
        metadata_offset = None
        for start in range(0, len(entries) - 31, 32):
            if entries[start : start + 16] == METADATA_REGION:
                (metadata_offset,) = unpack("<Q", entries, start + 16) or (None,)
                break
        if metadata_offset is None:
            found.fail(Check.VHDX_METADATA, "the VHDX region table has no metadata region")
            return

        meta = unpack("<8sHH", reader.read(metadata_offset, 12))
        if meta is None or meta[0] != b"metadata" or meta[2] > VHDX_MAX_ENTRIES:
            found.fail(Check.VHDX_METADATA, "the VHDX metadata table is missing or malformed")
            return
        items = reader.read(metadata_offset + 32, meta[2] * 32)
        located: dict[bytes, tuple[int, int]] = {}
        for start in range(0, len(items) - 31, 32):
            offset, length = unpack("<II", items, start + 16) or (0, 0)
            located.setdefault(items[start : start + 16], (offset, length))

        if VIRTUAL_DISK_SIZE in located:
            item = reader.read(metadata_offset + located[VIRTUAL_DISK_SIZE][0], 8)
            (found.virtual_size,) = unpack("<Q", item) or (None,)
        if found.virtual_size is None:
            found.fail(Check.VHDX_METADATA, "the VHDX metadata has no readable virtual disk size")

        params = None
        if FILE_PARAMETERS in located:
            params = unpack("<II", reader.read(metadata_offset + located[FILE_PARAMETERS][0], 8))
        if PARENT_LOCATOR in located or (params is not None and params[1] & HAS_PARENT):
            found.fail(
                Check.VHDX_PARENT,
                "the disk is a VHDX differencing disk; its parent is located by path",
            )
        if len(entries) < fields[2] * 32 or len(items) < meta[2] * 32:
            truncated(found, "VHDX tables", metadata_offset + 32 + meta[2] * 32, reader.size)
