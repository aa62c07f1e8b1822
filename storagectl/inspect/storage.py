"""A cached, read-only view of the host's storage for one inspection run.

Inspection must not run a subprocess per disk: each backend lists its volumes once per
container (``lvs`` per volume group, ``rbd ls -l`` per pool: see the backends'
``listing``), and every disk is then looked up in memory. A VG that does not exist or a
Ceph cluster that does not answer is remembered as such, so each problem costs one
command and is reported on every disk it affects.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storagectl.host.process import Runner

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Volume:
    """A block volume as found in LVM or Ceph metadata."""

    size: int
    tags: tuple[str, ...] = ()
    path: str | None = None  # /dev/VG/LV for LVM
    snapshots: tuple[str, ...] = ()  # RBD snapshot names


@dataclass
class Listing:
    volumes: dict[str, Volume] = field(default_factory=dict)
    error: str | None = None  # why the listing could not be made
    missing: bool = False  # the VG / pool itself does not exist

    def has(self, name: str) -> bool | None:
        """Whether volume ``name`` is there (None: the listing failed, nobody knows)."""
        if self.missing:
            return False
        if self.error:
            return None
        return name in self.volumes


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


class StorageView:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._listings: dict[tuple, Listing] = {}
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
        from storagectl.inspector import inspect_file

        key = (path, declared)
        if key not in self._bases:
            self._bases[key] = inspect_file(path, declared)
        return self._bases[key]

    def listing(self, key: tuple, make: Callable[[], Listing]) -> Listing:
        """The listing of one VG / pool, made once per run (``key`` names it)."""
        if key not in self._listings:
            self._listings[key] = make()
        return self._listings[key]
