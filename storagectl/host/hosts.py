"""Talking to libvirt: open each hypervisor read-only and list its domains.

Hosts are scanned concurrently (libvirt-python releases the GIL during RPC); an
unreachable host is reported in its :class:`HostReport` and the others are still
scanned. Domain states come from one bulk call, not one RPC per domain.

Within one host a fetch thread runs the RPCs while the scanning thread parses the XML
and reads each instance's record (``on_domain``); the syscall-heavy inspection comes
after the scan, single-threaded (see :func:`scan_host`). This is the only module that
imports ``libvirt``.
"""

from __future__ import annotations

import functools
import logging
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

from storagectl.host.domain import DomainInfo, DomainXMLError, parse_domain_xml
from storagectl.model.layout import HostReport

LOG = logging.getLogger(__name__)

_STATES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


@dataclass
class ScannedDomain:
    info: DomainInfo
    state: str
    #: disks the running guest reaches through a live alias: (target dev, alias path)
    live_aliases: tuple[tuple[str, str], ...] = ()


@dataclass
class HostScan:
    report: HostReport
    domains: list[ScannedDomain] = field(default_factory=list)
    # Domains whose XML could not be parsed: (name or uuid, reason).
    broken: list[tuple[str, str]] = field(default_factory=list)

    @property
    def local(self) -> bool:
        return is_local_uri(self.report.uri)


def is_local_uri(uri: str) -> bool:
    """Whether a libvirt URI names this machine (so its files can be read here).

    >>> is_local_uri("qemu:///system"), is_local_uri("qemu+ssh://cn7/system")
    (True, False)
    """
    host = urlparse(uri).hostname
    return host in (None, "", "localhost", "127.0.0.1", "::1", _hostname())


@functools.cache
def _hostname() -> str:
    return socket.gethostname()


def _silence_libvirt() -> None:
    import libvirt

    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _domain_states(conn, libvirt) -> dict[str, str]:  # noqa: ANN001
    """Every domain's state in ONE call (``virConnectGetAllDomainStats``), by uuid; empty
    when the driver cannot tell (then the state is asked per domain)."""
    try:
        stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
    except (libvirt.libvirtError, AttributeError):
        LOG.debug("bulk domain stats unavailable; asking each domain", exc_info=True)
        return {}
    return {
        dom.UUIDString().lower(): _STATES.get(st.get("state.state", -1), "unknown")
        for dom, st in stats
    }


#: Seconds a connection to a hypervisor may take (``--connect-timeout``).
CONNECT_TIMEOUT = 10.0


class ConnectTimeout(Exception):
    """A hypervisor did not answer within the connect timeout."""


def open_libvirt(uri: str, *, read_only: bool = True, timeout: float | None = None):  # noqa: ANN201
    """``libvirt.openReadOnly(uri)`` (or ``libvirt.open``), given up after ``timeout``
    seconds (default :data:`CONNECT_TIMEOUT`, ``--connect-timeout``) with
    :class:`ConnectTimeout`; a libvirt failure raises its ``libvirt.libvirtError``.

    libvirt has no connect timeout of its own: an ssh transport to a host that drops
    packets, or a daemon that accepts the connection and never answers, blocks for as
    long as TCP does. The connect runs in a daemon thread; one that times out is left
    behind (it cannot be interrupted) and closes its connection if it ever gets one.
    """
    import libvirt

    limit = CONNECT_TIMEOUT if timeout is None else timeout
    done = threading.Event()
    lock = threading.Lock()
    outcome: dict[str, object] = {}

    def connect() -> None:
        try:
            conn = libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
        except BaseException as exc:  # handed to the caller
            with lock:
                outcome["error"] = exc
                done.set()
            return
        with lock:
            if outcome.get("abandoned"):
                late = conn
            else:
                outcome["conn"], late = conn, None
                done.set()
        if late is not None:
            try:
                late.close()
            except libvirt.libvirtError:
                pass

    threading.Thread(target=connect, name=f"connect {uri}", daemon=True).start()
    done.wait(limit)
    with lock:
        if not done.is_set():
            outcome["abandoned"] = True
            raise ConnectTimeout(f"no answer within {limit:g} s (--connect-timeout)")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["conn"]


#: What a domain's XML is handed to, in the scanning thread, as soon as it is parsed.
OnDomain = Callable[[HostScan, ScannedDomain], None]
_DONE = object()
#: Domain XMLs fetched ahead of the parser at most (bounds memory on huge hosts).
_QUEUE_DEPTH = 256


