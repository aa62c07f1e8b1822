"""Ceph RBD backend: Nova's ``images_type=rbd`` disks, through the ``rbd`` CLI.

Every command goes through :class:`storagectl.host.process.Runner` and names the
cluster explicitly (``--conf``, ``--id`` when a user is set, ``pool/image`` or
``--pool``), so nothing depends on the environment (``CEPH_CONF``, ``CEPH_ARGS``)
of the operator's shell. The python rados/rbd bindings are not used: the CLI is
what operators run by hand, and its JSON output is stable across releases.

Every command also carries ``--client_mount_timeout``: without it a client
whose monitors are down hunts for them for 300 s (Ceph's default) before
failing; with it, it fails after ``connect_timeout`` seconds with ETIMEDOUT.
(``rados_mon_op_timeout`` does not bound that first connection, see ``ping``.)

Failures come out as:

* :class:`storagectl.errors.CephUnreachable` - no monitor answered, the
  conf/keyring cannot be read, authentication was refused, or an operation
  timed out (ETIMEDOUT);
* :class:`storagectl.errors.BackendError` (``backend="rbd"``) - anything else,
  with the pool/image concerned in the reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from storagectl import errors
from storagectl.backends.base import DiskBackend, OrphanScan, QemuSpec, Refusal, TargetSettings
from storagectl.host.process import Runner
from storagectl.inspect.storage import Listing, Volume
from storagectl.model import attrs, naming
from storagectl.model.layout import Backend, Code, DiskLayout, Finding
from storagectl.model.location import Location, required

if TYPE_CHECKING:
    from storagectl.host.domain import DomainDisk
    from storagectl.inspect.storage import StorageView
    from storagectl.inspect.verify import Checker

LOG = logging.getLogger(__name__)

DEFAULT_CEPH_CONF = "/etc/ceph/ceph.conf"

# Lines of rbd/ceph stderr that mean "could not talk to the cluster at all",
# as opposed to "the cluster said no". Seen from rbd 16.2 (pacific).
_UNREACHABLE_PATTERNS = (
    "couldn't connect to the cluster",  # mon down / auth refused / timeout
    "unable to open config file",  # --conf names a missing file
    "failed to fetch mon config",  # daemons and some tools fetch config first
    "unable to get monitor info",  # conf without mon_host
    "error connecting to the cluster",  # ceph CLI
    "(110) Connection timed out",  # rados_*_op_timeout expired
    "timed out",  # ceph CLI --connect-timeout
)
# "rbd: error opening image X: (2) No such file or directory" - and not the pool.
_MISSING_IMAGE = re.compile(
    r"error opening image .*\(2\) No such file or directory"
    r"|specified image .* is not found"
    r"|delete error: \(2\) No such file or directory"
)

# "rbd: error: image still has watchers" - someone has the image open. A client
# that died (a killed qemu-img copy, or one cut off while the OSDs were away) keeps
# its watch until the OSD expires it: osd_client_watch_timeout, 30 s by default.
_HAS_WATCHERS = "image still has watchers"
# How long a caller that knows the image is its own (a copy target it created and
# whose writer is gone) waits for a dead writer's watch to expire before giving up.
STALE_WATCH_WAIT = 45.0
#: the snapshot Nova's resize leaves on ``<uuid>_disk`` until it is confirmed
RESIZE_SNAPSHOT = "nova-resize"
_WATCH_POLL = 2.0

_LOG_PREFIX = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d{4} [0-9a-f]+\s+-?\d+ ")


@dataclass(frozen=True)
class RBDImage:
    """One RBD image as ``rbd info`` reports it."""

    pool: str
    name: str
    size: int  # bytes
    parent: str | None  # "pool/image@snap" for clones, else None
    features: tuple[str, ...]
    snapshots: tuple[str, ...] = ()  # filled by list_long only

    @property
    def spec(self) -> str:
        return f"{self.pool}/{self.name}"


class RBD:
    """RBD images of one pool of one cluster.

    Nothing runs in the constructor; the first command runs on the first call.
    """

    name = "rbd"

    def __init__(
        self,
        runner: Runner,
        *,
        pool: str,
        ceph_conf: str = DEFAULT_CEPH_CONF,
        user: str | None = None,
        connect_timeout: int = 10,
    ) -> None:
        self.runner = runner
        self.pool = pool
        # Nova's images_rbd_ceph_conf="" means "librados default", i.e. this file.
        self.ceph_conf = ceph_conf or DEFAULT_CEPH_CONF
        self.user = user or None
        self.connect_timeout = connect_timeout

    # -- cluster ------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the pool answers; raise CephUnreachable within seconds if not.

        Runs (with connect_timeout=10)::

            rbd --conf /etc/ceph/ceph.conf --id nova --client_mount_timeout 10 \\
                --rados_mon_op_timeout 10 --rados_osd_op_timeout 10 \\
                ls --pool vms --format json
            ["a6c1..._disk","a6c1..._disk.config"]

        ``client_mount_timeout`` bounds the search for a monitor (300 s by
        default); the two op timeouts bound the listing itself, which otherwise
        waits forever for an OSD that is down. A dead monitor fails with::

            monclient(hunting): authenticate timed out after 10
            rbd: couldn't connect to the cluster!
        """
        t = str(self.connect_timeout)
        self._rbd(
            "--rados_mon_op_timeout", t, "--rados_osd_op_timeout", t,
            "ls", "--pool", self.pool, "--format", "json",
            what=f"list pool {self.pool}",
            timeout=self._deadline(),
            timeout_is_unreachable=True,
        )  # fmt: skip

    def free_bytes(self) -> int | None:
        """Bytes still writable to the pool (``max_avail``), or None if unknown.

        Runs::

            ceph --conf /etc/ceph/ceph.conf --id nova --connect-timeout 10 df --format json
            {"stats":{"total_bytes":0,...},"stats_by_class":{},"pools":[]}

        Space statistics are computed by ceph-mgr from the OSDs' reports; the
        monitor only relays them. Without a mgr (as in the test cluster) the
        answer above comes back with zero totals and no pools, and there is no
        mgr-free way to learn free space (``rados df`` is equally empty), so
        this returns None. With a mgr, the pool's ``stats.max_avail`` already
        accounts for replication and the full ratio.
        """
        argv = ["ceph", *self._client_args()]
        argv += ["--connect-timeout", str(self.connect_timeout), "df", "--format", "json"]
        out = self._run(
            argv, what="read cluster usage", timeout=self._deadline(), timeout_is_unreachable=True
        )
        return parse_free_bytes(_json(out, "ceph df"), self.pool)

    # -- images -------------------------------------------------------------------

    def list_images(self) -> list[str]:
        """Names of the pool's images.

        Runs ``rbd ... ls --pool vms --format json`` -> ``["a","b"]``.
        """
        out = self._rbd(
            "ls", "--pool", self.pool, "--format", "json", what=f"list pool {self.pool}"
        )
        return list(_json(out, "rbd ls") or [])

    def list_long(self) -> list[RBDImage]:
        """Every image of the pool with its size, in ONE command (inspection of a whole
        host must not run a command per disk).

        Runs ``rbd ... ls -l --pool vms --format json``::

            [{"image":"a","id":"100fe675dacf","size":4194304,"format":2},
             {"image":"b","snapshot":"s1","snapshot_id":4,"size":1073741824,...}]

        Snapshot rows become the ``snapshots`` of their image; ``parent`` and ``features``
        are not in this listing (None and ``()``), use :meth:`info` for them.
        """
        out = self._rbd(
            "ls", "-l", "--pool", self.pool, "--format", "json", what=f"list pool {self.pool}"
        )
        return parse_ls_long(_json(out, "rbd ls -l") or [], self.pool)

    def info(self, image: str) -> RBDImage | None:
        """The image, or None if the pool has no such image.

        Runs ``rbd ... info --format json vms/IMAGE``::

            {"name":"c","size":1048576,"features":["layering",...],
             "parent":{"pool":"vms","pool_namespace":"","image":"a","snapshot":"s1",...},...}

        A missing image fails with ``rbd: error opening image X: (2) No such
        file or directory``; a missing pool says ``error opening pool`` and is
        an error, not None.
        """
        out = self._rbd(
            "info", "--format", "json", self._spec(image),
            what=f"read image {self._spec(image)}",
            missing_ok=True,
        )  # fmt: skip
        if out is None:
            return None
        return parse_info(_json(out, "rbd info"), self.pool)

    def exists(self, image: str) -> bool:
        return self.info(image) is not None

    def create(self, image: str, size_bytes: int) -> RBDImage:
        """Create an image of ``size_bytes`` with the cluster's default features.

        Runs ``rbd ... create --size 1048576B vms/IMAGE`` (no output); an existing
        image fails with ``rbd: create error: (17) File exists``.
        """
        if size_bytes < 0:
            raise errors.BackendError(
                backend=self.name,
                reason=f"cannot create {self._spec(image)} with size {size_bytes}",
            )
        spec = self._spec(image)
        self._rbd("create", "--size", f"{size_bytes}B", spec, what=f"create image {spec}")
        created = self.info(image)
        if created is None:  # only if someone removed it in between
            raise errors.BackendError(
                backend=self.name, reason=f"image {spec} vanished after create"
            )
        return created

    def remove(self, image: str, *, stale_watch_wait: float = 0.0) -> None:
        """Delete the image; a missing image, one with snapshots or one open is an error.

        Runs ``rbd ... rm --no-progress vms/IMAGE``. Refusals seen::

            rbd: delete error: (2) No such file or directory
            rbd: image has snapshots - these must be deleted with 'rbd snap purge' ...
            rbd: error: image still has watchers   (exit 16, EBUSY)

        An image still open elsewhere is never removed. A client that died with the
        image open keeps its watch until the OSD expires it (osd_client_watch_timeout,
        30 s by default). If it held the exclusive lock (it had written), ``rbd rm``
        blocks until the watch expires and then breaks the lock; if it held none, ``rbd
        rm`` refuses with EBUSY. A caller that knows no live client can have the image
        open - a copy target whose writer is gone - passes ``stale_watch_wait``: the
        removal is then retried every 2 s for that long. The final error names the
        watchers' addresses (``rbd status``).
        """
        spec = self._spec(image)
        started = time.monotonic()
        deadline = started + stale_watch_wait
        told = False
        while True:
            try:
                self._rbd("rm", "--no-progress", spec, what=f"remove image {spec}")
                return
            except errors.BackendError as exc:
                if not _is_watched(exc):
                    raise
                if time.monotonic() >= deadline:
                    waited = time.monotonic() - started if stale_watch_wait else 0.0
                    raise self._still_watched(image, waited) from exc
            (LOG.debug if told else LOG.warning)(
                "%s is still open by a client (a dead one's watch lasts until the OSDs "
                "expire it); retrying the removal for up to %.0f s",
                spec,
                max(0.0, deadline - time.monotonic()),
            )
            told = True
            time.sleep(_WATCH_POLL)

    def watchers(self, image: str) -> list[str]:
        """Addresses of the clients that have the image open.

        Runs ``rbd ... status --format json vms/IMAGE`` ->
        ``{"watchers":[{"address":"127.0.0.1:0/3447638200","client":4117,...}]}``.
        """
        spec = self._spec(image)
        out = self._rbd("status", "--format", "json", spec, what=f"read the status of {spec}")
        return parse_watchers(out or "")

    def _still_watched(self, image: str, waited: float) -> errors.BackendError:
        spec = self._spec(image)
        try:
            who = ", ".join(f"client {w}" for w in self.watchers(image)) or "a client"
        except errors.StorageCtlError as exc:  # the removal's error says enough
            LOG.debug("cannot list the watchers of %s: %s", spec, exc)
            who = "a client"
        waited_text = ""
        if waited:
            waited_text = f" after waiting {waited:.0f} s for a dead client's watch to expire"
        return errors.BackendError(
            backend=self.name,
            reason=f"cannot remove image {spec}: {who} still has it open{waited_text}; "
            "if that client is dead, its watch expires after the OSDs' "
            "osd_client_watch_timeout (30 s by default, maybe more on this cluster): "
            "try again then",
        )

    # -- metadata -----------------------------------------------------------------

    def get_meta(self, image: str) -> dict[str, str]:
        """The image's key/value metadata.

        Runs ``rbd ... image-meta list --format json vms/IMAGE`` ->
        ``{"k1":"v1"}``. An image without metadata prints nothing at all (not
        ``{}``), which is read as an empty dict.
        """
        spec = self._spec(image)
        out = self._rbd(
            "image-meta", "list", "--format", "json", spec, what=f"read metadata of {spec}"
        )
        return parse_meta(out)

    def set_meta(self, image: str, key: str, value: str) -> None:
        """Set one metadata key. Runs ``rbd ... image-meta set vms/IMAGE -- KEY VALUE``.

        ``--`` lets keys and values start with ``-``.
        """
        spec = self._spec(image)
        self._rbd(
            "image-meta", "set", spec, "--", key, value, what=f"set metadata {key!r} on {spec}"
        )

    def remove_meta(self, image: str, key: str) -> None:
        """Remove one metadata key; a missing key is an error.

        Runs ``rbd ... image-meta remove vms/IMAGE -- KEY``; a missing key says
        ``rbd: no existing metadata key KEY of image : (2) No such file or directory``.
        """
        spec = self._spec(image)
        self._rbd(
            "image-meta", "remove", spec, "--", key, what=f"remove metadata {key!r} from {spec}"
        )

    # -- snapshots and usage --------------------------------------------------------

    def list_snapshots(self, image: str) -> list[str]:
        """Names of the image's (user) snapshots, oldest first.

        Runs ``rbd ... snap ls --format json vms/IMAGE``::

            [{"id":4,"name":"s1","size":1048576,"protected":"false","timestamp":"..."}]
        """
        spec = self._spec(image)
        out = self._rbd("snap", "ls", "--format", "json", spec, what=f"list snapshots of {spec}")
        return [snap["name"] for snap in _json(out, "rbd snap ls") or []]

    def disk_usage(self, image: str) -> int | None:
        """Bytes allocated to the image itself (not its snapshots), or None.

        Runs ``rbd ... du --format json vms/IMAGE``::

            {"images":[{"name":"a","snapshot":"s1",...,"used_size":0},
                       {"name":"a","id":"100f...","provisioned_size":1048576,"used_size":4194304}]}

        Allocation is counted per RADOS object (4 MiB by default). With
        fast-diff the object map answers at once; without it rbd probes every
        object (slow for big images) and warns on stderr.
        """
        spec = self._spec(image)
        out = self._rbd("du", "--format", "json", spec, what=f"measure image {spec}")
        return parse_du(_json(out, "rbd du"), image)

    # -- names ----------------------------------------------------------------------

    def qemu_uri(self, image: str) -> str:
        """The ``rbd:`` filename qemu-img and libvirt's qemu take for the image.

        >>> rbd = RBD(Runner(), pool="vms", ceph_conf="/etc/ceph/ceph.conf", user="nova")
        >>> rbd.qemu_uri("u_disk")
        'rbd:vms/u_disk:id=nova:conf=/etc/ceph/ceph.conf'

        QEMU splits the string on ``:``; a literal ``:`` or ``\\`` is escaped with ``\\``.
        """
        uri = f"rbd:{_qemu_escape(self.pool)}/{_qemu_escape(image)}"
        if self.user:
            uri += f":id={_qemu_escape(self.user)}"
        return uri + f":conf={_qemu_escape(self.ceph_conf)}"

    @staticmethod
    def volume_name(instance_uuid: str, disk_name: str) -> str:
        """Nova's RBD image name for an instance disk: ``f"{uuid}_{disk_name}"``.

        >>> RBD.volume_name("8e3b1b0e-4b7c-4c55-9a0f-2f9b6e1f7d10", "disk")
        '8e3b1b0e-4b7c-4c55-9a0f-2f9b6e1f7d10_disk'
        """
        return naming.rbd_image_name(instance_uuid, disk_name)

    # -- plumbing -------------------------------------------------------------------

    def _spec(self, image: str) -> str:
        return f"{self.pool}/{image}"

    def _client_args(self) -> list[str]:
        args = ["--conf", self.ceph_conf]
        if self.user:
            args += ["--id", self.user]
        return args

    def _deadline(self) -> int:
        # Backstop for the client-side timeouts: the mount timeout, then one
        # more for the operation, plus process start-up.
        return 3 * self.connect_timeout + 5

    def _rbd(
        self,
        *args: str,
        what: str,
        missing_ok: bool = False,
        timeout: int | None = None,
        timeout_is_unreachable: bool = False,
    ) -> str | None:
        argv = ["rbd", *self._client_args(), "--client_mount_timeout", str(self.connect_timeout)]
        return self._run(
            [*argv, *args],
            what=what,
            missing_ok=missing_ok,
            timeout=timeout,
            timeout_is_unreachable=timeout_is_unreachable,
        )

    def _run(
        self,
        argv: list[str],
        *,
        what: str,
        missing_ok: bool = False,
        timeout: int | None = None,
        timeout_is_unreachable: bool = False,
    ) -> Any:
        try:
            return self.runner.run(*argv, timeout=timeout).stdout
        except errors.CommandFailed as exc:
            stderr = exc.fields.get("full_stderr") or exc.fields.get("stderr") or ""
            if missing_ok and _MISSING_IMAGE.search(stderr):
                return None
            if any(p in stderr for p in _UNREACHABLE_PATTERNS):
                raise self._unreachable(_reason(stderr)) from exc
            raise errors.BackendError(
                backend=self.name, reason=f"cannot {what}: {_reason(stderr)}"
            ) from exc
        except errors.CommandTimeout as exc:
            if timeout_is_unreachable:
                raise self._unreachable(f"no answer within {exc.fields.get('timeout')} s") from exc
            raise errors.BackendError(
                backend=self.name,
                reason=f"cannot {what}: no answer within {exc.fields.get('timeout')} s",
            ) from exc

    def _unreachable(self, reason: str) -> errors.CephUnreachable:
        return errors.CephUnreachable(
            conf=self.ceph_conf, user=self.user or "client.admin (default)", reason=reason
        )


