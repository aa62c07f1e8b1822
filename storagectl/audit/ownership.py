"""Which compute host owns a piece of instance storage that no scanned domain owns.

A per-host audit sees only its own domains, but a Ceph pool is normally shared by every
compute host and an instances_path may be too (NFS and friends). Two facts decide:

* the host named in an instance directory's record (``instance.host``, written by
  ``persist``), compared by name with the scanned hosts - the FQDN libvirt reports and
  the short name ``socket.gethostname()`` may give are the same host;
* whether instances_path is on a network filesystem: then a directory without a
  record may be any host's, so it is no evidence that the instance lived here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from storagectl.host.fsutil import filesystem_type, parse_mountinfo  # noqa: F401 - re-exported

#: Filesystem types (``/proc/self/mountinfo``) that other machines can mount as well.
#: 9p and virtiofs are left out: they share a directory with one virtual machine.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs",
        "ocfs2", "gfs2", "beegfs", "afs", "fuse.glusterfs", "fuse.ceph-fuse",
        "fuse.cephfs", "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.juicefs",
        "fuse.moosefs", "fuse.lizardfs", "fuse.beegfs",
    }
)  # fmt: skip


def _forms(name: str) -> set[str]:
    """``name`` lower-cased, and its short form unless it is an IP address."""
    name = name.strip().rstrip(".").lower()
    if not name:
        return set()
    try:
        ipaddress.ip_address(name.strip("[]"))
        return {name}
    except ValueError:
        return {name, name.split(".", 1)[0]}


def host_names(names: Iterable[str | None], *, local: bool) -> frozenset[str]:
    """Every form under which the scanned hosts may appear in a record.

    >>> sorted(host_names(["CN7.example.org"], local=False))
    ['cn7', 'cn7.example.org']
    """
    forms: set[str] = set()
    for name in names:
        if name:
            forms |= _forms(name)
    if local:  # the fallback name a record may carry when libvirt gave none
        forms |= _forms(socket.gethostname())
    return frozenset(forms)


def is_one_of(name: str, names: frozenset[str]) -> bool:
    """Whether a record's ``host`` is one of ``names`` (see :func:`host_names`).

    >>> is_one_of("cn7", host_names(["cn7.example.org"], local=False))
    True
    >>> is_one_of("cn8.example.org", host_names(["cn7.example.org"], local=False))
    False
    """
    return bool(_forms(name) & names)


def is_shared_path(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether ``path`` is on a filesystem other machines can mount too."""
    return filesystem_type(path, mountinfo) in NETWORK_FILESYSTEMS
