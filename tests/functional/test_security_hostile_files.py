"""Issue #13 class 2: one hostile file is a finding about its instance, never a crash or
a hang of the run for every instance.

Each case plants one hostile file in one instance of a mini node that also holds a clean
instance and an attacked one (a raw disk whose first sector is a qcow2 header naming a
host file, made with the real qemu-img): inspect, persist --all and audit must still run
to the end, report the hostile file as a finding about its own instance, and audit must
still report the other instance's critical (exit 2), not fail (exit 3) or crash.
"""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

import pytest

from tests.functional.conftest import codes, qemu_img, write_json

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO that blocks a reader would hang the test: fail it after 60 s instead."""

    def expired(*_):
        raise TimeoutError("storagectl hung on a hostile file")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def clean_instance(node) -> str:
    u = node.new_uuid()
    d = node.dir(u)
    qemu_img("create", "-q", "-f", "raw", str(d / "disk"), str(4 * MiB))
    write_json(d / "disk.info", {str(d / "disk"): "raw"})
    node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    return u


def attacked_instance(node) -> str:
    u = node.new_uuid()
    d = node.dir(u)
    header = d / "hdr.qcow2"
    qemu_img(
        "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(header), "1G"
    )
    disk = bytearray(4 * MiB)
    head = header.read_bytes()[:65536]
    disk[: len(head)] = head
    header.unlink()
    (d / "disk").write_bytes(bytes(disk))
    node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    return u


def record_with_huge_size(d: Path, u: str) -> None:
    (d / "storage.yaml").write_text(
        "schema_version: 1\n"
        f"instance: {{uuid: {u}, name: x, host: vm}}\n"
        "written: {at: '2026-11-24T00:12:11Z', by: storagectl 0.1.0}\n"
        "obtained: {how: inferred, evidence: [domain-xml]}\n"
        "disks:\n"
        "- {name: disk, role: root, target: vda, backend: flat, format: raw, device: disk,\n"
        f"   location: {{path: {d / 'disk'}}}, virtual_size: {'9' * 5000}}}\n"
        "retained_sources: []\n"
    )


def disk_info_brackets(d: Path, u: str) -> None:
    (d / "disk.info").write_text("[" * 200_000 + "]" * 200_000)


def disk_info_fifo(d: Path, u: str) -> None:
    os.mkfifo(d / "disk.info")


def disk_info_huge_number(d: Path, u: str) -> None:
    (d / "disk.info").write_text('{"a": ' + "7" * 6000 + "}")


def disk_info_symlink(d: Path, u: str) -> None:
    (d / "disk.info").symlink_to("/etc/passwd")


def record_fifo(d: Path, u: str) -> None:
    os.mkfifo(d / "storage.yaml")


def nul_backing_name(d: Path, u: str) -> None:
    disk = d / "disk"
    disk.unlink()
    qemu_img(
        "create", "-q", "-f", "qcow2", "-u", "-b", "x" * 32, "-F", "raw", str(disk), str(4 * MiB)
    )
    data = disk.read_bytes()[:4096]
    offset, _ = struct.unpack_from(">QI", data, 8)
    with open(disk, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"../_base/a\x00/etc/shadow" + b"x" * 9)


CASES = {
    "record-5000-digit-size": (record_with_huge_size, "metadata-invalid"),
    "record-fifo": (record_fifo, "metadata-invalid"),
    "disk.info-200000-brackets": (disk_info_brackets, "disk-info-invalid"),
    "disk.info-fifo": (disk_info_fifo, "disk-info-invalid"),
    "disk.info-6000-digit-number": (disk_info_huge_number, "disk-info-invalid"),
    "disk.info-symlink": (disk_info_symlink, "disk-info-invalid"),
    "nul-in-backing-name": (nul_backing_name, "backing-file-outside-cache"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_hostile_file_is_a_finding_about_its_instance(mini_node, case):
    plant, code = CASES[case]
    mini_node.flat_host()
    good = clean_instance(mini_node)
    bad_guest = attacked_instance(mini_node)
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    fmt = "qcow2" if case == "nul-in-backing-name" else "raw"
    qemu_img("create", "-q", "-f", "raw", str(d / "disk"), str(4 * MiB))
    mini_node.add(u, [{"fmt": fmt, "src": d / "disk"}])
    plant(d, u)

    data = mini_node.inspect()
    by_uuid = {i["uuid"]: i for i in data["instances"]}
    assert code in codes(by_uuid[u]), by_uuid[u]["findings"]
    assert codes(by_uuid[good]) == set()
    assert "raw-disk-has-image-header" in codes(by_uuid[bad_guest])
    for finding in by_uuid[u]["findings"]:
        assert "\n" not in finding["message"] and len(finding["message"]) < 600

    status, out, err = mini_node.run("persist", "--all", "-o", "json")
    assert status == 1, err  # the attacked instances are refused, the clean one written
    assert (mini_node.instances / good / "storage.yaml").is_file()
    assert "Traceback" not in err

    status, out, err = mini_node.run("audit")
    assert status == 2, err  # every instance's criticals, not "could not audit"
    assert "raw-disk-has-image-header" in out and "Traceback" not in err


def test_a_reader_failing_unexpectedly_is_inspection_failed_for_that_instance(
    mini_node, monkeypatch
):
    """The net under every reader: content no check anticipated still becomes a critical
    finding about its instance (here a reader made to hit the recursion limit)."""
    from storagectl.inspect import inspection

    mini_node.flat_host()
    good = clean_instance(mini_node)
    victim = clean_instance(mini_node)
    real_infer = inspection.infer_instance

    def infer(dom, *args, **kwargs):
        if dom.info.uuid == victim:
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        return real_infer(dom, *args, **kwargs)

    monkeypatch.setattr(inspection, "infer_instance", infer)
    by_uuid = {i["uuid"]: i for i in mini_node.inspect()["instances"]}
    assert codes(by_uuid[good]) == set()
    (failed,) = by_uuid[victim]["findings"]
    assert (failed["code"], failed["severity"]) == ("inspection-failed", "critical")
    assert "RecursionError" in failed["message"] and "\n" not in failed["message"]
    status, out, err = mini_node.run("audit")
    assert status == 2 and "inspection-failed" in out and "Traceback" not in err
    status, out, _ = mini_node.run("persist", "--all", "-o", "json")
    assert status == 1
    assert (mini_node.instances / good / "storage.yaml").is_file()
    assert not (mini_node.instances / victim / "storage.yaml").exists()
