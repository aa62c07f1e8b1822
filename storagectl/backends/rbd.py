"""Ceph RBD backend: Nova's ``images_type=rbd`` disks, through the ``rbd`` CLI.

Every command goes through :class:`storagectl.process.Runner` and names the
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
import re
import time
from dataclasses import dataclass
from typing import Any

from storagectl import errors
from storagectl.process import Runner

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
        return f"{instance_uuid}_{disk_name}"

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
