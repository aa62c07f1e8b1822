"""The backends, by the record's ``backend`` value and by domain XML ``<disk type>``.

A new backend is one module and one line in ``_BACKENDS``.
"""

from __future__ import annotations

from functools import cache

from storagectl.backends.base import DiskBackend
from storagectl.backends.files import FilesBackend
from storagectl.backends.lvm import LVMBackend
from storagectl.backends.rbd import RBDBackend
from storagectl.model.location import Location

_BACKENDS: tuple[type[DiskBackend], ...] = (FilesBackend, LVMBackend, RBDBackend)


class UnknownBackend(ValueError):
    pass


@cache
def backend_class(backend: str) -> type[DiskBackend]:
    """The backend storing disks whose record says ``backend: <backend>``."""
    for cls in _BACKENDS:
        if backend in cls.BACKENDS:
            return cls
    raise UnknownBackend(f"no storagectl backend stores {backend!r} disks")


def location_class(backend: str) -> type[Location]:
    return backend_class(backend).LOCATION


def stored(backend: object) -> bool:
    """Whether storagectl has a backend for this record ``backend`` (volumes: no)."""
    try:
        backend_class(str(getattr(backend, "value", backend)))
    except UnknownBackend:
        return False
    return True


def for_xml_type(disk_type: str | None) -> type[DiskBackend] | None:
    """The backend that classifies domain ``<disk type='...'>`` elements."""
    return next((c for c in _BACKENDS if disk_type in c.XML_TYPES), None)


def all_backends() -> tuple[type[DiskBackend], ...]:
    return _BACKENDS


def all_targets() -> tuple[str, ...]:
    """What ``migrate --to`` accepts."""
    return tuple(b for cls in _BACKENDS for b in cls.CREATES)


def all_names() -> tuple[str, ...]:
    return tuple(b for cls in _BACKENDS for b in cls.BACKENDS)
