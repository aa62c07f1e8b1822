"""Issue #13 class 1: backing names judged as qemu's block layer parses them, and the
explicit ``json:`` name a vetted chain is handed to qemu-img as."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storagectl.inspector import chain, inspect_bytes
from storagectl.inspector.checks import Check
from tests.unit.test_security_fuzz import qcow2_naming


@pytest.mark.parametrize(
    "name",
    [
        'json:{"driver":"file","filename":"/etc/shadow"}',
        "nbd://127.0.0.1:10809/x",
        "nbd:unix:/tmp/sock",
        "nbd+unix:///x?socket=/tmp/s",
        "http://h/x",
        "https://h/x",
        "ftp://h/x",
        "ssh://u@h/etc/shadow",
        "iscsi://h/iqn/0",
        "rbd:pool/img",
        "gluster://h/v/x",
        "file:/etc/shadow",
        "host_device:/dev/sda",
        "vvfat:fat:/etc",
        "a:b",
        ":x",
        "",
        "a\x00b",
        "a\nb",
        "a\\x80b",
    ],
)
def test_names_qemu_would_not_open_as_a_cache_file(name: str) -> None:
    assert chain.not_a_path(name) is not None


@pytest.mark.parametrize(
    "name",
    ["/var/lib/nova/instances/_base/3f2a", "3f2a", "./a:b", "../_base/x", "_base/a:b"],
)
def test_plain_paths(name: str) -> None:
    # qemu's path_has_protocol: a ':' after the first '/' is part of a path.
    assert chain.not_a_path(name) is None


def test_json_name_lists_every_vetted_file_down_to_null(tmp_path: Path) -> None:
    cache = tmp_path / "_base"
    cache.mkdir()
    (cache / "leaf").write_bytes(b"\0" * 65536)
    (cache / "mid").write_bytes(qcow2_naming(b"leaf", b"raw"))
    disk = tmp_path / "disk"
    disk.write_bytes(qcow2_naming(str(cache / "mid").encode(), b"qcow2"))
    walked = chain.walk(str(disk), "qcow2", str(cache))
    assert walked.problems == []
    chain.vet(walked)
    opts = json.loads(chain.qemu_json(walked).removeprefix("json:"))
    assert opts == {
        "driver": "qcow2",
        "file": {"driver": "file", "filename": str(disk)},
        "backing": {
            "driver": "qcow2",
            "file": {"driver": "file", "filename": str(cache / "mid")},
            "backing": {
                "driver": "raw",
                "file": {"driver": "file", "filename": str(cache / "leaf")},
            },
        },
    }
    # A qcow2 with no backing file still gets "backing": null: qemu opens nothing else.
    alone = chain.walk(str(cache / "mid"), "qcow2", str(tmp_path / "elsewhere"))
    solo_header = bytearray(qcow2_naming(b"x", None))
    solo_header[8:20] = bytes(12)  # no backing file offset, no size
    (cache / "solo").write_bytes(bytes(solo_header))
    solo = chain.walk(str(cache / "solo"), "qcow2", str(cache))
    assert json.loads(chain.qemu_json(solo)[5:])["backing"] is None
    assert [p.check for p in alone.problems] == [Check.BACKING_OUTSIDE_CACHE]


def test_vet_refuses_what_qemu_must_not_open(tmp_path: Path) -> None:
    cache = tmp_path / "_base"
    cache.mkdir()
    disk = tmp_path / "disk"
    disk.write_bytes(qcow2_naming(b"nbd://h/x", b"raw"))
    with pytest.raises(chain.ChainRefused, match="nbd://h/x"):
        chain.vet(chain.walk(str(disk), "qcow2", str(cache)))


def test_trailer_only_match_is_not_a_second_format() -> None:
    footer = bytearray(512)
    footer[:8] = b"conectix"
    data = qcow2_naming(b"x", b"raw") + bytes(footer)
    report = inspect_bytes(data, "qcow2")
    assert "vhd" in report.detected
    assert Check.MULTIPLE_FORMATS not in {f.check for f in report.failures}
