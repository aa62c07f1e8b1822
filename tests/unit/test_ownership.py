"""ownership: host names as records carry them, and which filesystems other hosts share."""

from __future__ import annotations

from pathlib import Path

import pytest

from storagectl.audit import ownership
from storagectl.audit.ownership import filesystem_type, host_names, is_one_of, parse_mountinfo

# Lines in the kernel's format (Documentation/filesystems/proc.rst, "3.5 /proc/<pid>/
# mountinfo"): optional fields (shared:N, master:N) before the "-" separator, none at all,
# and a mount point with an escaped space.
MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
25 22 0:21 / /var rw,relatime shared:5 - ext4 /dev/sda2 rw
36 25 0:40 / /var/lib/nova/instances rw,relatime shared:20 master:3 - nfs4 filer:/nova rw,vers=4.2
37 25 0:41 / /var/lib/with\\040space rw - cifs //filer/x rw
38 22 0:42 / /srv/gluster rw,nosuid shared:30 - fuse.glusterfs gl1:/vol rw,user_id=0
39 36 0:43 / /var/lib/nova/instances/_base rw,relatime - ext4 /dev/sdb1 rw
40 22 0:44 / /mnt/shared9p rw - 9p hostshare rw,trans=virtio
"""


def test_parse_mountinfo_reads_type_after_the_separator_and_unescapes() -> None:
    assert parse_mountinfo(MOUNTINFO) == [
        ("/", "ext4"),
        ("/var", "ext4"),
        ("/var/lib/nova/instances", "nfs4"),
        ("/var/lib/with space", "cifs"),
        ("/srv/gluster", "fuse.glusterfs"),
        ("/var/lib/nova/instances/_base", "ext4"),
        ("/mnt/shared9p", "9p"),
    ]


def test_parse_mountinfo_skips_lines_it_cannot_read() -> None:
    assert parse_mountinfo("garbage\n1 2 3 4 /x rw\n1 2 3 4 /y rw -\n\n") == []


@pytest.mark.parametrize(
    ("path", "fstype", "shared"),
    [
        ("/var/lib/nova/instances", "nfs4", True),
        ("/var/lib/nova/instances/u1", "nfs4", True),
        ("/var/lib/nova/instances/_base/x", "ext4", False),  # the longest mount point
        ("/var/lib/nova/instancesX", "ext4", False),  # a prefix, not a parent
        ("/var/lib/with space/i", "cifs", True),
        ("/srv/gluster/i", "fuse.glusterfs", True),
        ("/mnt/shared9p/i", "9p", False),  # one VM's share, not another host's
        ("/opt", "ext4", False),
    ],
)
def test_filesystem_type_and_shared(tmp_path: Path, path: str, fstype: str, shared: bool) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type(path, str(info)) == fstype
    assert ownership.is_shared_path(path, str(info)) is shared


def test_filesystem_type_of_a_path_over_a_symlink_is_its_targets(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    info = tmp_path / "mountinfo"
    info.write_text(f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n36 22 0:40 / {real} rw - nfs /x rw\n")
    assert filesystem_type(str(tmp_path / "link" / "u"), str(info)) == "nfs"


def test_unreadable_mountinfo_tells_nothing(tmp_path: Path) -> None:
    assert filesystem_type("/", str(tmp_path / "absent")) is None
    assert ownership.is_shared_path("/", str(tmp_path / "absent")) is False


def test_this_machines_root_has_a_type() -> None:
    assert filesystem_type("/") not in (None, "")


def test_host_names_match_fqdn_short_name_and_case() -> None:
    names = host_names(["cn7.example.org", None, ""], local=False)
    assert is_one_of("cn7", names) and is_one_of("CN7.Example.Org.", names)
    assert is_one_of("cn7.other.org", names)  # the short name decides
    assert not is_one_of("cn70", names) and not is_one_of("cn8.example.org", names)
    assert not is_one_of("", names)


def test_ip_addresses_are_compared_whole() -> None:
    names = host_names(["10.0.0.7"], local=False)
    assert is_one_of("10.0.0.7", names) and not is_one_of("10.1.1.1", names)
    assert "10" not in names


def test_a_local_scan_also_answers_to_this_machines_hostname(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ownership.socket, "gethostname", lambda: "node-a")
    assert is_one_of("node-a", host_names(["node-a.dc1.example"], local=False))
    assert is_one_of("node-a", host_names(["libvirt-says-other"], local=True))
    assert not is_one_of("node-a", host_names(["libvirt-says-other"], local=False))
