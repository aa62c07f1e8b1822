"""Talking to libvirt: open each hypervisor read-only and list its domains.

Hosts are scanned concurrently (libvirt-python releases the GIL during RPC); an
unreachable host is reported in its :class:`HostReport` and the others are still
scanned. This is the only module that imports ``libvirt``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    return host in (None, "", "localhost", "127.0.0.1", "::1", socket.gethostname())


def _silence_libvirt() -> None:
    import libvirt

    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def scan_host(uri: str) -> HostScan:
    """List every domain (running or not) of one hypervisor, read-only."""
    import libvirt

    _silence_libvirt()
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
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
        for dom in domains:
            try:
                xml = dom.XMLDesc(0)
                state = _STATES.get(dom.state()[0], "unknown")
            except libvirt.libvirtError as exc:
                # A domain undefined while we scan: not an error of the host.
                LOG.debug("domain vanished during scan of %s: %s", uri, exc)
                continue
            try:
                info = parse_domain_xml(xml, where=f"domain {dom.name()} on {hostname}")
            except DomainXMLError as exc:
                scan.broken.append((dom.name(), str(exc)))
                continue
            scan.domains.append(ScannedDomain(info, state))
        return scan
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


def scan_hosts(uris: Sequence[str], *, workers: int = 8) -> list[HostScan]:
    """Scan several hypervisors at once; results in the order of ``uris``."""
    if len(uris) == 1:
        return [scan_host(uris[0])]
    with ThreadPoolExecutor(max_workers=min(workers, len(uris))) as pool:
        return list(pool.map(scan_host, uris))


def _msg(exc: Exception) -> str:
    text = getattr(exc, "get_error_message", lambda: None)() or str(exc)
    return " ".join(text.split())
