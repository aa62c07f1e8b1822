"""The layout model: what storagectl knows about an instance's disks.

These are plain data classes; inference (``storagectl.inspect.infer``) fills them from the
authoritative sources, the record store reads/writes them, and the CLI renders
them. ``to_dict`` gives the stable machine-readable shape that ``inspect -o json``
prints (absent values are ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from storagectl.model import attrs

#: What parsing hostile bytes can raise besides a parser's own error class. Every
#: reader of a file that a guest, an image or another host could have written (record,
#: disk.info, image headers, domain XML) turns these into a finding about that
#: instance, disk or file - never into a crash of the whole run.
HOSTILE_CONTENT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    MemoryError,
    UnicodeError,
)


def content_error(exc: BaseException) -> str:
    """One short line saying why hostile content could not be parsed."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"unparseable content ({type(exc).__name__}: {text})" if text else type(exc).__name__


class Backend(StrEnum):
    QCOW2 = "qcow2"
    FLAT = "flat"
    LVM = "lvm"
    RBD = "rbd"
    PLOOP = "ploop"
    VOLUME = "volume"  # Cinder or other volume: reported, never touched
    UNKNOWN = "unknown"


class Role(StrEnum):
    ROOT = "root"
    EPHEMERAL = "ephemeral"
    SWAP = "swap"
    CONFIG = "config"
    RESCUE = "rescue"
    KERNEL = "kernel"
    RAMDISK = "ramdisk"
    VOLUME = "volume"
    UNKNOWN = "unknown"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"critical": 2, "warning": 1, "info": 0}[self.value]


class Code(StrEnum):
    """Finding codes, each with the severity it always carries: a stable interface for
    monitoring. Never rename one. Every code inspect or audit reports is listed here."""

    severity: Severity

    def __new__(cls, value: str, severity: Severity) -> Code:
        member = str.__new__(cls, value)
        member._value_ = value
        member.severity = severity
        return member

    RAW_DISK_HAS_IMAGE_HEADER = "raw-disk-has-image-header", Severity.CRITICAL
    BACKING_FILE_OUTSIDE_CACHE = "backing-file-outside-cache", Severity.CRITICAL
    NESTED_BACKING_CHAIN = "nested-backing-chain", Severity.WARNING
    QCOW2_DATA_FILE = "qcow2-data-file", Severity.CRITICAL
    UNSAFE_IMAGE_FORMAT = "unsafe-image-format", Severity.CRITICAL
    FORMAT_MISMATCH = "format-mismatch", Severity.CRITICAL
    # issue #13: a host file, a device
    DISK_OUTSIDE_INSTANCE_DIR = "disk-outside-instance-dir", Severity.CRITICAL
    DISK_MISSING = "disk-missing", Severity.CRITICAL
    UNKNOWN_LAYOUT = "unknown-layout", Severity.WARNING
    METADATA_INVALID = "metadata-invalid", Severity.CRITICAL
    # Added by storagectl beyond the first list; same stability promise.
    DISK_INFO_INVALID = "disk-info-invalid", Severity.WARNING
    NOT_INSPECTED = "content-not-inspected", Severity.INFO
    # Issue #13: a reader met content it could not parse; the instance is not vouched for.
    INSPECTION_FAILED = "inspection-failed", Severity.CRITICAL
    # audit's own (storagectl/audit/audit.py).
    METADATA_MISSING = "metadata-missing", Severity.WARNING
    METADATA_DRIFT = "metadata-drift", Severity.CRITICAL
    ORPHAN_VOLUME = "orphan-volume", Severity.WARNING
    ORPHAN_METADATA = "orphan-metadata", Severity.WARNING
    UNOWNED_VOLUMES = "unowned-volumes", Severity.INFO
    BASE_IMAGE_UNSAFE = "base-image-unsafe", Severity.CRITICAL
    BASE_IMAGE_UNUSED = "base-image-unused", Severity.INFO
    MIGRATION_INTERRUPTED = "migration-interrupted", Severity.WARNING  # interrupted.py
    RETAINED_IN_USE = "retained-in-use", Severity.WARNING
    # Issue #15: nova-compute, with the host's nova.conf, would open the disk elsewhere or
    # in another format than it is stored (storagectl/inspect/nova.py).
    NOVA_WOULD_MISREAD = "nova-would-misread", Severity.CRITICAL
    # Issue #16: a guest moved live still runs on the temporary name of its new disk (a
    # hard link of Nova's name) until it is next started: a Nova live migration would
    # carry that name to the new host.
    LIVE_ALIAS = "running-on-live-alias", Severity.WARNING