# -- parsing (pure; fed captured output in tests/unit) ---------------------------------


def parse_info(data: dict[str, Any], pool: str) -> RBDImage:
    """Build an RBDImage from ``rbd info --format json`` output."""
    parent = data.get("parent")
    parent_spec = None
    if parent:
        ns = parent.get("pool_namespace") or ""
        pool_part = f"{parent['pool']}/{ns}" if ns else parent["pool"]
        parent_spec = f"{pool_part}/{parent['image']}@{parent['snapshot']}"
    return RBDImage(
        pool=pool,
        name=data["name"],
        size=int(data["size"]),
        parent=parent_spec,
        features=tuple(data.get("features") or ()),
    )


def parse_ls_long(rows: list[dict[str, Any]], pool: str) -> list[RBDImage]:
    snaps: dict[str, list[str]] = {}
    for r in rows:
        if "snapshot" in r:
            snaps.setdefault(str(r["image"]), []).append(str(r["snapshot"]))
    return [
        RBDImage(
            pool=pool,
            name=str(r["image"]),
            size=int(r["size"]),
            parent=None,
            features=(),
            snapshots=tuple(snaps.get(str(r["image"]), ())),
        )
        for r in rows
        if "snapshot" not in r
    ]


def parse_meta(out: str | None) -> dict[str, str]:
    """Parse ``rbd image-meta list --format json``; empty output means no metadata."""
    if not out or not out.strip():
        return {}
    return {str(k): str(v) for k, v in _json(out, "rbd image-meta list").items()}


