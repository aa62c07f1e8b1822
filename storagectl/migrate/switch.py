"""The switch step: point the domain, the record and disk.info at the copies.

The persistent domain XML is changed by replacing only the text span of each moved
``<disk>`` element (found by its ``<target dev>``) in the XML libvirt gave us, so
everything else - Nova's ``<metadata>`` included - is redefined byte-for-byte. Inside
the element only ``type``, ``<driver type>``, ``<source>`` (``<backingStore>`` dropped)
and ``<auth>`` change.

A file target has the source's Nova name, so the switch of a file target runs in steps
that each leave the domain pointing at a complete, verified disk (kill -9 anywhere)::

    define(disk -> T)  ->  rename S -> R  ->  link T -> S  ->  define(disk -> S)  ->  unlink T

(T = ``<name>.migrating``, the verified copy; R = ``<name>.retained-<backend>``.) Every
step checks what is already done, so running the switch again finishes it, and
:func:`undo` walks back the same way.

Domains are read and redefined through a ``LibvirtPort`` (``storagectl.host.libvirt_port``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import replace

from storagectl.backends import Storage, registry
from storagectl.host import fsutil
from storagectl.host.fsutil import atomic_write
from storagectl.host.libvirt_port import LibvirtDomains, LibvirtPort, SwitchError
from storagectl.migrate import roundtrip
from storagectl.migrate.plan import DiskMove, Plan
from storagectl.model.layout import DiskLayout, Role
from storagectl.model.location import Location
from storagectl.record import record as rec

LOG = logging.getLogger(__name__)

_DISK_RE = re.compile(r"<disk[\s>].*?</disk>", re.DOTALL)


# -- the domain XML -----------------------------------------------------------------


def disk_span(xml: str, target_dev: str) -> tuple[int, int]:
    """Start and end offsets of the ``<disk>`` element whose target is ``target_dev``."""
    for match in _DISK_RE.finditer(xml):
        target = ET.fromstring(match.group(0)).find("target")
        if target is not None and target.get("dev") == target_dev:
            return match.start(), match.end()
    raise SwitchError(instance="domain", reason=f"no <disk> with target {target_dev}")


def rewrite_disk(
    element_text: str, disk_type: str, fmt: str, source: ET.Element, auth: tuple[str, str] | None
) -> str:
    """One ``<disk>`` element's text with a new type, format, source and auth."""
    el = ET.fromstring(element_text)
    el.set("type", disk_type)
    driver = el.find("driver")
    if driver is None:
        driver = ET.Element("driver", {"name": "qemu"})
        el.insert(0, driver)
    driver.set("type", fmt)
    children = list(el)
    old = el.find("source")
    index = children.index(old) if old is not None else children.index(driver) + 1
    source.tail = old.tail if old is not None else driver.tail
    if old is not None:
        el.remove(old)
    el.insert(index, source)
    for gone in el.findall("backingStore") + el.findall("auth"):
        el.remove(gone)
    if auth is not None:
        auth_el = ET.Element("auth", {"username": auth[0]})
        ET.SubElement(auth_el, "secret", {"type": "ceph", "uuid": auth[1]})
        auth_el.tail = source.tail
        el.insert(list(el).index(source), auth_el)
    return ET.tostring(el, encoding="unicode")


def domain_xml(
    original: str,
    plan: Plan,
    where: dict[str, Location],
    storage: Storage,
    *,
    contexts: dict | None = None,
) -> str:
    """``original`` with each disk named in ``where`` pointing at that location.

    ``contexts``: what each backend needs for its ``<disk>`` (RBD: user, secret and
    monitors), from :meth:`Storage.domain_contexts`; without it they are resolved from
    ``original`` alone (RBD: the monitors of an rbd disk it has, if any).
    """
    xml = original
    if contexts is None:
        contexts = storage.domain_contexts(original, plan, resolve=False)
    for move in plan.moves:
        loc = where.get(move.name)
        if loc is None or move.target_dev is None:
            continue
        start, end = disk_span(xml, move.target_dev)
        backend = storage.of(loc)
        disk_type, source, auth = backend.disk_xml(loc, contexts.get(type(backend)))
        new = rewrite_disk(xml[start:end], disk_type, loc.format, source, auth)
        xml = xml[:start] + new + xml[end:]
    return xml