#: Critical findings that say how *Nova* would read an instance, not that its storage is
#: unsafe to read: recording its layout (persist) or moving it (migrate - which may be
#: the very fix) goes ahead despite them.
NOT_BLOCKING = frozenset({Code.NOVA_WOULD_MISREAD.value})


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    instance: str | None
    disk: str | None
    message: str

    @classmethod
    def of(cls, code: Code, instance: str | None, disk: str | None, message: str) -> Finding:
        return cls(code.severity, code.value, instance, disk, message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value,
            **attrs(self, "code", "instance", "disk", "message"),
        }


def blocking(findings: list[Finding]) -> list[Finding]:
    """The critical findings that stop persist and migrate."""
    return [f for f in findings if f.severity is Severity.CRITICAL and f.code not in NOT_BLOCKING]


@dataclass(frozen=True)
class NovaView:
    """What nova-compute, with a given nova.conf, would open for one disk at its next
    hard reboot, rescue, resize or evacuate (``storagectl.inspect.nova``)."""

    images_type: str  # the imagebackend Nova would use: qcow2, flat, lvm, rbd, ploop
    location: str | None  # where it would look (None: it cannot name a place)
    format: str | None  # the format it would hand libvirt (None: it would probe)
    exists: bool | None  # whether that place exists (None: unknown)
    matches: bool  # the same place and format as the disk is stored

    def to_dict(self) -> dict[str, Any]:
        return attrs(self, "images_type", "location", "format", "exists", "matches")


@dataclass(frozen=True)
class Backing:
    path: str
    format: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format}


@dataclass(frozen=True)
class DiskLayout:
    """One disk of an instance, as storagectl understands it (frozen: what verification
    observes - sizes, the backing file - is collected by its ``Checker`` and applied with
    ``Checker.seen``, a new value)."""

    name: str  # Nova's disk name: disk, disk.local, disk.eph0, disk.swap, disk.config ...
    role: Role
    target: str | None  # guest device (vda, hda ...)
    backend: Backend
    format: str | None  # from the domain XML <driver type>: the authority
    path: str | None = None  # file path, or /dev/VG/LV for LVM
    volume_group: str | None = None
    volume: str | None = None
    pool: str | None = None
    image: str | None = None
    virtual_size: int | None = None
    allocated_size: int | None = None
    backing: Backing | None = None
    device: str = "disk"  # disk | cdrom | floppy | lun
    ceph_conf: str | None = None
    rbd_user: str | None = None
    #: what Nova would open for it (inspect and audit; never recorded)
    nova: NovaView | None = None

    @property
    def location(self) -> str:
        """A one-string description of where the disk lives, for humans."""
        from storagectl.model.location import Location

        try:
            return Location.of_disk(self).label()
        except ValueError:  # a volume, or no place recorded
            return self.path or self.image or "-"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "target": self.target,
            "backend": self.backend.value,
            "format": self.format,
            "path": self.path,
            "volume_group": self.volume_group,
            "volume": self.volume,
            "pool": self.pool,
            "image": self.image,
            "virtual_size": self.virtual_size,
            "allocated_size": self.allocated_size,
            "backing": self.backing.to_dict() if self.backing else None,
            "nova": self.nova.to_dict() if self.nova else None,
        }


@dataclass
class InstanceLayout:
    uuid: str
    name: str
    host: str
    state: str
    source: str  # "inferred" | "metadata"
    disks: list[DiskLayout] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def disk(self, name: str) -> DiskLayout | None:
        return next((d for d in self.disks if d.name == name), None)

    @property
    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=lambda s: s.rank)

    def to_dict(self) -> dict[str, Any]:
        return {
            **attrs(self, "uuid", "name", "host", "state", "source"),
            "disks": [d.to_dict() for d in self.disks],
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class HostReport:
    uri: str
    hostname: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "hostname": self.hostname, "error": self.error}