def parse_du(data: dict[str, Any], image: str) -> int | None:
    """``used_size`` of the image head in ``rbd du --format json``, None if absent.

    Snapshot rows carry a ``snapshot`` key; the head row does not.
    """
    for row in data.get("images") or []:
        if row.get("name") == image and "snapshot" not in row:
            used = row.get("used_size")
            return int(used) if used is not None else None
    return None


def parse_free_bytes(data: dict[str, Any], pool: str) -> int | None:
    """The pool's ``max_avail`` from ``ceph df --format json``; None without statistics."""
    if not (data.get("stats") or {}).get("total_bytes"):
        return None  # no mgr has reported: the zeros mean "unknown", not "full"
    for entry in data.get("pools") or []:
        if entry.get("name") == pool:
            avail = (entry.get("stats") or {}).get("max_avail")
            return int(avail) if avail is not None else None
    return None


def _json(out: str | None, what: str) -> Any:
    try:
        return json.loads(out or "null")
    except json.JSONDecodeError as exc:
        raise errors.BackendError(backend="rbd", reason=f"unreadable {what} output: {exc}") from exc


def _is_watched(exc: errors.BackendError) -> bool:
    """Whether a failed ``rbd rm`` refused because the image is open: the message, in
    the error or anywhere in the full stderr (librbd may log lines after it)."""
    cause = exc.__cause__
    fields = getattr(cause, "fields", {}) or {}
    stderr = str(fields.get("full_stderr") or "")
    return _HAS_WATCHERS in str(exc) or _HAS_WATCHERS in stderr


