"""Live moves: libvirt block copy of a running guest's disks (``virDomainBlockCopy``).

The target is made exactly as for an offline move (the create step: an LV rounded to
extents, an RBD image, a file with an explicit format), then, per disk::

    blockCopy(dev, <disk> of the target, flags=REUSE_EXT | TRANSIENT_JOB
              [| SYNCHRONOUS_WRITES], bandwidth)          -> mirror started
    block-job event READY (<mirror ready='yes'>)           -> ready
    blockJobAbort(dev, PIVOT)                              -> pivoted

* the target's format is given in the destination ``<disk>`` (``<driver type>``):
  nothing is probed; QEMU already has the source open;
* ``REUSE_EXT``: libvirt and QEMU write into the target we made (an LV, an RBD image
  with its name, a file of our format), never create their own;
* ``TRANSIENT_JOB``: libvirt refuses a copy of a persistent domain without it; at the
  pivot libvirt rewrites the persistent definition's source too - the switch step then
  redefines it from the XML saved at the start, changing only the moved disks;
* ready is driven by libvirt's block-job events (``VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2``), not
  polling: a poll of ``blockJobInfo`` cannot tell a finished job from a failed one
  (Nova's ``guest.py`` says so) and reports ``cur == end - 1`` until QEMU says ready.
  The live XML's ``<mirror ready=...>`` is read once when the wait starts (a resumed
  migration: the job may be ready already) and then every few seconds as a safety net
  for a lost event; ``blockJobInfo`` is read only for the progress bar;
* a guest writing faster than the target accepts never lets the mirror become ready:
  the wait is bounded (``converge_timeout``); at the limit the jobs are aborted, the
  targets removed and the guest is still on its source, as it was. QEMU 7.2 can only
  block guest writes until they reach the target (``SYNCHRONOUS_WRITES``, "write-blocking")
  when the job starts, so that is an option of the command, not a fall-back.

Once a disk is pivoted, the guest writes only to the target: from then on the only way
is forward (``--resume``); a move back is another live move.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from storagectl import errors

LOG = logging.getLogger(__name__)

#: how often the live XML is re-read while waiting for READY events (a lost event)
SAFETY_POLL = 5.0
#: how often blockJobInfo is read for progress
PROGRESS_POLL = 1.0


class LiveError(errors.StorageCtlError):
    template = "live move of %(instance)s: %(reason)s"


class NotConverged(LiveError):
    template = (
        "live move of %(instance)s: the copy of %(disks)s was not ready after %(timeout)s s "
        "(the guest writes faster than the target accepts, or --bwlimit is too low); "
        "retry with --sync-writes (guest writes wait for the target), a longer "
        "--converge-timeout, or shut the instance off and move it offline"
    )


class PausedVerifyFailed(LiveError):
    template = (
        "live move of %(instance)s: --verify paused found %(disk)s differing before the "
        "pivot (%(reason)s); the copies were aborted and the guest resumed on its source"
    )


@dataclass(frozen=True)
class Mirror:
    """The state of one disk as the live domain XML says it."""

    source: str | None  # the disk's current <source> (file/dev path or pool/image)
    mirror: str | None  # the <mirror>'s <source>, when a copy job runs
    ready: str | None  # the <mirror ready=...> value: None, "yes", "abort", "pivot"


def disk_xml(disk_type: str, fmt: str, source: ET.Element, auth: tuple[str, str] | None) -> str:
    """The destination ``<disk>`` of a block copy: its type, explicit format, source
    (with ``<auth>`` inside ``<source>`` for a network disk)."""
    disk = ET.Element("disk", {"type": disk_type, "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": fmt})
    src = ET.fromstring(ET.tostring(source))
    if auth is not None:
        auth_el = ET.SubElement(src, "auth", {"username": auth[0]})
        ET.SubElement(auth_el, "secret", {"type": "ceph", "uuid": auth[1]})
    disk.append(src)
    return ET.tostring(disk, encoding="unicode")


def source_name(source: ET.Element | None) -> str | None:
    """A ``<source>``'s file, dev or (network) name."""
    if source is None:
        return None
    return source.get("file") or source.get("dev") or source.get("name")


