"""Infer an instance's storage layout once, from authoritative sources only.

Sources, in order of authority:

1. the libvirt domain XML: which disks exist, where, and in which format libvirt opens
   them (``<driver type>``) - the format is never taken from disk contents;
2. nova.conf: where instance directories and the image cache are, the VG, RBD pool,
   Ceph conf and user;
3. Nova's naming (``storagectl.model.naming``): which of those are instance storage
   (``<uuid>/disk.local``, ``<vg>/<uuid>_disk``, ``<pool>/<uuid>_disk``) and which are
   volumes, reported but never touched.

Classification here is pure (no I/O); ``storagectl.inspect.verify`` then checks the
result against LVM/Ceph metadata, disk.info and - with the bounded inspector, only to
detect danger - the image headers.
"""

from __future__ import annotations

import os
from dataclasses import replace

from storagectl.backends import registry
from storagectl.host.config import NovaConfig
from storagectl.host.domain import DomainDisk, DomainInfo
from storagectl.host.hosts import ScannedDomain
from storagectl.inspect.nova import check_nova
from storagectl.inspect.storage import StorageView
from storagectl.inspect.verify import Checker, check_disk_info, inside, verify_disk
from storagectl.inspector import chain
from storagectl.model.layout import Backend, Code, DiskLayout, Finding, InstanceLayout, Role

#: kernel and initrd files are classified by the files backend
_FILES = registry.for_xml_type("file")


def infer_instance(
    dom: ScannedDomain, host: str, nova: NovaConfig, storage: StorageView, *, local: bool = True
) -> InstanceLayout:
    """Classify every disk of the domain, then verify each against reality."""
    chk = Checker(dom.info.uuid, nova, storage, local)
    disks, hints = [], {}
    for disk, ddisk in classify_domain(dom.info, chk):
        disks.append(disk)
        hints[disk.name] = ddisk.backing_format if ddisk else None
    for disk in disks:
        verify_disk(disk, chk, backing_hint=hints.get(disk.name))
    disks = [chk.seen(d) for d in disks]
    if local:
        disks = finish_local(disks, chk)
    else:
        chk.add(
            Code.NOT_INSPECTED,
            None,
            f"host {host} is remote: disk contents and disk.info were not inspected; "
            "run storagectl on the compute host itself for the safety checks",
        )
    return inferred_layout(dom, host, disks, chk.findings)


def finish_local(disks: list[DiskLayout], chk: Checker) -> list[DiskLayout]:
    """The checks that look at the instance as a whole, once its disks are verified:
    disk.info against the declared formats, and what Nova would open for each disk."""
    check_disk_info(disks, chk)
    return check_nova(disks, chk)


def inferred_layout(
    dom: ScannedDomain, host: str, disks: list[DiskLayout], findings: list[Finding]
) -> InstanceLayout:
    """The layout of a domain without a record (its own lists: the checker is done)."""
    return InstanceLayout(
        uuid=dom.info.uuid,
        name=dom.info.name,
        host=host,
        state=dom.state,
        source="inferred",
        disks=list(disks),
        findings=list(findings),
    )


def classify_domain(info: DomainInfo, chk: Checker) -> list[tuple[DiskLayout, DomainDisk | None]]:
    """Every storage-bearing element of the domain as a DiskLayout (names made unique)."""
    out: list[tuple[DiskLayout, DomainDisk | None]] = []
    used: set[str] = set()
    for ddisk in info.disks:
        disk = _classify(ddisk, chk)
        if disk is None:
            continue
        disk = replace(disk, name=_unique(disk.name, used))
        _check_backing_store(disk, ddisk, chk)
        out.append((disk, ddisk))
    for path, role in ((info.kernel, Role.KERNEL), (info.initrd, Role.RAMDISK)):
        if path:
            out.append((_FILES.classify_boot(path, role, chk), None))
    return out


def _check_backing_store(disk: DiskLayout, d: DomainDisk, chk: Checker) -> None:
    """``<backingStore>``: what libvirt (with -blockdev) tells qemu to open below the
    disk. Every level must be a plain file path inside the image cache (symlinks
    resolved): anything else exposes that file or service to the guest."""
    for source in d.backing_sources:
        why = chain.not_a_path(source) if source else "it names no source"
        if why is None and not source.startswith("/"):
            why = "it is not an absolute path"
        real = os.path.realpath(source) if why is None else ""
        if why is None and not inside(real, chk.cache_real):
            shown = source if real == os.path.normpath(source) else f"{source} (really {real})"
            why = f"{shown} is outside the image cache {chk.nova.image_cache_path}"
        if why is not None:
            chk.add(
                Code.BACKING_FILE_OUTSIDE_CACHE,
                disk.name,
                f"the domain XML gives disk {d.target} a <backingStore> {source!r}: {why}",
            )


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}#{n}"
    used.add(candidate)
    return candidate


def _classify(d: DomainDisk, chk: Checker) -> DiskLayout | None:
    if d.source is None:
        if d.device in ("cdrom", "floppy"):
            return None  # an empty removable drive is not storage
        disk = DiskLayout(
            name=d.target or "?",
            role=Role.UNKNOWN,
            target=d.target,
            backend=Backend.UNKNOWN,
            format=d.driver_type,
            device=d.device,
        )
        chk.add(Code.UNKNOWN_LAYOUT, disk.name, f"disk {d.target} has no source in the XML")
        return disk
    backend = registry.for_xml_type(d.type)
    disk = backend.classify(d, chk) if backend is not None else None
    if disk is not None:
        return disk
    return _volume(d, os.path.normpath(d.source) if d.source.startswith("/") else d.source)


def _volume(d: DomainDisk, source: str) -> DiskLayout:
    name = os.path.basename(source.rstrip("/")) or d.target or "volume"
    return DiskLayout(
        name=name,
        role=Role.VOLUME,
        target=d.target,
        backend=Backend.VOLUME,
        format=d.driver_type,
        path=source if source.startswith("/") else None,
        device=d.device,
    )
