"""migrate: the domain XML rewrite, the record and disk.info after the switch, copy and
verify command lines, progress parsing - against real libvirt XML and captured output."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from oslo_concurrency import processutils

from storagectl import errors
from storagectl.backends import Storage, rbd
from storagectl.backends.rbd import parse_mon_hosts, rbd_auth
from storagectl.host import fsutil
from storagectl.host.process import Runner
from storagectl.migrate import switch
from storagectl.migrate.copy import convert_argv, copy_all, parse_percent
from storagectl.migrate.plan import DiskMove, Options, Plan
from storagectl.migrate.verify import VerifyFailed, compare_argv, verify_disk
from storagectl.model.layout import Backend, Backing, DiskLayout, Role
from storagectl.model.location import Location, location
from storagectl.record.record import Record, parse_record

FIXTURES = Path(__file__).parent.parent / "fixtures" / "libvirt"
UUID = "0f6a3c1e-2b1d-4c59-9a43-5d8e7b2f1a00"
INST = f"/var/lib/nova/instances/{UUID}"
# Captured from `ceph mon dump --format json` on the test cluster (ceph 16.2).
MON_DUMP = json.loads(
    '{"epoch":1,"fsid":"61df9e76-aabc-4d38-bc47-29610932f18b","mons":[{"rank":0,"name":"a",'
    '"public_addrs":{"addrvec":[{"type":"v2","addr":"127.0.0.1:36349","nonce":0}]},'
    '"addr":"127.0.0.1:36349/0","public_addr":"127.0.0.1:36349/0"}],"quorum":[0]}'
)
# Captured from `qemu-img convert -p` (qemu-img 7.2): progress ends lines with \r.
CONVERT_STDOUT = "    (0.00/100%)\r    (25.00/100%)\r    (50.01/100%)\r    (100.00/100%)\r\n"


def xml() -> str:
    return (FIXTURES / "domain-qcow2-on-raw.inactive.xml").read_text()


def move(dest: Location, *, temp: bool = False, source: Location | None = None) -> DiskMove:
    src = source or location("qcow2", "qcow2", path=f"{INST}/disk")
    return DiskMove(
        "disk",
        "root",
        "vda",
        1 << 30,
        src,
        dest,
        temp_path=f"{INST}/disk.migrating" if temp else None,
        retained_path=f"{INST}/disk.retained-qcow2" if temp else None,
    )


def plan(*moves: DiskMove, **options) -> Plan:
    return Plan(
        UUID,
        "instance-0000002a",
        "qemu:///system",
        INST,
        Options(to=moves[0].dest.backend, **options),
        list(moves),
    )


def test_only_the_disk_element_changes_byte_for_byte() -> None:
    original = xml()
    p = plan(move(location("flat", "raw", path=f"{INST}/disk"), temp=True))
    storage = Storage(Runner())
    new = switch.domain_xml(original, p, {"disk": p.moves[0].dest}, storage)
    start, end = switch.disk_span(original, "vda")
    nstart, nend = switch.disk_span(new, "vda")
    assert (new[:nstart], new[nend:]) == (original[:start], original[end:])
    assert "<nova:instance>" in new[:nstart]
    element = new[nstart:nend]
    assert 'type="raw"' in element and f'file="{INST}/disk"' in element
    assert '<address type="pci"' in element and '<target dev="vda"' in element
    # staged on the temporary copy
    staged = switch.domain_xml(original, p, {"disk": p.moves[0].copy_dest}, storage)
    assert f'file="{INST}/disk.migrating"' in staged


def test_rbd_and_block_disk_elements() -> None:
    original = xml()
    dest = location(
        "rbd", "raw", pool="vms", image=f"{UUID}_disk", user="nova", ceph_conf="/etc/ceph/ceph.conf"
    )
    p = plan(move(dest), secret_uuid="5b0f6c1e-1111-4c2d-8e3f-4a5b6c7d8e9f")
    hosts = parse_mon_hosts(MON_DUMP)
    assert hosts == [("127.0.0.1", "36349")]
    new = switch.domain_xml(
        original,
        p,
        {"disk": dest},
        Storage(Runner()),
        contexts={rbd.RBDBackend: (None, p.options.secret_uuid, hosts)},
    )
    el = new[slice(*switch.disk_span(new, "vda"))]
    assert el.startswith('<disk type="network"')
    assert f'<source protocol="rbd" name="vms/{UUID}_disk">' in el
    assert '<host name="127.0.0.1" port="36349" />' in el
    assert '<auth username="nova"><secret type="ceph" uuid="5b0f6c1e' in el
    user, secret, got_hosts = rbd_auth(new)
    assert (user, secret, got_hosts) == ("nova", p.options.secret_uuid, hosts)
    lv = location(
        "lvm", "raw", path=f"/dev/vg/{UUID}_disk", volume_group="vg", volume=f"{UUID}_disk"
    )
    back = switch.domain_xml(new, plan(move(lv)), {"disk": lv}, Storage(Runner()))
    el = back[slice(*switch.disk_span(back, "vda"))]
    assert el.startswith('<disk type="block"') and f'dev="/dev/vg/{UUID}_disk"' in el
    assert "<auth" not in el and "<host" not in el
    with pytest.raises(switch.SwitchError, match="no <disk> with target vdz"):
        switch.disk_span(original, "vdz")


def test_record_after_the_switch_keeps_the_source_as_retained() -> None:
    disk = DiskLayout(
        "disk",
        Role.ROOT,
        "vda",
        Backend.QCOW2,
        "qcow2",
        path=f"{INST}/disk",
        virtual_size=1 << 30,
        backing=Backing("/b/base", "raw"),
    )
    original = Record(
        UUID,
        "i",
        "cn1",
        "2026-11-24T00:00:00Z",
        "storagectl 0.1.0",
        "inferred",
        ("domain-xml",),
        (disk,),
    )
    m = move(location("flat", "raw", path=f"{INST}/disk"), temp=True)
    new = switch.migrated_record(original, plan(m), now="2026-11-24T01:00:00Z")
    parse_record(new.to_yaml(), path="s", expect_uuid=UUID)  # valid by the schema
    d = new.disks[0]
    assert (d.backend, d.format, d.path, d.backing, d.virtual_size) == (
        Backend.FLAT,
        "raw",
        f"{INST}/disk",
        None,
        1 << 30,
    )
    assert new.obtained_how == "migrated" and new.written_at == "2026-11-24T01:00:00Z"
    assert new.retained_sources == (
        {
            "disk": "disk",
            "backend": "qcow2",
            "format": "qcow2",
            "path": f"{INST}/disk.retained-qcow2",
            "retained_at": "2026-11-24T01:00:00Z",
            "migrated_to": "flat",
        },
    )
    dropped = switch.migrated_record(original, plan(m), now="t", keep_sources=False)
    assert dropped.retained_sources == ()


def test_disk_info_follows_the_disks() -> None:
    info = json.dumps({f"{INST}/disk": "qcow2", f"{INST}/disk.local": "raw"})
    flat = move(location("flat", "raw", path=f"{INST}/disk"), temp=True)
    assert json.loads(switch.disk_info_after(info, [flat])) == {
        f"{INST}/disk": "raw",
        f"{INST}/disk.local": "raw",
    }
    rbd = move(location("rbd", "raw", pool="vms", image=f"{UUID}_disk"))
    assert json.loads(switch.disk_info_after(info, [rbd])) == {
        f"rbd:vms/{UUID}_disk": "raw",
        f"{INST}/disk.local": "raw",
    }
    assert switch.disk_info_after(None, [rbd]) is None
    # none yet, a disk moves into the instance directory: made, as Nova's Flat would
    # otherwise probe the format of that file
    assert json.loads(switch.disk_info_after(None, [flat])) == {f"{INST}/disk": "raw"}
    assert switch.disk_info_after("not json", [rbd]) is None


def test_convert_and_compare_command_lines() -> None:
    storage = Storage(Runner(), ceph_timeout=7)
    flat = move(location("flat", "raw", path=f"{INST}/disk"), temp=True)
    assert convert_argv(flat, storage, bwlimit=50) == [
        "qemu-img",
        "convert",
        "-p",
        "-t",
        "none",
        "-f",
        "qcow2",
        "-O",
        "raw",
        "-n",
        "--target-is-zero",
        "-r",
        "50M",
        f"{INST}/disk",
        f"{INST}/disk.migrating",
    ]
    assert compare_argv(flat, storage) == [
        "qemu-img",
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        f"{INST}/disk",
        f"{INST}/disk.migrating",
    ]
    rbd = move(
        location(
            "rbd",
            "raw",
            pool="vms",
            image=f"{UUID}_disk",
            user="nova",
            ceph_conf="/etc/ceph/ceph.conf",
        )
    )
    argv = convert_argv(rbd, storage, bwlimit=None)
    assert argv[-1] == (
        f"rbd:vms/{UUID}_disk:id=nova:conf=/etc/ceph/ceph.conf:"
        "client_mount_timeout=7:rados_mon_op_timeout=7:rados_osd_op_timeout=7"
    )
    lv = move(
        location(
            "lvm", "raw", path=f"/dev/vg/{UUID}_disk", volume_group="vg", volume=f"{UUID}_disk"
        )
    )
    storage = Storage(Runner(CapturedLvs()), ceph_timeout=7)
    argv = convert_argv(lv, storage, bwlimit=None)
    assert "--target-is-zero" not in argv and argv[-1] == f"/dev/vg/{UUID}_disk"
    # A file source is named as copy_source vets it (here: no such file, so its plain
    # name); the LV as a json: raw node cut to the disk's size (never --image-opts, which
    # would let qemu-img follow the qcow2 header's own backing name).
    assert compare_argv(lv, storage) == [
        "qemu-img",
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        f"{INST}/disk",
        "json:"
        + json.dumps(
            {
                "driver": "raw",
                "size": 1 << 30,
                "file": {"driver": "host_device", "filename": f"/dev/vg/{UUID}_disk"},
            },
            separators=(",", ":"),
        ),
    ]


CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "lvm" / "guest.json"
CAPTURED_UUID = "9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f"


class CapturedLvs:
    """Answers ``lvs ... -S lv_name="NAME" VG`` with what real lvm2 printed in the guest
    (tests/fixtures/lvm/guest.json) for a thick LV (``NAME``) and a thin one
    (``NAME.local``, in a zeroing pool); any VG or LV else: an empty report."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.answers: dict[str, str] = {}
        for rec in json.loads(CAPTURED.read_text()):
            if rec["argv"][0] == "lvs" and "-S" in rec["argv"]:
                name = rec["argv"][rec["argv"].index("-S") + 1].split('"')[1]
                self.answers[name] = rec["stdout"]

    def __call__(self, *argv: str, **kw):  # noqa: ANN003, ANN204
        self.calls.append(argv)
        assert argv[0] == "lvs", argv
        name = argv[argv.index("-S") + 1].split('"')[1]
        empty = '{"report": [{"lv": []}]}'
        return (self.answers.get(name, empty) if argv[-1] == "stctl_capture" else empty), ""


