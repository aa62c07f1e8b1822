"""A cached, read-only view of the host's block storage for one inspection run.

Inspection must not run a subprocess per disk: LVM is listed once per volume group
(``lvs``) and Ceph once per pool (``rbd ls -l``), and every disk is then looked up in
memory. A VG that does not exist or a Ceph cluster that does not answer is remembered
as such, so each problem costs one command and is reported on every disk it affects.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from storagectl import errors
from storagectl.process import Runner

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Volume:
    """A block volume as found in LVM or Ceph metadata."""

    size: int
    tags: tuple[str, ...] = ()
    path: str | None = None  # /dev/VG/LV for LVM
    snapshots: tuple[str, ...] = ()  # RBD snapshot names


@dataclass
class _Listing:
    volumes: dict[str, Volume] = field(default_factory=dict)
    error: str | None = None  # why the listing could not be made
    missing: bool = False  # the VG / pool itself does not exist


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


class StorageView:
    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._vgs: dict[str, _Listing] = {}
        self._pools: dict[tuple[str, str, str | None], _Listing] = {}
        self._bases: dict[tuple[str, str], Any] = {}
        self._real_dirs: dict[str, str] = {}

    def resolve(self, path: str) -> tuple[str, os.stat_result | None]:
        """``os.path.realpath(path)`` and the ``lstat`` of ``path`` (None if it is missing).

        realpath lstat()s every component of every path; with thousands of disks under a
        handful of directories that is most of a scan. The real path of a directory is
        therefore remembered for the run, and a path whose last component is not a
        symlink resolves to its directory's real path plus that name. Anything unusual
        (a symlink, ``..``, a relative path, a missing file) takes os.path.realpath.
        """
        parent, name = os.path.split(path)
        if not os.path.isabs(path) or os.path.normpath(path) != path or name in ("", ".", ".."):
            return os.path.realpath(path), _lstat(path)
        st = _lstat(path)
        if st is None or stat.S_ISLNK(st.st_mode):
            return os.path.realpath(path), st
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = self.resolve(parent)[0]
        return os.path.join(real_parent, name), st

    def inspect_cached(self, path: str, declared: str) -> Any:
        """Header report of an image-cache entry, inspected once per run: hundreds of
        overlays share one base. Raises InspectorError like ``inspect_file``."""
        from storagectl.layouts.inspector import inspect_file

        key = (path, declared)
        if key not in self._bases:
            self._bases[key] = inspect_file(path, declared)
        return self._bases[key]

    def lvm(self, vg: str) -> _Listing:
        if vg not in self._vgs:
            self._vgs[vg] = self._list_vg(vg)
        return self._vgs[vg]

    def rbd(self, pool: str, ceph_conf: str, user: str | None) -> _Listing:
        key = (pool, ceph_conf, user)
        if key not in self._pools:
            self._pools[key] = self._list_pool(pool, ceph_conf, user)
        return self._pools[key]

    def rbd_watchers(self, pool: str, ceph_conf: str, user: str | None, image: str) -> list[str]:
        """Addresses of the clients that have ``pool/image`` open (``rbd status``); a
        status that cannot be read counts as one unknown client: an image is only called
        an orphan when nothing can be using it."""
        try:
            return self._rbd(pool, ceph_conf, user).watchers(image)
        except errors.StorageCtlError as exc:
            LOG.debug("cannot read the status of %s/%s: %s", pool, image, exc)
            return ["(status unreadable)"]

    def _rbd(self, pool: str, ceph_conf: str, user: str | None) -> Any:
        from storagectl.backends.rbd import RBD  # only hosts with RBD disks need it

        return RBD(self._runner, pool=pool, ceph_conf=ceph_conf, user=user)

    def _list_vg(self, vg: str) -> _Listing:
        from storagectl.backends.lvm import LVM

        try:
            lvs = LVM(self._runner).list_volumes(vg)
        except errors.VolumeGroupNotFound:
            return _Listing(missing=True, error=f"volume group {vg} not found")
        except errors.StorageCtlError as exc:
            LOG.debug("cannot list VG %s", vg, exc_info=True)
            return _Listing(error=str(exc))
        return _Listing({lv.name: Volume(lv.size, tuple(lv.tags), lv.path) for lv in lvs})

    def _list_pool(self, pool: str, ceph_conf: str, user: str | None) -> _Listing:
        try:
            images = self._rbd(pool, ceph_conf, user).list_long()
        except errors.StorageCtlError as exc:
            LOG.debug("cannot list pool %s", pool, exc_info=True)
            return _Listing(error=str(exc))
        return _Listing({img.name: Volume(img.size, snapshots=img.snapshots) for img in images})
