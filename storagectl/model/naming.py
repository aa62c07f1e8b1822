"""Nova's naming of instance storage, and its inverse.

Nova names an instance's disks ``disk`` (root), ``disk.local`` / ``disk.eph<N>``
(ephemeral), ``disk.swap``, ``disk.config`` (config drive), ``<name>.rescue``
(rescue), plus ``kernel`` / ``ramdisk`` for AMI-style images. Where they live:

- files:  ``<instances_path>/<uuid>/<name>``
- LVM:    ``/dev/<vg>/<uuid>_<name>`` with ``_`` in the name doubled
- RBD:    ``<pool>/<uuid>_<name>``

Anything else a domain uses (``volume-<id>``, iSCSI paths, ``volumes/...`` RBD
images) is a volume: reported, never touched.
"""

from __future__ import annotations

import re

from storagectl.model.layout import Role

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_EPH = re.compile(r"^disk\.eph\d+$")


def is_uuid(text: str) -> bool:
    return bool(UUID_RE.match(text.lower()))


def role_of(name: str) -> Role:
    """Role of a disk from Nova's file name.

    >>> role_of("disk.eph0"), role_of("disk.config.rescue"), role_of("volume-1")
    (<Role.EPHEMERAL: 'ephemeral'>, <Role.RESCUE: 'rescue'>, <Role.UNKNOWN: 'unknown'>)
    """
    if name.endswith(".rescue"):
        return Role.RESCUE
    if name == "disk":
        return Role.ROOT
    if name == "disk.local" or _EPH.match(name):
        return Role.EPHEMERAL
    if name == "disk.swap":
        return Role.SWAP
    if name == "disk.config":
        return Role.CONFIG
    if name == "kernel":
        return Role.KERNEL
    if name == "ramdisk":
        return Role.RAMDISK
    return Role.UNKNOWN


def is_nova_disk_name(name: str) -> bool:
    return role_of(name) is not Role.UNKNOWN


def lv_name(uuid: str, disk_name: str) -> str:
    """``<uuid>_<name>``, underscores in the name doubled (nova's lvm escape)."""
    return f"{uuid}_{disk_name.replace('_', '__')}"


def parse_lv_name(name: str) -> tuple[str, str] | None:
    """Inverse of :func:`lv_name`: ``(uuid, disk_name)``, or None if ``name`` cannot come
    out of Nova's escaping (a lone ``_``: e.g. ``<uuid>_disk_pool``, the private thin pool
    of a sparse LV, is no disk).

    >>> parse_lv_name("0c5d6c1e-0b0c-4c1b-8d2e-5b1f1b2f3a4b_disk.swap")
    ('0c5d6c1e-0b0c-4c1b-8d2e-5b1f1b2f3a4b', 'disk.swap')
    >>> parse_lv_name("0c5d6c1e-0b0c-4c1b-8d2e-5b1f1b2f3a4b_disk_pool") is None
    True
    """
    uuid, sep, escaped = name[:36], name[36:37], name[37:]
    if sep != "_" or not escaped or not is_uuid(uuid) or uuid != uuid.lower():
        return None
    if any(len(run) % 2 for run in re.findall(r"_+", escaped)):
        return None
    return uuid, escaped.replace("__", "_")


def rbd_image_name(uuid: str, disk_name: str) -> str:
    return f"{uuid}_{disk_name}"


def parse_rbd_image_name(name: str) -> tuple[str, str] | None:
    """``<uuid>_<disk>`` -> (uuid, disk), or None for images that are not instance disks.

    (A resize in progress shows as a ``nova-resize`` *snapshot* of ``<uuid>_disk``, not as
    a separate image name.)
    """
    if len(name) < 38 or name[36] != "_" or not is_uuid(name[:36]):
        return None
    return name[:36], name[37:]


_ASIDE_RE = re.compile(r"^(?P<base>.+)\.retained-(?P<backend>[a-z0-9]+)-(?P<n>[1-9][0-9]{0,5})$")


def aside_name(base: str, backend: str, n: int) -> str:
    """``disk.retained-qcow2-1``, ``U_disk.retained-rbd-1``: a displaced copy's name."""
    return f"{base}.retained-{backend}-{n}"


def is_aside_of(name: str, base: str, backend: str) -> bool:
    """Whether ``name`` is an :func:`aside_name` of ``base`` (any number)."""
    m = _ASIDE_RE.match(name)
    return bool(m and m.group("base") == base and m.group("backend") == backend)
