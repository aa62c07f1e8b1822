"""LUKS-encrypted disks (qemu's "luks" format).

The header names no files; it is inspected for its version (qemu 7.2 reads
LUKS1 only) and payload offset. References: LUKS1 on-disk format
specification 1.2.3; qemu 7.2 crypto/block-luks.c.
"""

from __future__ import annotations

from storagectl.inspector.base import FormatInspector, read_header
from storagectl.inspector.checks import Check
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.report import Findings

# LUKS1 header, big-endian:
#
#   off  size  field
#     0     6  magic "LUKS\xba\xbe"
#     6     2  version (1; 2 = LUKS2 with JSON metadata)
#     8    32  cipher_name
#    40    32  cipher_mode
#    72    32  hash_spec
#   104     4  payload_offset (sectors)
#   108     4  key_bytes
#   112    20  mk_digest
#   132    32  mk_digest_salt
#   164     4  mk_digest_iterations
#   168    40  uuid
#   208   384  8 key slots of 48 bytes
LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS_HEADER = 592


class LuksInspector(FormatInspector):
    """LUKS-encrypted raw payload (qemu's "luks" format)."""

    name = "luks"
    magics = (LUKS_MAGIC,)

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        fields = read_header(reader, found, "LUKS header", ">6sH32s32s32sI")
        if fields is None:
            return
        version, payload_sectors = fields[1], fields[5]
        if version != 1:
            found.fail(
                Check.LUKS_VERSION, f"LUKS version {version}: qemu's luks driver reads LUKS1 only"
            )
            return
        payload = payload_sectors * 512
        if payload > reader.size:
            found.fail(
                Check.LUKS_PAYLOAD, "the LUKS payload offset lies beyond the end of the file"
            )
            return
        # qemu exposes everything after the payload offset as the disk.
        found.virtual_size = reader.size - payload
