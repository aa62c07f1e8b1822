"""Property tests: hostile bytes never crash the inspector or steer its reads.

For random bytes, truncated real headers, byte-flipped real headers and
headers whose offset/length fields take arbitrary values, and for every
declared format:

* ``inspect_*`` returns a report (no exception escapes; the engine's
  last-resort ``header-unparseable`` net is never needed either);
* a guard around the source proves that no read starts or ends past the end
  of the file, whatever offset a header names, and that the total read stays
  within ``MAX_READ``.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storagectl.inspector import (
    MAX_READ,
    InspectionReport,
    detect_formats,
    inspect_bytes,
    inspect_file,
)
from storagectl.inspector.engine import inspect_source
from tests.fixtures.images import headers as h

DECLARED = [
    "raw",
    "qcow2",
    "qed",
    "vmdk",
    "vhd",
    "vpc",
    "vhdx",
    "vdi",
    "luks",
    "parallels",
    "iso",
    "gpt",
    "mbr",
    "bochs",
]
CAPTURED = h.captured()
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
FILE_SIZES = st.one_of(st.none(), st.integers(0, 2**63))

MAGICS = [
    b"QFI\xfb",
    b"QED\x00",
    b"KDMV",
    b"COWD",
    b"conectix",
    b"vhdxfile",
    b"LUKS\xba\xbe",
    b"WithoutFreeSpace",
    b"WithouFreSpacExt",
    b"\0" * 64 + b"\x7f\x10\xda\xbe",
    b"version=1\n",
    b"# Disk DescriptorFile\n",
]

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class GuardedSource:
    """Wraps a source and fails the test on any out-of-bounds or over-budget read."""

    def __init__(self, inner: h.SparseSource) -> None:
        self.inner = inner
        self.size = inner.size
        self.total = 0
        self.reads: list[tuple[int, int]] = []

    def pread(self, length: int, offset: int) -> bytes:
        self.reads.append((offset, length))
        assert offset >= 0, f"negative offset {offset}"
        assert length > 0, f"empty read at {offset}"
        assert offset + length <= self.size, f"read {offset}+{length} past end {self.size}"
        self.total += length
        assert self.total <= MAX_READ, f"{self.total} bytes read, limit {MAX_READ}"
        return self.inner.pread(length, offset)


def run(data: bytes, declared: str, size: int | None = None, tail: bytes = b"") -> InspectionReport:
    source = GuardedSource(h.SparseSource(data, len(data) if size is None else size, tail))
    report = inspect_source(source, declared, "/fuzz/disk")
    assert isinstance(report, InspectionReport)
    failed = [failure.check for failure in report.failures]
    assert "header-unparseable" not in failed, report
    assert all(failure.message for failure in report.failures)
    assert report.virtual_size is None or report.virtual_size >= 0
    for name in (report.backing_file, report.backing_format, report.data_file):
        assert name is None or (isinstance(name, str) and len(name) <= 4 * 1023)
    assert "raw" not in report.detected
    if report.embedded is not None:
        assert report.container_header_in_raw == report.embedded.declared_format
    return report


@FAST
@given(st.binary(max_size=4096), st.sampled_from(DECLARED), FILE_SIZES)
def test_random_bytes(data: bytes, declared: str, size: int | None) -> None:
    run(data, declared, size)


@FAST
@given(
    st.sampled_from(MAGICS),
    st.binary(max_size=2048),
    st.sampled_from(DECLARED),
    FILE_SIZES,
)
def test_random_bytes_behind_a_real_magic(
    magic: bytes, rest: bytes, declared: str, size: int | None
) -> None:
    run(magic + rest, declared, size)


@FAST
@given(st.sampled_from(sorted(CAPTURED)), st.data(), st.sampled_from(DECLARED))
def test_truncated_real_headers(name: str, data: st.DataObject, declared: str) -> None:
    cap = CAPTURED[name]
    whole = cap.head or cap.tail
    cut = data.draw(st.integers(0, len(whole)))
    run(whole[:cut], declared)
    # Also: the real file size, but the bytes end early (a file being written).
    run(whole[:cut], declared, cap.file_size)


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for position, value in flips:
        if buf:
            buf[position % len(buf)] = value
    return bytes(buf)


FLIPS = st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=24)
MUTABLE = ["qcow2-backing", "qcow2-datafile", "qcow2-v2", "vmdk-sparse", "vmdk-stream", "vmdk-flat"]


@FAST
@given(st.sampled_from(MUTABLE), FLIPS, st.sampled_from(DECLARED))
def test_mutated_real_headers(name: str, flips: list[tuple[int, int]], declared: str) -> None:
    cap = CAPTURED[name]
    # Flip bytes where the header is, not in the padding after it.
    span = len(cap.head.rstrip(b"\0")) or 1
    flips = [(pos % span, value) for pos, value in flips]
    run(_flip(cap.head, flips), declared, cap.file_size)


@FAST
@given(st.sampled_from(["vhd-dynamic", "vhd-fixed"]), FLIPS, st.sampled_from(DECLARED))
def test_mutated_real_vhd_footers(name: str, flips: list[tuple[int, int]], declared: str) -> None:
    cap = CAPTURED[name]
    flips = [(pos % 1024, value) for pos, value in flips]
    head = _flip(cap.head, flips) if cap.head else b""
    run(head, declared, cap.file_size, _flip(cap.tail, flips))


@FAST
@given(
    version=st.integers(0, 5),
    cluster_bits=st.one_of(st.integers(0, 30), U32),
    backing_offset=st.one_of(st.just(0), U64),
    backing_size=U32,
    header_length=st.one_of(st.integers(0, 200), U32),
    incompatible=U64,
    crypt=st.integers(0, 3),
    compression=st.integers(0, 255),
    extensions=st.lists(st.tuples(U32, U32, st.binary(max_size=64)), max_size=6),
    size=FILE_SIZES,
)
def test_qcow2_fields(
    version: int,
    cluster_bits: int,
    backing_offset: int,
    backing_size: int,
    header_length: int,
    incompatible: int,
    crypt: int,
    compression: int,
    extensions: list[tuple[int, int, bytes]],
    size: int | None,
) -> None:
    exts = b"".join(
        ext_type.to_bytes(4, "big") + ext_len.to_bytes(4, "big") + data
        for ext_type, ext_len, data in extensions
    )
    data = h.qcow2(
        version=version,
        cluster_bits=cluster_bits,
        backing=b"/etc/passwd",
        backing_offset=backing_offset,
        backing_size=backing_size,
        header_length=header_length,
        incompatible=incompatible,
        crypt_method=crypt,
        compression=compression,
        extensions=exts,
        length=1024,
    )
    report = run(data, "qcow2", size)
    assert report.detected[0] == "qcow2"
    run(data, "raw", size)


@FAST
@given(
    capacity=U64,
    version=U32,
    desc_sector=st.one_of(st.integers(0, 4), U64),
    desc_sectors=U64,
    gd_offset=st.one_of(st.just(2**64 - 1), U64),
    text=st.text(max_size=300),
    size=FILE_SIZES,
)
def test_vmdk_fields(
    capacity: int,
    version: int,
    desc_sector: int,
    desc_sectors: int,
    gd_offset: int,
    text: str,
    size: int | None,
) -> None:
    descriptor = h.vmdk_descriptor(extra=text) if text else text.encode()
    data = h.vmdk_sparse(
        descriptor,
        capacity=capacity,
        version=version,
        desc_sector=desc_sector,
        desc_sectors=desc_sectors,
        gd_offset=gd_offset,
    )
    run(data, "vmdk", size, tail=h.vmdk_stream_footer(data) if gd_offset % 2 else b"")
    run(data, "raw", size)


@FAST
@given(text=st.text(max_size=400), create_type=st.text(max_size=20), size=FILE_SIZES)
def test_vmdk_text_descriptors(text: str, create_type: str, size: int | None) -> None:
    desc = b"version=1\n" + text.encode("utf-8", "surrogatepass")
    desc += f'\ncreateType="{create_type}"\n'.encode("utf-8", "surrogatepass")
    report = run(desc, "vmdk", size)
    assert report.detected[:1] == ("vmdk",)


@FAST
@given(
    data_offset=U64,
    disk_type=U32,
    creator=st.binary(min_size=4, max_size=4),
    geometry=st.tuples(st.integers(0, 65535), st.integers(0, 255), st.integers(0, 255)),
    entries=U32,
    size=FILE_SIZES,
)
def test_vhd_fields(
    data_offset: int,
    disk_type: int,
    creator: bytes,
    geometry: tuple[int, int, int],
    entries: int,
    size: int | None,
) -> None:
    footer = h.vhd_footer(
        data_offset=data_offset, disk_type=disk_type, creator=creator, geometry=geometry
    )
    data = footer + h.vhd_dynamic_header(entries=entries, parent="p" * 300)
    run(data, "vhd", size)
    run(b"\0" * 1024, "vhd", size, tail=footer)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metadata_offset=st.one_of(st.integers(0x40000, 0x60000), U64),
    region_count=U32,
    flips=st.lists(st.tuples(st.integers(0x30000, 0x30100), st.integers(0, 255)), max_size=8),
    size=FILE_SIZES,
)
def test_vhdx_fields(
    metadata_offset: int, region_count: int, flips: list[tuple[int, int]], size: int | None
) -> None:
    data = bytearray(h.vhdx(metadata_offset=metadata_offset))
    data[0x30008:0x3000C] = region_count.to_bytes(4, "little")
    data = bytearray(_flip(bytes(data), flips))
    run(bytes(data), "vhdx", size)


@FAST
@given(
    fmt=st.sampled_from(["vdi", "parallels", "luks", "qed"]),
    fields=st.lists(U64, min_size=3, max_size=3),
    size=FILE_SIZES,
)
def test_small_formats_fields(fmt: str, fields: list[int], size: int | None) -> None:
    a, b, c = fields
    data = {
        "vdi": lambda: h.vdi(size=a, version=b % 2**32, image_type=c % 2**32),
        "parallels": lambda: h.parallels(sectors=a, version=b % 2**32),
        "luks": lambda: h.luks(version=a % 2**16, payload_sectors=b % 2**32),
        "qed": lambda: h.qed(size=a, backing=b"x" * (b % 600), features=c),
    }[fmt]()
    run(data, fmt, size)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(MAGICS), st.binary(max_size=3000), st.sampled_from(DECLARED))
def test_inspect_file_agrees_with_inspect_bytes(magic: bytes, rest: bytes, declared: str) -> None:
    data = magic + rest
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "disk")
        with open(path, "wb") as handle:
            handle.write(data)
        from_file = inspect_file(path, declared)
    from_bytes = inspect_bytes(data, declared, path=path)
    assert from_file == from_bytes
    assert from_file.detected == detect_formats(data)
