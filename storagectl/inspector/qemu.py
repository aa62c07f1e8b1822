"""QEMU's own formats: qcow2 (versions 2 and 3, and the old qcow v1 magic) and QED.

Reference: qemu docs/interop/qcow2.txt and docs/interop/qed_spec.txt, and the
checks qemu 7.2 makes in block/qcow2.c (qcow2_do_open, qcow2_read_extensions)
and block/qed.c.
"""

from __future__ import annotations

from storagectl.inspector.base import (
    MAX_NAME,
    FormatInspector,
    decode_name,
    read_header,
    truncated,
    unpack,
)
from storagectl.inspector.checks import Check
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.report import Findings

# qcow2 header, big-endian (docs/interop/qcow2.txt):
#
#   off  size  field
#     0     4  magic "QFI\xfb"
#     4     4  version (2 = compat 0.10, 3 = compat 1.1; 1 = the old "qcow")
#     8     8  backing_file_offset (0 = no backing file)
#    16     4  backing_file_size (qemu: <= 1023 and inside the first cluster)
#    20     4  cluster_bits (9..21)
#    24     8  size: virtual size in bytes (same offset in qcow v1)
#    32     4  crypt_method (0 none, 1 AES, 2 LUKS)
#    36     4  l1_size
#    40     8  l1_table_offset
#    48     8  refcount_table_offset
#    56     4  refcount_table_clusters
#    60     4  nb_snapshots
#    64     8  snapshots_offset
#   --- version 3 only ---
#    72     8  incompatible_features (bit 0 dirty, 1 corrupt, 2 external data
#              file, 3 compression type, 4 extended L2)
#    80     8  compatible_features
#    88     8  autoclear_features (bit 1: external data file is raw)
#    96     4  refcount_order
#   100     4  header_length (>= 104; 72 implied for version 2)
#   104     1  compression_type (0 zlib, 1 zstd; only if header_length > 104)
#
# Header extensions follow at header_length: u32 type, u32 length, data padded
# to 8 bytes; type 0 ends the list. qemu reads them up to the backing file
# name if there is one, else to the end of the first cluster.
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_V2_HEADER = 72
QCOW2_V3_HEADER = 104
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
)

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_CRYPTO_HEADER = 0x0537BE77
EXT_BITMAPS = 0x23852875
EXT_DATA_FILE = 0x44415441

#: qemu has no cap, but a real image carries a handful of extensions; a first
#: cluster packed with thousands of tiny ones is hostile, and walking it would
#: only cost time.
MAX_EXTENSIONS = 256


