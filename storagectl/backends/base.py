"""What every disk backend answers: the one interface migrate, inspect, persist and
audit use, so that no module outside ``backends/`` needs to know which kind of storage
a disk is on.

A backend is constructed with a :class:`~storagectl.host.process.Runner` (nothing runs in the
constructor) and acts on the :class:`~storagectl.model.location.Location` type it
declares. Adding a backend is one module (its location type and its ``DiskBackend``)
and one line in :mod:`storagectl.backends.registry`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from storagectl import errors
from storagectl.host import fsutil
from storagectl.host.process import Runner
from storagectl.model.location import Location

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from storagectl.host.config import NovaConfig
    from storagectl.host.domain import DomainDisk
    from storagectl.inspect.storage import StorageView
    from storagectl.inspect.verify import Checker
    from storagectl.model.layout import DiskLayout, Finding, InstanceLayout


@dataclass(frozen=True)
class QemuSpec:
    """How qemu-img names an image: ``-f FORMAT FILENAME``, or an ``--image-opts`` string."""

    format: str
    filename: str
    image_opts: str


class Refusal(errors.StorageCtlError):
    """A location cannot take part in a migration (preflight turns it into its refusal)."""

    template = "%(reason)s"


@dataclass(frozen=True)
class OrphanScan:
    """What audit knows when it asks each backend for volumes no instance owns."""

    view: StorageView
    nova: NovaConfig
    instances: Sequence[InstanceLayout]
    defined: set[str]  # uuids of the defined domains
    kept: set[str]  # names/paths the records keep as retained sources
    traces: set[str]  # uuids this host has an instance directory of
    complete: bool  # every host sharing the storage was scanned (--complete)
    errors: list[str]  # what could not be listed (the audit's report)
    #: ``unowned(where, (noun, nouns), place, [(count, why), ...])`` -> the one finding
    #: counting volumes that may be another host's (see audit._unowned)
    unowned: Callable[..., list[Finding]]


@dataclass(frozen=True)
class TargetSettings:
    """Where new disks go: the operator's options over nova.conf's settings."""

    instance_dir: str
    volume_group: str | None = None
    pool: str | None = None
    ceph_conf: str | None = None
    rbd_user: str | None = None


class NovaCannotName(Exception):  # noqa: N818 - a condition, not a failure of ours
    """Nova's imagebackend would raise before naming a place (a setting it needs is unset)."""


