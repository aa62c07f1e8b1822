"""Reading the libvirt domain XML: the authority on how a guest uses its disks.

Only what storagectl needs is extracted: for every ``<disk>`` its type (file, block,
network, dir, volume), device, ``<driver type>``, source, target; and the AMI-style
``<os><kernel>``/``<initrd>`` files. Example of what Nova writes::

    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" cache="none"/>
      <source file="/var/lib/nova/instances/<uuid>/disk"/>
      <target dev="vda" bus="virtio"/>
    </disk>
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from storagectl import errors
from storagectl.model.layout import HOSTILE_CONTENT_ERRORS, content_error


@dataclass(frozen=True)
class DomainDisk:
    type: str  # file | block | network | dir | volume
    device: str  # disk | cdrom | floppy | lun
    driver_type: str | None  # the format as libvirt will open it
    source: str | None  # file path, block device, dir, or "pool/image" for rbd
    protocol: str | None = None  # rbd, iscsi, nbd ... for type=network
    target: str | None = None
    bus: str | None = None
    auth_username: str | None = None
    secret_uuid: str | None = None
    hosts: tuple[tuple[str, str | None], ...] = ()
    backing_format: str | None = None  # <backingStore><format type=...> in live XML
    #: Every ``<backingStore>`` level's source (file path, block dev, or
    #: ``protocol:name`` for a network source), top down: libvirt with -blockdev opens
    #: exactly these, whatever the image headers say.
    backing_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    domain_type: str
    disks: tuple[DomainDisk, ...]
    kernel: str | None = None
    initrd: str | None = None
    nova_name: str | None = None  # <nova:instance><nova:name>, the display name
    extra: dict[str, str] = field(default_factory=dict)


NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"


def parse_domain_xml(xml: str, *, where: str = "domain") -> DomainInfo:
    """Parse one domain's XML; :class:`errors.StorageCtlError` naming ``where`` if broken."""
    try:
        return _parse(xml, where)
    except DomainXMLError:
        raise
    except ET.ParseError as exc:
        raise DomainXMLError(where=where, reason=str(exc)) from exc
    except HOSTILE_CONTENT_ERRORS as exc:
        # A domain's XML holds names a tenant chose; whatever it makes the parser raise
        # is an unreadable domain reported by name, never a crash of the scan.
        raise DomainXMLError(where=where, reason=content_error(exc)) from None


def _parse(xml: str, where: str) -> DomainInfo:
    root = ET.fromstring(xml)
    if root.tag != "domain":
        raise DomainXMLError(where=where, reason=f"root element is <{root.tag}>, not <domain>")
    uuid = (root.findtext("uuid") or "").strip().lower()
    name = (root.findtext("name") or "").strip()
    if not uuid or not name:
        raise DomainXMLError(where=where, reason="missing <uuid> or <name>")
    disks = tuple(_disk(el) for el in root.findall("./devices/disk"))
    os_el = root.find("os")
    kernel = initrd = None
    if os_el is not None:
        kernel = (os_el.findtext("kernel") or "").strip() or None
        initrd = (os_el.findtext("initrd") or "").strip() or None
    nova_name = None
    inst = root.find(f"./metadata/{{{NOVA_NS}}}instance")
    if inst is not None:
        nova_name = (inst.findtext(f"{{{NOVA_NS}}}name") or "").strip() or None
    return DomainInfo(
        uuid=uuid,
        name=name,
        domain_type=root.get("type", ""),
        disks=disks,
        kernel=kernel,
        initrd=initrd,
        nova_name=nova_name,
    )


def _disk(el: ET.Element) -> DomainDisk:
    dtype = el.get("type", "file")
    driver = el.find("driver")
    src = el.find("source")
    target = el.find("target")
    source = protocol = None
    hosts: tuple[tuple[str, str | None], ...] = ()
    if src is not None:
        if dtype == "file":
            source = src.get("file")
        elif dtype == "block":
            source = src.get("dev")
        elif dtype == "dir":
            source = src.get("dir")
        elif dtype == "network":
            protocol = src.get("protocol")
            source = src.get("name")
            hosts = tuple((h.get("name", ""), h.get("port")) for h in src.findall("host"))
        elif dtype == "volume":
            pool, vol = src.get("pool"), src.get("volume")
            source = f"{pool}/{vol}" if pool and vol else None
    auth = el.find("auth")
    secret = auth.find("secret") if auth is not None else None
    backing_fmt = el.find("./backingStore/format")
    return DomainDisk(
        type=dtype,
        device=el.get("device", "disk"),
        driver_type=driver.get("type") if driver is not None else None,
        source=source,
        protocol=protocol,
        target=target.get("dev") if target is not None else None,
        bus=target.get("bus") if target is not None else None,
        auth_username=auth.get("username") if auth is not None else None,
        secret_uuid=secret.get("uuid") if secret is not None else None,
        hosts=hosts,
        backing_format=backing_fmt.get("type") if backing_fmt is not None else None,
        backing_sources=_backing_sources(el),
    )


#: More ``<backingStore>`` levels than any sane chain; the rest are not read.
MAX_BACKING_STORES = 64


def _backing_sources(el: ET.Element) -> tuple[str, ...]:
    out: list[str] = []
    store = el.find("backingStore")
    while store is not None and len(out) < MAX_BACKING_STORES:
        src = store.find("source")
        if src is not None:
            if store.get("type") == "network":
                out.append(f"{src.get('protocol') or 'network'}:{src.get('name') or ''}")
            else:
                out.append(src.get("file") or src.get("dev") or src.get("dir") or "")
        store = store.find("backingStore")
    return tuple(out)


class DomainXMLError(errors.StorageCtlError):
    template = "cannot parse the libvirt XML of %(where)s: %(reason)s"
