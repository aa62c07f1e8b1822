"""A persisted instance: the record *is* the layout; reality is only checked against it.

Inference never runs again for an instance that has a valid ``storage.yaml``: its disks,
backends, formats and locations come from the record. The domain XML and the storage are
still read, to verify (existence, sizes, the same safety checks as for inferred layouts)
and to notice where they disagree with the record.
"""

from __future__ import annotations

from dataclasses import dataclass

from storagectl.host.config import NovaConfig
from storagectl.host.hosts import ScannedDomain
from storagectl.inspect.infer import classify_domain, finish_local
from storagectl.inspect.storage import StorageView
from storagectl.inspect.verify import Checker, verify_disk
from storagectl.model.layout import Code, DiskLayout, InstanceLayout
from storagectl.record.record import Record


@dataclass(frozen=True)
class Drift:
    """One way the domain XML no longer matches the record."""

    disk: str
    what: str  # added | removed | moved | format | backend | size
    message: str


def layout_from_record(
    record: Record,
    dom: ScannedDomain,
    host: str,
    nova: NovaConfig,
    storage: StorageView,
    *,
    local: bool = True,
) -> tuple[InstanceLayout, list[Drift]]:
    chk = Checker(record.uuid, nova, storage, local)
    layout = record.to_instance_layout(dom.state)
    layout.host = host
    xml_disks = {d.name: (d, dd) for d, dd in classify_domain(dom.info, chk)}
    drift = compare(record.disks, {n: d for n, (d, _) in xml_disks.items()})
    for item in drift:
        if item.what == "format":
            chk.add(Code.FORMAT_MISMATCH, item.disk, item.message)
    if local:
        for disk, was in zip(layout.disks, record.disks, strict=True):
            hint = xml_disks.get(disk.name, (None, None))[1]
            verify_disk(disk, chk, backing_hint=hint.backing_format if hint else None)
            disk = chk.seen(disk)  # noqa: PLW2901 - what was found, not what was recorded
            if (
                was.virtual_size
                and disk.virtual_size is not None
                and (disk.virtual_size < was.virtual_size)
            ):
                drift.append(
                    Drift(
                        disk.name,
                        "size",
                        f"disk {disk.name} ({disk.location}) "
                        f"shrank from {was.virtual_size} bytes (recorded) to "
                        f"{disk.virtual_size}",
                    )
                )
        layout.disks = finish_local([chk.seen(d) for d in layout.disks], chk)
    layout.findings = list(chk.findings)  # its own list: the checker is done
    _dedupe(layout)
    return layout, drift


def compare(
    recorded: tuple[DiskLayout, ...] | list[DiskLayout], actual: dict[str, DiskLayout]
) -> list[Drift]:
    """How the disks libvirt uses now differ from the recorded ones."""
    out: list[Drift] = []
    rec = {d.name: d for d in recorded}
    for name, r in rec.items():
        a = actual.get(name)
        if a is None:
            out.append(
                Drift(
                    name,
                    "removed",
                    f"recorded disk {name} ({r.location}) is no longer in the domain XML",
                )
            )
            continue
        if a.backend is not r.backend:
            out.append(
                Drift(
                    name,
                    "backend",
                    f"disk {name} is recorded as {r.backend.value} "
                    f"but the domain XML uses {a.backend.value} ({a.location})",
                )
            )
        elif a.location != r.location:
            out.append(
                Drift(
                    name,
                    "moved",
                    f"disk {name} is recorded at {r.location} but the domain XML uses {a.location}",
                )
            )
        if (a.format or "") != (r.format or ""):
            out.append(
                Drift(
                    name,
                    "format",
                    f"disk {name} is recorded as {r.format} but the "
                    f"domain XML opens it as {a.format}",
                )
            )
    for name, a in actual.items():
        if name not in rec:
            out.append(
                Drift(
                    name,
                    "added",
                    f"disk {name} ({a.location}) is in the domain XML but not in the record",
                )
            )
    return out


def _dedupe(layout: InstanceLayout) -> None:
    seen = set()
    unique = []
    for f in layout.findings:
        key = (f.code, f.disk, f.message)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    layout.findings[:] = unique
