"""The Nova view: what nova-compute, with this host's nova.conf, would open for each disk.

Nova never reads storage.yaml. At every hard reboot (and power-on,
``resume_state_on_host_boot``), rescue, resize, evacuate and rebuild the libvirt driver
rebuilds each disk's ``<disk>`` element from the host's *current* nova.conf
(``imagebackend.Backend.by_name(instance, name)``, image type ``[libvirt] images_type``;
``default`` is Qcow2 with ``use_cow_images``, else Flat). A disk stored any other way is
misread: a missing file (the start fails; a rebuild, rescue or resize re-creates it
blank from the image), another volume, a raw disk opened as qcow2, a raw disk whose
format Nova probes (disk.info has no entry for it: the host-data-leak CVE class), or a
volume Nova's ``_cleanup`` leaves behind at delete (it removes LVs / RBD images only of
the current images_type).

The rules, read from nova/virt/libvirt/imagebackend.py and driver.py (see
docs/design/nova-view.md):

- every instance disk (root, ephemerals, swap, ``.rescue``): the images_type backend,
  named as that backend names disks (:meth:`DiskBackend.nova_location`), in the format
  it gives libvirt (:meth:`DiskBackend.nova_format`: Qcow2 / Ploop their own, LVM / RBD
  raw, Flat disk.info's entry else a probe);
- the config drive (``disk.config``, ``disk.config.rescue``): on the images_type backend
  only when that backend keeps config drives (RBD, ``_get_disk_config_image_type``),
  else a Flat file; an RBD ``disk.config`` that does not exist falls back to the Flat
  file when that exists (``_get_guest_disk_config``);
- kernel / ramdisk files and volumes are not rebuilt from images_type: no view.

Each backend answers for its own disks; this module only applies the rules.
"""

from __future__ import annotations

import os
from dataclasses import replace

from storagectl.backends import registry
from storagectl.backends.base import DiskBackend, NovaCannotName
from storagectl.host.config import NovaConfig
from storagectl.inspect.storage import StorageView
from storagectl.inspect.verify import Checker, read_disk_info
from storagectl.model.layout import Code, DiskLayout, NovaView, Role
from storagectl.model.location import Location

#: disks Nova does not rebuild from images_type
_NOT_IMAGEBACKEND = (Role.VOLUME, Role.UNKNOWN, Role.KERNEL, Role.RAMDISK)
#: the image type Nova keeps a config drive in when images_type does not (driver.py)
CONFIG_DRIVE_FALLBACK = "flat"
_DISK_INFO_ALIASES = {"parallels": "ploop"}


def images_type_of(nova: NovaConfig) -> str:
    """The imagebackend Nova uses for instance disks (``default`` resolved)."""
    return nova.effective_images_type


def is_config_drive(name: str) -> bool:
    return name in ("disk.config", "disk.config.rescue")


def candidates(name: str, nova: NovaConfig) -> tuple[str, ...]:
    """The image types Nova tries for disk ``name``, in order (the first that exists is
    used; the last is used whether it exists or not)."""
    images_type = images_type_of(nova)
    if not is_config_drive(name):
        return (images_type,)
    if registry.backend_class(images_type).NOVA_CONFIG_DRIVE:
        # only disk.config itself falls back (driver._get_guest_disk_config)
        return (images_type, CONFIG_DRIVE_FALLBACK) if name == "disk.config" else (images_type,)
    return (CONFIG_DRIVE_FALLBACK,)


