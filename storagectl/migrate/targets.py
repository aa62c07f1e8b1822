"""Per-backend operations on one disk location: exists, create, remove, how qemu opens it,
and what its ``<disk>`` element looks like.

A :class:`~storagectl.migrate.plan.Location` is backend-neutral data; :class:`Storage`
turns it into commands through the LVM and RBD backends or plain file calls. Nothing here
decides *when* to do anything: that is the engine's job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from storagectl import errors
from storagectl.backends.lvm import LVM, POOL_SUFFIX
from storagectl.backends.rbd import RBD, STALE_WATCH_WAIT
from storagectl.layouts.model import Backend
from storagectl.migrate.plan import Location
from storagectl.process import Runner

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class QemuSpec:
    """How qemu-img names an image: ``-f FORMAT FILENAME``, or an ``--image-opts`` string."""

    format: str
    filename: str
    image_opts: str


class Storage:
    """Create, remove and name disk locations. ``ceph_timeout`` bounds every librados
    wait of qemu-img (without it a dead OSD makes a copy hang forever)."""

    def __init__(self, runner: Runner, *, ceph_timeout: int = 60) -> None:
        self.runner = runner
        self.ceph_timeout = ceph_timeout

    # -- existence ----------------------------------------------------------------

    def exists(self, loc: Location) -> bool:
        if loc.kind is Backend.LVM:
            return LVM(self.runner).get_volume(loc.volume_group or "", loc.volume or "") is not None
        if loc.kind is Backend.RBD:
            return self.rbd(loc).exists(loc.image or "")
        return os.path.lexists(loc.path or "")

    def create(self, loc: Location, size: int, *, sparse_lv: bool = False) -> None:
        """Make an empty target of ``size`` bytes that the copy writes into with ``-n``.

        Files: ``qemu-img create -f raw|qcow2 PATH SIZE`` (a standalone qcow2, no backing);
        LVM: ``lvcreate`` rounded up to whole extents; RBD: ``rbd create --size SIZEB``.
        """
        if loc.kind is Backend.LVM:
            LVM(self.runner).create(
                loc.volume_group or "", loc.volume or "", size, sparse=sparse_lv
            )
        elif loc.kind is Backend.RBD:
            self.rbd(loc).create(loc.image or "", size)
        else:
            self.runner.run("qemu-img", "create", "-q", "-f", loc.format, loc.path or "", str(size))

    def remove(self, loc: Location, *, ours: bool = False) -> bool:
        """Remove the location if it exists; True if something was removed.

        ``ours``: a copy target this migration created, whose writer (a qemu-img the
        engine ran) is gone - killed on a timeout, or with storagectl by kill -9. An
        RBD image then may still carry that dead writer's watch for up to the OSDs'
        osd_client_watch_timeout, and the removal waits it out (rbd.STALE_WATCH_WAIT)
        instead of failing.
        """
        if not self.exists(loc):
            return False
        if loc.kind is Backend.LVM:
            LVM(self.runner).remove(loc.volume_group or "", loc.volume or "")
        elif loc.kind is Backend.RBD:
            wait = STALE_WATCH_WAIT if ours else 0.0
            self.rbd(loc).remove(loc.image or "", stale_watch_wait=wait)
        elif (
            loc.kind is Backend.PLOOP
            and os.path.isdir(loc.path or "")
            and not os.path.islink(loc.path or "")
        ):
            # Nova's ploop disk is a directory (root.hds, DiskDescriptor.xml, ploop's lock
            # and snapshot files); Nova removes it whole too.
            shutil.rmtree(loc.path or "")
        else:
            os.unlink(loc.path or "")
        LOG.info("removed %s", loc.describe())
        return True

    def rename(self, src: Location, dst: Location) -> None:
        """Give the disk at ``src`` the name ``dst`` (same backend, same pool/VG/directory)
        in one atomic operation: ``rename(2)`` (then the directory is fsynced),
        ``rbd rename POOL/SRC POOL/DST``, ``lvrename VG SRC DST`` (and its private thin
        pool ``SRC_pool``, which ``remove`` and a new sparse ``SRC`` need, in a second).

        Idempotent: nothing is renamed onto an existing name (``src`` may by then be a
        new disk), and an LV renamed without its pool gets its pool renamed.
        """
        if src.kind is Backend.LVM:
            lvm, vg = LVM(self.runner), src.volume_group or ""
            old, new = src.volume or "", dst.volume or ""
            rows = {r.get("lv_name"): r for r in lvm._lv_rows(vg)}  # noqa: SLF001
            if old in rows and new not in rows:
                self.runner.run("lvrename", vg, old, new)
                rows[new] = rows.pop(old)
            pool_old, pool_new = old + POOL_SUFFIX, new + POOL_SUFFIX
            pool = (rows.get(new) or {}).get("pool_lv")
            if pool == pool_old and pool_new not in rows:
                self.runner.run("lvrename", vg, pool_old, pool_new)
        elif src.kind is Backend.RBD:
            if self.exists(src) and not self.exists(dst):
                spec_src, spec_dst = f"{src.pool}/{src.image}", f"{dst.pool}/{dst.image}"
                self.rbd(src)._rbd(  # noqa: SLF001 - the backend's error mapping
                    "rename", spec_src, spec_dst, what=f"rename image {spec_src}"
                )
        elif os.path.lexists(src.path or "") and not os.path.lexists(dst.path or ""):
            os.rename(src.path or "", dst.path or "")
            fd = os.open(os.path.dirname(dst.path or "/") or "/", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        LOG.info("renamed %s to %s", src.describe(), dst.describe())

    def target_is_zero(self, loc: Location) -> bool:
        """Whether a freshly created target reads as zeros (qemu-img may skip zeros).

        Files and RBD images do. A thick LV holds whatever its extents held before. A
        thin LV (Nova's ``sparse_logical_volumes``) reads unprovisioned blocks as zeros,
        and newly provisioned ones too when its pool zeroes them (``z``, the 8th
        ``lv_attr`` character; lvm2's default ``allocation/thin_pool_zero = 1``). Runs
        ``lvs ... -S lv_name="NAME" VG`` (see :meth:`LVM.get_volume`)::

            {"lv_name":"U_disk", "lv_attr":"Vwi-a-tz--", "segtype":"thin", ...}

        Skipping zeros is what keeps a sparse disk sparse: writing them would provision
        the whole thin pool, which can run out of space (and then writes are lost).
        """
        if loc.kind is not Backend.LVM:
            return True
        try:
            lv = LVM(self.runner).get_volume(loc.volume_group or "", loc.volume or "")
        except errors.StorageCtlError as exc:
            # Writing the zeros is always correct, only slower (and the verify step
            # would catch a thin pool that ran out of space).
            LOG.warning("cannot tell whether %s reads as zeros: %s", loc.describe(), exc)
            return False
        return lv is not None and lv.attr[:1] == "V" and lv.attr[7:8] == "z"

    # -- space --------------------------------------------------------------------

    def free_bytes(self, loc: Location) -> int | None:
        """Bytes available for the target, or None when the backend cannot tell."""
        if loc.kind is Backend.LVM:
            return LVM(self.runner).volume_group(loc.volume_group or "").free
        if loc.kind is Backend.RBD:
            return self.rbd(loc).free_bytes()
        st = os.statvfs(os.path.dirname(loc.path or "/") or "/")
        return st.f_bavail * st.f_frsize

    def data_bytes(self, loc: Location) -> int:
        """Bytes of guest data in the image (sparse-aware; backing chain included).

        Runs ``qemu-img measure -f qcow2 -O qcow2 --output=json IMAGE``::

            {"bitmaps": 0, "required": 6619136, "fully-allocated": 67436544}

        ``required`` for a qcow2 output counts only allocated clusters (plus a little
        metadata), which is what a sparse raw file, a qcow2 or an RBD image will use.
        """
        from storagectl.layouts.verify import copy_source

        spec = self.qemu_spec(loc)
        # A file's chain is vetted and named explicitly, as for the copy: measure runs in
        # preflight (and under --dry-run), before any other step has looked at the files.
        name = copy_source(spec.filename, spec.format) if loc.is_file else spec.filename
        out = self.runner.run(
            "qemu-img", "measure", "-f", spec.format, "-O", "qcow2", "--output=json", name
        ).stdout
        try:
            return int(json.loads(out)["required"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.BackendError(
                backend="qemu-img", reason=f"unreadable qemu-img measure output: {exc}"
            ) from exc

    # -- naming -------------------------------------------------------------------

    def rbd(self, loc: Location) -> RBD:
        runner = _CephArgsRunner(self.runner, self.ceph_timeout)
        return RBD(
            runner,
            pool=loc.pool or "",
            ceph_conf=loc.ceph_conf or "",  # type: ignore[arg-type]
            user=loc.user,
            connect_timeout=min(self.ceph_timeout, 10),
        )

    def qemu_spec(self, loc: Location, *, size: int | None = None) -> QemuSpec:
        """The qemu-img name of ``loc``; ``size`` limits what compare sees (LVs are
        rounded up to whole extents, and the tail past the disk's size is not zeroed).

        >>> Storage(Runner()).qemu_spec(Location("flat", "raw", path="/i/u/disk")).image_opts
        'driver=raw,file.driver=file,file.filename=/i/u/disk'
        """
        # libvirt and the record say "ploop"; qemu-img calls the format "parallels".
        fmt = "parallels" if loc.format == "ploop" else loc.format
        if loc.kind is Backend.PLOOP and os.path.isdir(loc.path or ""):
            # Nova's ploop disk is a directory: the image is its root.hds (the other file,
            # DiskDescriptor.xml, is ploop's own bookkeeping; qemu-img does not read it).
            loc = Location(loc.backend, fmt, path=os.path.join(loc.path or "", "root.hds"))
        if loc.kind is Backend.RBD:
            uri = self.rbd(loc).qemu_uri(loc.image or "")
            t = str(self.ceph_timeout)
            # librados options ride in the filename; they bound hangs on a dying cluster.
            uri += f":client_mount_timeout={t}:rados_mon_op_timeout={t}:rados_osd_op_timeout={t}"
            # The rbd driver's structured options (pool, image, user, conf) have no room
            # for librados settings; its legacy filename, parsed the same way as on the
            # command line, does.
            return QemuSpec("raw", uri, f"driver=raw,file.driver=rbd,file.filename={_opt(uri)}")
        path = loc.path or ""
        if loc.kind is Backend.LVM:
            opts = f"driver=raw,file.driver=host_device,file.filename={_opt(path)}"
            if size is not None:
                opts = f"driver=raw,size={size},file.driver=host_device,file.filename={_opt(path)}"
            return QemuSpec("raw", path, opts)
        return QemuSpec(fmt, path, f"driver={fmt},file.driver=file,file.filename={_opt(path)}")

    # -- libvirt ------------------------------------------------------------------

    def disk_source(
        self, loc: Location, *, hosts: list[tuple[str, str | None]] = ()
    ) -> tuple[str, ET.Element]:
        """The ``<disk type>`` and ``<source>`` element libvirt needs for ``loc``::

        file:    <source file='/var/lib/nova/instances/U/disk'/>
        block:   <source dev='/dev/nova/U_disk'/>
        network: <source protocol='rbd' name='vms/U_disk'><host name=... port=.../>
        """
        if loc.kind is Backend.LVM:
            return "block", ET.Element("source", {"dev": loc.path or ""})
        if loc.kind is Backend.RBD:
            src = ET.Element("source", {"protocol": "rbd", "name": f"{loc.pool}/{loc.image}"})
            for name, port in hosts:
                attrs = {"name": name} | ({"port": port} if port else {})
                ET.SubElement(src, "host", attrs)
            return "network", src
        return "file", ET.Element("source", {"file": loc.path or ""})

    def mon_hosts(self, loc: Location) -> list[tuple[str, str | None]]:
        """Monitor addresses for a ``<source protocol='rbd'>``, as Nova writes them.

        Runs ``ceph --conf C --id U mon dump --format json``::

            {"epoch":1,"mons":[{"rank":0,"name":"a","public_addrs":{"addrvec":[
              {"type":"v1","addr":"127.0.0.1:40113","nonce":0}]},"addr":"127.0.0.1:40113/0"}]}
        """
        argv = ["ceph", "--conf", loc.ceph_conf or "/etc/ceph/ceph.conf"]
        if loc.user:
            argv += ["--id", loc.user]
        argv += [
            "--connect-timeout",
            str(min(self.ceph_timeout, 10)),
            "mon",
            "dump",
            "--format",
            "json",
        ]
        try:
            out = self.runner.run(*argv, timeout=3 * min(self.ceph_timeout, 10) + 5).stdout
            return parse_mon_hosts(json.loads(out))
        except (errors.StorageCtlError, ValueError) as exc:
            raise errors.CephUnreachable(
                conf=loc.ceph_conf,
                user=loc.user or "admin",
                reason=f"cannot read the monitor map: {exc}",
            ) from exc


class _CephArgsRunner:
    """A runner whose ceph/rbd commands give up on a hung cluster.

    The RBD backend bounds only the search for a monitor; ``rbd info``/``rm`` on a cluster
    whose OSDs stopped answering would wait forever. Ceph's tools read extra options
    from ``CEPH_ARGS``, so the op timeouts ride there.
    """

    def __init__(self, inner: Runner, timeout: int) -> None:
        self._inner = inner
        self._args = f"--rados_osd_op_timeout={timeout} --rados_mon_op_timeout={timeout}"

    def run(self, *argv: str, env: dict[str, str] | None = None, **kw):  # noqa: ANN003, ANN201
        # Runner.run hands env to processutils, which *replaces* the environment with it.
        merged = {**os.environ, "CEPH_ARGS": self._args, **(env or {})}
        return self._inner.run(*argv, env=merged, **kw)


def parse_mon_hosts(data: dict) -> list[tuple[str, str | None]]:
    """``(host, port)`` of each monitor's v1 (or only) address in ``ceph mon dump``."""
    hosts = []
    for mon in data.get("mons") or []:
        addrs = ((mon.get("public_addrs") or {}).get("addrvec")) or []
        pick = next((a for a in addrs if a.get("type") == "v1"), addrs[0] if addrs else None)
        addr = pick.get("addr") if pick else (mon.get("addr") or "").split("/")[0]
        if not addr:
            continue
        host, _, port = addr.rpartition(":")
        hosts.append((host.strip("[]"), port or None))
    return hosts


def _opt(value: str) -> str:
    # QEMU's option syntax: a literal comma is written twice.
    return value.replace(",", ",,")
