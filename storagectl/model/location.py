"""Where one disk's data lives: one frozen type per kind of place.

``FileLocation`` (``storagectl.backends.files``), ``LVMLocation``
(``storagectl.backends.lvm``) and ``RBDLocation`` (``storagectl.backends.rbd``) each
define their fields next to the backend that acts on them; this module holds what they
share and the two ways in: :meth:`Location.from_record` (a journal entry, a
``retained_sources`` item) and :meth:`Location.of_disk` (a disk of the record).

``to_record()`` is the JSON shape the journal has always stored (``backend``,
``format`` and the location's own keys, ``None`` left out), so a journal written by an
older storagectl resumes.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar

from storagectl.model.layout import Backend

if TYPE_CHECKING:
    from storagectl.model.layout import DiskLayout

#: Every key a location may write into a journal entry or a retained item.
RECORD_KEYS = ("path", "volume_group", "volume", "pool", "image", "ceph_conf", "user")


class Location:
    """Base of the location types (frozen dataclasses)."""

    backend: str
    format: str
    #: the record's ``backend`` values this type stores
    BACKENDS: ClassVar[tuple[str, ...]] = ()

    @property
    def kind(self) -> Backend:
        return Backend(self.backend)

    def describe(self) -> str:
        """How plans, errors and the journal name the place::

        /var/lib/nova/instances/U/disk    /dev/nova/U_disk    rbd:vms/U_disk
        """
        raise NotImplementedError

    def key(self) -> str:
        """A comparable name of the place (two locations with one key are one place)."""
        return self.describe()

    def label(self) -> str:
        """The short form inspect's findings use (``nova/U_disk``, ``vms/U_disk``, a path)."""
        return self.describe()

    def disk_fields(self) -> dict[str, Any]:
        """The location fields of a :class:`DiskLayout` at this place."""
        raise NotImplementedError

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "format": self.format}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name not in out and getattr(self, f.name) is not None:
                out[f.name] = getattr(self, f.name)
        return out

    # the location dict of old journals: tests and tools call it to_dict
    to_dict = to_record

    @staticmethod
    def from_record(data: dict[str, Any]) -> Location:
        """A journal entry or retained item -> its location; ValueError if it names none."""
        if not isinstance(data, dict):
            raise ValueError(f"not a location: {data!r}")
        cls = location_class(str(data.get("backend")))
        return cls._from_record(data)

    from_dict = from_record

    @staticmethod
    def of_disk(disk: DiskLayout) -> Location:
        """Where a disk of the record (or of an inferred layout) is; ValueError for a
        volume or an unknown disk (storagectl never moves those)."""
        backend = getattr(disk.backend, "value", disk.backend)
        return location_class(str(backend))._of_disk(disk)

    @classmethod
    def _from_record(cls, data: dict[str, Any]) -> Location:
        raise NotImplementedError

    @classmethod
    def _of_disk(cls, disk: DiskLayout) -> Location:
        raise NotImplementedError


def location(backend: str, format: str, **fields: Any) -> Location:  # noqa: A002
    """A location from the journal's keys: ``location("flat", "raw", path="/i/u/disk")``."""
    return Location.from_record({"backend": backend, "format": format, **fields})


def location_class(backend: str) -> type[Location]:
    """The location type of a record's ``backend`` value (the backends' registry)."""
    from storagectl.backends import registry

    return registry.location_class(backend)


def _required(data: dict[str, Any], *keys: str) -> list[str]:
    missing = [k for k in keys if not data.get(k)]
    if missing:
        raise ValueError(f"{data.get('backend')} location without {', '.join(missing)}")
    return [str(data[k]) for k in keys]


required = _required