class Qcow2Inspector(FormatInspector):
    """qcow2 v2/v3 (and v1 "qcow", which shares the magic and is refused)."""

    name = "qcow2"
    # qemu's probe also wants version >= 2; matching on the magic alone
    # makes us flag the old qcow v1 too, which is just as dangerous.
    magics = (QCOW2_MAGIC,)

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        hdr = reader.read(0, QCOW2_V3_HEADER + 8)
        base = unpack(">4sIQII", hdr)
        if base is None or len(hdr) < 32:
            truncated(found, "qcow2 header", QCOW2_V2_HEADER, len(hdr))
            return
        _, version, bf_offset, bf_size, cluster_bits = base
        (found.virtual_size,) = unpack(">Q", hdr, 24) or (None,)

        cluster_size: int | None = None
        if MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
            cluster_size = 1 << cluster_bits
        elif version != 1:  # qcow v1 keeps cluster_bits elsewhere
            found.fail(
                Check.QCOW2_CLUSTER_BITS,
                f"cluster_bits is {cluster_bits}, outside qemu's range "
                f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}",
            )

        if bf_offset:
            self._backing_file(reader, found, bf_offset, bf_size, cluster_size)

        if version not in (2, 3):
            found.fail(
                Check.QCOW2_VERSION,
                f"qcow2 version {version} is not 2 or 3 (version 1 is the obsolete qcow format)",
            )
            return
        if len(hdr) < QCOW2_V2_HEADER:
            truncated(found, "qcow2 header", QCOW2_V2_HEADER, len(hdr))
            return

        (crypt_method,) = unpack(">I", hdr, 32) or (0,)
        if crypt_method:
            kind = {1: "AES", 2: "LUKS"}.get(crypt_method, f"method {crypt_method}")
            found.fail(
                Check.QCOW2_ENCRYPTION,
                f"the image is encrypted ({kind}); copying it needs a secret storagectl "
                "does not hold",
            )

        header_length: int | None = QCOW2_V2_HEADER
        incompatible = 0
        if version == 3:
            v3 = unpack(">QQQII", hdr, 72)
            if v3 is None:
                truncated(found, "qcow2 v3 header", QCOW2_V3_HEADER, len(hdr))
                return
            incompatible, _compat, _autoclear, _refcount_order, header_length = v3
            header_length = self._v3_checks(found, hdr, incompatible, header_length, cluster_size)

        if cluster_size is not None and header_length is not None:
            # The extensions end where the backing file name starts, else at
            # the end of the first cluster (qcow2_do_open).
            ext_end = bf_offset if bf_offset and bf_offset <= cluster_size else cluster_size
            self._extensions(reader, found, header_length, ext_end)

        if incompatible & INCOMPAT_DATA_FILE or found.data_file is not None:
            where = f" {found.data_file!r}" if found.data_file is not None else ""
            found.fail(
                Check.QCOW2_DATA_FILE,
                f"the image keeps its data in an external file{where}; qemu would open that path",
            )

    def _v3_checks(
        self,
        found: Findings,
        hdr: bytes,
        incompatible: int,
        header_length: int,
        cluster_size: int | None,
    ) -> int | None:
        """Check the version 3 fields; return the header length, None if unusable."""
        self._incompatible(found, incompatible)
        if header_length < QCOW2_V3_HEADER or (
            cluster_size is not None and header_length > cluster_size
        ):
            found.fail(
                Check.QCOW2_HEADER_LENGTH,
                f"header_length {header_length} is not between {QCOW2_V3_HEADER} "
                "and the cluster size",
            )
            return None
        compression = hdr[104] if header_length > QCOW2_V3_HEADER and len(hdr) > 104 else 0
        self._compression(found, compression, incompatible)
        return header_length

    @staticmethod
    def _backing_file(
        reader: BoundedReader,
        found: Findings,
        offset: int,
        size: int,
        cluster_size: int | None,
    ) -> None:
        raw = reader.read(offset, min(size, MAX_NAME))
        found.backing_file = decode_name(raw)
        detail = ""
        if size > MAX_NAME or (cluster_size is not None and offset + size > cluster_size):
            detail = " (the name field is malformed)"
        elif len(raw) < size:
            detail = " (the name runs past the end of the file)"
        found.fail(
            Check.QCOW2_BACKING_FILE,
            f"the header names a backing file {found.backing_file!r}{detail}; qemu would open it",
        )

    @staticmethod
    def _incompatible(found: Findings, incompatible: int) -> None:
        unknown = incompatible & ~INCOMPAT_KNOWN
        if unknown:
            bits = ", ".join(str(bit) for bit in range(64) if unknown >> bit & 1)
            found.fail(
                Check.QCOW2_UNKNOWN_INCOMPATIBLE_FEATURES,
                f"incompatible feature bit(s) {bits} are unknown to this qemu; the "
                "image cannot be read safely",
            )
        if incompatible & INCOMPAT_CORRUPT:
            # Not an attack, but qemu refuses to open a corrupt image read-write,
            # so no migration can start from it.
            found.fail(Check.QCOW2_CORRUPT, "the image is marked corrupt; run qemu-img check")

    @staticmethod
    def _compression(found: Findings, compression: int, incompatible: int) -> None:
        flagged = bool(incompatible & INCOMPAT_COMPRESSION)
        if compression not in (0, 1) or flagged != (compression != 0):
            found.fail(
                Check.QCOW2_COMPRESSION_TYPE,
                f"compression type {compression} is unknown or disagrees with the "
                "compression-type feature bit",
            )

    @staticmethod
    def _extensions(reader: BoundedReader, found: Findings, start: int, end: int) -> None:
        offset = start
        for _ in range(MAX_EXTENSIONS):
            if offset >= end:
                return
            ext = reader.read(offset, 8)
            if len(ext) < 8:
                truncated(found, "qcow2 header extension list", offset + 8, reader.size)
                return
            ext_type, ext_len = unpack(">II", ext) or (0, 0)
            if ext_type == EXT_END:
                return
            offset += 8
            if offset > end or ext_len > end - offset:
                found.fail(
                    Check.QCOW2_HEADER_EXTENSIONS,
                    f"header extension 0x{ext_type:08x} runs past the end of the header area",
                )
                return
            if ext_type in (EXT_BACKING_FORMAT, EXT_DATA_FILE):
                data = reader.read(offset, min(ext_len, MAX_NAME))
                if ext_type == EXT_BACKING_FORMAT:
                    found.backing_format = decode_name(data)
                else:
                    found.data_file = decode_name(data)
            elif ext_type == EXT_CRYPTO_HEADER:
                found.fail(
                    Check.QCOW2_ENCRYPTION,
                    "the image carries a LUKS encryption header; copying it needs a "
                    "secret storagectl does not hold",
                )
            # Other extensions (feature names, bitmaps, unknown) name no files.
            offset += (ext_len + 7) & ~7
        found.fail(
            Check.QCOW2_HEADER_EXTENSIONS,
            f"more than {MAX_EXTENSIONS} header extensions; refusing to walk further",
        )


# QED header, little-endian (docs/interop/qed_spec.txt):
#
#   off  size  field
#     0     4  magic "QED\0"
#     4     4  cluster_size
#     8     4  table_size (clusters)
#    12     4  header_size (clusters)
#    16     8  features (1 backing file, 2 needs check, 4 backing file is raw)
#    24     8  compat_features
#    32     8  autoclear_features
#    40     8  l1_table_offset
#    48     8  image_size: virtual size in bytes
#    56     4  backing_filename_offset (bytes from the start of the file)
#    60     4  backing_filename_size
QED_MAGIC = b"QED\x00"
QED_F_BACKING_FILE = 0x01
QED_F_BACKING_FORMAT_NO_PROBE = 0x04


class QedInspector(FormatInspector):
    """QED: detected so it can be reported, never accepted as a declared format."""

    name = "qed"
    magics = (QED_MAGIC,)

    def inspect(self, reader: BoundedReader, found: Findings) -> None:
        # QED is deprecated in qemu and no Nova flavour of storage produces it;
        # anything declared QED is refused outright, whatever else it holds.
        found.fail(Check.QED_FORMAT, "QED images are not supported; convert the disk first")
        fields = read_header(reader, found, "QED header", "<4sIIIQQQQQII")
        if fields is None:
            return
        features, image_size, bf_offset, bf_size = fields[4], fields[8], fields[9], fields[10]
        found.virtual_size = image_size
        if features & QED_F_BACKING_FILE:
            found.backing_file = decode_name(reader.read(bf_offset, min(bf_size, MAX_NAME)))
            if features & QED_F_BACKING_FORMAT_NO_PROBE:
                found.backing_format = "raw"
            found.fail(
                Check.QED_BACKING_FILE,
                f"the header names a backing file {found.backing_file!r}; qemu would open it",
            )
