"""Content formats: what a raw disk holds (ISO 9660 / UDF, GPT, MBR).

They are listed in ``detected`` so an audit can say what a raw disk looks
like, but they carry no metadata qemu interprets, so they never count towards
"multiple-formats" and have no safety checks. A hybrid ISO (ISO + MBR/GPT) is
normal.

References: ECMA-119 8.4 (primary volume descriptor), ECMA-167 (UDF volume
recognition), UEFI 2.10 5.2-5.3 (protective MBR, GPT header).
"""

from __future__ import annotations

from storagectl.inspector.base import FormatInspector, Location, unpack
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.report import Findings

# ISO 9660 volume descriptors start at 0x8000 (sector 16 of 2048 bytes), one
# per sector: byte 0 type (1 = primary), bytes 1..5 "CD001" (UDF: "BEA01",
# "NSR02", "NSR03"), byte 6 version. In the primary descriptor:
#
#   off  size  field
#    80     8  volume_space_size: u32 little-endian then the same big-endian
#   128     4  logical_block_size: u16 little-endian then big-endian
ISO_FIRST_DESCRIPTOR = 0x8000
ISO_SECTOR = 2048
ISO_IDENTIFIERS = (b"CD001", b"BEA01", b"NSR02", b"NSR03")


class IsoInspector(FormatInspector):
    """ISO 9660 / UDF."""

    name = "iso"
    container = False

    def locate(self, reader: BoundedReader) -> Location | None:
        for index in range(3):
            start = ISO_FIRST_DESCRIPTOR + index * ISO_SECTOR + 1
            if reader.head[start : start + 5] in ISO_IDENTIFIERS:
                return Location.START
        return None

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        pvd = reader.read(ISO_FIRST_DESCRIPTOR, ISO_SECTOR)
        if pvd[:6] == b"\x01CD001":
            blocks = unpack("<I", pvd, 80)
            block_size = unpack("<H", pvd, 128)
            if blocks is not None and block_size is not None:
                found.virtual_size = blocks[0] * block_size[0]
                return
        found.virtual_size = reader.size


# MBR: 446 bytes of boot code, four 16-byte partition entries at 446, the
# boot signature 0x55 0xAA at 510. Each entry: 0 status (0x00 or 0x80),
# 1..3 CHS start, 4 type (0xEE = GPT protective), 5..7 CHS end, 8 u32 start
# LBA, 12 u32 sector count. GPT: the header "EFI PART" at LBA 1 (offset 512,
# or 4096 with 4 KiB sectors).
MBR_SIGNATURE = b"\x55\xaa"
MBR_TABLE = 446
GPT_SIGNATURE = b"EFI PART"
FAT_MEDIA_FIXED_DISK = 0xF8


def _has_boot_signature(head: bytes) -> bool:
    return head[510:512] == MBR_SIGNATURE


def _is_gpt(head: bytes) -> bool:
    return _has_boot_signature(head) and GPT_SIGNATURE in (head[512:520], head[4096:4104])


class GptInspector(FormatInspector):
    """GUID partition table (with its protective MBR)."""

    name = "gpt"
    container = False

    def locate(self, reader: BoundedReader) -> Location | None:
        return Location.START if _is_gpt(reader.head) else None

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        found.virtual_size = reader.size


class MbrInspector(FormatInspector):
    """A classic DOS partition table (and not a GPT's protective MBR)."""

    name = "mbr"
    container = False

    def locate(self, reader: BoundedReader) -> Location | None:
        head = reader.head
        if not _has_boot_signature(head) or _is_gpt(head):
            return None
        # A FAT boot sector also ends in 0x55AA; its BPB says two FATs on a
        # fixed disk, which a partition table never does at those offsets.
        if head[0x10] == 2 and head[0x15] == FAT_MEDIA_FIXED_DISK:
            return None
        table = head[MBR_TABLE:510]
        statuses = table[0::16]
        types = table[4::16]
        if any(status not in (0x00, 0x80) for status in statuses) or not any(types):
            return None
        return Location.START

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        found.virtual_size = reader.size