class DiskBackend:
    """Base class; every method takes the backend's own location type."""

    #: the record's ``backend`` values this backend stores: its ``LOCATION``'s
    BACKENDS: ClassVar[tuple[str, ...]] = ()
    #: the ``backend`` values ``migrate --to`` can create here (default: ``BACKENDS``)
    CREATES: ClassVar[tuple[str, ...]] = ()
    #: the ``<disk type>`` values of domain XML this backend classifies
    XML_TYPES: ClassVar[tuple[str, ...]] = ()
    #: the location type
    LOCATION: ClassVar[type[Location]]
    #: the ``obtained.evidence`` name of what inference read for such disks
    EVIDENCE: ClassVar[str] = ""
    #: disks are files named as Nova names them in the instance directory: a copy into
    #: such a backend goes through ``<name>.migrating`` and the source is kept under
    #: ``<name>.retained-<backend>`` (switch.py)
    IN_INSTANCE_DIR: ClassVar[bool] = False
    #: the volume is sized in whole units (LVM extents): the tail past the disk's size is
    #: not the guest's, and compare must cut it off
    ROUNDED_SIZE: ClassVar[bool] = False
    #: the record is mirrored beside the volume (:meth:`write_mirror`)
    MIRRORED: ClassVar[bool] = False
    #: qemu-img must be handed a vetted name for what it reads here (guest-writable
    #: headers may name other files): :meth:`read_name`
    VETTED: ClassVar[bool] = False
    #: Nova's ``_cleanup`` removes such volumes only while ``images_type`` names this
    #: backend (LVM, RBD); files go with the instance directory whatever it says
    NOVA_CLEANS_BY_IMAGES_TYPE: ClassVar[bool] = True
    #: under ``images_type`` = this backend Nova keeps the config drive here too (RBD);
    #: otherwise it is a local raw file (driver.py ``_get_disk_config_image_type``)
    NOVA_CONFIG_DRIVE: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "LOCATION" in cls.__dict__:
            cls.BACKENDS = cls.LOCATION.BACKENDS
            if "CREATES" not in cls.__dict__:  # a backend creates what it stores
                cls.CREATES = cls.BACKENDS

    def __init__(self, runner: Runner, *, ceph_timeout: int = 60) -> None:
        self.runner = runner
        self.ceph_timeout = ceph_timeout

    # -- record and naming ----------------------------------------------------------

    @classmethod
    def formats(cls, backend: str) -> tuple[str, ...]:
        """The ``<driver type>`` values libvirt opens such disks with."""
        raise NotImplementedError

    @classmethod
    def new_format(cls, backend: str) -> str:
        """The format of a disk this backend creates."""
        return cls.formats(backend)[0]

    @classmethod
    def has_backing(cls, backend: str) -> bool:
        """Whether such a disk may have a backing file."""
        return False

    @classmethod
    def record_location(cls, disk: DiskLayout) -> dict[str, Any]:
        """The ``location`` mapping of storage.yaml for ``disk``."""
        raise NotImplementedError

    @classmethod
    def check_record_location(cls, value: Any, field: str) -> dict[str, Any]:
        """Type-check a storage.yaml ``location`` mapping (raises the schema's error)."""
        raise NotImplementedError

    @classmethod
    def record_owner_check(cls, disk: DiskLayout, uuid: str) -> tuple[bool, str, str]:
        """``(is this disk of this instance, field, expected)`` for a loaded record disk."""
        raise NotImplementedError

    @classmethod
    def target(cls, backend: str, uuid: str, disk_name: str, where: TargetSettings) -> Location:
        """Where Nova names disk ``disk_name`` of instance ``uuid`` on this backend."""
        raise NotImplementedError

    @classmethod
    def live_problem(cls, loc: Location) -> str | None:
        """Why a running guest's disk at ``loc`` cannot be block-copied (migrate/live.py),
        or None."""
        return None

    @classmethod
    def staging(cls, dest: Location, source: Location) -> tuple[Location | None, Location | None]:
        """``(temporary copy, where the source is kept)`` for a copy into ``dest``: both
        None when the copy is written at ``dest`` directly."""
        return None, None

    @classmethod
    def aside(cls, loc: Location, uuid: str, disk_name: str, n: int) -> Location:
        """Where a displaced retained copy at ``loc`` goes (roundtrip.py)."""
        raise NotImplementedError

    @classmethod
    def owns_retained(cls, loc: Location, uuid: str, disk_name: str, instance_dir: str) -> bool:
        """Whether a ``retained_sources`` item at ``loc`` names a copy of this disk."""
        raise NotImplementedError

    @classmethod
    def remove_command(cls, loc: Location) -> str:
        """The shell command an operator runs to remove ``loc`` by hand."""
        raise NotImplementedError

    @classmethod
    def disk_info_keys(cls, loc: Location) -> list[str]:
        """Nova's disk.info keys for ``loc`` (the first is the one Nova writes): here its
        path (a file's, an LV's device node); a backend without one says its own."""
        return [loc.path]  # type: ignore[attr-defined]

    # -- what Nova opens ---------------------------------------------------------------

    @classmethod
    def nova_location(
        cls, backend: str, uuid: str, disk_name: str, nova: NovaConfig, like: Location | None
    ) -> Location:
        """Where Nova's imagebackend ``backend`` (an ``images_type``) names disk
        ``disk_name`` of instance ``uuid`` with this nova.conf. ``like``: where the disk
        is stored now (what Nova knows of the instance beyond nova.conf, e.g. that its
        ephemeral storage is encrypted). Raises :class:`NovaCannotName`."""
        return cls.target(backend, uuid, disk_name, nova_settings(nova, nova.instance_dir(uuid)))

    @classmethod
    def nova_format(cls, backend: str, disk_info: str | None) -> str | None:
        """The format Nova's ``backend`` hands libvirt, given the disk's disk.info entry;
        None when it would probe the disk's contents."""
        return cls.formats(backend)[0]

    @classmethod
    def nova_conf_for(cls, loc: Location) -> tuple[tuple[str, str, str], ...]:
        """The nova.conf settings (``(section, option, value)``) under which Nova opens
        ``loc`` as it is stored: what to set once a host's disks are all like it."""
        return (("libvirt", "images_type", loc.backend),)

    @classmethod
    def present(cls, loc: Location, view: StorageView) -> bool | None:
        """Whether ``loc`` exists (None: cannot tell), from the run's cached view."""
        raise NotImplementedError

    # -- volumes ----------------------------------------------------------------------

    def exists(self, loc: Location) -> bool:
        raise NotImplementedError

    def create(self, loc: Location, size: int, *, sparse: bool = False) -> None:
        """An empty target of ``size`` bytes that the copy writes into with ``-n``."""
        raise NotImplementedError

    def remove(self, loc: Location, *, ours: bool = False) -> None:
        """Remove an existing ``loc``. ``ours``: a copy target whose writer was killed."""
        raise NotImplementedError

    def rename(self, src: Location, dst: Location) -> None:
        """Atomic and idempotent: nothing is renamed onto an existing name."""
        raise NotImplementedError

    def target_is_zero(self, loc: Location) -> bool:
        """Whether a freshly created ``loc`` reads as zeros."""
        return True

    def free_bytes(self, loc: Location) -> int | None:
        """Bytes available where ``loc`` would be created (None: unknown)."""
        raise NotImplementedError

    @classmethod
    def space_name(cls, loc: Location) -> str:
        """What ``free_bytes`` measures, for humans: ``volume group nova`` ..."""
        raise NotImplementedError

    @classmethod
    def bytes_needed(cls, virtual_size: int, *, sparse: bool) -> int | None:
        """Bytes a copy takes here regardless of the data (None: as much as the data)."""
        return None

    def check(self, loc: Location, *, target: bool) -> None:
        """Raise :class:`Refusal` when ``loc`` cannot take part now (cluster down, VG
        missing). Called once per :meth:`check_key`."""

    def check_key(self, loc: Location) -> Any:
        return None

    # -- qemu and libvirt -----------------------------------------------------------

    def qemu_spec(self, loc: Location, *, size: int | None = None) -> QemuSpec:
        """How qemu-img opens ``loc``; ``size`` cuts what it sees (``ROUNDED_SIZE``)."""
        raise NotImplementedError

    def read_name(self, loc: Location) -> str:
        """The name qemu-img reads ``loc`` by (files: their vetted chain, named whole)."""
        return self.qemu_spec(loc).filename

    def sized_name(self, loc: Location, size: int) -> str:
        """A name qemu-img reads only the first ``size`` bytes of (``ROUNDED_SIZE``)."""
        return self.qemu_spec(loc).filename

    def cache_mode(self, loc: Location) -> str:
        """qemu-img ``-t`` for a copy into ``loc``."""
        return "none"

    def make_durable(self, loc: Location) -> None:
        """Make a finished copy at ``loc`` survive a power cut."""

    def before_compare(self, loc: Location) -> None:
        """Flush ``loc`` and drop its cached pages, so compare reads the media (a file or
        a device node; a backend whose volumes have no local path overrides it)."""
        path = getattr(loc, "path", None)
        if path:
            fsutil.fsync_path(path)
            fsutil.drop_cache(path)

    def domain_context(self, original_xml: str, plan: Any, *, resolve: bool) -> Any:
        """What :meth:`disk_xml` needs from the domain or the cluster (RBD: credentials
        and monitors). ``resolve``: may ask the cluster."""
        return None

    def disk_xml(
        self, loc: Location, context: Any
    ) -> tuple[str, ET.Element, tuple[str, str] | None]:
        """``(<disk type>, <source> element, (auth user, secret uuid) or None)``."""
        raise NotImplementedError

    # -- the record's mirror ------------------------------------------------------------

    def write_mirror(self, disk: DiskLayout, items: dict[str, str], prefix: str) -> None:
        """Store ``items`` beside the volume (LVM tags, RBD image-meta), replacing any other
        ``prefix`` item (others are left alone); files: nothing."""

    def read_mirror(self, disk: DiskLayout, prefix: str) -> dict[str, str] | None:
        """The ``prefix`` items beside the volume; None if the volume is gone."""
        return {}

    # -- inspection ---------------------------------------------------------------------

    @classmethod
    def classify(cls, d: DomainDisk, chk: Checker) -> DiskLayout | None:
        """A domain ``<disk>`` of one of ``XML_TYPES`` -> the instance disk it is, or None
        when it is no instance storage (a volume)."""
        return None

    @classmethod
    def orphans(cls, scan: OrphanScan) -> list[Finding]:
        """Volumes of this backend that belong to no defined domain (audit)."""
        return []

    @staticmethod
    def classified(d: DomainDisk, name: str, loc: Location) -> DiskLayout:
        """The DiskLayout of domain disk ``d``, Nova's disk ``name``, stored at ``loc``
        (the format is the one the XML declares: the authority)."""
        from storagectl.model import naming
        from storagectl.model.layout import DiskLayout

        return DiskLayout(
            name=name,
            role=naming.role_of(name),
            target=d.target,
            backend=loc.kind,
            format=d.driver_type,
            device=d.device,
            **loc.disk_fields(),
        )

    @classmethod
    def classify_boot(cls, path: str, role: Any, chk: Checker) -> DiskLayout:
        """A ``<kernel>`` / ``<initrd>`` file (only the files backend has them)."""
        raise NotImplementedError

    @classmethod
    def verify(cls, disk: DiskLayout, chk: Checker, *, backing_hint: str | None) -> None:
        """Check the disk against reality, adding findings to ``chk``."""


def nova_settings(nova: NovaConfig, instance_dir: str, **override: str | None) -> TargetSettings:
    """:class:`TargetSettings` from nova.conf, each ``override`` that is set winning."""
    base = {
        "volume_group": nova.images_volume_group,
        "pool": nova.images_rbd_pool,
        "ceph_conf": nova.images_rbd_ceph_conf,
        "rbd_user": nova.rbd_user,
    }
    base |= {k: v for k, v in override.items() if v}
    return TargetSettings(instance_dir, **base)