def test_only_thin_zeroing_lv_targets_skip_zeros() -> None:
    """--target-is-zero into an LV only when lvm2 says it is thin and its pool zeroes:
    a thick LV holds old data, so every zero must be written."""
    fake = CapturedLvs()
    storage = Storage(Runner(fake))
    assert {"9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f_disk"} <= set(fake.answers)

    def lv(volume: str) -> DiskMove:
        path = f"/dev/stctl_capture/{volume}"
        return move(location("lvm", "raw", path=path, volume_group="stctl_capture", volume=volume))

    thick = lv(f"{CAPTURED_UUID}_disk")  # lv_attr -wi-a-----
    thin = lv(f"{CAPTURED_UUID}_disk.local")  # lv_attr Vwi-a-tz--
    gone = lv(f"{CAPTURED_UUID}_disk.nothere")
    assert "--target-is-zero" not in convert_argv(thick, storage, bwlimit=None)
    assert "--target-is-zero" in convert_argv(thin, storage, bwlimit=None)
    assert "--target-is-zero" not in convert_argv(gone, storage, bwlimit=None)
    assert [c[0] for c in fake.calls] == ["lvs", "lvs", "lvs"]


class FakeQemuImg:
    """A processutils-shaped executor answering convert and compare with captured output."""

    def __init__(self, compare_exit: int = 0, fail_on: str | None = None) -> None:
        self.compare_exit, self.fail_on = compare_exit, fail_on
        self.calls: list[tuple[str, ...]] = []
        self.lock = threading.Lock()

    def __call__(self, *argv: str, **kw):  # noqa: ANN003, ANN204
        with self.lock:
            self.calls.append(argv)
        if self.fail_on and self.fail_on in argv[-1]:
            raise processutils.ProcessExecutionError(
                stdout="",
                stderr="qemu-img: error while writing at byte 3145728: No space left on device",
                exit_code=1,
                cmd=argv[0],
            )
        if argv[1] == "compare":
            code = self.compare_exit
            kw["on_completion"](SimpleNamespace(returncode=code))
            return (
                ("Images are identical.\n", "")
                if code == 0
                else ("Content mismatch at offset 8388608!\n", "")
            )
        kw["on_completion"](SimpleNamespace(returncode=0))
        return CONVERT_STDOUT, ""


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, disk: str, total: int) -> None:
        self.events.append(("start", disk, total))

    def update(self, disk: str, percent: float) -> None:
        self.events.append(("update", disk, percent))

    def finish(self, disk: str, ok: bool) -> None:
        self.events.append(("finish", disk, ok))


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The fsutil durability calls (the fake qemu-img writes no real target)."""
    calls: list[tuple[str, str]] = []
    for name in ("fsync_path", "fsync_dir", "drop_cache"):
        monkeypatch.setattr(fsutil, name, lambda p, _n=name: calls.append((_n, str(p))))
    return calls


def test_copy_reports_progress_and_verify_refuses_a_mismatch(
    synced: list[tuple[str, str]],
) -> None:
    assert parse_percent("    (42.51/100%)") == 42.51 and parse_percent("junk") is None
    fake = FakeQemuImg()
    runner = Runner(fake)
    storage = Storage(runner)
    flat = move(location("flat", "raw", path=f"{INST}/disk"), temp=True)
    progress = Recorded()
    copy_all([flat], storage, runner, progress, parallel=1, bwlimit=None)
    assert progress.events == [
        ("start", "disk", 1 << 30),
        ("update", "disk", 0.0),
        ("update", "disk", 25.0),
        ("update", "disk", 50.01),
        ("update", "disk", 100.0),
        ("finish", "disk", True),
    ]
    target = f"{INST}/disk.migrating"
    assert synced == [("fsync_path", target), ("fsync_dir", INST)]
    verify_disk(flat, storage, runner)
    assert synced[2:] == [("fsync_path", target), ("drop_cache", target)]
    with pytest.raises(VerifyFailed, match="Content mismatch at offset 8388608"):
        verify_disk(flat, storage, Runner(FakeQemuImg(compare_exit=1)))


def test_parallel_copy_runs_every_disk_and_raises_the_failure(
    synced: list[tuple[str, str]],
) -> None:
    moves = []
    for name in ("disk", "disk.local", "disk.swap"):
        m = move(location("flat", "raw", path=f"{INST}/{name}"), temp=True)
        m.name, m.temp_path = name, f"{INST}/{name}.migrating"
        moves.append(m)
    fake = FakeQemuImg(fail_on="disk.local.migrating")
    runner = Runner(fake)
    progress = Recorded()
    with pytest.raises(errors.CommandFailed, match="No space left on device"):
        copy_all(moves, Storage(runner), runner, progress, parallel=3, bwlimit=None)
    assert len(fake.calls) == 3  # the others were not abandoned mid-way
    finished = {e[1]: e[2] for e in progress.events if e[0] == "finish"}
    assert finished == {"disk": True, "disk.local": False, "disk.swap": True}


def test_lvm_and_rbd_to_each_other_command_lines() -> None:
    """lvm <-> rbd command lines (run end to end in tests/lvm_guest/test_migrate_lvm_rbd.py):
    raw both ways, zeros skipped only into the RBD image, the LV compared through
    host_device with the guest-visible size (its extents may round it up), the RBD image
    through its filename, which carries the librados timeouts."""
    storage = Storage(Runner(CapturedLvs()), ceph_timeout=7)
    volume = f"{CAPTURED_UUID}_disk"  # a thick LV, as lvm2 reported it in the guest
    lv = location(
        "lvm", "raw", path=f"/dev/stctl_capture/{volume}", volume_group="stctl_capture",
        volume=volume,
    )  # fmt: skip
    rbd = location(
        "rbd", "raw", pool="vms", image=f"{UUID}_disk", user="nova", ceph_conf="/etc/ceph/c.conf"
    )
    rbd_file = (
        f"rbd:vms/{UUID}_disk:id=nova:conf=/etc/ceph/c.conf:"
        "client_mount_timeout=7:rados_mon_op_timeout=7:rados_osd_op_timeout=7"
    )
    lv_opts = f"driver=raw,size={1 << 30},file.driver=host_device,file.filename={lv.path}"
    rbd_opts = f"driver=raw,file.driver=rbd,file.filename={rbd_file}"
    head = ["qemu-img", "convert", "-p", "-t", "none", "-f", "raw", "-O", "raw", "-n"]
    to_rbd = move(rbd, source=lv)
    assert convert_argv(to_rbd, storage, bwlimit=None) == [
        *head, "--target-is-zero", lv.path, rbd_file,
    ]  # fmt: skip
    assert compare_argv(to_rbd, storage) == [
        "qemu-img",
        "compare",
        "--image-opts",
        lv_opts,
        rbd_opts,
    ]
    to_lv = move(lv, source=rbd)
    assert convert_argv(to_lv, storage, bwlimit=None) == [*head, rbd_file, lv.path]
    assert compare_argv(to_lv, storage) == [
        "qemu-img",
        "compare",
        "--image-opts",
        rbd_opts,
        lv_opts,
    ]
