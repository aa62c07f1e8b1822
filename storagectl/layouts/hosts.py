"""Talking to libvirt: open each hypervisor read-only and list its domains.

Hosts are scanned concurrently, one fetch thread each (libvirt-python releases the
GIL during RPC), while the calling thread parses the XML already fetched - and, through
``on_domain``, inspects it: on a 1,000-domain host the RPCs and the inspection overlap
instead of adding up. Domain states come from one bulk call, not one RPC per domain. An
unreachable host is reported in its :class:`HostReport` and the others are still
scanned. This is the only module that imports ``libvirt``.
"""

from __future__ import annotations

import functools
import logging
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlparse

from storagectl.layouts.domain import DomainInfo, DomainXMLError, parse_domain_xml
from storagectl.layouts.model import HostReport

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


#: What a fetch thread hands the parsing thread: the host's scan (first, once), then
#: (name, xml, state) per domain, then _DONE.
_DONE = object()
#: Domain XMLs fetched ahead of the parser at most (bounds memory on huge hosts).
_QUEUE_DEPTH = 256

OnDomain = Callable[[HostScan, ScannedDomain], None]


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


def _fetch(uri: str, index: int, out: queue.Queue, stop: threading.Event) -> None:
    """Producer: open ``uri`` read-only and put its domains' XML on ``out``.

    libvirt-python releases the GIL while an RPC is in flight, so the consumer parses and
    inspects domain N while domain N+1's XML is on its way.
    """
    import libvirt

    _silence_libvirt()
    try:
        try:
            conn = libvirt.openReadOnly(uri)
        except libvirt.libvirtError as exc:
            LOG.debug("cannot open %s", uri, exc_info=True)
            out.put((index, HostScan(HostReport(uri=uri, hostname=None, error=_msg(exc)))))
            return
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
                out.put((index, scan))
                return
            out.put((index, scan))
            states = _domain_states(conn, libvirt) if domains else {}
            for dom in domains:
                if stop.is_set():
                    return
                try:
                    xml = dom.XMLDesc(0)
                    state = states.get(dom.UUIDString().lower())
                    if state is None:
                        state = _STATES.get(dom.state()[0], "unknown")
                    name = dom.name()
                except libvirt.libvirtError as exc:
                    # A domain undefined while we scan: not an error of the host.
                    LOG.debug("domain vanished during scan of %s: %s", uri, exc)
                    continue
                out.put((index, (name, xml, state)))
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
    except BaseException as exc:  # never leave the consumer waiting for _DONE
        LOG.debug("scan of %s failed", uri, exc_info=True)
        out.put((index, exc))
    finally:
        out.put((index, _DONE))


def scan_hosts(uris: Sequence[str], *, on_domain: OnDomain | None = None) -> list[HostScan]:
    """List every domain (running or not) of each hypervisor, read-only, all at once.

    One fetch thread per host; the domain XML is parsed in the calling thread, which
    also runs ``on_domain(scan, domain)`` for each domain as soon as it is parsed (so the
    caller's work overlaps the RPCs still in flight). Results in the order of ``uris``.
    """
    out: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    stop = threading.Event()
    scans: list[HostScan | None] = [None] * len(uris)
    threads = [
        threading.Thread(target=_fetch, args=(uri, i, out, stop), name=f"scan-{i}", daemon=True)
        for i, uri in enumerate(uris)
    ]
    for t in threads:
        t.start()
    pending, failure = len(threads), None
    try:
        while pending:
            index, item = out.get()
            if item is _DONE:
                pending -= 1
            elif isinstance(item, HostScan):
                scans[index] = item
            elif isinstance(item, BaseException):
                failure = failure or item
            else:
                scan = scans[index]
                assert scan is not None  # the producer puts the scan before any domain
                _parse_one(scan, *item, on_domain=on_domain)
    finally:
        if pending:  # the consumer failed: stop the producers, unblock them, reap them
            stop.set()
            while pending:
                if out.get()[1] is _DONE:
                    pending -= 1
        for t in threads:
            t.join()
    if failure is not None:
        raise failure
    return [
        s if s is not None else HostScan(HostReport(uri=u, hostname=None, error="not scanned"))
        for s, u in zip(scans, uris, strict=True)
    ]


def scan_host(uri: str) -> HostScan:
    """List every domain (running or not) of one hypervisor, read-only."""
    return scan_hosts([uri])[0]


def _parse_one(
    scan: HostScan, name: str, xml: str, state: str, *, on_domain: OnDomain | None
) -> None:
    host = scan.report.hostname or scan.report.uri
    try:
        info = parse_domain_xml(xml, where=f"domain {name} on {host}")
    except DomainXMLError as exc:
        scan.broken.append((name, str(exc)))
        return
    dom = ScannedDomain(info, state)
    scan.domains.append(dom)
    if on_domain is not None:
        on_domain(scan, dom)


def _msg(exc: Exception) -> str:
    text = getattr(exc, "get_error_message", lambda: None)() or str(exc)
    return " ".join(text.split())