def scan_host(uri: str, on_domain: OnDomain | None = None) -> HostScan:
    """List every domain (running or not) of one hypervisor, read-only.

    One RPC per domain (its XML) plus one for all the states. The RPCs run in a fetch
    thread while this thread parses the XML already fetched and calls ``on_domain`` on
    it: libvirtd's work overlaps ours. Keep ``on_domain`` light on syscalls (reading a
    file or two is fine): each one hands the GIL to the fetch thread and waits to get
    it back - a fetch thread that overlapped the whole inspection (thousands of
    stat/open/pread) measured slower than no thread at all.
    """
    import libvirt

    _silence_libvirt()
    try:
        conn = open_libvirt(uri)
    except (libvirt.libvirtError, ConnectTimeout) as exc:
        LOG.debug("cannot open %s", uri, exc_info=True)
        return HostScan(HostReport(uri=uri, hostname=None, error=_msg(exc)))
    try:
        try:
            hostname = conn.getHostname()
        except libvirt.libvirtError:
            hostname = urlparse(uri).hostname or socket.gethostname()
        scan = HostScan(HostReport(uri=uri, hostname=hostname))
        try:
            domains = conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            scan.report.error = _msg(exc)
            return scan
        states = _domain_states(conn, libvirt) if domains else {}
        _fetch_and_parse(scan, domains, states, libvirt, on_domain)
        return scan
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


#: the temporary name of a file copy (backends/files.py TEMP_SUFFIX); a running guest
#: moved live keeps it (a live alias, migrate/switch.py forward)
LIVE_ALIAS_MARK = ".migrating"


def resolve_live_aliases(live_xml: str, inactive_xml: str) -> str:
    """The live XML of a guest moved live, its disks named as its persistent definition
    names them where both names are the same file (hard links, same device and inode):
    the guest runs on ``disk.migrating``, the definition and Nova say ``disk``. Any other
    difference stays as it is (a real one, for the audit to see)."""
    return live_aliases_resolved(live_xml, inactive_xml)[0]


def live_aliases_resolved(live_xml: str, inactive_xml: str) -> tuple[str, list[tuple[str, str]]]:
    """:func:`resolve_live_aliases`, and the (target dev, alias path) of each disk
    it renamed."""
    import xml.etree.ElementTree as ET

    from storagectl.host.fsutil import same_file

    try:
        live, inactive = ET.fromstring(live_xml), ET.fromstring(inactive_xml)
    except ET.ParseError:
        return live_xml, []
    persistent = {}
    for disk in inactive.iter("disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None and source is not None and source.get("file"):
            persistent[target.get("dev")] = source.get("file")
    aliases: list[tuple[str, str]] = []
    for disk in live.iter("disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is None or source is None or not source.get("file"):
            continue
        name, nova = source.get("file") or "", persistent.get(target.get("dev"))
        if not nova or nova == name or not name.endswith(LIVE_ALIAS_MARK):
            continue
        if same_file(name, nova):
            source.set("file", nova)
            aliases.append((target.get("dev") or "", name))
    if not aliases:
        return live_xml, []
    return ET.tostring(live, encoding="unicode"), aliases


def _fetch_and_parse(scan, domains, states, libvirt, on_domain) -> None:  # noqa: ANN001
    feed: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    stop = threading.Event()

    def fetch() -> None:
        try:
            for dom in domains:
                if stop.is_set():
                    return
                try:
                    xml = dom.XMLDesc(0)
                    state = states.get(dom.UUIDString().lower())
                    if state is None:
                        state = _STATES.get(dom.state()[0], "unknown")
                    aliases: list[tuple[str, str]] = []
                    if LIVE_ALIAS_MARK in xml and state in ("running", "paused"):
                        inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                        xml, aliases = live_aliases_resolved(xml, inactive)
                    name = dom.name()
                except libvirt.libvirtError as exc:
                    # A domain undefined while we scan: not an error of the host.
                    LOG.debug("domain vanished during scan of %s: %s", scan.report.uri, exc)
                    continue
                feed.put((name, xml, state, tuple(aliases)))
        except BaseException as exc:  # handed to the parsing thread, raised there
            feed.put(exc)
        finally:
            feed.put(_DONE)

    fetcher = threading.Thread(target=fetch, name=f"fetch {scan.report.uri}", daemon=True)
    fetcher.start()
    done = False
    try:
        while (item := feed.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            name, xml, state, aliases = item
            host = scan.report.hostname or scan.report.uri
            try:
                info = parse_domain_xml(xml, where=f"domain {name} on {host}")
            except DomainXMLError as exc:
                scan.broken.append((name, str(exc)))
                continue
            scanned = ScannedDomain(info, state, aliases)
            scan.domains.append(scanned)
            if on_domain is not None:
                on_domain(scan, scanned)
        done = True
    finally:
        if not done:  # we failed: stop the fetcher, unblock it, reap it
            stop.set()
            while feed.get() is not _DONE:
                pass
        fetcher.join()


def scan_hosts(
    uris: Sequence[str], *, workers: int = 8, on_domain: OnDomain | None = None
) -> list[HostScan]:
    """Scan several hypervisors at once; results in the order of ``uris``.

    With several hosts ``on_domain`` runs in several threads at once.
    """
    if len(uris) == 1:
        return [scan_host(uris[0], on_domain)]
    with ThreadPoolExecutor(max_workers=min(workers, len(uris))) as pool:
        return list(pool.map(lambda uri: scan_host(uri, on_domain), uris))


def _msg(exc: Exception) -> str:
    text = getattr(exc, "get_error_message", lambda: None)() or str(exc)
    return " ".join(text.split())
