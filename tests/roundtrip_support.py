"""Checks shared by the round-trip tests (tests/*/test_roundtrip*.py, issue #20).

After each leg of a round trip (A -> B -> A -> B) the instance must be where the
persistent domain XML says, in the format it says, the record must say the same, the
guest must see the reference bytes, and ``audit`` must have nothing to say about it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.migrate_support import Node, disk_element, guest_sha, rbd_sha

#: The backend a disk element of the persistent XML is on, from its type and format.
_KIND = {("file", "raw"): "flat", ("file", "qcow2"): "qcow2", ("block", "raw"): "lvm"}


def xml_backend(node: Node, uuid: str, target: str) -> tuple[str, str, str]:
    """(backend, format, location) of ``target`` as the persistent domain XML says."""
    el = disk_element(node, uuid, target)
    dtype = re.search(r"<disk [^>]*type='([^']+)'", el).group(1)
    fmt = re.search(r"<driver [^>]*type='([^']+)'", el).group(1)
    if dtype == "network":
        name = re.search(r"<source protocol='rbd' name='([^']+)'", el).group(1)
        return "rbd", fmt, f"rbd:{name}"
    attr = "dev" if dtype == "block" else "file"
    where = re.search(rf"<source {attr}='([^']+)'", el).group(1)
    return _KIND[(dtype, fmt)], fmt, where


def record_location(disk: dict) -> str:
    loc = disk["location"]
    if disk["backend"] == "rbd":
        return f"rbd:{loc['pool']}/{loc['image']}"
    if disk["backend"] == "lvm":
        return loc.get("path") or f"/dev/{loc['volume_group']}/{loc['volume']}"
    return loc["path"]


def seen(node: Node, uuid: str, target: str, scratch: Path) -> str:
    """sha256 of what ``target`` shows the guest, wherever the XML points it (a file in
    its format, an LV, an RBD image)."""
    kind, fmt, where = xml_backend(node, uuid, target)
    if kind == "rbd":
        return rbd_sha(node.cluster, where.split("/", 1)[1], scratch)
    return guest_sha(where, fmt, scratch)


def audit_findings(node: Node, uuid: str) -> list[dict]:
    """This instance's audit findings worse than info (``audit -o json``)."""
    res = node.run("audit", "-o", "json")
    data = json.loads(res.stdout)
    return [
        f
        for f in data["findings"]
        if f.get("instance") == uuid and f.get("severity") in ("warning", "critical")
    ]


def check_leg(
    node: Node, uuid: str, backend: str, references: dict[str, str], scratch: Path
) -> dict:
    """After a leg: the XML, the record and the guest's bytes agree, audit is clean.
    Returns the record."""
    rec = node.record(uuid)
    by_target = {d["target"]: d for d in rec["disks"]}
    for target, sha in references.items():
        kind, fmt, where = xml_backend(node, uuid, target)
        disk = by_target[target]
        assert (kind, fmt, where) == (disk["backend"], disk["format"], record_location(disk))
        assert seen(node, uuid, target, scratch) == sha, (target, kind)
    assert by_target["vda"]["backend"] == backend
    assert audit_findings(node, uuid) == []
    live = {record_location(d) for d in rec["disks"]}
    for item in rec["retained_sources"]:
        where = f"rbd:{item['pool']}/{item['image']}" if item["backend"] == "rbd" else item["path"]
        assert where not in live, ("a retained item names a live disk", item)
    return rec
