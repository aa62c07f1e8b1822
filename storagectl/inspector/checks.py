"""The one table of every safety check the inspector (and the chain walk) can fail.

Callers match on these members, never on string literals or substrings of them: a
check is renamed (or added) here and nowhere else. Each member is a ``str``, so a
report's ``check`` compares equal to its plain name (``"qcow2-backing-file"``).

``BENIGN`` lists the checks that say something an image legitimately has by design
(a Nova overlay's backing file): the backing-chain walk judges those, not the check.
"""

from __future__ import annotations

from enum import StrEnum


class Check(StrEnum):
    """Every check name that can appear in a report's ``failures`` or a chain problem."""

    # -- shared by every format --------------------------------------------------
    TRUNCATED_HEADER = "truncated-header"
    HEADER_UNPARSEABLE = "header-unparseable"
    READ_LIMIT = "read-limit"
    MULTIPLE_FORMATS = "multiple-formats"
    FORMAT_MISMATCH = "format-mismatch"
    UNSUPPORTED_DECLARED_FORMAT = "unsupported-declared-format"
    # -- qcow2 / QED -------------------------------------------------------------
    QCOW2_BACKING_FILE = "qcow2-backing-file"
    QCOW2_DATA_FILE = "qcow2-data-file"
    QCOW2_CLUSTER_BITS = "qcow2-cluster-bits"
    QCOW2_VERSION = "qcow2-version"
    QCOW2_ENCRYPTION = "qcow2-encryption"
    QCOW2_HEADER_LENGTH = "qcow2-header-length"
    QCOW2_UNKNOWN_INCOMPATIBLE_FEATURES = "qcow2-unknown-incompatible-features"
    QCOW2_CORRUPT = "qcow2-corrupt"
    QCOW2_COMPRESSION_TYPE = "qcow2-compression-type"
    QCOW2_HEADER_EXTENSIONS = "qcow2-header-extensions"
    QED_FORMAT = "qed-format"
    QED_BACKING_FILE = "qed-backing-file"
    # -- other formats -----------------------------------------------------------
    LUKS_VERSION = "luks-version"
    LUKS_PAYLOAD = "luks-payload"
    PARALLELS_VERSION = "parallels-version"
    VDI_VERSION = "vdi-version"
    VHD_CHECKSUM = "vhd-checksum"
    VHD_DISK_TYPE = "vhd-disk-type"
    VHDX_METADATA = "vhdx-metadata"
    VHDX_REGION_TABLE = "vhdx-region-table"
    VMDK_CREATE_TYPE = "vmdk-create-type"
    VMDK_DESCRIPTOR = "vmdk-descriptor"
    VMDK_VERSION = "vmdk-version"
    VDI_DIFFERENCING = "vdi-differencing"
    VHD_DIFFERENCING = "vhd-differencing"
    VHD_DYNAMIC_HEADER = "vhd-dynamic-header"
    VHDX_PARENT = "vhdx-parent"
    VMDK_BACKING_FILE = "vmdk-backing-file"
    VMDK_EXTENT_OUTSIDE = "vmdk-extent-outside"
    VMDK_FOOTER = "vmdk-footer"
    # -- the backing chain (storagectl.inspector.chain) --------------------
    BACKING_NOT_A_PATH = "backing-not-a-path"
    BACKING_OUTSIDE_CACHE = "backing-outside-cache"
    BACKING_NOT_REGULAR = "backing-not-regular"
    BACKING_MISSING = "backing-missing"
    BACKING_UNREADABLE = "backing-unreadable"
    BACKING_FORMAT_MISSING = "backing-format-missing"
    CHAIN_TOO_DEEP = "chain-too-deep"
    CHAIN_LOOP = "chain-loop"


#: Checks that describe a legitimate property; the chain walk judges what they name.
BENIGN: frozenset[Check] = frozenset({Check.QCOW2_BACKING_FILE})