def parse_watchers(text: str) -> list[str]:
    """Watcher addresses from ``rbd status --format json`` output."""
    data = _json(text, "rbd status")
    watchers = data.get("watchers") if isinstance(data, dict) else None
    if not isinstance(watchers, list):
        raise errors.BackendError(backend="rbd", reason=f"unexpected rbd status output: {text!r}")
    return [str(w.get("address", "?")) if isinstance(w, dict) else "?" for w in watchers]


def _reason(stderr: str) -> str:
    """The informative lines of rbd's stderr, without log-line timestamps."""
    lines = []
    for line in stderr.splitlines():
        line = line.strip()
        # Drop librbd log prefixes, which may land mid-line on interleaved stderr:
        # "rbd: create error: 2026-11-23T23:41:57.879+0000 7f51b9fe9380 -1 librbd: ..."
        line = _LOG_PREFIX.sub("", line).strip()
        if line and not line.startswith("warning: fast-diff"):
            lines.append(line)
    return "; ".join(lines[-2:]) or "(no output)"


def _qemu_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


# -- the disk backend -------------------------------------------------------------------


@dataclass(frozen=True)
class RBDLocation(Location):
    """``<pool>/<image>`` in the cluster of ``ceph_conf``, as ``user``."""

    pool: str
    image: str
    ceph_conf: str | None = None
    user: str | None = None
    format: str = "raw"
    backend: str = "rbd"

    BACKENDS: ClassVar[tuple[str, ...]] = ("rbd",)

    def describe(self) -> str:
        return f"rbd:{self.pool}/{self.image}"

    def label(self) -> str:
        return f"{self.pool}/{self.image}"

    def disk_fields(self) -> dict[str, Any]:
        return {**attrs(self, "pool", "image", "ceph_conf"), "rbd_user": self.user}

    @classmethod
    def _from_record(cls, data: dict[str, Any]) -> RBDLocation:
        pool, image = required(data, "pool", "image")
        conf, user = data.get("ceph_conf"), data.get("user")
        return cls(
            pool,
            image,
            None if conf is None else str(conf),
            None if user is None else str(user),
            format=str(data.get("format") or "raw"),
        )

    @classmethod
    def _of_disk(cls, disk: DiskLayout) -> RBDLocation:
        if not (disk.pool and disk.image):
            raise ValueError(f"disk {disk.name} names no RBD image")
        return cls(
            disk.pool, disk.image, disk.ceph_conf, disk.rbd_user, format=disk.format or "raw"
        )


