"""migrate to rbd: which libvirt secret (and user) a new rbd disk's ``<auth>`` names.

Precedence: ``--secret-uuid``, then an rbd disk the domain already has, then nova.conf
``[libvirt] rbd_secret_uuid`` (with ``rbd_user``); the plan carries nova.conf's value into
the journal so that a resume switches with the secret the migration started with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storagectl.backends import Storage, rbd
from storagectl.host.config import load_nova_config
from storagectl.host.process import Runner
from storagectl.migrate import switch
from storagectl.migrate.plan import DiskMove, Options, Plan, make_plan
from storagectl.model.layout import Backend, DiskLayout, Role
from storagectl.model.location import Location, location
from storagectl.record.record import Record

FIXTURES = Path(__file__).parent.parent / "fixtures" / "libvirt"
UUID = "0f6a3c1e-2b1d-4c59-9a43-5d8e7b2f1a00"
INST = f"/var/lib/nova/instances/{UUID}"
OPTION = "11111111-2222-4333-8444-555555555555"
DOMAIN = "5b0f6c1e-1111-4c2d-8e3f-4a5b6c7d8e9f"
CONF = "c0c0c0c0-9999-4888-8777-666666666666"
HOSTS = [("127.0.0.1", "6789")]


def nova_conf(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "nova.conf"
    path.write_text(
        f"[DEFAULT]\ninstances_path = {tmp_path}/instances\n[libvirt]\n"
        f"images_rbd_pool = vms\nrbd_user = nova\n{extra}"
    )
    return path


def dest(image: str = f"{UUID}_disk") -> Location:
    return location("rbd", "raw", pool="vms", image=image, user="nova", ceph_conf="/c.conf")


def rbd_plan(*, option: str | None = None, conf: str | None = None) -> Plan:
    source = location("qcow2", "qcow2", path=f"{INST}/disk")
    move = DiskMove("disk", "root", "vda", 1 << 30, source, dest())
    return Plan(
        UUID,
        "instance-0000002a",
        "qemu:///system",
        INST,
        Options(to="rbd", secret_uuid=option),
        [move],
        nova_secret_uuid=conf,
    )


def plain_xml() -> str:
    """Captured from libvirtd: one qcow2 file disk (vda), no rbd disk."""
    return (FIXTURES / "domain-qcow2-on-raw.inactive.xml").read_text()


def xml_with_rbd_disk() -> str:
    """The same domain after vda went to rbd as user ``cinder`` with secret DOMAIN."""
    p = rbd_plan()
    return switch.domain_xml(
        plain_xml(),
        p,
        {"disk": dest(f"{UUID}_other")},
        Storage(Runner()),
        contexts={rbd.RBDBackend: ("cinder", DOMAIN, HOSTS)},
    )


def auth_of(xml: str) -> tuple[str | None, str | None]:
    user, secret, _hosts = rbd.rbd_auth(xml)
    return user, secret


def test_nova_conf_rbd_secret_uuid_and_user_are_read(tmp_path: Path) -> None:
    nova = load_nova_config([nova_conf(tmp_path, f"rbd_secret_uuid = {CONF}\n")])
    assert (nova.rbd_secret_uuid, nova.rbd_user) == (CONF, "nova")
    assert load_nova_config([nova_conf(tmp_path)]).rbd_secret_uuid is None
    empty = load_nova_config([nova_conf(tmp_path, "rbd_secret_uuid =\n")])
    assert empty.rbd_secret_uuid is None


@pytest.mark.parametrize(
    ("option", "xml", "conf", "want"),
    [
        # --secret-uuid wins over everything, with the user the copy ran as
        (OPTION, xml_with_rbd_disk, CONF, ("nova", OPTION)),
        # then an existing rbd disk's <auth>, user and secret together
        (None, xml_with_rbd_disk, CONF, ("cinder", DOMAIN)),
        # then nova.conf rbd_secret_uuid with rbd_user
        (None, plain_xml, CONF, ("nova", CONF)),
        # nothing anywhere: no <auth> (a cluster without cephx)
        (None, plain_xml, None, ("nova", None)),
    ],
)
def test_secret_precedence(option, xml, conf, want) -> None:  # noqa: ANN001
    p = rbd_plan(option=option, conf=conf)
    original = xml()
    assert rbd.rbd_credentials(original, p) == want
    # the rewritten vda carries exactly that <auth>
    user, secret = want
    new = switch.domain_xml(
        original,
        p,
        {"disk": p.moves[0].dest},
        Storage(Runner()),
        contexts={rbd.RBDBackend: (user, secret, HOSTS)},
    )
    el = new[slice(*switch.disk_span(new, "vda"))]
    assert f'name="vms/{UUID}_disk"' in el
    if secret is None:
        assert "<auth" not in el
    else:
        assert f'<auth username="{user}"><secret type="ceph" uuid="{secret}" /></auth>' in el


def test_resolution_without_explicit_access_uses_the_same_precedence() -> None:
    # the undo path calls domain_xml without rbd=...: same credentials, the domain's hosts
    p = rbd_plan(conf=CONF)
    new = switch.domain_xml(plain_xml(), p, {"disk": p.moves[0].dest}, Storage(Runner()))
    assert auth_of(new) == ("nova", CONF)


class _NoCeph(rbd.RBDBackend):
    """The RBD backend, its monitor lookup counted (it must not run when the domain has
    hosts)."""

    def __init__(self) -> None:
        super().__init__(Runner())
        self.asked = 0

    def mon_hosts(self, loc: Location) -> list[tuple[str, str | None]]:
        self.asked += 1
        return [("10.0.0.1", "3300")]


def test_rbd_access_borrows_hosts_or_asks_ceph() -> None:
    storage = _NoCeph()
    got = storage.domain_context(xml_with_rbd_disk(), rbd_plan(conf=CONF), resolve=True)
    assert got == ("cinder", DOMAIN, HOSTS) and storage.asked == 0
    got = storage.domain_context(plain_xml(), rbd_plan(conf=CONF), resolve=True)
    assert got == ("nova", CONF, [("10.0.0.1", "3300")]) and storage.asked == 1


def test_plan_journals_nova_conf_secret(tmp_path: Path) -> None:
    nova = load_nova_config([nova_conf(tmp_path, f"rbd_secret_uuid = {CONF}\n")])
    disk = DiskLayout(
        name="disk",
        role=Role.ROOT,
        target="vda",
        backend=Backend.QCOW2,
        format="qcow2",
        path=f"{nova.instances_path}/{UUID}/disk",
        virtual_size=1 << 30,
    )
    record = Record(
        UUID,
        "instance-0000002a",
        "cn1",
        "2026-11-24T00:00:00Z",
        "storagectl 0.1.0",
        "inferred",
        ("domain-xml",),
        (disk,),
    )
    p = make_plan(record, Options(to="rbd"), nova, uri="qemu:///system")
    assert p.nova_secret_uuid == CONF and p.moves[0].dest.user == "nova"
    again = Plan.from_dict(p.to_dict())
    assert again.nova_secret_uuid == CONF
    # a journal written before the field existed still loads
    old = p.to_dict()
    del old["nova_secret_uuid"]
    assert Plan.from_dict(old).nova_secret_uuid is None
