"""Disk backends: one module per kind of storage, one interface (:mod:`.base`), one
registry (:mod:`.registry`), and :class:`Storage`, the object the rest of storagectl
holds to act on any location.

- ``files``: qcow2, flat (raw) and ploop disks in the instance directory;
- ``lvm``: Nova's LVM backend (``/dev/<vg>/<uuid>_<name>``), thin or thick;
- ``rbd``: Nova's RBD backend (``<pool>/<uuid>_<name>``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from typing import TYPE_CHECKING, Any

from storagectl import errors
from storagectl.backends.base import DiskBackend, QemuSpec, Refusal, TargetSettings
from storagectl.backends.registry import backend_class
from storagectl.host.process import Runner
from storagectl.model.location import Location

if TYPE_CHECKING:
    from storagectl.model.layout import DiskLayout

__all__ = [
    "DiskBackend",
    "QemuSpec",
    "Refusal",
    "Storage",
    "TargetSettings",
    "backend_class",
    "remove_command",
]


def remove_command(loc: Location) -> str:
    """The shell command an operator runs to remove ``loc`` by hand."""
    return backend_class(loc.backend).remove_command(loc)


LOG = logging.getLogger(__name__)


class Storage:
    """The backends bound to one runner: ``storage.of(loc).method(loc)``, plus the
    operations every caller wants in one word. ``ceph_timeout`` bounds every librados
    wait (without it a dead OSD makes a copy hang forever)."""

    def __init__(self, runner: Runner, *, ceph_timeout: int = 60) -> None:
        self.runner = runner
        self.ceph_timeout = ceph_timeout
        self._bound: dict[type[DiskBackend], DiskBackend] = {}

    def of(self, where: Location | DiskLayout | str) -> DiskBackend:
        """The backend of a location, a disk, or a record ``backend`` value."""
        backend = (
            where if isinstance(where, str) else getattr(where.backend, "value", where.backend)
        )
        cls = backend_class(str(backend))
        if cls not in self._bound:
            self._bound[cls] = cls(self.runner, ceph_timeout=self.ceph_timeout)
        return self._bound[cls]

    def exists(self, loc: Location) -> bool:
        return self.of(loc).exists(loc)

    def create(self, loc: Location, size: int, *, sparse_lv: bool = False) -> None:
        self.of(loc).create(loc, size, sparse=sparse_lv)

    def remove(self, loc: Location, *, ours: bool = False) -> bool:
        """Remove the location if it exists; True if something was removed."""
        if not self.exists(loc):
            return False
        self.of(loc).remove(loc, ours=ours)
        LOG.info("removed %s", loc.describe())
        return True

    def rename(self, src: Location, dst: Location) -> None:
        self.of(src).rename(src, dst)
        LOG.info("renamed %s to %s", src.describe(), dst.describe())

    def target_is_zero(self, loc: Location) -> bool:
        return self.of(loc).target_is_zero(loc)

    def free_bytes(self, loc: Location) -> int | None:
        return self.of(loc).free_bytes(loc)

    def qemu_spec(self, loc: Location, *, size: int | None = None) -> QemuSpec:
        return self.of(loc).qemu_spec(loc, size=size)

    def read_name(self, loc: Location) -> str:
        return self.of(loc).read_name(loc)

    def data_bytes(self, loc: Location, *, shared: bool = False) -> int:
        """Bytes of guest data in the image (sparse-aware; backing chain included).

        Runs ``qemu-img measure -f qcow2 -O qcow2 --output=json IMAGE``::

            {"bitmaps": 0, "required": 6619136, "fully-allocated": 67436544}

        ``shared``: the image is open in a running QEMU, which holds its lock (measure
        has no ``-U``): the files are named with ``locking=off`` (:func:`unlocked`).

        ``required`` for a qcow2 output counts only allocated clusters (plus a little
        metadata), which is what a sparse raw file, a qcow2 or an RBD image will use. A
        file's chain is vetted and named explicitly, as for the copy: measure runs in
        preflight (and under --dry-run), before any other step has looked at the files.
        """
        spec = self.qemu_spec(loc)
        out = self.runner.run(
            "qemu-img",
            "measure",
            "-f",
            spec.format,
            "-O",
            "qcow2",
            "--output=json",
            unlocked(self.read_name(loc), spec.format) if shared else self.read_name(loc),
        ).stdout
        try:
            return int(json.loads(out)["required"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.BackendError(
                backend="qemu-img", reason=f"unreadable qemu-img measure output: {exc}"
            ) from exc

    def remove_command(self, loc: Location) -> str:
        return self.of(loc).remove_command(loc)

    def info_keys(self, loc: Location) -> list[str]:
        return self.of(loc).disk_info_keys(loc)

    def domain_contexts(self, original_xml: str, plan: Any, *, resolve: bool) -> dict:
        """Each backend's :meth:`DiskBackend.domain_context` for a domain XML rewrite."""
        out: dict[type[DiskBackend], Any] = {}
        for m in plan.moves:
            for loc in (m.source, m.dest):
                b = self.of(loc)
                if type(b) not in out:
                    out[type(b)] = b.domain_context(original_xml, plan, resolve=resolve)
        return out


def unlocked(name: str, fmt: str) -> str:
    """A qemu-img image name that opens its local files without QEMU's image locks
    (``locking=off``), to read beside a running QEMU; ``json:`` names get it on each
    file node, a path becomes ``json:``; other names (rbd:) are returned as they are::

        /i/u/disk -> json:{"driver": "raw", "file": {"driver": "file",
                           "filename": "/i/u/disk", "locking": "off"}}
    """
    if name.startswith("json:"):
        spec = json.loads(name[5:])
    elif name.startswith("/"):
        try:
            block = stat.S_ISBLK(os.stat(name).st_mode)
        except OSError:
            block = False
        driver = "host_device" if block else "file"
        spec = {"driver": fmt, "file": {"driver": driver, "filename": name}}
    else:
        return name

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("driver") in ("file", "host_device"):
                node["locking"] = "off"
            for value in node.values():
                walk(value)

    walk(spec)
    return "json:" + json.dumps(spec)