class RBDBackend(DiskBackend):
    """Nova's RBD disks. :class:`RBD` runs the commands; every librados wait of this
    backend's commands (and of qemu-img on its images) gives up after ``ceph_timeout``."""

    XML_TYPES = ("network",)
    MIRRORED = True
    LOCATION = RBDLocation
    EVIDENCE = "rbd"
    NOVA_CONFIG_DRIVE = True

    def client(self, loc: Location) -> RBD:
        """The ``rbd`` CLI for ``loc``'s pool, cluster and user."""
        assert isinstance(loc, RBDLocation)
        return RBD(
            _CephArgsRunner(self.runner, self.ceph_timeout),
            pool=loc.pool,
            ceph_conf=loc.ceph_conf or DEFAULT_CEPH_CONF,
            user=loc.user,
            connect_timeout=min(self.ceph_timeout, 10),
        )

    # -- record and naming --------------------------------------------------------------

    @classmethod
    def formats(cls, backend: str) -> tuple[str, ...]:
        return ("raw",)

    @classmethod
    def record_location(cls, disk: DiskLayout) -> dict[str, Any]:
        return {
            "pool": disk.pool,
            "image": disk.image,
            "ceph_conf": disk.ceph_conf,
            "user": disk.rbd_user,
        }

    @classmethod
    def check_record_location(cls, value: Any, field: str) -> dict[str, Any]:
        from storagectl.record import schema

        name = schema.like(r"[^/@\s]+", "a valid RBD name")
        # Nova's default images_rbd_ceph_conf is "": librados then searches its defaults.
        conf = schema.optional(lambda v, f: v if v == "" else schema.path(v, f))
        spec = {
            "pool": name,
            "image": name,
            "user": schema.optional(schema.string),
            "ceph_conf": conf,
        }
        return schema.mapping(spec)(value, field)

    @classmethod
    def disk_fields_from_record(cls, location: dict[str, Any]) -> dict[str, Any]:
        return {
            "pool": location["pool"],
            "image": location["image"],
            "ceph_conf": location.get("ceph_conf"),
            "rbd_user": location.get("user"),
        }

    @classmethod
    def record_owner_check(cls, disk: DiskLayout, uuid: str) -> tuple[bool, str, str]:
        want = naming.rbd_image_name(uuid, disk.name)
        return disk.image == want, "image", want

    @classmethod
    def target(cls, backend: str, uuid: str, disk_name: str, where: TargetSettings) -> Location:
        image = naming.rbd_image_name(uuid, disk_name)
        return RBDLocation(where.pool or "", image, where.ceph_conf, where.rbd_user)

    @classmethod
    def nova_conf_for(cls, loc: Location) -> tuple[tuple[str, str, str], ...]:
        assert isinstance(loc, RBDLocation)
        out = [
            ("libvirt", "images_type", loc.backend),
            ("libvirt", "images_rbd_pool", loc.pool),
            ("libvirt", "images_rbd_ceph_conf", loc.ceph_conf or DEFAULT_CEPH_CONF),
        ]
        if loc.user:
            out.append(("libvirt", "rbd_user", loc.user))
        return tuple(out)

    @classmethod
    def present(cls, loc: Location, view: StorageView) -> bool | None:
        assert isinstance(loc, RBDLocation)
        conf = loc.ceph_conf or DEFAULT_CEPH_CONF
        return cls.listing(view, loc.pool, conf, loc.user).has(loc.image)

    @classmethod
    def aside(cls, loc: Location, uuid: str, disk_name: str, n: int) -> Location:
        assert isinstance(loc, RBDLocation)
        base = naming.rbd_image_name(uuid, disk_name)
        return replace(loc, image=naming.aside_name(base, "rbd", n))

    @classmethod
    def owns_retained(cls, loc: Location, uuid: str, disk_name: str, instance_dir: str) -> bool:
        assert isinstance(loc, RBDLocation)
        base = naming.rbd_image_name(uuid, disk_name)
        return loc.image == base or naming.is_aside_of(loc.image, base, "rbd")

    @classmethod
    def remove_command(cls, loc: Location) -> str:
        assert isinstance(loc, RBDLocation)
        conf = f" --conf {loc.ceph_conf}" if loc.ceph_conf else ""
        user = f" --id {loc.user}" if loc.user else ""
        return f"rbd{conf}{user} rm {loc.pool}/{loc.image}"

    @classmethod
    def disk_info_keys(cls, loc: Location) -> list[str]:
        assert isinstance(loc, RBDLocation)
        return [f"rbd:{loc.pool}/{loc.image}", f"{loc.pool}/{loc.image}"]

    # -- volumes ------------------------------------------------------------------------

    def exists(self, loc: Location) -> bool:
        assert isinstance(loc, RBDLocation)
        return self.client(loc).exists(loc.image)

    def create(self, loc: Location, size: int, *, sparse: bool = False) -> None:
        """``rbd create --size SIZEB`` (thin, like every RBD image)."""
        assert isinstance(loc, RBDLocation)
        self.client(loc).create(loc.image, size)

    def remove(self, loc: Location, *, ours: bool = False) -> None:
        """``ours``: a copy target whose writer (a qemu-img the engine ran) is gone; its
        watch may linger up to the OSDs' osd_client_watch_timeout, and the removal waits
        it out (:data:`STALE_WATCH_WAIT`) instead of failing."""
        assert isinstance(loc, RBDLocation)
        wait = STALE_WATCH_WAIT if ours else 0.0
        self.client(loc).remove(loc.image, stale_watch_wait=wait)

    def rename(self, src: Location, dst: Location) -> None:
        """``rbd rename POOL/SRC POOL/DST`` (idempotent)."""
        assert isinstance(src, RBDLocation) and isinstance(dst, RBDLocation)
        if self.exists(src) and not self.exists(dst):
            spec_src, spec_dst = f"{src.pool}/{src.image}", f"{dst.pool}/{dst.image}"
            self.client(src)._rbd("rename", spec_src, spec_dst, what=f"rename image {spec_src}")  # noqa: SLF001

    def free_bytes(self, loc: Location) -> int | None:
        return self.client(loc).free_bytes()

    @classmethod
    def space_name(cls, loc: Location) -> str:
        assert isinstance(loc, RBDLocation)
        return f"RBD pool {loc.pool}"

    def check(self, loc: Location, *, target: bool) -> None:
        assert isinstance(loc, RBDLocation)
        try:
            self.client(loc).ping()
        except errors.CephUnreachable as exc:
            raise Refusal(reason=f"Ceph is unreachable: {exc}") from exc
        except errors.BackendError as exc:
            raise Refusal(reason=f"pool {loc.pool}: {exc}") from exc

    def check_key(self, loc: Location) -> Any:
        assert isinstance(loc, RBDLocation)
        return (loc.pool, loc.ceph_conf, loc.user)

    # -- qemu and libvirt ---------------------------------------------------------------

    def qemu_spec(self, loc: Location, *, size: int | None = None) -> QemuSpec:
        assert isinstance(loc, RBDLocation)
        from storagectl.backends.files import opt

        uri = self.client(loc).qemu_uri(loc.image)
        t = str(self.ceph_timeout)
        # librados options ride in the filename; they bound hangs on a dying cluster. The
        # rbd driver's structured options (pool, image, user, conf) have no room for
        # librados settings; its legacy filename, parsed as on the command line, does.
        uri += f":client_mount_timeout={t}:rados_mon_op_timeout={t}:rados_osd_op_timeout={t}"
        # (``size`` is not needed: an RBD image is exactly the disk's size.)
        return QemuSpec("raw", uri, f"driver=raw,file.driver=rbd,file.filename={opt(uri)}")

    def domain_context(self, original_xml: str, plan: Any, *, resolve: bool) -> Any:
        """``(username, secret uuid, monitors)`` for new rbd disks: the credentials of
        :func:`rbd_credentials`, the monitors of an rbd disk the domain already has, else
        (``resolve``) those of ``ceph mon dump``, as Nova does."""
        user, secret = rbd_credentials(original_xml, plan)
        hosts = rbd_auth(original_xml)[2]
        dest = _first_rbd_dest(plan)
        if resolve and dest is not None and not hosts:
            hosts = self.mon_hosts(dest)
        return user, secret, hosts

    def disk_xml(
        self, loc: Location, context: Any
    ) -> tuple[str, ET.Element, tuple[str, str] | None]:
        """``<disk type='network'><source protocol='rbd' name='vms/U_disk'><host .../>``,
        with ``<auth>`` when there is a secret."""
        assert isinstance(loc, RBDLocation)
        user, secret, hosts = context if context is not None else (None, None, [])
        src = ET.Element("source", {"protocol": "rbd", "name": f"{loc.pool}/{loc.image}"})
        for name, port in hosts:
            ET.SubElement(src, "host", {"name": name} | ({"port": port} if port else {}))
        auth = (user or loc.user or "admin", secret) if secret else None
        return "network", src, auth

    def mon_hosts(self, loc: Location) -> list[tuple[str, str | None]]:
        """Monitor addresses for a ``<source protocol='rbd'>``, as Nova writes them.

        Runs ``ceph --conf C --id U mon dump --format json``::

            {"epoch":1,"mons":[{"rank":0,"name":"a","public_addrs":{"addrvec":[
              {"type":"v1","addr":"127.0.0.1:40113","nonce":0}]},"addr":"127.0.0.1:40113/0"}]}
        """
        assert isinstance(loc, RBDLocation)
        argv = ["ceph", "--conf", loc.ceph_conf or DEFAULT_CEPH_CONF]
        if loc.user:
            argv += ["--id", loc.user]
        wait = min(self.ceph_timeout, 10)
        argv += ["--connect-timeout", str(wait), "mon", "dump", "--format", "json"]
        try:
            out = self.runner.run(*argv, timeout=3 * wait + 5).stdout
            return parse_mon_hosts(json.loads(out))
        except (errors.StorageCtlError, ValueError) as exc:
            raise errors.CephUnreachable(
                conf=loc.ceph_conf,
                user=loc.user or "admin",
                reason=f"cannot read the monitor map: {exc}",
            ) from exc

    # -- the record's mirror: image-meta ------------------------------------------------------

    def _disk_client(self, disk: DiskLayout) -> RBD:
        return RBD(
            self.runner,
            pool=disk.pool or "",
            ceph_conf=disk.ceph_conf or DEFAULT_CEPH_CONF,
            user=disk.rbd_user,
        )

    def write_mirror(self, disk: DiskLayout, items: dict[str, str], prefix: str) -> None:
        rbd, image = self._disk_client(disk), disk.image or ""
        have = rbd.get_meta(image)
        for key in [k for k in have if k.startswith(prefix) and k not in items]:
            rbd.remove_meta(image, key)
        for key, value in items.items():
            if have.get(key) != value:
                rbd.set_meta(image, key, value)

    def read_mirror(self, disk: DiskLayout, prefix: str) -> dict[str, str] | None:
        rbd = self._disk_client(disk)
        if not rbd.exists(disk.image or ""):
            return None
        return {k: v for k, v in rbd.get_meta(disk.image or "").items() if k.startswith(prefix)}

    # -- inspection ---------------------------------------------------------------------

    @classmethod
    def classify(cls, d: DomainDisk, chk: Checker) -> DiskLayout | None:
        """``<source protocol='rbd' name='<pool>/<uuid>_<name>'>``: Nova's RBD backend;
        other images (``volumes/volume-...``) and protocols are volumes."""
        if d.protocol != "rbd":
            return None
        pool, _, image = (d.source or "").partition("/")
        parsed = naming.parse_rbd_image_name(image)
        if not parsed or parsed[0] != chk.uuid:
            return None
        name = parsed[1]
        user = chk.nova.rbd_user or d.auth_username
        loc = RBDLocation(pool, image, chk.nova.images_rbd_ceph_conf, user)
        return cls.classified(d, name, loc)

    @classmethod
    def orphans(cls, scan: OrphanScan) -> list[Finding]:
        """Images named as Nova names instance disks whose instance is not defined, and
        leftover resize snapshots, in the pools the instances use and nova.conf's pool.
        A pool is shared by many hosts: unless ``complete``, an image whose instance has
        no directory here, or that a client has open, is only counted (unowned)."""
        nova, out = scan.nova, []
        pools = {
            (d.pool, d.ceph_conf or nova.images_rbd_ceph_conf, d.rbd_user)
            for i in scan.instances
            for d in i.disks
            if d.pool and d.backend is Backend.RBD
        }
        if nova.images_type in cls.BACKENDS or pools:
            pools.add((nova.images_rbd_pool, nova.images_rbd_ceph_conf, nova.rbd_user))
        for pool, conf, user in sorted(pools, key=str):
            listing = cls.listing(scan.view, pool or "", conf or "", user)
            if listing.error:
                scan.errors.append(f"cannot list RBD pool {pool}: {listing.error}")
                continue
            untraced = in_use = 0
            for image, vol in sorted(listing.volumes.items()):
                parsed = naming.parse_rbd_image_name(image)
                if not parsed:
                    continue
                if parsed[0] not in scan.defined and image not in scan.kept:
                    if not scan.complete and parsed[0] not in scan.traces:
                        untraced += 1  # another host's instance, as far as this host can tell
                        continue
                    if cls.watchers(scan.view, pool or "", conf or "", user, image):
                        in_use += 1  # a client (a guest on a host not scanned?) has it open
                        continue
                    message = f"RBD image {pool}/{image} belongs to no defined domain"
                elif RESIZE_SNAPSHOT in vol.snapshots:
                    message = (
                        f"RBD image {pool}/{image} still has a leftover {RESIZE_SNAPSHOT} snapshot"
                    )
                else:
                    continue
                out.append(Finding.of(Code.ORPHAN_VOLUME, parsed[0], parsed[1], message))
            out += scan.unowned(
                f"rbd:{pool}",
                ("RBD image", "RBD images"),
                f"in pool {pool}",
                [
                    (
                        untraced,
                        "whose instance has no directory on this host (other compute hosts' "
                        "in a shared pool, or orphans: audit all the hosts of the pool together "
                        "with --complete to tell)",
                    ),
                    (in_use, "open by a client (rbd status)"),
                ],
            )
        return out

    @classmethod
    def listing(cls, view: StorageView, pool: str, conf: str, user: str | None) -> Listing:
        """The images of ``pool`` (one ``rbd ls -l`` per run, see :class:`StorageView`)."""

        def make() -> Listing:
            try:
                images = RBD(view.runner, pool=pool, ceph_conf=conf, user=user).list_long()
            except errors.StorageCtlError as exc:
                LOG.debug("cannot list pool %s", pool, exc_info=True)
                return Listing(error=str(exc))
            return Listing({i.name: Volume(i.size, snapshots=i.snapshots) for i in images})

        return view.listing(("rbd", pool, conf, user), make)

    @staticmethod
    def watchers(
        view: StorageView, pool: str, conf: str, user: str | None, image: str
    ) -> list[str]:
        """Addresses of the clients that have ``pool/image`` open (``rbd status``); a
        status that cannot be read counts as one unknown client: an image is only called
        an orphan when nothing can be using it."""
        try:
            return RBD(view.runner, pool=pool, ceph_conf=conf, user=user).watchers(image)
        except errors.StorageCtlError as exc:
            LOG.debug("cannot read the status of %s/%s: %s", pool, image, exc)
            return ["(status unreadable)"]

    @classmethod
    def verify(cls, disk: DiskLayout, chk: Checker, *, backing_hint: str | None) -> None:
        pool, image = disk.pool or "", disk.image or ""
        conf = disk.ceph_conf or chk.nova.images_rbd_ceph_conf
        listing = cls.listing(chk.storage, pool, conf, disk.rbd_user)
        if listing.error:
            chk.add(
                Code.NOT_INSPECTED,
                disk.name,
                f"cannot check RBD image {pool}/{image}: {listing.error}",
            )
            return
        vol = listing.volumes.get(image)
        if vol is None:
            chk.add(
                Code.DISK_MISSING,
                disk.name,
                f"RBD image {pool}/{image} ({disk.target}) does not exist",
            )
            return
        chk.observe(disk, virtual_size=vol.size)


