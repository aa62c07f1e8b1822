"""Domain XML as Nova's libvirt driver writes it, and the test driver's node file.

The shape follows nova/virt/libvirt/config.py (``LibvirtConfigGuest*.format_dom``) and
driver.py ``_get_guest_config``: ``<metadata>`` holding ``nova:instance`` in the
``http://openstack.org/xmlns/libvirt/nova/1.1`` namespace, SMBIOS ``<sysinfo>`` whose
``uuid`` entry is the instance uuid, disks in Nova's order (root, ephemeral, swap,
config drive on the last IDE slot as a cdrom), driver ``name="qemu"`` with
``cache="none"`` (``writeback`` for RBD when ``disk_cachemodes=network=writeback``),
``io="native"`` for preallocated LVs, and RBD as ``<disk type="network">`` with the
monitors as ``<host>`` and cephx ``<auth>``::

    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" cache="none"/>
      <source file="/var/lib/nova/instances/<uuid>/disk"/>
      <target dev="vda" bus="virtio"/>
    </disk>

The node file (``test:///DIR/node.xml``) is a ``<node>`` holding the same domains with
``type="test"``; the test driver takes a domain's power state from
``<test:runstate>`` (a virDomainState number: 1 running, 5 shut off).
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from storagectl.sandbox.model import SandboxDisk
from storagectl.sandbox.plan import NOVA_VERSION, PlannedInstance

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_SHUTOFF = 5
DEFAULT_MON_PORT = "6789"


@dataclass(frozen=True)
class RbdAccess:
    """What an RBD disk element needs: monitors and cephx identity."""

    hosts: tuple[tuple[str, str], ...]  # (host, port)
    user: str | None
    secret_uuid: str | None


def mon_hosts_from_conf(text: str) -> tuple[tuple[str, str], ...]:
    """Monitor (host, port) pairs from a ceph.conf's ``mon host``/``mon_host``.

    Nova asks ``ceph mon dump`` and uses each monitor's legacy (v1) address; a
    ceph.conf gives the same addresses in one of three spellings.

    >>> mon_hosts_from_conf("[global]\\nmon host = [v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0]")
    (('10.0.0.1', '6789'),)
    >>> mon_hosts_from_conf("[global]\\nmon_host = 10.0.0.1, 10.0.0.2:6790")
    (('10.0.0.1', '6789'), ('10.0.0.2', '6790'))
    """
    value = None
    for line in text.splitlines():
        key, sep, rest = line.partition("=")
        if sep and key.strip().replace("_", " ").lower() in ("mon host", "mon addr"):
            value = rest.split("#", 1)[0].split(";", 1)[0].strip()
            break
    if not value:
        return ()
    hosts: list[tuple[str, str]] = []
    for vector in re.findall(r"\[([^\]]*v[12]:[^\]]*)\]", value):
        addrs = [a.strip() for a in vector.split(",")]
        v1 = [a[3:] for a in addrs if a.startswith("v1:")]
        chosen = v1[0] if v1 else addrs[0].split(":", 1)[1]
        hosts.append(_split_addr(chosen))
    if not hosts:
        for item in re.split(r"[,\s]+", value):
            if item:
                hosts.append(_split_addr(item))
    return tuple(hosts)


def _split_addr(addr: str) -> tuple[str, str]:
    addr = addr.split("/", 1)[0]
    if addr.startswith("["):  # [ipv6]:port
        host, _, port = addr[1:].partition("]")
        return host, port.lstrip(":") or DEFAULT_MON_PORT
    if addr.count(":") == 1:
        host, port = addr.split(":")
        return host, port
    return addr, DEFAULT_MON_PORT


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    elem = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        elem.text = text
    return elem


def _nova_metadata(parent: ET.Element, inst: PlannedInstance, root_gb: int) -> None:
    # Prefixed tag names with an explicit xmlns attribute serialise exactly as Nova's
    # lxml output does, without registering a namespace in ElementTree's global map.
    meta = _sub(parent, "nova:instance", **{"xmlns:nova": NOVA_NS})
    _sub(meta, "nova:package", version=NOVA_VERSION)
    _sub(meta, "nova:name", inst.record.display_name)
    _sub(meta, "nova:creationTime", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(inst.created)))
    flavor = _sub(meta, "nova:flavor", name=inst.flavor.name)
    _sub(flavor, "nova:memory", str(inst.flavor.memory_mb))
    _sub(flavor, "nova:disk", str(root_gb))
    _sub(flavor, "nova:swap", str(inst.flavor.swap_mb))
    _sub(flavor, "nova:ephemeral", str(inst.flavor.ephemeral_gb))
    _sub(flavor, "nova:vcpus", str(inst.flavor.vcpus))
    owner = _sub(meta, "nova:owner")
    _sub(owner, "nova:user", inst.user[1], uuid=inst.user[0])
    _sub(owner, "nova:project", inst.project[1], uuid=inst.project[0])
    _sub(meta, "nova:root", type="image", uuid=inst.image.image_id)
    ports = _sub(meta, "nova:ports")
    port = _sub(ports, "nova:port", uuid=inst.port_uuid)
    _sub(port, "nova:ip", type="fixed", address=inst.ip, ipVersion="4")


def _disk_element(parent: ET.Element, disk: SandboxDisk, rbd: RbdAccess | None) -> None:
    if disk.backend == "rbd":
        if rbd is None:
            raise ValueError(f"RBD disk {disk.image} needs RbdAccess")
        elem = _sub(parent, "disk", type="network", device=disk.device)
        _sub(elem, "driver", name="qemu", type="raw", cache="writeback", discard="unmap")
        source = _sub(elem, "source", protocol="rbd", name=f"{disk.pool}/{disk.image}")
        for host, port in rbd.hosts:
            _sub(source, "host", name=host, port=port)
        if rbd.secret_uuid:
            auth = _sub(elem, "auth", username=rbd.user or "admin")
            _sub(auth, "secret", type="ceph", uuid=rbd.secret_uuid)
    elif disk.backend == "lvm":
        elem = _sub(parent, "disk", type="block", device=disk.device)
        # sparse_logical_volumes=False: Nova preallocates and asks for native AIO.
        _sub(elem, "driver", name="qemu", type="raw", cache="none", io="native")
        _sub(elem, "source", dev=disk.path or "")
    else:
        elem = _sub(parent, "disk", type="file", device=disk.device)
        _sub(elem, "driver", name="qemu", type=disk.format, cache="none")
        _sub(elem, "source", file=disk.path or "")
    _sub(elem, "target", dev=disk.target, bus=disk.bus)


def domain_xml(
    inst: PlannedInstance,
    *,
    domain_type: str,
    host_uuid: str,
    root_gb: int,
    rbd: RbdAccess | None = None,
    runstate: int | None = None,
    bridged: bool = True,
) -> ET.Element:
    """The ``<domain>`` element Nova would define for ``inst``.

    ``runstate`` adds the test driver's ``<test:runstate>`` (node files only);
    ``bridged=False`` plugs the port as a plain tap so a real libvirtd can start it.
    """
    attrs = {"type": domain_type}
    if runstate is not None:
        attrs["xmlns:test"] = TEST_NS
    dom = ET.Element("domain", attrs)
    rec = inst.record
    _sub(dom, "uuid", rec.uuid)
    _sub(dom, "name", rec.name)
    _sub(dom, "memory", str(inst.flavor.memory_mb * 1024))
    _sub(dom, "vcpu", str(inst.flavor.vcpus))
    _nova_metadata(_sub(dom, "metadata"), inst, root_gb)

    system = _sub(_sub(dom, "sysinfo", type="smbios"), "system")
    for name, value in (
        ("manufacturer", "OpenStack Foundation"),
        ("product", "OpenStack Nova"),
        ("version", NOVA_VERSION),
        ("serial", host_uuid),
        ("uuid", rec.uuid),
        ("family", "Virtual Machine"),
    ):
        _sub(system, "entry", value, name=name)

    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_, "boot", dev="hd")
    _sub(os_, "smbios", mode="sysinfo")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(_sub(dom, "cputune"), "shares", str(1024 * inst.flavor.vcpus))
    clock = _sub(dom, "clock", offset="utc")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="hpet", present="no")

    devices = _sub(dom, "devices")
    for disk in rec.disks:
        _disk_element(devices, disk, rbd)
    if bridged:
        # The hybrid OVS plug of that era: a tap on a per-port Linux bridge qbrXXX.
        iface = _sub(devices, "interface", type="bridge")
        _sub(iface, "mac", address=inst.mac)
        _sub(iface, "model", type="virtio")
        _sub(iface, "source", bridge="qbr" + inst.port_uuid[:11])
    else:
        # A real libvirtd refuses to start a domain whose bridge does not exist; a
        # plain tap ("ethernet", as Nova writes for tap-based vifs) needs none.
        iface = _sub(devices, "interface", type="ethernet")
        _sub(iface, "mac", address=inst.mac)
        _sub(iface, "model", type="virtio")
    _sub(iface, "target", dev="tap" + inst.port_uuid[:11])
    # Pre-virtlogd Nova logged the serial console straight to console.log.
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=f"{rec.instance_dir}/console.log")
    _sub(devices, "input", type="tablet", bus="usb")
    _sub(devices, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
    _sub(_sub(devices, "video"), "model", type="cirrus")
    _sub(_sub(devices, "memballoon", model="virtio"), "stats", period="10")
    if runstate is not None:
        _sub(dom, "test:runstate", str(runstate))
    return dom


def to_text(elem: ET.Element) -> str:
    ET.indent(elem, space="  ")
    return ET.tostring(elem, encoding="unicode") + "\n"


def node_xml(domains: Sequence[ET.Element], pool_path: str) -> str:
    """A test-driver node file holding ``domains`` and one ``default`` dir pool."""
    node = ET.Element("node")
    node.extend(domains)
    pool = _sub(node, "pool", type="dir")
    _sub(pool, "name", "default")
    _sub(_sub(pool, "target"), "path", pool_path)
    return to_text(node)