def nova_view(
    disk: DiskLayout,
    uuid: str,
    nova: NovaConfig,
    storage: StorageView,
    disk_info: dict[str, str] | None,
    will_exist: frozenset[str] = frozenset(),
) -> tuple[NovaView | None, str | None]:
    """``(what Nova would open for disk, why that misreads it or None)``; ``(None,
    None)`` for a disk Nova does not rebuild from its config (volumes, kernel files).
    ``will_exist``: places (:func:`place`) that exist by the time Nova looks (a planned
    migration's targets)."""
    if disk.role in _NOT_IMAGEBACKEND or not registry.stored(disk.backend):
        return None, None
    try:
        stored = Location.of_disk(disk)
    except ValueError:
        return None, None
    tried = candidates(disk.name, nova)
    for n, images_type in enumerate(tried):
        backend = registry.backend_class(images_type)
        try:
            loc = backend.nova_location(images_type, uuid, disk.name, nova, stored)
        except NovaCannotName as exc:
            view = NovaView(images_type, None, None, None, False)
            return view, f"Nova ({setting(nova)}) cannot open disk {disk.name}: {exc}"
        exists = True if place(loc) in will_exist else backend.present(loc, storage)
        if exists is False and n + 1 < len(tried):
            continue  # Nova's fall-back: the next image type
        entry = _disk_info_entry(backend, loc, disk_info)
        fmt = backend.nova_format(images_type, entry)
        same_place = place(loc) == place(stored)
        matches = same_place and (fmt == disk.format or (fmt is None and disk.format != "raw"))
        view = NovaView(images_type, loc.describe(), fmt, exists, matches)
        if matches:
            return view, None
        return view, _why(disk, stored, loc, view, backend, nova)
    raise AssertionError("candidates() is never empty")


def check_nova(disks: list[DiskLayout], chk: Checker) -> list[DiskLayout]:
    """Every disk with its Nova view; each misread disk a ``nova-would-misread`` finding
    on ``chk``. Local hosts only: the view needs disk.info and the host's storage."""
    info, _error = read_disk_info(chk.inst_dir)  # check_disk_info reports an error
    out = []
    for disk in disks:
        view, why = nova_view(disk, chk.uuid, chk.nova, chk.storage, info)
        if view is None:
            out.append(disk)
            continue
        if why:
            chk.add(Code.NOVA_WOULD_MISREAD, disk.name, why)
        out.append(replace(disk, nova=view))
    return out


def setting(nova: NovaConfig) -> str:
    """How the operator recognises the setting in nova.conf."""
    if nova.images_type == "default":
        cow = "true" if nova.use_cow_images else "false"
        return f"images_type=default, use_cow_images={cow}"
    return f"images_type={nova.images_type}"


def place(loc: Location) -> str:
    """A comparable name of where a location is."""
    return os.path.normpath(loc.describe())


def _disk_info_entry(
    backend: type[DiskBackend], loc: Location, disk_info: dict[str, str] | None
) -> str | None:
    if not disk_info:
        return None
    for key in backend.disk_info_keys(loc):
        if key in disk_info:
            value = disk_info[key]
            return _DISK_INFO_ALIASES.get(value, value)
    return None


def _why(
    disk: DiskLayout,
    stored: Location,
    loc: Location,
    view: NovaView,
    backend: type[DiskBackend],
    nova: NovaConfig,
) -> str:
    """One sentence: what Nova would open, and what happens to the instance then."""
    conf = setting(nova)
    held = f"{disk.name} is stored at {stored.describe()} ({disk.format})"
    if place(loc) == place(stored):
        if view.format is None:
            return (
                f"{held} but disk.info has no entry for it: Nova ({conf}) would probe "
                "its format, and a raw disk the guest wrote an image header into would be "
                "opened as that image (the host-data leak of the disk.info CVEs)"
            )
        if disk.format == "raw":
            consequence = (
                "the guest's own first bytes would be read as an image header (a host-data "
                "leak if it wrote one), else the instance fails to start"
            )
        else:
            consequence = "the guest would see the image's metadata as its disk, or fail to start"
        return f"{held} but Nova ({conf}) would open it as {view.format}: {consequence}"
    there = loc.describe()
    if view.exists:
        what = f"would open {there} instead, another volume than the one the instance uses"
    else:
        fresh = "a fresh copy of the image" if disk.role is Role.ROOT else "an empty disk"
        unknown = " (whose existence could not be checked)" if view.exists is None else ""
        what = (
            f"would open {there}{unknown} instead: a hard reboot fails to start the "
            f"instance, and a rebuild, rescue or resize creates {fresh} there (what the "
            "guest wrote is not in it)"
        )
    out = f"{held} but Nova ({conf}) {what}"
    kept = registry.backend_class(stored.backend)
    if kept.NOVA_CLEANS_BY_IMAGES_TYPE and kept is not backend:
        out += (
            f"; deleting the instance would leave {stored.describe()} behind (Nova removes "
            f"{stored.backend} volumes only with images_type={stored.backend})"
        )
    return out
