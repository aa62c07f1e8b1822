from __future__ import annotations

import pytest

from storagectl.host.domain import DomainXMLError, parse_domain_xml

U = "0c5d6c1e-0b0c-4c1b-8d2e-5b1f1b2f3a4b"
XML = f"""<domain type="kvm">
  <uuid>{U.upper()}</uuid>
  <name>instance-0000002a</name>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>web-1</nova:name>
    </nova:instance>
  </metadata>
  <os><type>hvm</type><kernel>/var/lib/nova/instances/{U}/kernel</kernel></os>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" cache="none"/>
      <source file="/var/lib/nova/instances/{U}/disk"/>
      <backingStore type="file"><format type="raw"/><source file="/b"/></backingStore>
      <target dev="vda" bus="virtio"/>
    </disk>
    <disk type="block" device="disk">
      <driver name="qemu" type="raw" cache="none" io="native"/>
      <source dev="/dev/nova-vg/{U}_disk.local"/>
      <target dev="vdb" bus="virtio"/>
    </disk>
    <disk type="network" device="disk">
      <driver type="raw" cache="writeback" discard="unmap"/>
      <auth username="nova"><secret type="ceph" uuid="5b7e1a3c-0000-4000-8000-000000000001"/></auth>
      <source protocol="rbd" name="vms/{U}_disk.swap">
        <host name="10.0.0.1" port="6789"/><host name="10.0.0.2" port="6789"/>
      </source>
      <target dev="vdc" bus="virtio"/>
    </disk>
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw"/>
      <target dev="hda" bus="ide"/>
    </disk>
  </devices>
</domain>"""


def test_parse_nova_domain():
    info = parse_domain_xml(XML)
    assert info.uuid == U and info.name == "instance-0000002a" and info.nova_name == "web-1"
    assert info.domain_type == "kvm"
    assert info.kernel == f"/var/lib/nova/instances/{U}/kernel" and info.initrd is None
    f, b, n, c = info.disks
    assert (f.type, f.driver_type, f.source, f.target, f.bus) == (
        "file",
        "qcow2",
        f"/var/lib/nova/instances/{U}/disk",
        "vda",
        "virtio",
    )
    assert f.backing_format == "raw"
    assert (b.type, b.source, b.driver_type) == ("block", f"/dev/nova-vg/{U}_disk.local", "raw")
    assert (n.type, n.protocol, n.source) == ("network", "rbd", f"vms/{U}_disk.swap")
    assert n.auth_username == "nova" and n.secret_uuid.endswith("0001")
    assert n.hosts == (("10.0.0.1", "6789"), ("10.0.0.2", "6789"))
    assert (c.device, c.source) == ("cdrom", None)


@pytest.mark.parametrize(
    "xml, reason",
    [
        ("<domain><name>x</name>", "no element found"),
        ("<node/>", "not <domain>"),
        ("<domain><name>x</name></domain>", "missing <uuid>"),
    ],
)
def test_broken_xml_names_the_domain(xml, reason):
    with pytest.raises(DomainXMLError) as exc:
        parse_domain_xml(xml, where="domain x on cn1")
    assert "domain x on cn1" in str(exc.value) and reason in str(exc.value)
