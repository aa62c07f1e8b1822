"""Unit tests for the image header inspector: hand-built headers, every check.

Headers come from tests/fixtures/images/headers.py (struct.pack builders) and
from the headers qemu-img wrote, captured in tests/fixtures/images/.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

from storagectl import errors
from storagectl.inspector import (
    MAX_READ,
    InspectionReport,
    InspectorError,
    SafetyFailure,
    detect_formats,
    inspect_bytes,
    inspect_file,
)
from storagectl.inspector.engine import inspect_source
from storagectl.inspector.reader import BoundedReader
from storagectl.inspector.vmware import qemu_extents
from tests.fixtures.images import headers as h

MiB = 1024 * 1024
CAPTURED = h.captured()


def checks(report: InspectionReport) -> set[str]:
    return {failure.check for failure in report.failures}


# --- every format, clean ---------------------------------------------------

CLEAN = [
    ("qcow2", h.qcow2(size=5 * MiB), 5 * MiB),
    ("qcow2", h.qcow2(version=2, size=7 * MiB), 7 * MiB),
    ("vmdk", h.vmdk_sparse(capacity=4096), 4096 * 512),
    ("vhd", h.vhd_dynamic(size=10 * MiB), (10 * MiB // (16 * 63 * 512)) * 16 * 63 * 512),
    ("vhdx", h.vhdx(size=12 * MiB), 12 * MiB),
    ("vdi", h.vdi(size=3 * MiB), 3 * MiB),
    ("luks", h.luks(payload_sectors=8).ljust(8 * 512 + MiB, b"\0"), MiB),
    ("parallels", h.parallels(sectors=2048, magic=b"WithouFreSpacExt"), MiB),
    ("iso", h.iso(blocks=300), 300 * 2048),
]


@pytest.mark.parametrize(("fmt", "data", "size"), CLEAN, ids=[c[0] for c in CLEAN])
def test_clean_header_of_each_format(fmt: str, data: bytes, size: int) -> None:
    report = inspect_bytes(data, fmt)
    assert report.detected == (fmt,)
    assert report.virtual_size == size
    assert report.failures == ()
    assert report.backing_file is None and report.data_file is None


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_headers_written_by_qemu_img(name: str) -> None:
    cap = CAPTURED[name]
    report = inspect_source(cap.source(), cap.format, f"/images/{name}.img")
    expected = {"vpc": "vhd"}.get(cap.format, cap.format)
    assert report.detected == (expected,)
    assert report.virtual_size == cap.virtual_size
    expected_checks = {
        "qcow2-backing": {"qcow2-backing-file"},
        "qcow2-datafile": {"qcow2-data-file"},
        "qed": {"qed-format"},
        "vmdk-flat": {"vmdk-create-type", "vmdk-extent-outside"},
    }.get(name, set())
    assert checks(report) == expected_checks


def test_captured_qcow2_names() -> None:
    backing = inspect_source(CAPTURED["qcow2-backing"].source(), "qcow2", "x")
    assert (backing.backing_file, backing.backing_format) == ("base.raw", "raw")
    datafile = inspect_source(CAPTURED["qcow2-datafile"].source(), "qcow2", "x")
    assert datafile.data_file == "data.raw"


def test_raw_is_the_fallback() -> None:
    report = inspect_bytes(b"\x00" * 4096 + b"hello", "raw")
    assert report.detected == ()
    assert report.virtual_size == 4101
    assert report.failures == ()
    assert report.embedded is None
    assert report.container_header_in_raw is None


def test_declared_format_aliases_and_case() -> None:
    report = inspect_bytes(h.vhd_dynamic(), "vpc")
    assert report.declared_format == "vpc"
    assert report.failures == ()
    assert inspect_bytes(h.qcow2(), "QCOW2").failures == ()


# --- qcow2 checks ----------------------------------------------------------


def test_qcow2_backing_file_and_format() -> None:
    ext = h.qcow2_ext(0xE2792ACA, b"raw")
    report = inspect_bytes(h.qcow2(backing=b"/var/lib/base", extensions=ext), "qcow2")
    assert report.backing_file == "/var/lib/base"
    assert report.backing_format == "raw"
    assert checks(report) == {"qcow2-backing-file"}
    assert "/var/lib/base" in report.failures[0].message


def test_qcow2_backing_file_in_v2() -> None:
    report = inspect_bytes(h.qcow2(version=2, backing=b"base.img"), "qcow2")
    assert report.backing_file == "base.img"
    assert checks(report) == {"qcow2-backing-file"}


def test_qcow2_backing_name_too_long_is_capped() -> None:
    name = b"A" * 5000
    report = inspect_bytes(h.qcow2(backing=name, length=8192), "qcow2")
    assert report.backing_file == "A" * 1023
    assert "malformed" in report.failures[0].message


def test_qcow2_backing_offset_beyond_file() -> None:
    report = inspect_bytes(h.qcow2(backing_offset=1 << 60, backing_size=10), "qcow2")
    assert report.backing_file == ""
    assert checks(report) == {"qcow2-backing-file"}


def test_qcow2_data_file_bit_and_extension() -> None:
    ext = h.qcow2_ext(0x44415441, b"/dev/sda")
    report = inspect_bytes(h.qcow2(incompatible=1 << 2, extensions=ext), "qcow2")
    assert report.data_file == "/dev/sda"
    assert checks(report) == {"qcow2-data-file"}


def test_qcow2_data_file_bit_without_name() -> None:
    report = inspect_bytes(h.qcow2(incompatible=1 << 2), "qcow2")
    assert report.data_file is None
    assert checks(report) == {"qcow2-data-file"}


def test_qcow2_data_file_extension_without_bit_still_fails() -> None:
    ext = h.qcow2_ext(0x44415441, b"other.raw")
    report = inspect_bytes(h.qcow2(extensions=ext), "qcow2")
    assert report.data_file == "other.raw"
    assert checks(report) == {"qcow2-data-file"}


@pytest.mark.parametrize("bit", [5, 17, 63])
def test_qcow2_unknown_incompatible_features(bit: int) -> None:
    report = inspect_bytes(h.qcow2(incompatible=1 << bit), "qcow2")
    assert checks(report) == {"qcow2-unknown-incompatible-features"}
    assert str(bit) in report.failures[0].message


def test_qcow2_known_features_are_accepted() -> None:
    dirty_extl2 = (1 << 0) | (1 << 4)
    assert inspect_bytes(h.qcow2(incompatible=dirty_extl2), "qcow2").failures == ()
    zstd = h.qcow2(incompatible=1 << 3, compression=1)
    assert inspect_bytes(zstd, "qcow2").failures == ()


def test_qcow2_corrupt_bit() -> None:
    assert checks(inspect_bytes(h.qcow2(incompatible=1 << 1), "qcow2")) == {"qcow2-corrupt"}


@pytest.mark.parametrize(("bit", "ctype"), [(1 << 3, 7), (0, 1), (1 << 3, 0)])
def test_qcow2_compression_type(bit: int, ctype: int) -> None:
    report = inspect_bytes(h.qcow2(incompatible=bit, compression=ctype), "qcow2")
    assert checks(report) == {"qcow2-compression-type"}


@pytest.mark.parametrize("version", [1, 4, 0xFFFFFFFF])
def test_qcow2_version(version: int) -> None:
    report = inspect_bytes(h.qcow2(version=version), "qcow2")
    assert "qcow2-version" in checks(report)
    assert report.detected == ("qcow2",)


def test_qcow_v1_backing_file_is_reported() -> None:
    data = struct.pack(">4sIQIIQ", b"QFI\xfb", 1, 48, 11, 0, MiB) + b"\0" * 16 + b"/etc/shadow"
    report = inspect_bytes(data, "qcow2")
    assert report.backing_file == "/etc/shadow"
    assert {"qcow2-version", "qcow2-backing-file"} <= checks(report)


@pytest.mark.parametrize("bits", [8, 22, 63])
def test_qcow2_cluster_bits(bits: int) -> None:
    assert checks(inspect_bytes(h.qcow2(cluster_bits=bits), "qcow2")) == {"qcow2-cluster-bits"}


@pytest.mark.parametrize("length", [100, 1 << 20])
def test_qcow2_header_length(length: int) -> None:
    report = inspect_bytes(h.qcow2(header_length=length, cluster_bits=16), "qcow2")
    assert checks(report) == {"qcow2-header-length"}
    # A broken header length does not hide the other checks.
    bad = h.qcow2(header_length=length, incompatible=1 << 2, backing=b"b")
    assert checks(inspect_bytes(bad, "qcow2")) == {
        "qcow2-header-length",
        "qcow2-data-file",
        "qcow2-backing-file",
    }


def test_qcow2_extension_overrunning_the_cluster() -> None:
    ext = struct.pack(">II", 0x12345678, 0xFFFFFF00)
    report = inspect_bytes(h.qcow2(extensions=ext), "qcow2")
    assert checks(report) == {"qcow2-header-extensions"}


def test_qcow2_too_many_extensions() -> None:
    exts = h.qcow2_ext(0x11111111, b"") * 300
    assert checks(inspect_bytes(h.qcow2(extensions=exts), "qcow2")) == {"qcow2-header-extensions"}


def test_qcow2_unknown_extensions_are_skipped() -> None:
    exts = h.qcow2_ext(0x11111111, b"x" * 13) + h.qcow2_ext(0xE2792ACA, b"qcow2")
    report = inspect_bytes(h.qcow2(extensions=exts, backing=b"b"), "qcow2")
    assert report.backing_format == "qcow2"


def test_qcow2_encryption() -> None:
    assert checks(inspect_bytes(h.qcow2(crypt_method=2), "qcow2")) == {"qcow2-encryption"}
    crypto = h.qcow2_ext(0x0537BE77, struct.pack(">QQ", 0x30000, 0x1000))
    assert checks(inspect_bytes(h.qcow2(extensions=crypto), "qcow2")) == {"qcow2-encryption"}


@pytest.mark.parametrize("length", [4, 20, 40, 71, 90])
def test_qcow2_truncated_header(length: int) -> None:
    report = inspect_bytes(h.qcow2()[:length], "qcow2")
    assert report.detected == ("qcow2",)
    assert "truncated-header" in checks(report)


def test_qcow2_header_without_extension_end_marker_at_eof() -> None:
    data = h.qcow2()[:112] + struct.pack(">II", 0x11111111, 0)
    assert checks(inspect_bytes(data, "qcow2")) == {"truncated-header"}


# --- qed -------------------------------------------------------------------


def test_qed_is_always_refused() -> None:
    report = inspect_bytes(h.qed(size=3 * MiB), "qed")
    assert report.virtual_size == 3 * MiB
    assert checks(report) == {"qed-format"}


def test_qed_backing_file() -> None:
    report = inspect_bytes(h.qed(backing=b"/srv/base.img", features=0x04), "qed")
    assert report.backing_file == "/srv/base.img"
    assert report.backing_format == "raw"
    assert checks(report) == {"qed-format", "qed-backing-file"}


def test_qed_truncated() -> None:
    assert checks(inspect_bytes(h.qed()[:30], "qed")) == {"qed-format", "truncated-header"}


# --- vmdk ------------------------------------------------------------------


def test_vmdk_stream_optimized_is_allowed() -> None:
    desc = h.vmdk_descriptor(create_type="streamOptimized")
    report = inspect_bytes(h.vmdk_sparse(desc, compress=1, version=3), "vmdk")
    assert report.failures == ()


@pytest.mark.parametrize("create_type", ["monolithicFlat", "twoGbMaxExtentSparse", "vmfs", "x"])
def test_vmdk_create_type(create_type: str) -> None:
    desc = h.vmdk_descriptor(create_type=create_type)
    assert checks(inspect_bytes(h.vmdk_sparse(desc), "vmdk")) == {"vmdk-create-type"}


def test_vmdk_missing_create_type() -> None:
    desc = h.vmdk_descriptor().replace(b'createType="monolithicSparse"', b"")
    assert checks(inspect_bytes(h.vmdk_sparse(desc), "vmdk")) == {"vmdk-create-type"}


def test_vmdk_create_type_found_the_way_qemu_finds_it() -> None:
    # qemu takes the first "createType" anywhere, even in a comment.
    desc = b'# createType="vmfs"\n' + h.vmdk_descriptor()
    assert checks(inspect_bytes(h.vmdk_sparse(desc), "vmdk")) == {"vmdk-create-type"}


@pytest.mark.parametrize(
    "extents",
    [
        ('RW 2048 SPARSE "/etc/hostname"',),
        ('RW 2048 SPARSE "../other.vmdk"',),
        ('RW 2048 SPARSE "disk.vmdk"', 'RW 2048 SPARSE "disk-2.vmdk"'),
        ('RW 2048 FLAT "disk-flat.vmdk" 0',),
    ],
)
def test_vmdk_sparse_extent_outside(extents: tuple[str, ...]) -> None:
    desc = h.vmdk_descriptor(extents=extents)
    assert checks(inspect_bytes(h.vmdk_sparse(desc), "vmdk")) == {"vmdk-extent-outside"}


def test_vmdk_sparse_extent_named_differently_is_the_file_itself() -> None:
    desc = h.vmdk_descriptor(extents=('RW 2048 SPARSE "renamed-long-ago.vmdk"',))
    assert inspect_bytes(h.vmdk_sparse(desc), "vmdk").failures == ()


def test_vmdk_parent_is_a_backing_file() -> None:
    desc = h.vmdk_descriptor(parent="/var/lib/parent.vmdk")
    report = inspect_bytes(h.vmdk_sparse(desc), "vmdk")
    assert report.backing_file == "/var/lib/parent.vmdk"
    assert checks(report) == {"vmdk-backing-file"}


def test_vmdk_capacity_zero_makes_the_descriptor_a_descriptor_file() -> None:
    desc = h.vmdk_descriptor(extents=('RW 2048 FLAT "/etc/hostname" 0',))
    report = inspect_bytes(h.vmdk_sparse(desc, capacity=0), "vmdk")
    assert checks(report) == {"vmdk-create-type", "vmdk-extent-outside"}
    assert report.virtual_size == 2048 * 512


@pytest.mark.parametrize(
    ("extra", "desc_sector"),
    [("garbage line here\n", 1), ("", 0), ("", 7)],
)
def test_vmdk_descriptor(extra: str, desc_sector: int) -> None:
    desc = h.vmdk_descriptor(extra=extra)
    data = h.vmdk_sparse(desc, desc_sector=desc_sector)
    if desc_sector > 1:
        data = data[:512] + b"\0" * 512 * (desc_sector - 1) + desc
    assert "vmdk-descriptor" in checks(inspect_bytes(data, "vmdk"))


def test_vmdk_no_extents() -> None:
    desc = h.vmdk_descriptor(extents=())
    assert checks(inspect_bytes(h.vmdk_sparse(desc), "vmdk")) == {"vmdk-descriptor"}


@pytest.mark.parametrize("version", [0, 4])
def test_vmdk_version(version: int) -> None:
    assert checks(inspect_bytes(h.vmdk_sparse(version=version), "vmdk")) == {"vmdk-version"}


def test_vmdk_footer_takes_precedence() -> None:
    gd_at_end = 0xFFFFFFFFFFFFFFFF
    start = h.vmdk_sparse(h.vmdk_descriptor(create_type="streamOptimized"), gd_offset=gd_at_end)
    footer_header = h.vmdk_sparse_header(capacity=8192, gd_offset=99)
    data = start + b"\0" * 4096 + h.vmdk_stream_footer(footer_header)
    report = inspect_bytes(data, "vmdk")
    assert report.failures == ()
    assert report.virtual_size == 8192 * 512


def test_vmdk_footer_missing() -> None:
    data = h.vmdk_sparse(gd_offset=0xFFFFFFFFFFFFFFFF) + b"\0" * 4096
    assert checks(inspect_bytes(data, "vmdk")) == {"vmdk-footer"}


def test_vmdk_footer_moving_the_descriptor() -> None:
    start = h.vmdk_sparse(gd_offset=0xFFFFFFFFFFFFFFFF)
    data = start + h.vmdk_stream_footer(h.vmdk_sparse_header(desc_sector=5))
    assert checks(inspect_bytes(data, "vmdk")) == {"vmdk-footer"}


def test_vmdk_cowd_is_refused() -> None:
    data = struct.pack("<4sIII", b"COWD", 1, 3, 4096).ljust(2048, b"\0")
    report = inspect_bytes(data, "vmdk")
    assert report.detected == ("vmdk",)
    assert report.virtual_size == 4096 * 512
    assert checks(report) == {"vmdk-create-type"}


def test_vmdk_sparse_truncated() -> None:
    assert checks(inspect_bytes(h.vmdk_sparse()[:60], "vmdk")) == {"truncated-header"}


def test_vmdk_text_descriptor_naming_a_host_file() -> None:
    desc = h.vmdk_descriptor(create_type="monolithicFlat", extents=('RW 8 FLAT "/etc/hostname" 0',))
    report = inspect_bytes(desc, "vmdk")
    assert report.detected == ("vmdk",)
    assert report.virtual_size == 8 * 512
    assert checks(report) == {"vmdk-create-type", "vmdk-extent-outside"}
    assert "/etc/hostname" in " ".join(f.message for f in report.failures)


def test_vmdk_text_descriptor_referring_to_itself(tmp_path) -> None:
    desc = h.vmdk_descriptor(create_type="monolithicFlat", extents=('RW 8 FLAT "self.vmdk" 0',))
    path = tmp_path / "self.vmdk"
    path.write_bytes(desc)
    assert checks(inspect_file(path, "vmdk")) == {"vmdk-create-type"}


def test_vmdk_extents_as_qemu_sscanf_sees_them() -> None:
    # qemu-img info reports 8192 bytes for this 8-sector extent: the blank
    # line before it makes sscanf parse the extent line twice.
    desc = b'version=1\ncreateType="monolithicFlat"\n\nRW 8 FLAT "/etc/hostname" 0\n'
    assert inspect_bytes(desc, "vmdk").virtual_size == 8192
    assert qemu_extents(desc) == [(8, b"FLAT", b"/etc/hostname", 2)]
    # An extent split over lines is still an extent to qemu.
    split = b'version=1\ncreateType="vmfs"\nRW\n8\nFLAT\n"/etc/shadow" 0\n'
    report = inspect_bytes(split, "vmdk")
    assert {"vmdk-extent-outside", "vmdk-descriptor"} <= checks(report)
    assert "/etc/shadow" in " ".join(f.message for f in report.failures)
    # RDONLY extents, unknown types and sizes <= 0 are skipped by qemu.
    assert qemu_extents(b'RDONLY 8 FLAT "a" 0\nRW 0 FLAT "b" 0\nRW 8 ZERO "c"\n') == []
    # Sizes parse like sscanf's %"SCNd64" (saturating), never raising.
    huge = b"version=1\nRW " + b"9" * 5000 + b' FLAT "/etc/motd" 0\n'
    assert qemu_extents(huge) == [(2**63 - 1, b"FLAT", b"/etc/motd", 1)]
    assert "vmdk-extent-outside" in checks(inspect_bytes(huge, "vmdk"))
    # Linear in the number of blank lines.
    assert qemu_extents(b"\n" * 500_000 + b'RW 1 SPARSE "x"') == [(1, b"SPARSE", b"x", 500_001)]


@pytest.mark.parametrize(
    "text",
    [
        b"version=1\n",
        b"# comment\n   \nversion=2\r\nCID=1\n",
        b'# Disk DescriptorFile\ncreateType="x"\n',
    ],
)
def test_vmdk_text_descriptor_probe(text: bytes) -> None:
    assert detect_formats(text) == ("vmdk",)


@pytest.mark.parametrize("text", [b"\nversion=1\n", b"version=4\n", b"hello version=1\n"])
def test_vmdk_text_descriptor_probe_negatives(text: bytes) -> None:
    assert detect_formats(text) == ()


# --- vhd / vhdx ------------------------------------------------------------


def test_vhd_fixed_footer_at_end() -> None:
    data = b"\x01" * (2 * MiB) + h.vhd_footer(size=2 * MiB, disk_type=2)
    report = inspect_bytes(data, "vhd")
    assert report.detected == ("vhd",)
    assert report.failures == ()
    assert report.virtual_size == (2 * MiB // (16 * 63 * 512)) * 16 * 63 * 512


def test_vhd_current_size_creators() -> None:
    data = h.vhd_dynamic(size=10 * MiB + 512, creator=b"win ")
    assert inspect_bytes(data, "vhd").virtual_size == 10 * MiB + 512


def test_vhd_max_geometry_uses_current_size() -> None:
    data = h.vhd_dynamic(size=200 * 1024 * MiB, geometry=(65535, 16, 255))
    assert inspect_bytes(data, "vhd").virtual_size == 200 * 1024 * MiB


def test_vhd_checksum() -> None:
    data = h.vhd_dynamic(checksum=1234)
    assert checks(inspect_bytes(data, "vhd")) == {"vhd-checksum"}


def test_vhd_disk_type() -> None:
    data = h.vhd_footer(disk_type=9) + h.vhd_dynamic_header()
    assert checks(inspect_bytes(data, "vhd")) == {"vhd-disk-type"}


def test_vhd_dynamic_header_missing() -> None:
    data = h.vhd_footer(disk_type=3) + b"\0" * 1024
    assert checks(inspect_bytes(data, "vhd")) == {"vhd-dynamic-header"}


def test_vhd_differencing_parent() -> None:
    report = inspect_bytes(h.vhd_dynamic(parent="C:\\vms\\parent.vhd"), "vhd")
    assert report.backing_file == "C:\\vms\\parent.vhd"
    assert checks(report) == {"vhd-differencing"}


def test_vhd_truncated_footer() -> None:
    assert checks(inspect_bytes(h.vhd_footer()[:100], "vhd")) == {"truncated-header"}


def test_vhdx_parent() -> None:
    assert checks(inspect_bytes(h.vhdx(has_parent=True), "vhdx")) == {"vhdx-parent"}
    assert checks(inspect_bytes(h.vhdx(parent_locator=True), "vhdx")) == {"vhdx-parent"}


def test_vhdx_region_table_missing() -> None:
    report = inspect_bytes(h.vhdx(region_signature=b"nope"), "vhdx")
    assert checks(report) == {"vhdx-region-table"}
    assert checks(inspect_bytes(b"vhdxfile" + b"\0" * 100, "vhdx")) == {"vhdx-region-table"}


def test_vhdx_metadata_beyond_the_file() -> None:
    data = h.vhdx(metadata_offset=1 << 40)
    assert checks(inspect_bytes(data, "vhdx")) == {"vhdx-metadata"}


# --- vdi / parallels / luks ------------------------------------------------


def test_vdi_checks() -> None:
    assert checks(inspect_bytes(h.vdi(version=0x00010000), "vdi")) == {"vdi-version"}
    assert checks(inspect_bytes(h.vdi(image_type=4), "vdi")) == {"vdi-differencing"}
    assert checks(inspect_bytes(h.vdi(parent=b"\x01" * 16), "vdi")) == {"vdi-differencing"}
    assert checks(inspect_bytes(h.vdi()[:300], "vdi")) == {"truncated-header"}


def test_parallels_old_magic_ignores_high_bits() -> None:
    report = inspect_bytes(h.parallels(sectors=(1 << 40) | 2048), "parallels")
    assert report.virtual_size == MiB
    assert checks(inspect_bytes(h.parallels(version=3), "parallels")) == {"parallels-version"}


def test_luks_checks() -> None:
    assert checks(inspect_bytes(h.luks(version=2), "luks")) == {"luks-version"}
    assert checks(inspect_bytes(h.luks(payload_sectors=1 << 20), "luks")) == {"luks-payload"}
    assert checks(inspect_bytes(h.luks()[:50], "luks")) == {"truncated-header"}


# --- content formats -------------------------------------------------------


def test_partition_tables() -> None:
    assert detect_formats(h.mbr()) == ("mbr",)
    assert detect_formats(h.gpt()) == ("gpt",)
    assert detect_formats(h.mbr(status=0x42)) == ()
    assert detect_formats(h.mbr(partitions=())) == ()


def test_fat_boot_sector_is_not_an_mbr() -> None:
    vbr = bytearray(h.mbr())
    vbr[0x10] = 2
    vbr[0x15] = 0xF8
    assert detect_formats(bytes(vbr)) == ()


def test_hybrid_iso_is_content_not_multiple_formats() -> None:
    data = bytearray(h.iso())
    data[:1024] = h.gpt()
    report = inspect_bytes(bytes(data), "raw")
    assert report.detected == ("iso", "gpt")
    assert report.failures == ()
    assert report.container_header_in_raw is None


def test_udf_identifier_in_a_later_descriptor() -> None:
    data = h.iso(identifier=b"BEA01")
    assert detect_formats(data) == ("iso",)
    assert inspect_bytes(data, "iso").virtual_size == len(data)


# --- cross-format rules ----------------------------------------------------


def test_format_mismatch() -> None:
    report = inspect_bytes(h.vdi(), "qcow2")
    assert checks(report) == {"format-mismatch"}
    assert "vdi" in report.failures[0].message
    assert report.virtual_size is None
    assert checks(inspect_bytes(b"\0" * 1024, "vmdk")) == {"format-mismatch"}


def test_unsupported_declared_format() -> None:
    report = inspect_bytes(b"\0" * 1024, "bochs")
    assert checks(report) == {"unsupported-declared-format"}


def test_multiple_container_formats() -> None:
    # A trailer in another format's file is content (qemu never probes a footer): a
    # guest can write a VHD footer into the last block of its qcow2 overlay.
    data = h.qcow2() + b"\0" * 8192 + h.vhd_footer(disk_type=2)
    report = inspect_bytes(data, "qcow2")
    assert report.detected == ("qcow2", "vhd")
    assert checks(report) == set()
    # Declared vhd, the footer is the format's own - and a qcow2 header starts the file.
    assert checks(inspect_bytes(data, "vhd")) >= {"multiple-formats"}


def test_attack_qcow2_header_written_over_a_raw_disk() -> None:
    disk = bytearray(b"\x5a" * (4 * MiB))
    header = h.qcow2(backing=b"/etc/passwd", size=100 * 1024 * MiB)
    disk[: len(header)] = header
    report = inspect_bytes(bytes(disk), "raw", path="/dev/vg/instance_disk")
    assert report.detected == ("qcow2",)
    assert report.container_header_in_raw == "qcow2"
    assert report.embedded is not None
    assert report.embedded.backing_file == "/etc/passwd"
    assert report.embedded.virtual_size == 100 * 1024 * MiB
    assert "qcow2-backing-file" in checks(report.embedded)
    # As declared raw, nothing in the disk is trusted: the size is the file's.
    assert report.virtual_size == 4 * MiB
    assert report.backing_file is None and report.failures == ()


def test_attack_vmdk_descriptor_written_over_a_raw_disk() -> None:
    desc = h.vmdk_descriptor(create_type="monolithicFlat", extents=('RW 8 FLAT "/etc/shadow" 0',))
    report = inspect_bytes(desc.ljust(MiB, b"\0"), "raw")
    assert report.container_header_in_raw == "vmdk"
    assert report.embedded is not None
    assert "vmdk-extent-outside" in checks(report.embedded)


def test_vhd_footer_at_end_of_raw_is_not_a_header_at_start() -> None:
    data = b"\0" * MiB + h.vhd_footer(size=MiB, disk_type=2)
    report = inspect_bytes(data, "raw")
    assert report.detected == ("vhd",)
    assert report.container_header_in_raw is None


def test_inspect_bytes_with_a_larger_file_size() -> None:
    head = h.qcow2()[:4096]
    report = inspect_bytes(head, "qcow2", file_size=10 * MiB)
    assert report.failures == ()
    # Only the head was given: a fixed VHD footer cannot be looked for.
    assert detect_formats(b"\0" * 512 + h.vhd_footer(disk_type=2), file_size=MiB) == ()
    assert detect_formats(b"\0" * 512 + h.vhd_footer(disk_type=2)) == ("vhd",)


def test_report_is_frozen_and_failures_are_data() -> None:
    report = inspect_bytes(h.qed(), "qed")
    assert report.failures == (SafetyFailure("qed-format", report.failures[0].message),)
    with pytest.raises(AttributeError):
        report.virtual_size = 1  # type: ignore[misc]


# --- the bounded reader ----------------------------------------------------


class Recorder:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.calls: list[tuple[int, int]] = []

    def pread(self, length: int, offset: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset : offset + length]


def test_reader_reads_head_and_tail_once() -> None:
    source = Recorder(b"\1" * (5 * MiB))
    reader = BoundedReader(source)
    reader.load()
    assert source.calls == [(0, 64 * 1024), (5 * MiB - 1536, 1536)]
    assert reader.read(100, 10) == b"\1" * 10
    assert reader.read(5 * MiB - 100, 50) == b"\1" * 50
    assert len(source.calls) == 2


def test_reader_never_reads_past_the_end() -> None:
    source = Recorder(b"\1" * 1000)
    reader = BoundedReader(source)
    reader.load()
    assert reader.read(999, 100) == b"\1"
    assert reader.read(1000, 1) == b""
    assert reader.read(1 << 62, 1 << 62) == b""
    assert reader.read(-5, 10) == b""
    assert source.calls == [(0, 1000)]


def test_reader_budget() -> None:
    source = Recorder(b"\1" * (3 * MiB))
    reader = BoundedReader(source, budget=MiB)
    reader.load()
    assert len(reader.read(2 * MiB, MiB)) == MiB - 64 * 1024 - 1536
    assert reader.exhausted
    assert reader.read(MiB, 10) == b""
    assert sum(length for _, length in source.calls) <= MiB


def test_read_limit_is_reported() -> None:
    # No legitimate header needs MAX_READ bytes, so lower the budget to show
    # what happens when a hostile one would: a failure, not a bigger read.
    desc = h.vmdk_descriptor() + b"# padding\n" * 50_000
    data = h.vmdk_sparse_header() + desc
    source = Recorder(data)
    report = inspect_source(source, "vmdk", "x", budget=128 * 1024)
    assert "read-limit" in checks(report)
    assert sum(length for _, length in source.calls) <= 128 * 1024


def test_max_read_is_a_few_mebibytes() -> None:
    assert 2 * MiB < MAX_READ <= 16 * MiB


# --- files -----------------------------------------------------------------


def test_inspect_file(tmp_path) -> None:
    path = tmp_path / "disk.qcow2"
    path.write_bytes(h.qcow2(backing=b"base"))
    report = inspect_file(path, "qcow2")
    assert report.path == str(path)
    assert report.backing_file == "base"


def test_inspect_file_refuses_symlinks(tmp_path) -> None:
    """Callers resolve and vet a path first; a symlink swapped in since is refused."""
    target = tmp_path / "real"
    target.write_bytes(h.vdi())
    link = tmp_path / "link"
    link.symlink_to(target)
    assert inspect_file(target, "vdi").detected == ("vdi",)
    with pytest.raises(InspectorError, match="is a symbolic link"):
        inspect_file(link, "vdi")


def test_missing_file_is_an_error(tmp_path) -> None:
    with pytest.raises(InspectorError) as info:
        inspect_file(tmp_path / "nope", "raw")
    assert isinstance(info.value, errors.StorageCtlError)
    assert str(tmp_path / "nope") in str(info.value)
    assert "No such file" in str(info.value)


def test_directory_is_an_error(tmp_path) -> None:
    with pytest.raises(InspectorError, match="Is a directory"):
        inspect_file(tmp_path, "raw")


def test_fifo_socket_and_char_device_are_refused(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InspectorError, match="not a regular file or block device"):
        inspect_file(fifo, "raw")  # O_NONBLOCK: does not hang waiting for a writer
    with pytest.raises(InspectorError, match="not a regular file or block device"):
        inspect_file("/dev/null", "raw")
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(InspectorError):
            inspect_file(sock_path, "raw")


def test_unreadable_file_is_an_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Running as root, permissions cannot deny us; fake what open(2) returns.
    def deny(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(InspectorError, match="Permission denied"):
        inspect_file(tmp_path / "x", "raw")


def test_empty_file(tmp_path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    report = inspect_file(path, "raw")
    assert (report.detected, report.virtual_size, report.failures) == ((), 0, ())
    assert checks(inspect_file(path, "qcow2")) == {"format-mismatch"}


def test_source_reads_are_positional(tmp_path) -> None:
    # inspect_file must not depend on (or move) a file offset: a sparse 1 TiB
    # qcow2 costs two small reads.
    path = tmp_path / "big.qcow2"
    with open(path, "wb") as handle:
        handle.write(h.qcow2())
        handle.truncate(1 << 40)
    report = inspect_file(path, "qcow2")
    assert report.failures == ()
    assert report.detected == ("qcow2",)
