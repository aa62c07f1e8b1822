"""The libvirt port: read-write access to one hypervisor's persistent domains.

Everything that changes a domain definition (the migration's switch, resume and
rollback; ``sandbox --define``) goes through a :class:`LibvirtPort`:

* :class:`LibvirtDomains` - the real one, over ``libvirt.open(uri)`` (opened on first
  use, within the connect timeout; ``close()`` drops the connection and the next call
  opens a new one);
* :class:`FakeLibvirt` - in memory (or in a JSON file, so that a forked process
  killed with SIGKILL leaves what it defined behind, as libvirtd would), for unit tests.

Errors, for both: :class:`~storagectl.errors.HostUnreachable` (no connection),
:class:`~storagectl.errors.InstanceNotFound` (no such domain) and :class:`SwitchError`
(libvirt refused a definition).

The read-only scan of every domain (``hosts.scan_host``) stays in ``hosts``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable
from urllib.parse import urlsplit

from storagectl import errors


class SwitchError(errors.StorageCtlError):
    """A domain definition was refused (also ``storagectl.migrate.switch.SwitchError``)."""

    template = "cannot switch %(instance)s: %(reason)s"


class DomainRef(NamedTuple):
    uuid: str
    name: str


def driver_problem(uri: str) -> str | None:
    """Why the libvirt driver of ``uri`` cannot carry a migration, or None.

    A migration's switch redefines the persistent domain and must find it redefined on
    the next connection (the next command, audit, Nova). The ``test`` driver keeps its
    domains in memory per connection, loaded afresh from its XML file (or built-in
    defaults): a redefinition is gone when the connection closes, so the record would
    point at disks the domain never uses.
    """
    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    if scheme == "test":
        return (
            "the libvirt test driver forgets a redefined domain when its connection "
            "closes, so the switch would not persist and the record would not match the "
            "domain"
        )
    return None


@runtime_checkable
class LibvirtPort(Protocol):
    """Read-write access to the persistent domains of one hypervisor (``uri``)."""

    uri: str

    def persistent_xml(self, uuid: str) -> str:
        """The persistent definition with secrets (``virsh dumpxml --inactive
        --security-info``): redefining without them would lose them."""
        ...

    def is_active(self, uuid: str) -> bool:
        """Whether the domain runs (or is paused)."""
        ...

    def define(self, xml: str) -> None:
        """Define (or redefine, by its ``<uuid>``) a persistent domain (``virsh define``)."""
        ...

    def uuid_of(self, name: str) -> str:
        """The uuid of the domain named ``name`` (InstanceNotFound if there is none)."""
        ...

    def list_domains(self) -> list[DomainRef]:
        """Every domain, running or not: uuid and name."""
        ...

    def driver_problem(self) -> str | None:
        """Why a redefinition would not persist here (see :func:`driver_problem`)."""
        ...

    def close(self) -> None:
        """Release the connection (the port can still be used: it opens a new one)."""
        ...


class LibvirtDomains:
    """The real port: ``libvirt.open(uri)``, given up after ``timeout`` seconds
    (None: ``--connect-timeout``, see ``hosts.open_libvirt``)."""

    def __init__(self, uri: str, *, timeout: float | None = None) -> None:
        self.uri = uri
        self.timeout = timeout
        self._conn = None

    def _open(self):  # noqa: ANN202 - libvirt has no type stubs
        import libvirt

        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        if self._conn is None:
            from storagectl.host.hosts import ConnectTimeout, open_libvirt

            try:
                self._conn = open_libvirt(self.uri, read_only=False, timeout=self.timeout)
            except ConnectTimeout as exc:
                raise errors.HostUnreachable(uri=self.uri, reason=str(exc)) from exc
            except libvirt.libvirtError as exc:
                raise errors.HostUnreachable(uri=self.uri, reason=str(exc)) from exc
        return self._conn

    def _domain(self, uuid: str):  # noqa: ANN202
        import libvirt

        try:
            return self._open().lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            raise errors.InstanceNotFound(instance=uuid, hosts=self.uri) from exc

    def persistent_xml(self, uuid: str) -> str:
        import libvirt

        flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
        return self._domain(uuid).XMLDesc(flags)

    def is_active(self, uuid: str) -> bool:
        return bool(self._domain(uuid).isActive())

    def define(self, xml: str) -> None:
        import libvirt

        try:
            self._open().defineXML(xml)
        except libvirt.libvirtError as exc:
            raise SwitchError(instance="domain", reason=f"libvirt refused the XML: {exc}") from exc

    def uuid_of(self, name: str) -> str:
        import libvirt

        conn = self._open()
        try:
            return conn.lookupByName(name).UUIDString().lower()
        except libvirt.libvirtError as exc:
            raise errors.InstanceNotFound(instance=name, hosts=self.uri) from exc

    def list_domains(self) -> list[DomainRef]:
        import libvirt

        conn = self._open()
        try:
            domains = conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise errors.HostUnreachable(uri=self.uri, reason=str(exc)) from exc
        return [DomainRef(d.UUIDString().lower(), d.name()) for d in domains]

    def driver_problem(self) -> str | None:
        return driver_problem(self.uri)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class FakeLibvirt:
    """An in-memory hypervisor: ``xml`` (uuid -> persistent XML, as defined, byte for
    byte) and ``active`` (uuids of running domains).

    With ``path`` the state lives in that JSON file instead (read before and written,
    atomically, after every call), so a forked process sees the domains and what it
    defines outlives a SIGKILL - as with a libvirtd. Given ``domains`` or ``active``,
    the file is (re)written with them; given neither, an existing file is used as it is.
    Without ``path``, the domains live as long as the object.

    Failure injection: ``fail("define", exc)`` raises ``exc`` from the next ``define``
    (``times`` calls; ``"*"`` for any method). ``calls`` lists ``(method, argument)``
    of this object, and ``closed`` counts the ``close()`` calls.
    """

    def __init__(
        self,
        domains: Iterable[str] = (),
        *,
        uri: str = "fake:///",
        active: Iterable[str] = (),
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.uri = uri
        self.path = Path(path) if path is not None else None
        self.xml: dict[str, str] = {}
        self.active: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.closed = 0
        self._failures: list[list] = []  # [method, exception, times left]
        domains, active = list(domains), list(active)
        if self.path is not None and self.path.exists() and not domains and not active:
            self._load()
            return
        for xml in domains:
            uuid, _name = _identity(xml, self.uri)
            self.xml[uuid] = xml
        self.active = {u.lower() for u in active}
        self._save()

    # -- failure injection ----------------------------------------------------------

    def fail(self, method: str, exc: BaseException, *, times: int = 1) -> None:
        """Raise ``exc`` from the next ``times`` calls of ``method`` (``"*"``: any)."""
        self._failures.append([method, exc, times])

    def _call(self, method: str, arg: str = "") -> None:
        self.calls.append((method, arg))
        for failure in self._failures:
            if failure[0] in (method, "*") and failure[2] > 0:
                failure[2] -= 1
                raise failure[1]
        self._load()

    # -- the port -------------------------------------------------------------------

    def persistent_xml(self, uuid: str) -> str:
        self._call("persistent_xml", uuid)
        return self.xml[self._known(uuid)]

    def is_active(self, uuid: str) -> bool:
        self._call("is_active", uuid)
        return self._known(uuid) in self.active

    def define(self, xml: str) -> None:
        with self._exclusive():  # as libvirtd: one define at a time, none lost
            self._call("define", xml)
            uuid, name = _identity(xml, self.uri)
            for other, text in self.xml.items():
                if other != uuid and _identity(text, self.uri)[1] == name:
                    raise SwitchError(
                        instance="domain",
                        reason=f"libvirt refused the XML: domain '{name}' already exists "
                        f"with uuid {other}",
                    )
            self.xml[uuid] = xml
            self._save()

    def uuid_of(self, name: str) -> str:
        self._call("uuid_of", name)
        for ref in self._refs():
            if ref.name == name:
                return ref.uuid
        raise errors.InstanceNotFound(instance=name, hosts=self.uri)

    def list_domains(self) -> list[DomainRef]:
        self._call("list_domains")
        return self._refs()

    def driver_problem(self) -> str | None:
        return None  # what is defined here stays defined

    def close(self) -> None:
        self.closed += 1

    # -- helpers --------------------------------------------------------------------

    def _refs(self) -> list[DomainRef]:
        return [DomainRef(uuid, _identity(xml, self.uri)[1]) for uuid, xml in self.xml.items()]

    def _known(self, uuid: str) -> str:
        key = uuid.lower()
        if key not in self.xml:
            raise errors.InstanceNotFound(instance=uuid, hosts=self.uri)
        return key

    def _load(self) -> None:
        if self.path is None:
            return
        state = json.loads(self.path.read_text())
        self.xml = dict(state["xml"])
        self.active = set(state["active"])

    def _save(self) -> None:
        if self.path is None:
            return
        data = json.dumps({"xml": self.xml, "active": sorted(self.active)}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.replace(tmp, self.path)

    def set_active(self, uuid: str, active: bool = True) -> None:
        """Start (or, ``active=False``, stop) a domain."""
        with self._exclusive():
            self._load()
            (self.active.add if active else self.active.discard)(self._known(uuid))
            self._save()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Read-modify-write of the state file by one caller at a time (threads of one
        process and other processes: a host conversion defines from several threads)."""
        if self.path is None:
            yield
            return
        with _FAKE_LOCK, open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


_FAKE_LOCK = threading.Lock()


def _identity(xml: str, uri: str) -> tuple[str, str]:
    """``(uuid, name)`` of a domain XML; SwitchError (as libvirt refuses it) otherwise."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SwitchError(instance="domain", reason=f"libvirt refused the XML: {exc}") from None
    uuid = (root.findtext("uuid") or "").strip().lower()
    name = (root.findtext("name") or "").strip()
    if root.tag != "domain" or not uuid or not name:
        raise SwitchError(
            instance="domain",
            reason=f"libvirt refused the XML: not a <domain> with <name> and <uuid> ({uri})",
        )
    return uuid, name