def mirrors(live_xml: str) -> dict[str, Mirror]:
    """Every disk of a live domain XML by target dev, with its copy job if any::

    <disk type='file' device='disk'>
      <source file='/srv/i/U/disk' index='2'/>
      <mirror type='file' job='copy' ready='yes'>
        <format type='raw'/><source file='/srv/i/U/disk.migrating' index='3'/>
      </mirror>
      <target dev='vda' bus='virtio'/>
    """
    out = {}
    for disk in ET.fromstring(live_xml).iter("disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        mirror = disk.find("mirror")
        out[target.get("dev")] = Mirror(
            source=source_name(disk.find("source")),
            mirror=None if mirror is None else source_name(mirror.find("source")),
            ready=None if mirror is None else mirror.get("ready"),
        )
    return out


# -- libvirt's event loop ---------------------------------------------------------------

_loop_lock = threading.Lock()
_loop_started = False


def event_loop() -> None:
    """Start libvirt's default event loop in a daemon thread (once per process; must run
    before the connection that registers callbacks is opened)."""
    global _loop_started
    import libvirt

    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # noqa: BLE001 - the loop must outlive one bad event
                    LOG.exception("libvirt event loop")
                    time.sleep(0.1)

        threading.Thread(target=run, name="libvirt events", daemon=True).start()
        _loop_started = True


class LiveDomain:
    """Block jobs of one running domain over its own read-write connection, with
    block-job events. ``with LiveDomain(uri, uuid) as live: ...``"""

    def __init__(self, uri: str, uuid: str, *, timeout: float | None = None) -> None:
        import libvirt

        from storagectl.host.hosts import ConnectTimeout, open_libvirt

        event_loop()
        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        try:
            self.conn = open_libvirt(uri, read_only=False, timeout=timeout)
        except (ConnectTimeout, libvirt.libvirtError) as exc:
            raise errors.HostUnreachable(uri=uri, reason=str(exc)) from exc
        try:
            self.dom = self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            self.conn.close()
            raise errors.InstanceNotFound(instance=uuid, hosts=uri) from exc
        self.uuid = uuid
        self._cond = threading.Condition()
        self.events: dict[str, int] = {}  # target dev -> last block-job event status
        self.event_times: dict[str, float] = {}
        try:
            self._cb = self.conn.domainEventRegisterAny(
                self.dom, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._on_event, None
            )
        except libvirt.libvirtError as exc:
            self.conn.close()
            raise LiveError(instance=uuid, reason=f"no block-job events: {exc}") from exc

    def _on_event(self, _conn, _dom, disk, _type, status, _opaque) -> None:  # noqa: ANN001
        # BLOCK_JOB_2 names the disk by its target dev
        with self._cond:
            self.events[disk] = status
            self.event_times[disk] = time.monotonic()
            self._cond.notify_all()

    def __enter__(self) -> LiveDomain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.domainEventDeregisterAny(self._cb)
        with contextlib.suppress(Exception):
            self.conn.close()

    # -- state ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _libvirt(self, what: str):  # noqa: ANN202 - libvirt's errors as ours
        import libvirt

        try:
            yield
        except libvirt.libvirtError as exc:
            raise LiveError(instance=self.uuid, reason=f"{what}: {exc}") from exc

    def is_active(self) -> bool:
        with self._libvirt("cannot read the domain's state"):
            return bool(self.dom.isActive())

    def is_running(self) -> bool:
        import libvirt

        with self._libvirt("cannot read the domain's state"):
            return self.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    def state(self) -> dict[str, Mirror]:
        with self._libvirt("cannot read the live domain XML"):
            return mirrors(self.dom.XMLDesc(0))

    def has_job(self, dev: str) -> bool:
        with self._libvirt(f"cannot read the block job of {dev}"):
            return bool(self.dom.blockJobInfo(dev, 0))

    def progress(self, dev: str) -> float | None:
        """Percent copied (``blockJobInfo``), None when no job runs."""
        with self._libvirt(f"cannot read the block job of {dev}"):
            info = self.dom.blockJobInfo(dev, 0)
        if not info or not info.get("end"):
            return None
        return 100.0 * info["cur"] / info["end"]

    def wait_synced(self, devs: Iterable[str], timeout: float = 60.0) -> None:
        """With the guest suspended: until each copy has written what it had left
        (``cur == end``), so that a compare sees the target complete."""
        deadline = time.monotonic() + timeout
        for dev in devs:
            while True:
                with self._libvirt(f"cannot read the block job of {dev}"):
                    info = self.dom.blockJobInfo(dev, 0)
                if not info or info.get("cur") == info.get("end"):
                    break
                if time.monotonic() > deadline:
                    raise LiveError(instance=self.uuid, reason=f"the copy of {dev} did not settle")
                time.sleep(0.02)

    # -- the job -------------------------------------------------------------------

    def copy(self, dev: str, dest_xml: str, *, bandwidth: int | None, sync_writes: bool) -> None:
        """Start the mirror of ``dev`` into the existing target ``dest_xml``."""
        import libvirt

        flags = libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
        flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
        if sync_writes:
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES
        params = {}
        if bandwidth:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH] = bandwidth
        with self._cond:
            self.events.pop(dev, None)
        LOG.info("blockCopy %s %s: %s flags=%#x %s", self.uuid, dev, dest_xml, flags, params)
        with self._libvirt(f"libvirt refused the block copy of {dev}"):
            self.dom.blockCopy(dev, dest_xml, params, flags)

    def wait_ready(
        self,
        devs: Iterable[str],
        *,
        timeout: float,
        on_progress: Callable[[str, float], None] = lambda _d, _p: None,
        need: int | None = None,
        deadline: float | None = None,
    ) -> None:
        """Until every ``dev``'s mirror is ready (event READY or ``ready='yes'``), or only
        ``need`` of them; LiveError if a job fails or vanishes, NotConverged after
        ``timeout`` s (or at ``deadline``, a time.monotonic() of a longer wait that
        ``timeout`` started)."""
        import libvirt

        todo = set(devs)
        enough = len(todo) - min(need, len(todo)) if need is not None else 0
        if deadline is None:
            deadline = time.monotonic() + timeout
        next_check = 0.0  # read the live XML at once: a resumed job may be ready already
        next_progress = 0.0
        while len(todo) > enough:
            now = time.monotonic()
            with self._cond:
                for dev in list(todo):
                    status = self.events.get(dev)
                    if status == libvirt.VIR_DOMAIN_BLOCK_JOB_READY:
                        todo.discard(dev)
                    elif status in (
                        libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED,
                        libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED,
                    ):
                        failed = status == libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED
                        what = "failed" if failed else "was cancelled"
                        raise LiveError(
                            instance=self.uuid, reason=f"the block copy of {dev} {what}"
                        )
            if len(todo) <= enough:
                break
            if now >= next_check:
                next_check = now + SAFETY_POLL
                if not self.is_active():
                    raise LiveError(instance=self.uuid, reason="the guest stopped during the copy")
                state = self.state()
                for dev in list(todo):
                    m = state.get(dev)
                    if m is None or m.mirror is None:
                        raise LiveError(
                            instance=self.uuid, reason=f"no block copy of {dev} is running"
                        )
                    if m.ready == "yes":
                        todo.discard(dev)
                    elif m.ready == "abort":
                        raise LiveError(instance=self.uuid, reason=f"the copy of {dev} failed")
            if now >= next_progress:
                next_progress = now + PROGRESS_POLL
                for dev in todo:
                    with contextlib.suppress(Exception):
                        p = self.progress(dev)
                        if p is not None:
                            on_progress(dev, min(p, 99.9))
            if now >= deadline:
                raise NotConverged(
                    instance=self.uuid, disks=", ".join(sorted(todo)), timeout=int(timeout)
                )
            with self._cond:
                self._cond.wait(timeout=min(PROGRESS_POLL, max(deadline - now, 0.01)))

    def pivot(self, dev: str) -> float:
        """Switch the guest to the target; the seconds from the call to the job's end."""
        import libvirt

        start = time.monotonic()
        with self._libvirt(f"the pivot of {dev} failed"):
            self.dom.blockJobAbort(dev, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        return time.monotonic() - start

    def abort(self, dev: str) -> None:
        """Cancel the copy of ``dev`` (the guest stays on its source); no job: nothing."""
        import libvirt

        try:
            self.dom.blockJobAbort(dev, 0)
        except libvirt.libvirtError as exc:
            if self.has_job(dev):
                why = f"cannot abort the copy of {dev}: {exc}"
                raise LiveError(instance=self.uuid, reason=why) from exc
            LOG.info("no job to abort on %s: %s", dev, exc)

    def suspend(self) -> None:
        with self._libvirt("cannot suspend the guest"):
            self.dom.suspend()

    def resume(self) -> None:
        with self._libvirt("cannot resume the guest"):
            self.dom.resume()