#: The real port under its old name (``switch.Domains(uri)``).
Domains = LibvirtDomains


# -- switching and undoing ---------------------------------------------------------


def forward(
    plan: Plan,
    original_xml: str,
    domains: LibvirtPort,
    storage: Storage,
    *,
    live: bool = False,
) -> None:
    """Point the domain at the verified copies (idempotent; see the module docstring).

    ``live``: the guest runs on the copies already (pivoted, migrate/live.py); only its
    persistent definition changes. A file copy then keeps its temporary name as a second
    hard link of the file under Nova's name while the guest runs - QEMU has no way to
    rename an open image, and libvirt's live definition names it (a *live alias*; the
    scan reads the disk under its Nova name, and ``--delete-retained`` removes the alias
    once the guest is shut off).
    """
    if not live and domains.is_active(plan.uuid):
        raise SwitchError(instance=plan.uuid, reason="the domain is running; shut it off")
    contexts = storage.domain_contexts(original_xml, plan, resolve=True)
    if live:
        # A live copy can take long: what Nova changed in the persistent definition
        # meanwhile (a volume attached with AFFECT_CONFIG) stays; only the moved disks'
        # elements are rewritten, in the definition as it is now.
        original_xml = domains.persistent_xml(plan.uuid)
    where = {m.name: m.dest for m in plan.moves}
    staged = {
        m.name: m.copy_dest for m in plan.moves if m.temp_path and os.path.lexists(m.temp_path)
    }
    if staged:
        domains.define(domain_xml(original_xml, plan, where | staged, storage, contexts=contexts))
    for m in plan.moves:
        if m.name not in staged:
            continue
        final, temp = m.dest.path or "", m.temp_path or ""
        if os.path.lexists(final) and not os.path.samefile(final, temp):
            if not m.retained_path or os.path.lexists(m.retained_path):
                raise SwitchError(
                    instance=plan.uuid,
                    reason=f"{final} exists and is neither the source nor the copy",
                )
            if not live:  # a running guest's copy has the owner libvirt gave it
                _keep_owner(final, temp)
            fsutil.fsync_path(temp)  # the owner and mode, before the copy takes the name
            os.rename(final, m.retained_path)
        if not os.path.lexists(final):
            os.link(temp, final)
        fsutil.fsync_dir(os.path.dirname(final))
    domains.define(domain_xml(original_xml, plan, where, storage, contexts=contexts))
    if live and domains.is_active(plan.uuid):
        return  # the temporary names stay, as live aliases (see above)
    for m in plan.moves:
        if m.name in staged:
            os.unlink(m.temp_path or "")
            fsutil.fsync_dir(os.path.dirname(m.temp_path or "/"))


def undo(plan: Plan, original_xml: str, domains: LibvirtPort, storage: Storage) -> None:
    """Point the domain back at the sources and remove the file copies (idempotent)."""
    where: dict[str, Location] = {}
    for m in plan.moves:
        if m.retained_path and os.path.lexists(m.retained_path):
            where[m.name] = m.retained
        else:
            where[m.name] = m.source
    domains.define(domain_xml(original_xml, plan, where, storage))
    for m in plan.moves:
        if not m.temp_path:
            continue
        final = m.dest.path or ""
        kept = m.retained_path
        if kept and os.path.isdir(kept) and not os.path.islink(kept):
            # A ploop source is a directory: it cannot be hard-linked, so the copy's name
            # goes first and R is renamed back. The domain points at R meanwhile; if we
            # die between the rename and the last define, it points at a missing R, and
            # running undo again (R gone: the domain -> S) repairs that.
            if os.path.lexists(final) and not os.path.isdir(final):
                os.unlink(final)
            if not os.path.lexists(final):
                os.rename(kept, final)
        elif kept and os.path.lexists(kept):
            # The source comes back under its name in one rename, while R still holds it.
            if not (os.path.lexists(final) and os.path.samefile(final, kept)):
                back = final + ".rollback"
                if os.path.lexists(back):
                    os.unlink(back)
                os.link(kept, back)
                os.replace(back, final)
        elif m.retained_path is None and os.path.lexists(final):
            os.unlink(final)  # the source is no file here: S was only ever our copy
        if os.path.lexists(m.temp_path):
            os.unlink(m.temp_path)
        fsutil.fsync_dir(os.path.dirname(final))
    domains.define(original_xml)
    for m in plan.moves:
        if m.temp_path and m.retained_path and os.path.lexists(m.retained_path):
            os.unlink(m.retained_path)
            fsutil.fsync_dir(os.path.dirname(m.retained_path))


