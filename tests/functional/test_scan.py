"""Scanning hosts, against the libvirt test driver: states come from ONE bulk call (with
a per-domain fallback), a fetch thread feeds the parser and stops when the consumer
fails, several hosts keep their order, and the run-wide real-path cache resolves
exactly like os.path.realpath.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import libvirt
import pytest

from storagectl.host.hosts import scan_hosts
from storagectl.host.process import Runner
from storagectl.inspect.storage import StorageView

from .conftest import MiniNode, qemu_img

MiB = 1024 * 1024

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


def _with_runstate(node: MiniNode, index: int, state: int) -> None:
    """Give domain ``index`` of the node file a run state (the test driver's extension)."""
    xml = node.domains[index]
    xml = xml.replace("<domain type='test'>", f"<domain type='test' xmlns:test='{TEST_NS}'>", 1)
    node.domains[index] = xml.replace(
        "</devices>", f"</devices><test:runstate>{state}</test:runstate>", 1
    )


def _node_with(node: MiniNode, count: int) -> list[str]:
    uuids = []
    for _ in range(count):
        u = node.new_uuid()
        d = node.dir(u)
        qemu_img("create", "-f", "raw", str(d / "disk"), str(MiB))
        node.add(u, [{"fmt": "raw", "src": d / "disk"}])
        uuids.append(u)
    return uuids


def test_states_come_from_one_bulk_call(mini_node: MiniNode, monkeypatch) -> None:
    uuids = _node_with(mini_node, 3)
    _with_runstate(mini_node, 1, libvirt.VIR_DOMAIN_SHUTOFF)
    _with_runstate(mini_node, 2, libvirt.VIR_DOMAIN_PAUSED)
    calls = {"state": 0, "bulk": 0}
    real_bulk = libvirt.virConnect.getAllDomainStats

    def per_domain(self, flags=0):  # noqa: ANN001, ANN202
        calls["state"] += 1
        raise AssertionError("virDomainGetState called per domain")

    def bulk(self, *args, **kw):  # noqa: ANN001, ANN202
        calls["bulk"] += 1
        return real_bulk(self, *args, **kw)

    monkeypatch.setattr(libvirt.virDomain, "state", per_domain)
    monkeypatch.setattr(libvirt.virConnect, "getAllDomainStats", bulk)
    [scan] = scan_hosts([mini_node.uri])
    states = {d.info.uuid: d.state for d in scan.domains}
    assert states == {uuids[0]: "running", uuids[1]: "shutoff", uuids[2]: "paused"}
    assert calls == {"state": 0, "bulk": 1}


def test_without_bulk_stats_each_domain_is_asked(mini_node: MiniNode, monkeypatch) -> None:
    uuids = _node_with(mini_node, 2)
    _with_runstate(mini_node, 0, libvirt.VIR_DOMAIN_SHUTOFF)

    def unsupported(self, *args, **kw):  # noqa: ANN001, ANN202
        raise libvirt.libvirtError("this function is not supported by the connection driver")

    monkeypatch.setattr(libvirt.virConnect, "getAllDomainStats", unsupported)
    [scan] = scan_hosts([mini_node.uri])
    assert {d.info.uuid: d.state for d in scan.domains} == {
        uuids[0]: "shutoff",
        uuids[1]: "running",
    }


def test_a_failing_consumer_stops_the_fetch_thread(mini_node: MiniNode) -> None:
    _node_with(mini_node, 5)
    seen: list[str] = []

    def explode(scan, dom) -> None:  # noqa: ANN001
        seen.append(dom.info.uuid)
        raise RuntimeError("consumer broke")

    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="consumer broke"):
        scan_hosts([mini_node.uri], on_domain=explode)
    assert len(seen) == 1
    leftover = [t for t in threading.enumerate() if t.ident not in before]
    assert leftover == [], f"fetch threads still alive: {leftover}"


def test_records_are_read_while_the_xml_is_fetched(mini_node: MiniNode) -> None:
    """on_domain sees every domain once, in the scanning thread, with its state."""
    uuids = _node_with(mini_node, 3)
    calls: list[tuple[str, str, str]] = []
    [scan] = scan_hosts(
        [mini_node.uri],
        on_domain=lambda scan, dom: calls.append(
            (threading.current_thread().name, dom.info.uuid, dom.state)
        ),
    )
    main = threading.current_thread().name
    assert sorted(calls) == sorted((main, u, "running") for u in uuids)
    assert [d.info.uuid for d in scan.domains] == [c[1] for c in calls]


def test_several_hosts_keep_their_order_and_an_unreachable_one_is_reported(
    mini_node: MiniNode,
) -> None:
    uuids = _node_with(mini_node, 4)
    bad = f"test://{mini_node.root}/missing-node.xml"
    scans = scan_hosts([bad, mini_node.uri, mini_node.uri])
    assert [s.report.uri for s in scans] == [bad, mini_node.uri, mini_node.uri]
    assert scans[0].report.error and not scans[0].domains
    for scan in scans[1:]:
        assert scan.report.error is None
        assert sorted(d.info.uuid for d in scan.domains) == sorted(uuids)


def test_resolve_matches_realpath(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "inst").mkdir(parents=True)
    (real / "inst" / "disk").write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret").write_bytes(b"")
    (tmp_path / "instances").symlink_to(real)  # a symlinked instances_path
    (real / "inst" / "link").symlink_to(tmp_path / "elsewhere" / "secret")
    (real / "inst" / "dangling").symlink_to(tmp_path / "nowhere")
    (real / "inst" / "dirlink").symlink_to(tmp_path / "elsewhere")
    view = StorageView(Runner())
    inst = tmp_path / "instances" / "inst"
    cases = [
        inst / "disk",
        inst / "link",
        inst / "dangling",
        inst / "missing",
        inst / "dirlink" / "secret",
        f"{inst}/../inst/disk",
        f"{inst}//disk",
        "relative/disk",
        "/",
        tmp_path / "instances",
        inst,
    ]
    for case in cases * 2:  # the second round answers from the directory cache
        path = str(case)
        got, st = view.resolve(path)
        assert got == os.path.realpath(path), path
        if os.path.lexists(path):
            assert st is not None and st.st_ino == os.lstat(path).st_ino, path
        else:
            assert st is None, path