# -- the domain's rbd credentials ------------------------------------------------------

_DISK_RE = re.compile(r"<disk[\s>].*?</disk>", re.DOTALL)


def _first_rbd_dest(plan: Any) -> RBDLocation | None:
    return next((m.dest for m in plan.moves if isinstance(m.dest, RBDLocation)), None)


def rbd_auth(xml: str) -> tuple[str | None, str | None, list[tuple[str, str | None]]]:
    """``(username, secret uuid, hosts)`` of the first rbd disk of the domain, if any."""
    for match in _DISK_RE.finditer(xml):
        el = ET.fromstring(match.group(0))
        src = el.find("source")
        if el.get("type") == "network" and src is not None and src.get("protocol") == "rbd":
            auth = el.find("auth")
            secret = auth.find("secret") if auth is not None else None
            hosts = [(h.get("name", ""), h.get("port")) for h in src.findall("host")]
            return (
                auth.get("username") if auth is not None else None,
                secret.get("uuid") if secret is not None else None,
                hosts,
            )
    return None, None, []


def rbd_credentials(original: str, plan: Any) -> tuple[str | None, str | None]:
    """``(username, secret uuid)`` for the ``<auth>`` of new rbd disks, first found of:

    1. ``--secret-uuid`` (with nova.conf's ``rbd_user``, the user the copy ran as);
    2. the ``<auth>`` of an rbd disk the domain already has (its user and secret);
    3. nova.conf ``[libvirt] rbd_secret_uuid`` with ``rbd_user``, as Nova writes it.

    ``(None, None)``: no secret anywhere, the disk gets no ``<auth>`` (a cluster
    without cephx).
    """
    dest = _first_rbd_dest(plan)
    conf_user = dest.user if dest is not None else None
    user, secret, _hosts = rbd_auth(original)
    if plan.options.secret_uuid:
        return conf_user or user, plan.options.secret_uuid
    if secret:
        return user or conf_user, secret
    if plan.nova_secret_uuid:
        return conf_user, plan.nova_secret_uuid
    return user or conf_user, None


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


class _CephArgsRunner:
    """A runner whose ceph/rbd commands give up on a hung cluster.

    :class:`RBD` bounds only the search for a monitor; ``rbd info``/``rm`` on a cluster
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