# -- the record and disk.info ------------------------------------------------------------


def migrated_record(
    original: rec.Record,
    plan: Plan,
    *,
    now: str,
    keep_sources: bool = True,
    keep_displaced: bool = True,
) -> rec.Record:
    """The record after the switch: moved disks at their targets, sources retained.

    Retained copies this migration moved aside (roundtrip.py) are listed under their new
    names (or not at all, ``keep_displaced=False``: deleted at cleanup); an item at a
    place a disk now uses is dropped (it is no kept copy), as is an older item at the
    place of a newer one.
    """
    moves = {m.name: m for m in plan.moves}
    disks = []
    for disk in original.disks:
        m = moves.get(disk.name)
        disks.append(disk if m is None else _moved_disk(disk, m.dest))
    retained = roundtrip.retained_after(
        original.retained_sources, plan, keep_displaced=keep_displaced
    )
    if keep_sources:
        retained += [retained_entry(m, now) for m in plan.moves]
    return replace(
        original,
        disks=tuple(disks),
        retained_sources=roundtrip.without_live(retained, disks),
        written_at=now,
        obtained_how="migrated",
    )


def retained_entry(move: DiskMove, now: str) -> dict:
    """A ``retained_sources`` item: where the old copy of a disk still is."""
    loc = move.retained
    entry = {"disk": move.name} | loc.to_record()
    entry |= {"retained_at": now, "migrated_to": move.dest.backend}
    return entry


def _moved_disk(disk: DiskLayout, dest: Location) -> DiskLayout:
    return DiskLayout(
        name=disk.name,
        role=Role(disk.role),
        target=disk.target,
        backend=dest.kind,
        format=dest.format,
        virtual_size=disk.virtual_size,
        device=disk.device,
        **dest.disk_fields(),
    )


def disk_info_after(original: str | None, moves: Iterable[DiskMove]) -> str | None:
    """Nova's disk.info (``{path: format}``) with the moved disks' entries replaced; made
    when there is none and a disk moves into the instance directory (else Nova's Flat
    image would probe that disk's format)."""
    moves = list(moves)
    if original is None:
        if not any(registry.backend_class(m.dest.backend).IN_INSTANCE_DIR for m in moves):
            return None
        original = "{}"
    try:
        data = json.loads(original)
    except ValueError:
        return None  # not ours to repair; audit reports it
    if not isinstance(data, dict):
        return None
    for m in moves:
        for key in _info_keys(m.source):
            data.pop(key, None)
        data[_info_keys(m.dest)[0]] = m.dest.format
    return json.dumps(data)


def write_disk_info(instance_dir: str, text: str | None) -> None:
    """Replace Nova's disk.info atomically, keeping its owner and mode (Nova rewrites it
    later, as its own user)."""
    if text is None:
        return
    path = os.path.join(instance_dir, "disk.info")
    try:
        st = os.stat(path)
        owner, mode = (st.st_uid, st.st_gid), st.st_mode & 0o7777
    except FileNotFoundError:  # Nova's own, as it would make it: the directory's owner
        st = os.stat(instance_dir)
        owner, mode = (st.st_uid, st.st_gid), 0o644
    atomic_write(path, text.encode(), mode=mode)
    if owner is not None and owner != (os.geteuid(), os.getegid()):
        os.chown(path, *owner)
        fsutil.fsync_path(path)


def _info_keys(loc: Location) -> list[str]:
    return registry.backend_class(loc.backend).disk_info_keys(loc)


def _keep_owner(source: str, copy: str) -> None:
    # Nova's files belong to nova / libvirt-qemu; the copy must too.
    if os.path.isdir(source):  # ploop: the image in it carries the owner and mode
        source = os.path.join(source, "root.hds")
    st = os.stat(source)
    os.chown(copy, st.st_uid, st.st_gid)
    os.chmod(copy, st.st_mode & 0o7777)
